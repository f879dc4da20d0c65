"""Quantization-aware training: `quantize_aware` and `convert`.

`quantize_aware(model, mode)` switches the same layers `quantize` converts
to fake-quantized subclasses (`QATDense`, `QATFusedDense`,
`QATEinsumDense`, `QATEmbedding`, `QATConv2D`), in place. They keep their
float weights and train with `fit`; on every call the kernel is rounded to
exactly the integers and scales `quantize` will store (per output channel
for int8, per group of `group_size` inputs for int4, per row for embedding
tables), and in `"int8"` mode each row of a Dense/EinsumDense input is
rounded to int8 exactly as `kbm.ops.quantized_matmul` does at inference
(dynamic, per row: the converted model has no activation range to learn, so
none is simulated). Gradients pass the rounding straight through (the
straight-through estimator). `convert(model)` then switches the layers back
and calls `quantize(model, mode)`: the int8 model computes what the
fake-quantized one did, up to float rounding.
"""

import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels.backend import keras, register_serializable
from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.ops import quantization as qops
from keras_bigmodels.quantization import layers as qlayers
from keras_bigmodels.quantization import quantize as qmod

QAT_KEY = "kbm_qat"


def _ste(x, xq):
    """`xq` forward, the identity's gradient backward."""
    return x + tf.stop_gradient(xq - x)


def fake_quantize_rows(x):
    """Per-row dynamic int8 rounding of x, as the W8A8 kernel quantizes."""
    q, scale, _ = qops.quantize_rows(x)
    xq = tf.cast(q, tf.float32) * scale[..., None]
    return _ste(x, tf.cast(xq, x.dtype))


def fake_quantize_kernel(w2d, bits, group_size):
    """`[K, N]` float kernel -> its dequantized int8/int4 value (STE)."""
    wf = tf.cast(w2d, tf.float32)
    q, scale = ops.quantize_kernel(
        tf.stop_gradient(wf), bits=bits, group_size=group_size
    )
    k, n = wf.shape
    qf = tf.cast(q, tf.float32)
    if scale.shape.rank == 1:
        wq = qf * scale
    else:
        wq = tf.reshape(
            tf.reshape(qf, [-1, group_size, n]) * scale[:, None, :], [k, n]
        )
    return tf.cast(_ste(wf, wq), w2d.dtype)


class _QATMixin:
    _float_class = None

    def __init__(self, *args, **kwargs):
        spec = kwargs.pop(QAT_KEY, None) or qlayers.make_spec("int8")
        super().__init__(*args, **kwargs)
        self._set_qat(spec)

    def _set_qat(self, spec):
        qlayers.set_plain(
            self, "_kbm_qat", qlayers._check_spec(spec, self.name, QAT_KEY)
        )

    @property
    def qat_spec(self):
        return dict(self._kbm_qat)

    def _bits_group(self):
        bits = qlayers._bits(self._kbm_qat["mode"])
        return bits, (self._kbm_qat["group_size"] if bits == 4 else None)

    def _float_weight(self):
        return qlayers.float_weight(self, "kernel")

    def _ordered(self):
        out = [self._float_weight()]
        bias = getattr(self, "bias", None)
        return out + ([bias] if bias is not None else [])

    def save_own_variables(self, store):
        for i, v in enumerate(self._ordered()):
            store[str(i)] = v

    def load_own_variables(self, store):
        variables = self._ordered()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"QAT layer {self.name!r} expected {len(variables)} "
                f"variables, received {len(store.keys())}."
            )
        for i, v in enumerate(variables):
            v.assign(store[str(i)])

    def _fq_inputs(self, inputs):
        if self._kbm_qat["mode"] == "int8" and inputs.dtype.is_floating:
            return fake_quantize_rows(inputs)
        return inputs

    def get_config(self):
        config = super().get_config()
        config[QAT_KEY] = self.qat_spec
        return config

    @classmethod
    def convert(cls, layer, spec):
        if qlayers._bits(spec["mode"]) == 4:
            k = qmod._input_size(layer)
            if k is not None:
                spec = dict(
                    spec,
                    group_size=qlayers.int4_group(
                        k, spec["group_size"], layer.name
                    ),
                )
        layer.__class__ = cls
        layer._set_qat(spec)
        return layer


