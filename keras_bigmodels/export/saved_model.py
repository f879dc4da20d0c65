"""SavedModel export that never strands a model on keras_bigmodels' ops."""

import logging
from pathlib import Path

import tensorflow as tf

from keras_bigmodels import config
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.export.explain_signature import ExplainSignature
from keras_bigmodels.export.signatures import ModelInterface, check_signatures

KBM_OP_PREFIX = "Kbm>"
SIGNATURE_TYPES = (ExplainSignature,)

logger = logging.getLogger("keras_bigmodels")


def find_fused_ops(path):
    """Lists the keras_bigmodels op types in a SavedModel.

    Reads `saved_model.pb` and looks at every node of every MetaGraph,
    including the nodes of every function in the graph's library.

    Args:
        path: The SavedModel directory.

    Returns:
        A dict `{op type: sorted list of graphs/functions using it}`, empty
        when the SavedModel holds only stock TensorFlow ops.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    found = {}
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        places = [("<graph>", graph.node)] + [
            (f.signature.name, f.node_def) for f in graph.library.function
        ]
        for place, nodes in places:
            for node in nodes:
                if node.op.startswith(KBM_OP_PREFIX):
                    found.setdefault(node.op, set()).add(place)
    return {op: sorted(where) for op, where in sorted(found.items())}


def export_saved_model(
    model, path, stock_ops=True, signatures=None, jit_compile=False
):
    """Exports a Keras model as a SavedModel for TF Serving.

    The SavedModel's `serving_default` signature takes one tensor per model
    input, keyed by the input's name (the keys of a dict-input model, else
    each `keras.Input` layer's name, e.g. `token_ids` and `padding_mask`),
    and returns a dict keyed by output name (the keys of a dict-output
    model, else the name of the layer producing each output, e.g. `logits`
    for `Dense(3, name="logits")`). `signatures` adds named signatures
    computed in the graph, e.g. attributions (`kbm.export.ExplainSignature`).

    With `stock_ops=True` (the default) every function is traced with the
    fused kernels switched off, so each kbm layer runs its pure-TensorFlow
    reference and the SavedModel holds only stock TensorFlow ops: an
    unmodified TF Serving (or any TensorFlow without keras_bigmodels) loads
    it. The written graph, functions included, is then checked for `Kbm>`
    ops.

    With `stock_ops=False` the fused ops are kept. Such a SavedModel loads
    only in a process that has loaded the op library (`import
    keras_bigmodels` and run any op, or the `keras-bigmodels-saved-model-cli`
    wrapper), and serving it needs a model server built with the library
    (docs/serving.md).

    With `jit_compile=True` (stock ops only) the `serving_default` and
    `serve` functions are saved as `tf.function(jit_compile=True)`: a
    TensorFlow that loads the SavedModel compiles them with XLA (the model
    then runs as fused XLA code rather than op by op; BENCHMARKS.md's
    `models` section measures both). A model server without XLA's CPU JIT
    cannot run such a function: keep the default where unsure.

    Keras 3 models are written with `keras.export.ExportArchive` (also
    keeping the `serve` endpoint that `model.export` writes, taking the
    model's own input structure); tf-keras models with
    `tf.saved_model.save`. A model without symbolic inputs (subclassed) is
    written as before this API had signatures: `model.export` or
    `tf.saved_model.save(model)`, with their default signature.

    Args:
        model: A built Keras model.
        path: The output directory.
        stock_ops: Trace without fused kernels and verify the result.
            Defaults to `True`.
        signatures: Extra signatures, `{name: kbm.export.ExplainSignature}`.
            Names must be identifiers and not one of "serving_default",
            "serve", "variables", "trainable_variables",
            "non_trainable_variables". Defaults to `None`.
        jit_compile: Save the serving functions for XLA compilation
            (needs `stock_ops=True` and a model with symbolic inputs).
            Defaults to `False`.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: A bad `signatures` argument (not a dict, a reserved or
            invalid name, a value of an unknown type) or a signature the
            model cannot have (see `ExplainSignature`); `jit_compile` not a
            bool, or True with `stock_ops=False` (kbm's ops have no XLA
            kernels) or for a model without symbolic inputs.
        RuntimeError: `stock_ops=True` and the written graph still holds
            `Kbm>` ops (for example a tf.function traced earlier with kernels
            was reused); the message lists them.

    Example:

    ```python
    kbm.export.export_saved_model(model, "serving/1", signatures={
        "explain": kbm.export.ExplainSignature(
            kbm.explain.IntegratedGradients, n_steps=32)})
    ```
    """
    path = str(path)
    if not isinstance(jit_compile, bool):
        raise ValueError(
            "jit_compile must be True or False. "
            f"Received: jit_compile={jit_compile!r}"
        )
    if jit_compile and not stock_ops:
        raise ValueError(
            "jit_compile=True needs stock_ops=True: keras_bigmodels ops have "
            "no XLA kernels. Received: stock_ops=False"
        )
    extra = check_signatures(signatures, SIGNATURE_TYPES)
    interface = ModelInterface.of(model)
    if interface is None and (extra or jit_compile):
        ModelInterface(model)  # Raises, saying why.
    with config.fused_kernels(not stock_ops and config.fused_kernels_enabled()):
        if interface is None:
            _write_default(model, path)
        else:
            endpoints = {"serving_default": interface.serving_function()}
            if not IS_LEGACY_KERAS:
                endpoints["serve"] = interface.keras_call_function()
            for name, signature in extra.items():
                endpoints[name] = signature.build(interface)
            jit = _JIT_ENDPOINTS if jit_compile else ()
            _write(model, path, endpoints, jit=jit)
    _check_ops(path, stock_ops)
    return path


def _write_default(model, path):
    if IS_LEGACY_KERAS:
        tf.saved_model.save(model, path)
    else:
        model.export(path, format="tf_saved_model", verbose=False)


# The serving functions' custom gradients are not written. kbm's only ones
# are the quantized layers' straight-through gradients, and their saved
# copies (a dequantize-and-matmul graph per layer and function) made a
# quantized MiniLM's graph three times the float32 one's. Explain
# signatures trace their gradients when they are exported, and a model
# server never differentiates; differentiating a loaded quantized export
# gives the gradient of its forward ops (none through the rounding).
_SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)

# The endpoints `jit_compile=True` compiles (the explain signatures keep
# their loops and gradients op by op).
_JIT_ENDPOINTS = ("serving_default", "serve")


def _write(model, path, endpoints, jit=()):
    """Writes `model` with `{name: Endpoint}` as its signatures; the
    endpoints named in `jit` as XLA-compiled functions."""
    if IS_LEGACY_KERAS:
        functions = {
            name: tf.function(
                fn,
                input_signature=sig,
                autograph=False,
                jit_compile=name in jit,
            )
            for name, (fn, sig) in endpoints.items()
        }
        tf.saved_model.save(
            model, path, signatures=functions, options=_SAVE_OPTIONS
        )
        return
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, sig) in endpoints.items():
        if name in jit:
            # A traced tf.function: the archive keeps its jit_compile.
            fn = tf.function(
                fn, input_signature=sig, autograph=False, jit_compile=True
            )
            fn.get_concrete_function()
            archive.add_endpoint(name, fn)
        else:
            archive.add_endpoint(name, fn, input_signature=sig)
    _share_tracked_variables(archive)
    archive.write_out(path, options=_SAVE_OPTIONS, verbose=False)


def _share_tracked_variables(archive):
    """Makes Keras 3's `ExportArchive` write each variable once.

    Keras 3.15's archive keeps the tracked layers' `keras.Variable`s in its
    `variables` lists and, separately, the `tf.Variable`s its endpoints
    capture (the same tensors); the checkpoint writer saw two objects and
    wrote every weight twice, doubling the SavedModel (Keras's own
    `model.export` too). The lists get the captured `tf.Variable`s instead,
    which the writer then saves once; a loaded SavedModel's `variables`
    are `tf.Variable`s either way.
    """
    trackable = getattr(archive, "_tf_trackable", None)
    if trackable is None:  # A Keras without that attribute: leave it.
        return

    def underlying(v):
        value = (
            getattr(v, "value", None) if isinstance(v, keras.Variable) else v
        )
        return value if isinstance(value, tf.Variable) else v

    for attr in ("variables", "trainable_variables", "non_trainable_variables"):
        tracked = getattr(trackable, attr, None)
        if tracked is not None:
            setattr(trackable, attr, [underlying(v) for v in tracked])


def _check_ops(path, stock_ops):
    fused = find_fused_ops(path)
    if stock_ops and fused:
        listing = "; ".join(
            f"{op} in {', '.join(w)}" for op, w in fused.items()
        )
        raise RuntimeError(
            f"The SavedModel at {path} still contains keras_bigmodels ops "
            f"({listing}); an unmodified TF Serving cannot load it, do not "
            "serve it. This happens when a function traced with fused kernels "
            "is saved; report it with the model's code."
        )
    if fused:
        logger.warning(
            "The SavedModel at %s contains fused ops (%s). Loading it needs "
            "the keras_bigmodels op library in the process, and TF Serving "
            "needs a model server built with it; export with stock_ops=True "
            "for a stock-ops artifact.",
            path,
            ", ".join(fused),
        )
