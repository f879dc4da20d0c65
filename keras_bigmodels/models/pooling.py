"""Masked mean pooling for sentence embeddings."""

import tensorflow as tf

from keras_bigmodels.backend import keras, register_serializable


def mean_pool(sequence, padding_mask=None):
    """The mean of `sequence` over its valid (unpadded) positions.

    As sentence-transformers' mean pooling: padded positions are left out
    of both the sum and the count (they are replaced by zeros first, so
    whatever an encoder wrote there, NaN included, does not leak in). A
    sequence with no valid position pools to zeros. Half-precision inputs
    are summed in float32 and the result cast back.

    Args:
        sequence: `[batch, length, hidden]` (or `[..., length, hidden]`).
        padding_mask: Boolean or 0/1 `[batch, length]`, true for tokens;
            `None` averages every position. Defaults to `None`.

    Returns:
        `[batch, hidden]`, in the dtype of `sequence`.

    Example:

    ```python
    outputs = encoder(inputs)            # [batch, length, hidden]
    embeddings = kbm.models.mean_pool(outputs, inputs["padding_mask"])
    ```
    """
    sequence = tf.convert_to_tensor(sequence)
    dtype = sequence.dtype
    x = tf.cast(sequence, tf.float32) if dtype.size < 4 else sequence
    if padding_mask is None:
        return tf.cast(tf.reduce_mean(x, axis=-2), dtype)
    mask = tf.cast(padding_mask, tf.bool)[..., None]
    total = tf.reduce_sum(tf.where(mask, x, tf.zeros_like(x)), axis=-2)
    count = tf.reduce_sum(tf.cast(mask, x.dtype), axis=-2)
    return tf.cast(total / tf.maximum(count, 1), dtype)


@register_serializable
class MeanPooling(keras.layers.Layer):
    """Masked mean pooling over the sequence axis, as a layer.

    The layer form of `kbm.models.mean_pool`, for functional models: the
    mask is the `padding_mask` call argument and/or the Keras mask of the
    inputs (both are combined when given).

    Args:
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, length, hidden]`.
        padding_mask: Optional boolean or 0/1 `[batch, length]`, true for
            tokens.

    Returns:
        `[batch, hidden]`.

    Example:

    ```python
    encoder = kbm.models.BertEncoder.from_checkpoint(
        kbm.models.minilm_l6_v2_path()
    )
    pooled = kbm.models.MeanPooling()(
        encoder.output, padding_mask=encoder.input["padding_mask"]
    )
    sentence_model = keras.Model(encoder.input, pooled)
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, padding_mask=None, mask=None):
        masks = [m for m in (padding_mask, mask) if m is not None]
        combined = None
        for m in masks:
            m = tf.cast(m, tf.bool)
            combined = m if combined is None else tf.logical_and(combined, m)
        return mean_pool(inputs, combined)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return input_shape[:-2] + input_shape[-1:]
