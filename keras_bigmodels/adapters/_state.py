"""The adapters of one layer: their variables, forward pass and merge.

An adapted layer keeps its own class and weights. It gains, per named
adapter, the low-rank factors `a` `[fan_in, rank]` and `b` `[rank, fan_out]`
(and for DoRA the magnitude `m`) as its own variables, and an instance-level
`call` that runs the layer with the active adapter. `merge` folds the
active adapter into the base weight and removes that `call`, so the layer
runs its class's own code again: the graph has no extra op.

On a `kbm.quantization` layer the base runs through the layer's quantized
op and the adapter adds its update in float32; `merge` requantizes (see
`keras_bigmodels.adapters._quantized`).
"""

import numpy as np
import tensorflow as tf

from keras_bigmodels.adapters import _quantized as quant
from keras_bigmodels.adapters._targets import (
    DENSE,
    EMBEDDING,
    MatrixView,
    base_variable,
    layer_kind,
)
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.backend import add_weight as _add_weight

ATTR = "_kbm_adapters"
_EPS = 1e-12


class Adapter:
    """One named adapter of one layer."""

    def __init__(self, kind, rank, alpha, dropout, a, b, magnitude=None):
        self.kind = kind  # "lora" or "dora"
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.a = a
        self.b = b
        self.magnitude = magnitude

    @property
    def scale(self):
        return self.alpha / self.rank

    @property
    def variables(self):
        out = [self.a, self.b]
        return out + ([self.magnitude] if self.magnitude is not None else [])


def add_weight(layer, name, shape, initializer, dtype):
    """A float32 variable read as float32 under any dtype policy."""
    kwargs = {"experimental_autocast": False} if IS_LEGACY_KERAS else {}
    return _add_weight(layer, name, shape, initializer, dtype=dtype, **kwargs)


def get_state(layer):
    return layer.__dict__.get(ATTR)


