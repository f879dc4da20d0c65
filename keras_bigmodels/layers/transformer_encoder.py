"""`kbm.layers.TransformerEncoder`: one encoder block on fused kernels."""

import tensorflow as tf

from keras_bigmodels.backend import (
    register_serializable,
    resolve_sublayer_dtype_policies,
)
from keras_bigmodels.layers._dropout import FusedDropout
from keras_bigmodels.layers._transformer_parts import (
    FeedForward,
    TransformerBlock,
    build_attention,
    make_attention,
    make_norm,
    padding_to_attention_mask,
    residual_block,
)


@register_serializable
class TransformerEncoder(TransformerBlock):
    """A transformer encoder block: self-attention and a feed-forward net.

    Built from the fused layers: `kbm.layers.MultiHeadAttention` (or
    `GroupedQueryAttention` when `num_key_value_heads < num_heads`) with the
    flash-attention kernel, `kbm.layers.LayerNormalization` or
    `RMSNormalization`, and `kbm.layers.FusedDense` whose bias + GELU runs
    as one kernel. Post-LN (BERT: `x = norm(x + sublayer(x))`) or pre-LN
    (`x = x + sublayer(norm(x))`).

    Padding masks propagate: the block reads the Keras mask of its input (for
    example from `TokenAndPositionEmbedding(mask_zero=True)`) and/or the
    `padding_mask` call argument, masks those keys in attention (in the
    kernel), and returns the input's mask with its output.

    Args:
        intermediate_dim: Width of the feed-forward hidden layer.
        num_heads: Number of attention (query) heads; the model width must
            be a multiple of it.
        num_key_value_heads: Key/value heads for grouped-query attention;
            `None` means `num_heads`. Defaults to `None`.
        dropout: Dropout after attention and feed-forward, and on the
            attention probabilities. Defaults to `0.0`.
        attention_dropout: Dropout on the attention probabilities when
            it should differ from `dropout` (None: `dropout`); it runs
            inside the fused attention kernel. Defaults to `None`.
        activation: `"gelu"`, `"gelu_tanh"`, `"relu"` or `"swiglu"`.
            Defaults to `"gelu"`.
        norm: `"layer"` or `"rms"`. Defaults to `"layer"`.
        norm_first: Pre-LN when True, post-LN when False. Defaults to
            `False`.
        layer_norm_epsilon: Epsilon of the normalisation layers. Defaults to
            `1e-5`.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.
        rope_max_wavelength: Apply rotary position embeddings in attention.
            Defaults to `None`.
        flash_attention: `None` (kernel when possible), `True` or `False`.
            Defaults to `None`.
        head_dim: Size of each attention head; `None` means the model
            width divided by `num_heads`. Set it when `num_heads * head_dim`
            differs from the width (a block whose heads were pruned).
            Defaults to `None`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, length, hidden]`.
        padding_mask: Optional boolean `[batch, length]`, True for tokens.
        attention_mask: Optional boolean `[batch, length, length]` (runs
            the reference attention unless it only masks keys).
        training: Whether dropout is active.

    Returns:
        `[batch, length, hidden]`.

    Example:

    ```python
    block = kbm.layers.TransformerEncoder(intermediate_dim=3072, num_heads=12)
    y = block(x, padding_mask=mask)
    ```

    Reference:
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    - [Xiong et al., 2020](https://arxiv.org/abs/2002.04745) (pre-LN)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ffn = None

    def build(self, inputs_shape):
        hidden = inputs_shape[-1]
        dtype = self.dtype_policy
        common = self._initializers()
        self._self_attention = make_attention(
            hidden,
            self.num_heads,
            self.num_key_value_heads,
            self._attention_rate(),
            common,
            "self_attention",
            dtype,
            self.rope_max_wavelength,
            self._flash,
            self.head_dim,
        )
        self._self_attention_norm = make_norm(
            self.norm, self.layer_norm_epsilon, "self_attention_norm", dtype
        )
        self._self_attention_dropout = FusedDropout(self.dropout, dtype=dtype)
        self._ffn = FeedForward(
            self, hidden, self.intermediate_dim, self.activation, common, dtype
        )
        self._ffn_norm = make_norm(
            self.norm, self.layer_norm_epsilon, "feedforward_norm", dtype
        )
        self._ffn_dropout = FusedDropout(self.dropout, dtype=dtype)
        shape = tuple(inputs_shape)
        build_attention(self._self_attention, shape, shape)
        self._self_attention_norm.build(shape)
        self._ffn.build(shape, self.intermediate_dim)
        self._ffn_norm.build(shape)
        self.built = True
        resolve_sublayer_dtype_policies(self)

    def call(
        self, inputs, padding_mask=None, attention_mask=None, training=None
    ):
        key_mask = padding_to_attention_mask(inputs, padding_mask)
        if attention_mask is not None and key_mask is not None:
            attention_mask = tf.logical_and(
                tf.cast(attention_mask, tf.bool), key_mask
            )
        elif key_mask is not None:
            attention_mask = key_mask
        x = residual_block(
            self.norm_first,
            inputs,
            lambda h: self._self_attention(
                h, h, attention_mask=attention_mask, training=training
            ),
            self._self_attention_norm,
            self._self_attention_dropout,
            training,
        )
        return residual_block(
            self.norm_first,
            x,
            self._ffn,
            self._ffn_norm,
            self._ffn_dropout,
            training,
        )

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
