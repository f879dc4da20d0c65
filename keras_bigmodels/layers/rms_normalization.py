"""`kbm.layers.RMSNormalization`: root-mean-square normalisation, fused."""

import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels._validation import check_axis, check_epsilon
from keras_bigmodels.backend import (
    add_weight,
    keras,
    output_dtype,
    register_serializable,
)
from keras_bigmodels.layers.layer_normalization import normalizes_last_axis


@register_serializable
class RMSNormalization(keras.layers.Layer):
    """RMS normalisation with a fused kernel (Zhang and Sennrich, 2019).

    Computes `x / sqrt(mean(x**2) + epsilon) * scale` over `axis`. It has the
    constructor arguments and the weight (`scale`) of Keras 3's
    `keras.layers.RMSNormalization`, so weights copy over with `set_weights`;
    it also works under tf-keras, which has no such layer.

    When `axis` is just the last axis it runs `kbm.ops.rms_norm` (fused CPU
    kernel for float16, bfloat16, float32, float64, computed in at least
    float32); other axes use the pure-TensorFlow reference. Fallback and
    serialisation as in `kbm.layers.LayerNormalization`.

    Args:
        axis: The axis or axes to normalise. Defaults to `-1`.
        epsilon: Added to the mean square. Defaults to `1e-6`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A tensor of any rank.

    Returns:
        The normalised tensor, shaped like `inputs`.

    Example:

    ```python
    norm = kbm.layers.RMSNormalization(epsilon=1e-5)
    y = norm(x)
    ```

    Reference:
    - [Zhang and Sennrich, 2019](https://arxiv.org/abs/1910.07467)
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        check_axis("axis", axis)
        check_epsilon("epsilon", epsilon)
        self.axis = (
            [int(a) for a in axis]
            if isinstance(axis, (list, tuple))
            else int(axis)
        )
        self.epsilon = epsilon
        self.supports_masking = True
        self.supports_jit = False

    def build(self, input_shape):
        rank = len(input_shape)
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        for a in axes:
            if not -rank <= a < rank:
                raise ValueError(
                    f"axis {a} is out of range for inputs of shape "
                    f"{tuple(input_shape)}. Received: axis={self.axis}"
                )
        shape = tuple(input_shape[a] for a in sorted(a % rank for a in axes))
        self.scale = add_weight(self, "scale", shape, "ones")
        self.built = True

    def call(self, inputs):
        rank = inputs.shape.rank
        if normalizes_last_axis(self.axis, rank):
            outputs = ops.rms_norm(inputs, self.scale, epsilon=self.epsilon)
        else:
            outputs = _rms_norm_over_axes(
                inputs, self.scale, self.axis, self.epsilon
            )
        return tf.cast(outputs, output_dtype(self, inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
        }


def _rms_norm_over_axes(x, scale, axis, epsilon):
    """RMSNorm over arbitrary axes, in at least float32 (no kernel)."""
    rank = x.shape.rank
    axes = sorted(
        a % rank for a in (axis if isinstance(axis, list) else [axis])
    )
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    xu = tf.cast(x, dtype)
    ms = tf.reduce_mean(tf.square(xu), axis=axes, keepdims=True)
    bshape = [x.shape[i] if i in axes else 1 for i in range(rank)]
    scale = tf.reshape(tf.cast(scale, dtype), bshape)
    return tf.cast(xu * tf.math.rsqrt(ms + epsilon) * scale, x.dtype)
