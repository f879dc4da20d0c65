"""SavedModel export that never strands a model on keras_bigmodels' ops."""

import logging
from pathlib import Path

import tensorflow as tf

from keras_bigmodels import config
from keras_bigmodels.backend import IS_LEGACY_KERAS

KBM_OP_PREFIX = "Kbm>"

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


def export_saved_model(model, path, stock_ops=True):
    """Exports a Keras model as a SavedModel for TF Serving.

    With `stock_ops=True` (the default) the model is traced with the fused
    kernels switched off, so every kbm layer runs its pure-TensorFlow
    reference and the SavedModel holds only stock TensorFlow ops: an
    unmodified TF Serving (or any TensorFlow without keras_bigmodels) loads
    it. The written graph, functions included, is then checked for `Kbm>`
    ops.

    With `stock_ops=False` the fused ops are kept. Such a SavedModel loads
    only in a process that has loaded the op library (`import
    keras_bigmodels` and run any op, or `tf.load_op_library`), and serving
    it needs a model server built with the library.

    Keras 3 models are written with `model.export(path)` (endpoint `serve`
    and signature `serving_default`); tf-keras models with
    `tf.saved_model.save`.

    Args:
        model: A built Keras model.
        path: The output directory.
        stock_ops: Trace without fused kernels and verify the result.
            Defaults to `True`.

    Returns:
        The path written, as a string.

    Raises:
        RuntimeError: `stock_ops=True` and the written graph still holds
            `Kbm>` ops (for example a tf.function traced earlier with kernels
            was reused); the message lists them.

    Example:

    ```python
    kbm.export.export_saved_model(model, "serving/1")
    ```
    """
    path = str(path)
    with config.fused_kernels(not stock_ops and config.fused_kernels_enabled()):
        if IS_LEGACY_KERAS:
            tf.saved_model.save(model, path)
        else:
            model.export(path, format="tf_saved_model", verbose=False)
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
    return path
