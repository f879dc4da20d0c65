"""`kbm.layers.PositionEmbedding`: a learned position embedding."""

import tensorflow as tf

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.backend import keras, register_serializable


@register_serializable
class PositionEmbedding(keras.layers.Layer):
    """A learned position embedding, as in BERT and GPT-2.

    Holds one trainable vector per position (`embeddings`, of shape
    `[sequence_length, hidden]`) and returns, for inputs of shape
    `[..., seq, hidden]`, the vectors of positions
    `start_index, ..., start_index + seq - 1` broadcast to the inputs'
    shape. Only the inputs' shape is used: the layer returns the position
    embeddings and does not add them to the inputs (add them yourself, or
    use `kbm.layers.TokenAndPositionEmbedding`). Inputs may be shorter than
    `sequence_length`. Same constructor arguments, weight and call contract
    as `keras_hub.layers.PositionEmbedding`, so weights copy over with
    `set_weights`.

    A Keras mask on the inputs passes through unchanged (the output has the
    inputs' positions).

    Args:
        sequence_length: The largest number of positions, a positive
            integer.
        initializer: Initializer of the embeddings. Defaults to
            `"glorot_uniform"`.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: A tensor of shape `[..., seq, hidden]`; only its shape is
            used.
        start_index: An integer or scalar integer tensor, the position of
            the first element of the sequence (for example the cache length
            while decoding one token at a time). Defaults to `0`.
        positions: Optional integer tensor of shape `[seq]` or
            `[batch, seq]` (inputs `[batch, seq, hidden]`) with the position
            of each element, in `[0, sequence_length)`; replaces
            `start_index`. Defaults to `None`.

    Returns:
        The position embeddings, of the inputs' shape, in the layer's
        compute dtype.

    Example:

    ```python
    tokens = keras.layers.Embedding(30522, 768)(token_ids)
    positions = kbm.layers.PositionEmbedding(sequence_length=512)(tokens)
    x = tokens + positions
    ```

    Reference:
    - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = check_positive_int(
            "sequence_length", sequence_length
        )
        self.initializer = keras.initializers.get(initializer)
        self.supports_masking = True

    def _check_length(self, seq, start_index=0):
        """A `ValueError` if `seq` positions from `start_index` do not fit."""
        if isinstance(start_index, int) and start_index < 0:
            raise ValueError(
                f"start_index must be >= 0. Received: start_index={start_index}"
            )
        if seq is None or not isinstance(start_index, int):
            return
        if start_index + seq > self.sequence_length:
            raise ValueError(
                f"PositionEmbedding '{self.name}' has "
                f"sequence_length={self.sequence_length} positions, but the "
                f"inputs need positions {start_index} to "
                f"{start_index + seq - 1}. Received: sequence length {seq} "
                f"with start_index={start_index}"
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "PositionEmbedding needs inputs of shape [..., seq, hidden] "
                "with a known hidden size. Received: "
                f"input_shape={input_shape}"
            )
        self._check_length(input_shape[-2])
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs, start_index=0, positions=None):
        embeddings = tf.cast(
            tf.convert_to_tensor(self.embeddings), self.compute_dtype
        )
        shape = tf.shape(inputs)
        if positions is not None:
            positions = tf.convert_to_tensor(positions)
            if positions.shape.rank not in (1, 2):
                raise ValueError(
                    "positions must have shape [seq] or [batch, seq]. "
                    f"Received: positions.shape={positions.shape}"
                )
            outputs = tf.gather(embeddings, tf.cast(positions, tf.int32))
        else:
            seq = inputs.shape[-2]
            self._check_length(seq, start_index)
            checks = []
            if seq is None or not isinstance(start_index, int):
                # Dynamic length or start: check at run time, before the
                # slice (in a graph, an independent check may run after
                # the slice has already failed with a vaguer message).
                checks.append(
                    tf.debugging.assert_less_equal(
                        tf.cast(start_index, tf.int32) + shape[-2],
                        self.sequence_length,
                        message=(
                            f"PositionEmbedding '{self.name}': start_index"
                            " + sequence length exceeds sequence_length="
                            f"{self.sequence_length}"
                        ),
                    )
                )
            with tf.control_dependencies([c for c in checks if c is not None]):
                begin = tf.stack([tf.cast(start_index, tf.int32), 0])
            outputs = tf.slice(embeddings, begin, [shape[-2], shape[-1]])
        outputs = tf.broadcast_to(outputs, shape)
        outputs.set_shape(inputs.shape)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
        }
