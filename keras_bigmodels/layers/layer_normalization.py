"""`kbm.layers.LayerNormalization`: Keras's LayerNormalization, fused."""

import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels._validation import check_epsilon
from keras_bigmodels.backend import keras, output_dtype, register_serializable


def normalizes_last_axis(axis, rank):
    """True when `axis` (an int or list of ints) is just the last axis."""
    if rank is None:
        return False
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(a % rank for a in axes) == [rank - 1]


@register_serializable
class LayerNormalization(keras.layers.LayerNormalization):
    """Layer normalisation with a fused kernel (Ba et al., 2016).

    A drop-in replacement for `keras.layers.LayerNormalization` of the Keras
    line in use (Keras 3, or tf-keras when `TF_USE_LEGACY_KERAS=1`): same
    constructor arguments, same weights (`gamma`, `beta`) with the same
    shapes, so `layer.set_weights(keras_layer.get_weights())` works both ways
    and configs are interchangeable.

    When the layer normalises the last axis only (the default `axis=-1`), it
    runs `kbm.ops.layer_norm`: a fused CPU kernel for float16, bfloat16,
    float32 and float64 that computes in at least float32. Other axes, and
    Keras 3's deprecated `rms_scaling=True`, use the Keras implementation.
    Where the kernel cannot run (other devices, `jit_compile=True`, library
    not built) the pure-TensorFlow reference is used, with one warning. The
    choice is made at trace time and is never saved in the config, so a model
    saved with kernels loads where there are none.

    Args:
        axis: The axis or axes to normalise. Defaults to `-1`.
        epsilon: Added to the variance. Defaults to `1e-3`.
        center: Add the `beta` offset. Defaults to `True`.
        scale: Multiply by `gamma`. Defaults to `True`.
        beta_initializer: Defaults to `"zeros"`.
        gamma_initializer: Defaults to `"ones"`.
        beta_regularizer: Defaults to `None`.
        gamma_regularizer: Defaults to `None`.
        beta_constraint: Defaults to `None`.
        gamma_constraint: Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of any rank.

    Returns:
        The normalised tensor, shaped like `inputs`.

    Example:

    ```python
    import keras_bigmodels as kbm
    norm = kbm.layers.LayerNormalization(epsilon=1e-12)
    y = norm(x)                      # x: [batch, seq, hidden]
    ```

    Reference:
    - [Ba et al., 2016](https://arxiv.org/abs/1607.06450)
    """

    def __init__(self, axis=-1, epsilon=1e-3, *args, **kwargs):
        # `axis` is checked by Keras's LayerNormalization (a TypeError).
        check_epsilon("epsilon", epsilon)
        super().__init__(axis, epsilon, *args, **kwargs)
        # Custom ops have no XLA kernel: keep Keras 3's jit_compile="auto"
        # from compiling a model that holds this layer.
        self.supports_jit = False

    def call(self, inputs):
        rank = inputs.shape.rank
        if getattr(self, "rms_scaling", False) or not normalizes_last_axis(
            self.axis, rank
        ):
            return super().call(inputs)
        outputs = ops.layer_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon
        )
        return tf.cast(outputs, output_dtype(self, inputs))
