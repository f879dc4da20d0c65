"""`kbm.layers.TransformerDecoder`: one decoder block on fused kernels."""

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
class TransformerDecoder(TransformerBlock):
    """A transformer decoder block: causal self-attention, optional
    cross-attention to an encoder sequence, and a feed-forward net.

    Same building blocks, arguments and normalisation placement as
    `kbm.layers.TransformerEncoder`. Self-attention is causal (query `i`
    sees positions `j <= i`) through the flash kernel's causal mode, with
    the decoder's padding mask (argument or Keras mask) on the keys.
    Cross-attention (created when the block is first built or called with
    an `encoder_sequence`) masks the encoder's padding the same way. Without
    an `encoder_sequence` the block is a decoder-only (GPT-style) block.

    Args:
        intermediate_dim: Width of the feed-forward hidden layer.
        num_heads: Number of attention (query) heads.
        num_key_value_heads: Key/value heads (grouped-query attention);
            `None` means `num_heads`. Defaults to `None`.
        dropout: Dropout after attention and feed-forward, and on the
            attention probabilities. Defaults to `0.0`.
        attention_dropout: Dropout on the attention probabilities when
            it should differ from `dropout` (None: `dropout`); it runs
            inside the fused attention kernel. Defaults to `None`.
        activation: `"gelu"`, `"gelu_tanh"`, `"relu"` or `"swiglu"`.
            Defaults to `"gelu"`.
        norm: `"layer"` or `"rms"`. Defaults to `"layer"`.
        norm_first: Pre-LN when True. Defaults to `False`.
        layer_norm_epsilon: Defaults to `1e-5`.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.
        rope_max_wavelength: Rotary position embeddings in self-attention.
            Defaults to `None`.
        flash_attention: `None`, `True` or `False`. Defaults to `None`.
        head_dim: Size of each attention head; `None` means the model
            width divided by `num_heads`. Set it when `num_heads * head_dim`
            differs from the width (a block whose heads were pruned).
            Defaults to `None`.
        **kwargs: Base layer arguments.

    Call arguments:
        decoder_sequence: `[batch, target_length, hidden]`.
        encoder_sequence: Optional `[batch, source_length, hidden]`.
        decoder_padding_mask: Optional boolean `[batch, target_length]`.
        encoder_padding_mask: Optional boolean `[batch, source_length]`.
        training: Whether dropout is active.
        use_causal_mask: Causal self-attention. Defaults to `True`.

    Returns:
        `[batch, target_length, hidden]`.

    Example:

    ```python
    block = kbm.layers.TransformerDecoder(intermediate_dim=2048, num_heads=8)
    y = block(target_embeddings, encoder_outputs)
    ```

    Reference:
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cross_attention = None

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        hidden = decoder_sequence_shape[-1]
        self._hidden = hidden
        dtype = self.dtype_policy
        self._self_attention = make_attention(
            hidden,
            self.num_heads,
            self.num_key_value_heads,
            self._attention_rate(),
            self._initializers(),
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
            self,
            hidden,
            self.intermediate_dim,
            self.activation,
            self._initializers(),
            dtype,
        )
        self._ffn_norm = make_norm(
            self.norm, self.layer_norm_epsilon, "feedforward_norm", dtype
        )
        self._ffn_dropout = FusedDropout(self.dropout, dtype=dtype)
        shape = tuple(decoder_sequence_shape)
        build_attention(self._self_attention, shape, shape)
        self._self_attention_norm.build(shape)
        if encoder_sequence_shape is not None:
            self._build_cross_attention(shape, tuple(encoder_sequence_shape))
        self._ffn.build(shape, self.intermediate_dim)
        self._ffn_norm.build(shape)
        self.built = True
        resolve_sublayer_dtype_policies(self)

    def _build_cross_attention(self, decoder_shape, encoder_shape):
        dtype = self.dtype_policy
        self._cross_attention = make_attention(
            self._hidden,
            self.num_heads,
            self.num_key_value_heads,
            self._attention_rate(),
            self._initializers(),
            "cross_attention",
            dtype,
            None,
            self._flash,
            self.head_dim,
        )
        self._cross_attention_norm = make_norm(
            self.norm, self.layer_norm_epsilon, "cross_attention_norm", dtype
        )
        self._cross_attention_dropout = FusedDropout(self.dropout, dtype=dtype)
        build_attention(self._cross_attention, decoder_shape, encoder_shape)
        self._cross_attention_norm.build(decoder_shape)

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        training=None,
        use_causal_mask=True,
    ):
        self_mask = padding_to_attention_mask(
            decoder_sequence, decoder_padding_mask
        )
        x = residual_block(
            self.norm_first,
            decoder_sequence,
            lambda h: self._self_attention(
                h,
                h,
                attention_mask=self_mask,
                use_causal_mask=use_causal_mask,
                training=training,
            ),
            self._self_attention_norm,
            self._self_attention_dropout,
            training,
        )
        if encoder_sequence is not None:
            if self._cross_attention is None:
                self._build_cross_attention(
                    tuple(decoder_sequence.shape), tuple(encoder_sequence.shape)
                )
            cross_mask = padding_to_attention_mask(
                encoder_sequence, encoder_padding_mask
            )
            x = residual_block(
                self.norm_first,
                x,
                lambda h: self._cross_attention(
                    h,
                    encoder_sequence,
                    attention_mask=cross_mask,
                    training=training,
                ),
                self._cross_attention_norm,
                self._cross_attention_dropout,
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

    def compute_output_shape(
        self, decoder_sequence_shape, encoder_sequence_shape=None
    ):
        return decoder_sequence_shape
