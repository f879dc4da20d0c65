"""`kbm.layers.RotaryEmbedding`: rotary position embedding (RoPE)."""

import numbers

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import keras, register_serializable


def _check_positive_number(value, name):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
        or not np.isfinite(value)
    ):
        raise ValueError(
            f"{name} must be a finite number > 0. Received: {name}={value!r}"
        )


def _check_axis(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int. Received: {name}={value!r}")


def _normalize_axes(shape, sequence_axis, feature_axis):
    """Non-negative (sequence, feature) axes for inputs of `shape`."""
    rank = len(shape)
    for name, axis in (
        ("sequence_axis", sequence_axis),
        ("feature_axis", feature_axis),
    ):
        if not -rank <= axis < rank:
            raise ValueError(
                f"{name}={axis} is out of range for inputs of shape "
                f"{tuple(shape)}. Received: {name}={axis}"
            )
    seq, feat = sequence_axis % rank, feature_axis % rank
    if seq == feat:
        raise ValueError(
            "sequence_axis and feature_axis must be different axes. "
            f"Received: sequence_axis={sequence_axis}, "
            f"feature_axis={feature_axis} for inputs of rank {rank}"
        )
    return seq, feat


def apply_rotary_embedding(
    x,
    positions=None,
    start_index=0,
    max_wavelength=10000,
    scaling_factor=1.0,
    *,
    sequence_axis=1,
    feature_axis=-1,
):
    """Applies rotary position embedding (RoPE) to a query or key tensor.

    With `d` the size of the feature axis and `x1, x2` its first and second
    halves ("rotate half" pairing: feature `i` pairs with `i + d/2`, as in
    keras_hub, GPT-NeoX and Hugging Face LLaMA), returns
    `concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin])` where the angle of
    pair `i` at position `p` is
    `(p / scaling_factor) / max_wavelength ** (2 * i / d)`. Computed in
    float32 (float64 for float64 inputs) and cast back to `x.dtype`. Plain
    TensorFlow, differentiable, no weights.

    Args:
        x: A floating tensor with a sequence axis and a feature axis of
            even, statically known size, e.g. `[batch, seq, heads, head_dim]`
            or `[batch, seq, hidden]`.
        positions: Optional tensor of shape `[seq]`, or `[batch, seq]` with
            the batch on axis 0, giving the position of each element;
            replaces `start_index`. Defaults to `None`.
        start_index: An integer or scalar integer tensor, the position of
            the first element (for decoding with a cache). Defaults to `0`.
        max_wavelength: The base of the geometric progression of
            wavelengths (`theta` in the paper; 10000 in most models).
            Defaults to `10000`.
        scaling_factor: Positions are divided by this (linear position
            interpolation, to stretch a model to longer contexts). Defaults
            to `1.0`.
        sequence_axis: The axis of the positions (keyword only). Defaults to
            `1`.
        feature_axis: The axis that is rotated (keyword only). Defaults to
            `-1`.

    Returns:
        The rotated tensor, with the shape and dtype of `x`.

    Example:

    ```python
    q = kbm.layers.apply_rotary_embedding(q)  # q: [batch, seq, heads, dim]
    k = kbm.layers.apply_rotary_embedding(k)
    ```

    Reference:
    - [Su et al., 2021](https://arxiv.org/abs/2104.09864)
    """
    _check_positive_number(max_wavelength, "max_wavelength")
    _check_positive_number(scaling_factor, "scaling_factor")
    _check_axis(sequence_axis, "sequence_axis")
    _check_axis(feature_axis, "feature_axis")
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(
            "Rotary embedding needs floating-point inputs. "
            f"Received: x.dtype={x.dtype.name}"
        )
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(
            "Rotary embedding needs inputs with a sequence and a feature "
            f"axis. Received: x.shape={x.shape}"
        )
    shape = x.shape.as_list()
    seq_axis, feat_axis = _normalize_axes(shape, sequence_axis, feature_axis)
    dim = shape[feat_axis]
    if dim is None or dim % 2:
        raise ValueError(
            "Rotary embedding needs a known, even feature size (the first "
            "half of the features pairs with the second half). Received: "
            f"feature size {dim} (x.shape={x.shape}, "
            f"feature_axis={feature_axis})"
        )
    dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    half = dim // 2
    # Inverse frequencies in float64 on the host, then one cast.
    inv_freq = max_wavelength ** (-2.0 * np.arange(half) / dim)
    inv_freq = tf.constant(inv_freq / scaling_factor, dtype)

    batched = False
    if positions is None:
        seq_len = tf.shape(x)[seq_axis]
        positions = tf.cast(tf.range(seq_len), dtype) + tf.cast(
            start_index, dtype
        )
    else:
        positions = tf.cast(tf.convert_to_tensor(positions), dtype)
        if positions.shape.rank == 2:
            if 0 in (seq_axis, feat_axis):
                raise ValueError(
                    "positions of shape [batch, seq] need the batch on axis "
                    "0 of the inputs, which is here the sequence or feature "
                    f"axis. Received: positions.shape={positions.shape}, "
                    f"x.shape={x.shape}"
                )
            batched = True
        elif positions.shape.rank != 1:
            raise ValueError(
                "positions must have shape [seq] or [batch, seq]. "
                f"Received: positions.shape={positions.shape}"
            )
    # angles: [seq, half] or [batch, seq, half]; lay them out like `x`.
    angles = positions[..., None] * inv_freq
    if seq_axis > feat_axis:
        angles = tf.linalg.matrix_transpose(angles)
    kept = ({0} if batched else set()) | {seq_axis, feat_axis}
    for axis in range(len(shape)):
        if axis not in kept:
            angles = tf.expand_dims(angles, axis)
    cos, sin = tf.cos(angles), tf.sin(angles)

    x1, x2 = tf.split(tf.cast(x, dtype), 2, axis=feat_axis)
    rotated = tf.concat(
        [x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=feat_axis
    )
    return tf.cast(rotated, x.dtype)


@register_serializable
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE) for queries and keys.

    Rotates each pair of features `(x_i, x_{i + d/2})` of the inputs by an
    angle proportional to the position, so that the dot product of a
    rotated query and key depends only on their relative position. Applied
    to the projected queries and keys of attention, in the layout the
    attention layers use (`[batch, seq, heads, head_dim]`) or to
    `[batch, seq, hidden]`. Uses the "rotate half" pairing of
    `keras_hub.layers.RotaryEmbedding` (linear scaling), GPT-NeoX and
    Hugging Face LLaMA; see `kbm.layers.apply_rotary_embedding` for the
    formula. No weights. Like any Keras layer it first casts floating
    inputs to its compute dtype (float16 under `mixed_float16`); the
    rotation is then computed in float32 (float64 for a float64 layer) and
    cast back. `apply_rotary_embedding` keeps any input dtype. A Keras mask
    on the inputs passes through.

    Args:
        max_wavelength: The base of the geometric progression of
            wavelengths. Defaults to `10000`.
        scaling_factor: Positions are divided by this (linear position
            interpolation). Defaults to `1.0`.
        sequence_axis: The axis of the positions. Defaults to `1`.
        feature_axis: The axis that is rotated; its size must be even.
            Defaults to `-1`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A floating tensor, e.g. `[batch, seq, heads, head_dim]`.
        start_index: An integer or scalar integer tensor, the position of
            the first element (for decoding with a cache). Defaults to `0`.
        positions: Optional integer tensor of shape `[seq]` or
            `[batch, seq]` with the position of each element; replaces
            `start_index`. Defaults to `None`.

    Returns:
        The rotated tensor, with the inputs' shape, in the layer's compute
        dtype.

    Example:

    ```python
    rope = kbm.layers.RotaryEmbedding(max_wavelength=10000)
    q, k = rope(q), rope(k)         # [batch, seq, heads, head_dim]
    ```

    Reference:
    - [Su et al., 2021](https://arxiv.org/abs/2104.09864)
    """

    def __init__(
        self,
        max_wavelength=10000,
        scaling_factor=1.0,
        sequence_axis=1,
        feature_axis=-1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_number(max_wavelength, "max_wavelength")
        _check_positive_number(scaling_factor, "scaling_factor")
        _check_axis(sequence_axis, "sequence_axis")
        _check_axis(feature_axis, "feature_axis")
        if sequence_axis == feature_axis:
            raise ValueError(
                "sequence_axis and feature_axis must be different. Received: "
                f"sequence_axis={sequence_axis}, feature_axis={feature_axis}"
            )
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.sequence_axis = int(sequence_axis)
        self.feature_axis = int(feature_axis)
        self.supports_masking = True

    def call(self, inputs, start_index=0, positions=None):
        return apply_rotary_embedding(
            inputs,
            positions=positions,
            start_index=start_index,
            max_wavelength=self.max_wavelength,
            scaling_factor=self.scaling_factor,
            sequence_axis=self.sequence_axis,
            feature_axis=self.feature_axis,
        )

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        _normalize_axes(input_shape, self.sequence_axis, self.feature_axis)
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "max_wavelength": self.max_wavelength,
            "scaling_factor": self.scaling_factor,
            "sequence_axis": self.sequence_axis,
            "feature_axis": self.feature_axis,
        }
