"""The model's serving interface: named inputs, named outputs, signatures.

`ModelInterface(model)` reads a Functional or Sequential model's inputs and
outputs once; the serving functions built from it take one tensor per model
input, named after the input, and return a dict of named outputs, so the
SavedModel's SignatureDefs carry the same names a client sends.
"""

from typing import Callable, NamedTuple

import tensorflow as tf

# Endpoint and signature names export_saved_model writes itself, or that
# name attributes of the exported object (Keras 3's ExportArchive).
RESERVED_NAMES = (
    "serving_default",
    "serve",
    "variables",
    "trainable_variables",
    "non_trainable_variables",
)


def _producer_name(keras_tensor):
    """The name of the layer that made a symbolic Keras tensor.

    For a model input this is its `keras.Input` layer's name (`"pixels"`, or
    Keras's automatic `"input_layer"` / `"input_1"`).
    """
    history = getattr(keras_tensor, "_keras_history", None)
    if history is not None:
        return history[0].name
    return keras_tensor.name


def _unique(names):
    """`names` with repeats suffixed `_1`, `_2`, ... (in order)."""
    seen, out = {}, []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 0
        out.append(name)
    return out


def _symbolic(model, attribute):
    """`model.input` or `model.output`, or None for a model without them
    (a subclassed model)."""
    try:
        return getattr(model, attribute)
    except (AttributeError, ValueError):
        return None


def _named_structure(structure, what):
    """(kind, [(name, keras tensor)]) for a tensor, list or dict."""
    if isinstance(structure, dict):
        return "dict", [(str(k), t) for k, t in structure.items()]
    if isinstance(structure, (list, tuple)):
        if any(isinstance(t, (list, tuple, dict)) for t in structure):
            raise ValueError(
                f"export_saved_model supports model {what}s that are one "
                f"tensor, a flat list or a dict. Received nested {what}s: "
                f"{structure}"
            )
        names = _unique([_producer_name(t) for t in structure])
        return "list", list(zip(names, structure))
    return "single", [(_producer_name(structure), structure)]


def _tensor_spec(keras_tensor, name):
    shape = tf.TensorShape(keras_tensor.shape)
    return tf.TensorSpec(shape, tf.as_dtype(keras_tensor.dtype), name=name)


class ModelInterface:
    """A model's inputs and outputs by name, and how to call it by name.

    Args:
        model: A Functional or Sequential Keras model (one with symbolic
            `model.input` / `model.output`).

    Attributes:
        input_names: One name per model input: the keys of a dict-input
            model, else each `keras.Input` layer's name.
        input_specs: `tf.TensorSpec`s named like the inputs.
        output_names: One name per model output: the keys of a dict-output
            model, else the names of the layers producing the outputs
            (`_1`, `_2` appended to repeats).
    """

    def __init__(self, model):
        inputs, outputs = _symbolic(model, "input"), _symbolic(model, "output")
        if inputs is None or outputs is None:
            raise ValueError(
                "Named serving signatures need a model with symbolic inputs "
                "and outputs (a Functional or Sequential model built from "
                f"keras.Input). Received: {type(model).__name__}"
            )
        self.model = model
        self._input_kind, named_inputs = _named_structure(inputs, "input")
        self._output_kind, named_outputs = _named_structure(outputs, "output")
        self.input_names = [name for name, _ in named_inputs]
        self.input_specs = [_tensor_spec(t, n) for n, t in named_inputs]
        self.output_names = [name for name, _ in named_outputs]

    @classmethod
    def of(cls, model):
        """`ModelInterface(model)`, or None for a model without symbolic
        inputs and outputs."""
        if None in (_symbolic(model, "input"), _symbolic(model, "output")):
            return None
        return cls(model)

    def pack(self, feeds):
        """The model's input structure from `{input name: tensor}`."""
        tensors = [feeds[name] for name in self.input_names]
        if self._input_kind == "dict":
            return dict(zip(self.input_names, tensors))
        if self._input_kind == "list":
            return tensors
        return tensors[0]

    def call(self, feeds):
        """Runs the model in inference mode on `{input name: tensor}`;
        returns `{output name: tensor}`."""
        outputs = self.model(self.pack(feeds), training=False)
        if self._output_kind == "dict":
            return {name: outputs[name] for name in self.output_names}
        if self._output_kind == "list":
            return dict(zip(self.output_names, outputs))
        return {self.output_names[0]: outputs}

    def serving_function(self):
        """The `serving_default` endpoint: one tensor per input, by name,
        in; the dict of named outputs out."""
        names = self.input_names
        specs = self.input_specs

        def serving_default(*tensors):
            tensors = check_inputs(tensors, specs, names)
            return self.call(dict(zip(names, tensors)))

        return Endpoint(serving_default, self.input_specs)

    def keras_call_function(self):
        """Keras 3's `serve` endpoint, as `model.export` writes it: the
        model's own input and output structures."""
        spec = self.pack(dict(zip(self.input_names, self.input_specs)))
        return Endpoint(
            lambda inputs: self.model(inputs, training=False), [spec]
        )