class LayerAdapters:
    """The adapters attached to one layer (stored on the layer)."""

    def __init__(self, layer, path):
        self.layer = layer
        self.path = path
        self.kind = layer_kind(layer)
        self.quantized = quant.is_quantized(layer)
        self.report = None
        self.view = MatrixView(layer, path)
        self.adapters = {}
        self.active = None
        self.merged = None
        self._base_copy = None
        self.save_base = False
        object.__setattr__(layer, ATTR, self)
        self._install()
        object.__setattr__(layer, "save_own_variables", self._save)
        object.__setattr__(layer, "load_own_variables", self._load)

    # -- variables --------------------------------------------------------

    def add(self, name, kind, rank, alpha, dropout):
        layer = self.layer
        base = self._base_float()
        if self.kind == EMBEDDING:
            a_init = keras.initializers.Zeros()
            b_init = keras.initializers.RandomNormal(stddev=1.0)
        else:
            a_init = keras.initializers.HeUniform()
            b_init = keras.initializers.Zeros()
        fan_in, fan_out = self.view.fan_in, self.view.fan_out
        if not IS_LEGACY_KERAS:
            layer._tracker.unlock()
        try:
            a = add_weight(
                layer, f"{name}_lora_a", (fan_in, rank), a_init, dtype="float32"
            )
            b = add_weight(
                layer,
                f"{name}_lora_b",
                (rank, fan_out),
                b_init,
                dtype="float32",
            )
            magnitude = None
            if kind == "dora":
                norms = self._norms(self.view.to_matrix(base))
                magnitude = add_weight(
                    layer,
                    f"{name}_dora_magnitude",
                    tuple(norms.shape),
                    keras.initializers.Zeros(),
                    dtype="float32",
                )
                magnitude.assign(norms)
        finally:
            if not IS_LEGACY_KERAS:
                layer._tracker.lock()
        self.adapters[name] = Adapter(
            kind, rank, alpha, dropout, a, b, magnitude
        )

    def _norms(self, matrix):
        """DoRA's norms: per output column (per embedding row)."""
        axis = 1 if self.kind == EMBEDDING else 0
        return tf.norm(matrix, axis=axis)

    # -- the effective weight ---------------------------------------------

    def _base_float(self):
        """The base kernel (table) in float32; dequantized if quantized."""
        if self.quantized:
            return quant.dequantized_kernel(self.layer)
        return tf.cast(
            tf.convert_to_tensor(base_variable(self.layer)), "float32"
        )

    def _delta(self, adapter):
        a = tf.convert_to_tensor(adapter.a)
        b = tf.convert_to_tensor(adapter.b)
        return tf.matmul(a, b) * adapter.scale

    def _column_scale(self, adapter, matrix):
        """m / ||W + s B A|| (the DoRA factor), shaped to scale `matrix`."""
        norms = tf.maximum(self._norms(matrix), _EPS)
        scale = tf.convert_to_tensor(adapter.magnitude) / norms
        return scale[:, None] if self.kind == EMBEDDING else scale[None, :]

    def effective_kernel(self, adapter):
        """The base weight with `adapter` folded in (float32)."""
        base = self._base_float()
        matrix = self.view.to_matrix(base) + self._delta(adapter)
        if adapter.kind == "dora":
            matrix = matrix * self._column_scale(adapter, matrix)
        return self.view.to_kernel(matrix)

    def _split_kernels(self, adapter):
        """(kernel on x, kernel on dropout(x)), whose sum is the effective
        kernel."""
        base = self._base_float()
        base_m = self.view.to_matrix(base)
        delta = self._delta(adapter)
        if adapter.kind == "dora":
            scale = self._column_scale(adapter, base_m + delta)
            base_m, delta = base_m * scale, delta * scale
        return self.view.to_kernel(base_m), self.view.to_kernel(delta)

    # -- the call ---------------------------------------------------------

    def _install(self):
        object.__setattr__(self.layer, "call", self._call)

    def _uninstall(self):
        self.layer.__dict__.pop("call", None)

    def _call(self, inputs, *args, **kwargs):
        layer = self.layer
        adapter = self.adapters.get(self.active) if self.active else None
        if adapter is None:
            return type(layer).call(layer, inputs, *args, **kwargs)
        if self.kind == EMBEDDING:
            return self._embedding_call(adapter, inputs)
        training = kwargs.get("training", args[0] if args else None)
        if training is None:
            training = _context_training()
        if self.quantized:
            return self._quantized_call(adapter, inputs, training)
        dtype = layer.compute_dtype
        x = tf.cast(inputs, dtype)
        if (
            adapter.dropout > 0
            and training is not None
            and training is not False
        ):
            k_base, k_delta = self._split_kernels(adapter)
            dropped = _dropout(x, adapter.dropout, training)
            z = self._project(x, tf.cast(k_base, dtype)) + self._project(
                dropped, tf.cast(k_delta, dtype)
            )
        else:
            kernel = tf.cast(self.effective_kernel(adapter), dtype)
            z = self._project(x, kernel)
        return self._epilogue(z)

    def _quantized_call(self, adapter, inputs, training):
        """The quantized base's output plus the adapter's, in float32."""
        layer = self.layer
        z = quant.project(layer, inputs)
        x = tf.cast(inputs, tf.float32)
        if (
            adapter.dropout > 0
            and training is not None
            and training is not False
        ):
            x = _dropout(x, adapter.dropout, training)
        a = tf.convert_to_tensor(adapter.a)
        b = tf.convert_to_tensor(adapter.b)
        if self.kind == DENSE:
            if x.shape.rank == 2:
                delta = tf.matmul(tf.matmul(x, a), b)
            else:
                r = x.shape.rank - 1
                delta = tf.tensordot(tf.tensordot(x, a, [[r], [0]]), b, 1)
            z = z + delta * adapter.scale
        else:
            kernel = self.view.to_kernel(self._delta(adapter))
            z = z + tf.einsum(layer.equation, x, kernel)
        if adapter.kind == "dora":
            matrix = self.view.to_matrix(quant.dequantized_kernel(layer))
            matrix = matrix + self._delta(adapter)
            column = self._column_scale(adapter, matrix)[0]
            if self.kind != DENSE:
                perm, shape = quant.output_scale_shape(layer, self.view)
                column = tf.reshape(column, self.view.out_shape)
                column = tf.reshape(tf.transpose(column, perm), shape)
            z = z * column
        return quant.epilogue(layer, z)

    def _project(self, x, kernel):
        if self.kind == DENSE:
            if x.shape.rank == 2:
                return tf.matmul(x, kernel)
            return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
        return tf.einsum(self.layer.equation, x, kernel)

    def _epilogue(self, z):
        layer = self.layer
        bias = getattr(layer, "bias", None)
        bias = None if bias is None else tf.cast(bias, z.dtype)
        fused = getattr(layer, "_fused_activation", None)
        if fused is not None:
            from keras_bigmodels import ops
            from keras_bigmodels.layers.fused_dense import FUSED_ACTIVATIONS

            return ops.bias_gelu(z, bias, approximate=FUSED_ACTIVATIONS[fused])
        if bias is not None:
            z = z + bias
        if layer.activation is not None:
            z = layer.activation(z)
        return z

    def _embedding_call(self, adapter, inputs):
        layer = self.layer
        ids = inputs
        if ids.dtype not in (tf.int32, tf.int64):
            ids = tf.cast(ids, "int32")
        if self.quantized:
            base_rows = quant.rows(layer, ids)
        else:
            table = tf.convert_to_tensor(base_variable(layer))
            base_rows = tf.gather(tf.cast(table, "float32"), ids)
        a = tf.gather(tf.convert_to_tensor(adapter.a), ids)
        rows = base_rows + adapter.scale * tf.tensordot(
            a, tf.convert_to_tensor(adapter.b), [[a.shape.rank - 1], [0]]
        )
        if adapter.kind == "dora":
            norms = tf.maximum(tf.norm(rows, axis=-1, keepdims=True), _EPS)
            m = tf.gather(tf.convert_to_tensor(adapter.magnitude), ids)
            rows = rows * (m[..., None] / norms)
        return tf.cast(rows, layer.compute_dtype)

    # -- merge ------------------------------------------------------------

    def merge(self, name):
        """Folds adapter `name` in; returns the requantization report of a
        quantized layer (else None)."""
        merged = self.effective_kernel(self.adapters[name])
        if self.quantized:
            self._base_copy = quant.packed_values(self.layer)
            error, bound = quant.requantize(self.layer, merged)
            spec = self.layer.quantization_spec
            self.report = {
                "mode": spec["mode"],
                "group_size": spec["group_size"],
                "max_weight_error": error,
                "rounding_bound": bound,
                "max_abs_weight": float(tf.reduce_max(tf.abs(merged))),
            }
        else:
            var = base_variable(self.layer)
            self._base_copy = np.array(var.numpy(), copy=True)
            var.assign(tf.cast(merged, var.dtype))
        self.merged = name
        self._uninstall()
        return self.report

    def unmerge(self):
        if self.quantized:
            quant.restore(self.layer, self._base_copy)
        else:
            base_variable(self.layer).assign(self._base_copy)
        self._base_copy = None
        self.merged = None
        self.report = None
        self._install()

    # -- saving -----------------------------------------------------------

    def _own_values(self):
        """[kernel, bias?] as the layer's own saving writes them, with the
        active adapter folded into the kernel (what the layer computes)."""
        layer = self.layer
        adapter = self.adapters.get(self.active) if self.active else None
        if self.quantized:
            return self._quantized_values(adapter)
        kernel = base_variable(layer)
        if self.save_base:
            # The base weights (`kbm.adapters.save_model`).
            merged = self.merged is not None
            value = self._base_copy if merged else kernel.numpy()
        elif adapter is not None and self.merged is None:
            value = self.effective_kernel(adapter).numpy()
            value = value.astype(tf.as_dtype(kernel.dtype).as_numpy_dtype)
        else:
            value = kernel.numpy()
        out = [value]
        bias = getattr(layer, "bias", None) if self.kind != EMBEDDING else None
        if bias is not None:
            out.append(bias.numpy())
        return out

    def _quantized_values(self, adapter):
        """The quantized layer's own variables as `_own_values` describes
        them: the active unmerged adapter is requantized into them."""
        layer = self.layer
        merged = self.merged is not None
        if self.save_base and merged:
            packed = self._base_copy
        elif not self.save_base and adapter is not None and not merged:
            packed = quant.requantized_values(
                layer, self.effective_kernel(adapter)
            )
        else:
            packed = quant.packed_values(layer)
        rest = [v.numpy() for v in layer._ordered_variables()[2:]]
        return list(packed) + rest

    def _save(self, store):
        if not self.layer.built:
            return
        for i, value in enumerate(self._own_values()):
            store[str(i)] = value

    def _load(self, store):
        layer = self.layer
        if self.quantized:
            targets = list(layer._ordered_variables())
        else:
            targets = [base_variable(layer)]
            bias = getattr(layer, "bias", None)
            if self.kind != EMBEDDING and bias is not None:
                targets.append(bias)
        if len(store.keys()) != len(targets):
            raise ValueError(
                f"Layer {layer.name!r} (with adapters) expected "
                f"{len(targets)} variables, but received {len(store.keys())} "
                "variables during loading."
            )
        for i, var in enumerate(targets):
            var.assign(store[str(i)])


def _context_training():
    """The training flag of the enclosing Keras call.

    tf-keras passes `training` only to layers whose `call` takes it (its
    EinsumDense does not); the call context holds the outer value.
    """
    if not IS_LEGACY_KERAS:
        return None
    from tf_keras.src.engine import base_layer_utils

    return base_layer_utils.call_context().training


def _dropout(x, rate, training):
    if isinstance(training, bool):
        return tf.nn.dropout(x, rate) if training else x
    return tf.cond(
        tf.cast(training, tf.bool),
        lambda: tf.nn.dropout(x, rate),
        lambda: tf.identity(x),
    )
