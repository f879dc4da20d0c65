"""`kbm.layers.FusedDense`: Dense with a fused bias + activation epilogue."""

import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)

# Activation name -> the `approximate` flag of the fused GELU epilogue.
FUSED_ACTIVATIONS = {"gelu": False, "gelu_tanh": True}


def _gelu_tanh(x):
    """GELU, tanh approximation (the unfused form of "gelu_tanh")."""
    return keras.activations.gelu(x, approximate=True)


@register_serializable
class FusedDense(keras.layers.Dense):
    """A `Dense` layer whose bias + GELU runs as one fused kernel.

    Computes `activation(inputs @ kernel + bias)` like `keras.layers.Dense`
    of the Keras line in use, with the same constructor arguments and the
    same weights (`kernel`, `bias`), so weights copy over with `set_weights`
    in both directions. With `activation="gelu"` (exact, erf) or
    `"gelu_tanh"` (tanh approximation) the matmul is followed by
    `kbm.ops.bias_gelu`, which adds the bias and applies GELU in one pass
    over the output, and computes dx and dbias in one pass backward. Any
    other activation (or None) is applied as `keras.layers.Dense` does.

    Kernels: CPU, float16/bfloat16/float32/float64; fallback and
    serialisation as in `kbm.layers.LayerNormalization`.

    Keras 3 quantisation: `layer.quantize(mode)` and `model.quantize(mode)`
    accept every mode `keras.layers.Dense` accepts (`"int8"`, `"int4"`,
    `"float8"`, `"gptq"`, `"awq"`, and `QuantizationConfig` objects). A
    quantised FusedDense holds Dense's quantised variables and runs Dense's
    quantised call paths, which add the bias and apply the activation
    unfused (the fused epilogue is a float-path kernel); it saves, loads
    and takes LoRA (`enable_lora`) as Dense does. tf-keras has no
    quantisation API.

    Args:
        units: Output width, a positive integer.
        activation: `"gelu"`, `"gelu_tanh"`, or any Keras activation.
            Defaults to `None`.
        **kwargs: Every other argument of `keras.layers.Dense` (`use_bias`,
            initializers, regularizers, constraints, `name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of rank >= 2 whose last axis is the input width.

    Returns:
        A tensor of shape `inputs.shape[:-1] + (units,)`.

    Example:

    ```python
    ffn = kbm.layers.FusedDense(3072, activation="gelu")
    h = ffn(x)                      # x: [batch, seq, 768]
    ```
    """

    def __init__(self, units, activation=None, **kwargs):
        units = check_positive_int("units", units)
        self._fused_activation = (
            activation
            if isinstance(activation, str) and activation in FUSED_ACTIVATIONS
            else None
        )
        if activation == "gelu_tanh":
            activation = _gelu_tanh
        super().__init__(units, activation=activation, **kwargs)
        self.supports_jit = False

    def call(self, inputs, training=None):
        if self._fused_activation is None or not isinstance(inputs, tf.Tensor):
            # Nothing to fuse, or sparse/ragged inputs: Dense's own path.
            return super().call(inputs)
        kernel = tf.convert_to_tensor(self.kernel)
        inputs = tf.cast(inputs, kernel.dtype)
        if inputs.shape.rank == 2:
            x = tf.matmul(inputs, kernel)
        else:
            flat = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
            x = tf.matmul(flat, kernel)
            x = tf.reshape(
                x, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0)
            )
            x.set_shape(inputs.shape[:-1].concatenate([self.units]))
        bias = tf.convert_to_tensor(self.bias) if self.use_bias else None
        return ops.bias_gelu(
            x, bias, approximate=FUSED_ACTIVATIONS[self._fused_activation]
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantises the layer in place, as `keras.layers.Dense.quantize`.

        Keras 3 only. FusedDense computes exactly Dense's function with
        Dense's variables, so Dense's quantisation applies unchanged. As
        Dense does for its own subclasses, a subclass of FusedDense (which
        may compute something else) is refused unless `type_check=False`.
        """
        if IS_LEGACY_KERAS:
            raise NotImplementedError(
                "FusedDense.quantize needs Keras 3: tf-keras has no "
                "quantization API."
            )
        if type_check and type(self) is not FusedDense:
            raise self._not_implemented_error(self.quantize)
        super().quantize(mode, type_check=False, config=config)

    def get_config(self):
        config = super().get_config()
        if self._fused_activation is not None:
            config["activation"] = self._fused_activation
        return config