class _QATDenseMixin(_QATMixin):
    """The kernel and inputs of a 2-D matmul layer, fake-quantized."""

    @property
    def kernel(self):
        bits, group = self._bits_group()
        return fake_quantize_kernel(self._float_weight(), bits, group)

    @kernel.setter
    def kernel(self, value):
        qlayers.set_float_weight(self, "kernel", value)

    def call(self, inputs, training=None):
        return super().call(self._fq_inputs(inputs))


@register_serializable
class QATDense(_QATDenseMixin, keras.layers.Dense):
    """`Dense` with fake-quantized kernel (and int8 inputs in int8 mode)."""

    _float_class = keras.layers.Dense


@register_serializable
class QATFusedDense(_QATDenseMixin, FusedDense):
    """`kbm.layers.FusedDense` with fake quantization (see QATDense)."""

    _float_class = FusedDense


@register_serializable
class QATEinsumDense(_QATMixin, keras.layers.EinsumDense):
    """`EinsumDense` with fake quantization, grouped as `quantize` does."""

    _float_class = keras.layers.EinsumDense

    @property
    def kernel(self):
        bits, group = self._bits_group()
        kernel = self._float_weight()
        plan = qlayers.parse_einsum(self.equation)
        ker = self.equation.split(",")[1].split("->")[0]
        contracted = plan["contracted"] if plan else ker[:-1]
        free = plan["free"] if plan else ker[-1:]
        order = contracted + free
        perm = [ker.index(c) for c in order]
        sizes = [int(kernel.shape[ker.index(c)]) for c in order]
        k = 1
        for c in contracted:
            k *= int(kernel.shape[ker.index(c)])
        w2 = tf.reshape(tf.transpose(kernel, perm), [k, -1])
        wq = tf.reshape(fake_quantize_kernel(w2, bits, group), sizes)
        return tf.transpose(wq, [order.index(c) for c in ker])

    @kernel.setter
    def kernel(self, value):
        qlayers.set_float_weight(self, "kernel", value)

    def call(self, inputs, training=None):
        plan = qlayers.parse_einsum(self.equation)
        if plan is None or self._kbm_qat["mode"] != "int8":
            return super().call(inputs)  # Weight-only (see QuantizedEinsum).
        # Rows are quantized over all contracted axes, as the converted
        # layer flattens them into one K.
        inp = plan["input"]
        order = plan["batch"] + plan["contracted"]
        x = inputs
        if order != inp:
            x = tf.transpose(x, [inp.index(c) for c in order])
        shape = tf.shape(x)
        nb = len(plan["batch"])
        x2 = tf.reshape(x, tf.concat([shape[:nb], [-1]], 0))
        x = tf.reshape(fake_quantize_rows(x2), shape)
        if order != inp:
            x = tf.transpose(x, [order.index(c) for c in inp])
        x = tf.ensure_shape(x, inputs.shape)
        return super().call(x)


@register_serializable
class QATEmbedding(_QATMixin, keras.layers.Embedding):
    """`Embedding` whose table is fake-quantized per row (int8/int4)."""

    _float_class = keras.layers.Embedding

    def _float_weight(self):
        return qlayers.float_weight(self, "embeddings")

    def _bits_group(self):
        bits = qlayers._bits(self._kbm_qat["mode"])
        return bits, (self._kbm_qat["group_size"] if bits == 4 else None)

    @property
    def embeddings(self):
        bits, group = self._bits_group()
        table = self._float_weight()
        return tf.transpose(
            fake_quantize_kernel(tf.transpose(table), bits, group)
        )

    @embeddings.setter
    def embeddings(self, value):
        qlayers.set_float_weight(self, "embeddings", value)

    @classmethod
    def convert(cls, layer, spec):
        if spec["mode"] == "int8":
            spec = dict(spec, mode="int8_weight_only")
        return super().convert.__func__(cls, layer, spec)


@register_serializable
class QATConv2D(_QATMixin, keras.layers.Conv2D):
    """`Conv2D` with an int8 per-output-channel fake-quantized kernel."""

    _float_class = keras.layers.Conv2D

    @property
    def kernel(self):
        kernel = self._float_weight()
        shape = kernel.shape
        w2 = tf.reshape(kernel, [-1, shape[-1]])
        return tf.reshape(fake_quantize_kernel(w2, 8, None), shape)

    @kernel.setter
    def kernel(self, value):
        qlayers.set_float_weight(self, "kernel", value)

    @classmethod
    def convert(cls, layer, spec):
        layer.__class__ = cls
        layer._set_qat(dict(spec, mode="int8_weight_only", group_size=None))
        return layer


