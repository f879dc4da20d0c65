"""`kbm.layers.TokenAndPositionEmbedding`: token + position embeddings."""

import tensorflow as tf

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.backend import keras, register_serializable
from keras_bigmodels.layers.position_embedding import PositionEmbedding


def _clone_initializer(initializer):
    """A fresh initializer with `initializer`'s config (one per weight)."""
    return initializer.__class__.from_config(initializer.get_config())


@register_serializable
class TokenAndPositionEmbedding(keras.layers.Layer):
    """The sum of a token embedding and a learned position embedding.

    Embeds integer token ids of shape `[..., seq]` with a
    `keras.layers.Embedding` (sublayer `token_embedding`) and adds a
    `kbm.layers.PositionEmbedding` (sublayer `position_embedding`), as at
    the bottom of BERT and GPT-2. Constructor arguments, call arguments and
    weights (`token_embedding/embeddings` of shape
    `[vocabulary_size, embedding_dim]`, then `position_embedding/embeddings`
    of shape `[sequence_length, embedding_dim]`) follow
    `keras_hub.layers.TokenAndPositionEmbedding` with `tie_weights=True`, so
    weights copy over with `set_weights`. There is no `tie_weights`
    argument: the token embedding is a plain `Embedding` with no reverse
    projection; a tied output projection is
    `tf.matmul(h, layer.token_embedding.embeddings, transpose_b=True)`.

    With `mask_zero=True` the layer produces a Keras mask (`ids != 0`) that
    later layers receive; a mask already on the inputs is combined with it
    (or passed through when `mask_zero=False`).

    Args:
        vocabulary_size: Number of token ids, a positive integer.
        sequence_length: The largest number of positions, a positive
            integer.
        embedding_dim: Size of each embedding vector, a positive integer.
        embeddings_initializer: Initializer of both embeddings (each gets
            its own copy). Defaults to `"uniform"`.
        mask_zero: Whether token id 0 is padding, to be masked out. Defaults
            to `False`.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: Integer token ids of shape `[..., seq]`, with
            `seq <= sequence_length`.
        start_index: An integer or scalar integer tensor, the position of
            the first token (for decoding with a cache). Defaults to `0`.
        positions: Optional integer tensor of shape `[seq]` or
            `[batch, seq]` with the position of each token; replaces
            `start_index`. Defaults to `None`.

    Returns:
        A tensor of shape `inputs.shape + (embedding_dim,)` in the layer's
        compute dtype.

    Example:

    ```python
    embed = kbm.layers.TokenAndPositionEmbedding(
        vocabulary_size=30522,
        sequence_length=512,
        embedding_dim=768,
        mask_zero=True,
    )
    x = embed(token_ids)            # token_ids: [batch, seq] int32
    ```

    Reference:
    - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        embeddings_initializer="uniform",
        mask_zero=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = check_positive_int(
            "vocabulary_size", vocabulary_size
        )
        self.sequence_length = check_positive_int(
            "sequence_length", sequence_length
        )
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        if not isinstance(mask_zero, bool):
            raise ValueError(
                f"mask_zero must be True or False. Received: "
                f"mask_zero={mask_zero!r}"
            )
        self.mask_zero = mask_zero
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer
        )
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.embedding_dim,
            embeddings_initializer=_clone_initializer(
                self.embeddings_initializer
            ),
            mask_zero=mask_zero,
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            self.sequence_length,
            initializer=_clone_initializer(self.embeddings_initializer),
            dtype=self.dtype_policy,
            name="position_embedding",
        )
        self.supports_masking = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not input_shape:
            raise ValueError(
                "TokenAndPositionEmbedding needs token ids of shape "
                f"[..., seq]. Received: input_shape={input_shape}"
            )
        # Positions first: a too-long input fails before any weight exists.
        # The name scopes give tf-keras variables their sublayer's name.
        with tf.name_scope(self.position_embedding.name):
            self.position_embedding.build(input_shape + (self.embedding_dim,))
        with tf.name_scope(self.token_embedding.name):
            self.token_embedding.build(input_shape)
        self.built = True

    def call(self, inputs, start_index=0, positions=None):
        tokens = self.token_embedding(inputs)
        return tokens + self.position_embedding(
            tokens, start_index=start_index, positions=positions
        )

    def compute_mask(self, inputs, mask=None):
        token_mask = self.token_embedding.compute_mask(inputs)
        if token_mask is None:
            return mask
        if mask is None:
            return token_mask
        return token_mask & mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "sequence_length": self.sequence_length,
            "embedding_dim": self.embedding_dim,
            "embeddings_initializer": keras.initializers.serialize(
                self.embeddings_initializer
            ),
            "mask_zero": self.mask_zero,
        }