def check_inputs(tensors, specs, names):
    """`tensors` with run-time checks that each has its spec's rank and
    known dimensions (an `InvalidArgumentError` naming the input), and that
    all inputs have the same batch size.

    The signature's placeholders carry the specs' shapes, but a caller (an
    in-process `tf.saved_model.load`, or a model server) can feed any
    shape; without these checks a wrong one fails deep in the model, or
    not at all.
    """
    checked = []
    for tensor, spec, name in zip(tensors, specs, names):
        checked.append(
            tf.ensure_shape(tensor, spec.shape, name=f"check_input_{name}")
        )
    batched = [(t, n) for t, s, n in zip(checked, specs, names) if s.shape.rank]
    if len(batched) > 1:
        first, first_name = batched[0]
        deps = [
            tf.debugging.assert_equal(
                tf.shape(t)[0],
                tf.shape(first)[0],
                message=(
                    f"Serving input {name!r} must have the batch size of "
                    f"input {first_name!r}"
                ),
            )
            for t, name in batched[1:]
        ]
        with tf.control_dependencies(deps):
            checked = [tf.identity(t) for t in checked]
    return checked


class Endpoint(NamedTuple):
    """A function to export and its input signature; the writer traces it
    (once, while saving)."""

    fn: Callable
    input_signature: list


def check_signatures(signatures, signature_types):
    """Validates the `signatures` argument of export_saved_model.

    Args:
        signatures: None or `{name: signature object}`.
        signature_types: The accepted signature classes.

    Returns:
        The dict (empty for None).

    Raises:
        ValueError: Not a dict, a name that is reserved, not an identifier
            or starts with "_", or a value of another type.
    """
    if signatures is None:
        return {}
    if not isinstance(signatures, dict):
        raise ValueError(
            "signatures must be a dict {name: signature}. Received: "
            f"signatures={signatures!r}"
        )
    accepted = " or ".join(f"kbm.export.{t.__name__}" for t in signature_types)
    for name, signature in signatures.items():
        if name in RESERVED_NAMES:
            raise ValueError(
                f"The signature name {name!r} clashes with one "
                "export_saved_model writes itself (reserved: "
                f"{', '.join(RESERVED_NAMES)}). Received: signatures with "
                f"key {name!r}"
            )
        if (
            not isinstance(name, str)
            or not name.isidentifier()
            or name.startswith("_")
        ):
            raise ValueError(
                "Signature names must be Python identifiers not starting "
                f"with '_'. Received: signatures with key {name!r}"
            )
        if not isinstance(signature, signature_types):
            raise ValueError(
                f"signatures[{name!r}] must be a {accepted}. Received: "
                f"{type(signature).__name__} {signature!r:.200}"
            )
    return dict(signatures)