_QAT_TARGETS = {
    keras.layers.Dense: QATDense,
    FusedDense: QATFusedDense,
    keras.layers.EinsumDense: QATEinsumDense,
    keras.layers.Embedding: QATEmbedding,
    keras.layers.Conv2D: QATConv2D,
}
_QAT_CLASSES = tuple(_QAT_TARGETS.values())


def quantize_aware(model, mode="int8", *, exclude=None, group_size=128):
    """Prepares a built Keras model for quantization-aware training.

    Switches the layers `quantize` would convert to fake-quantized
    subclasses, in place (see this module's docstring); train with `fit`,
    then `convert(model)`. The model saves to `.keras` and loads back as a
    QAT model (after `import keras_bigmodels.quantization`).

    Args:
        model: A built Keras model.
        mode: As in `quantize`. Defaults to `"int8"`.
        exclude: As in `quantize`. Defaults to `None`.
        group_size: As in `quantize`. Defaults to `128`.

    Returns:
        `model`.

    Example:

    ```python
    kbm.quantization.quantize_aware(model, "int8")
    model.fit(ds, epochs=1)
    kbm.quantization.convert(model)   # Now int8.
    ```
    """
    qlayers.check_mode(mode)
    qlayers.check_group_size(group_size)
    is_excluded = qmod._excluder(exclude)
    plan = []

    def visit(layer, path):
        if is_excluded(layer) or isinstance(layer, qmod._QUANTIZED):
            return
        if isinstance(layer, _QAT_CLASSES):
            if layer.qat_spec["mode"] != mode and not isinstance(
                layer, (QATConv2D, QATEmbedding)
            ):
                raise ValueError(
                    f"Layer {layer.name!r} is already prepared for QAT with "
                    f"mode {layer.qat_spec['mode']!r}. Received: mode={mode!r}"
                )
            return
        target = _QAT_TARGETS.get(type(layer))
        if target is not None:
            qmod._check_convertible(layer)
            plan.append((path, layer, target))
            return
        for i, child in enumerate(qmod._children(layer)):
            visit(child, path + (i,))

    for i, child in enumerate(qmod._children(model)):
        visit(child, (i,))
    spec = qlayers.make_spec(
        mode, group_size if mode == "int4_weight_only" else None
    )
    for _, layer, target in plan:  # Validate all before changing any.
        if mode == "int4_weight_only" and target is not QATConv2D:
            qlayers.int4_group(qmod._input_size(layer), group_size, layer.name)
    specs = dict(getattr(model, "_kbm_layer_specs", {}))
    for path, layer, target in plan:
        target.convert(layer, spec)
        specs[qmod._path_key(path)] = dict(layer.qat_spec, qat=True)
    if plan:
        qmod._mark_root(model, specs)
        model.train_function = None
        model.test_function = None
        model.predict_function = None
    return model


def convert(model):
    """Turns a `quantize_aware` model into the quantized model, in place.

    Each fake-quantized layer goes back to its float class and `quantize`
    converts it with the mode it trained with.

    Returns:
        `model`.
    """
    qat_layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, _QAT_CLASSES)
    ]
    if not qat_layers:
        raise ValueError(
            f"Model {model.name!r} has no layer prepared by quantize_aware."
        )
    modes = {
        layer.qat_spec["mode"]
        for layer in qat_layers
        if not isinstance(layer, (QATConv2D, QATEmbedding))
    } or {qat_layers[0].qat_spec["mode"]}
    if len(modes) > 1:
        raise ValueError(f"The model's QAT layers mix modes {sorted(modes)}.")
    mode = modes.pop()
    group = max(
        (layer.qat_spec.get("group_size") or 2 for layer in qat_layers),
        default=128,
    )
    names = set()
    for layer in qat_layers:
        names.add(id(layer))
        layer.__class__ = layer._float_class
        del layer._kbm_qat
        # Keras 3 listed the dict attribute as a tracked collection; a
        # SavedModel export would look it up.
        tracked = getattr(layer, "_tracked", [])
        if "_kbm_qat" in tracked:
            tracked.remove("_kbm_qat")
    specs = {
        k: v
        for k, v in getattr(model, "_kbm_layer_specs", {}).items()
        if not v.get("qat")
    }
    qlayers.set_plain(model, "_kbm_layer_specs", specs)
    qmod.quantize(
        model,
        mode,
        exclude=lambda layer: (
            type(layer) in _QAT_TARGETS and id(layer) not in names
        ),
        group_size=group,
    )
    return model
