"""`kbm.layers.MultiHeadAttention`: Keras's MultiHeadAttention, flash."""

import math

from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    get_keras_mask,
    keras,
    register_serializable,
    set_keras_mask,
)
from keras_bigmodels.layers._attention_core import (
    combine_key_masks,
    fused_mode,
    try_flash_attention,
)
from keras_bigmodels.layers.rotary_embedding import apply_rotary_embedding


@register_serializable
class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """Multi-head attention with a fused flash-attention kernel.

    A drop-in replacement for `keras.layers.MultiHeadAttention` of the Keras
    line in use: same constructor arguments, same call signature, same
    weights (query/key/value/output `EinsumDense` kernels and biases), so
    `layer.set_weights(keras_layer.get_weights())` gives the same outputs.

    The attention itself runs `kbm.ops.flash_attention` (a tiled CPU kernel
    whose memory grows linearly with the sequence length) when the call
    allows it: default `attention_axes`, key padding masks (from Keras
    masking, `value`/`key` masks, or an `attention_mask` of shape
    `[batch, 1, key_length]`), `use_causal_mask=True`, no attention scores
    requested, and no dropout in training. Other calls (a general
    `[batch, query, key]` `attention_mask`, `return_attention_scores=True`,
    dropout while training, `sliding_window`, other attention axes) run
    Keras's own computation. With `flash_attention=None` (the default) the
    layer decides per call; `True` requires the kernel (a `ValueError` says
    why it cannot run), `False` always uses Keras's computation. The choice
    is never saved in the config.

    Differences from Keras: a query whose keys are all masked gets zeros
    (Keras averages all values); outputs at masked query positions are not
    meaningful in either (the output carries the query mask).

    Args:
        num_heads: Number of attention heads.
        key_dim: Size of each head for query and key.
        value_dim: Size of each head for value. Defaults to `key_dim`.
        dropout: Dropout rate on the attention probabilities. Defaults to
            `0.0`.
        flash_attention: `None`, `True` or `False`, as described above.
            Defaults to `None`.
        rope_max_wavelength: If set, rotary position embeddings with this
            maximum wavelength are applied to the projected queries and keys
            (`kbm.layers.RotaryEmbedding`). Defaults to `None`.
        rope_scaling_factor: Position scaling of the rotary embedding.
            Defaults to `1.0`.
        **kwargs: Every other argument of `keras.layers.MultiHeadAttention`
            (`use_bias`, `output_shape`, `attention_axes`, initializers,
            regularizers, constraints, and on Keras 3 `use_gate`,
            `sliding_window`, `seed`).

    Call arguments:
        query: `[batch, target_length, dim]`.
        value: `[batch, source_length, dim]`.
        key: Optional `[batch, source_length, dim]`; defaults to `value`.
        attention_mask: Optional boolean `[batch, target_length,
            source_length]` (or `[batch, 1, source_length]`).
        return_attention_scores: Also return the attention probabilities.
        training: Whether dropout is active.
        use_causal_mask: Mask future positions (query `i` sees keys
            `j <= i`).

    Returns:
        `[batch, target_length, dim]` (and the scores if requested).

    Example:

    ```python
    mha = kbm.layers.MultiHeadAttention(num_heads=12, key_dim=64)
    y = mha(x, x, use_causal_mask=True)
    ```

    Reference:
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    - [Dao, 2023](https://arxiv.org/abs/2307.08691)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        *args,
        flash_attention=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        **kwargs,
    ):
        if flash_attention not in (None, True, False):
            raise ValueError(
                "flash_attention must be None, True or False. "
                f"Received: flash_attention={flash_attention!r}"
            )
        if rope_max_wavelength is not None and rope_max_wavelength <= 0:
            raise ValueError(
                "rope_max_wavelength must be positive or None. Received: "
                f"rope_max_wavelength={rope_max_wavelength}"
            )
        if not IS_LEGACY_KERAS:
            kwargs["flash_attention"] = flash_attention
        super().__init__(num_heads, key_dim, *args, **kwargs)
        if IS_LEGACY_KERAS and flash_attention and self._dropout > 0:
            raise ValueError(
                "Dropout is not supported when flash attention is enabled. "
                "Please set dropout to 0.0 to use flash attention."
            )
        self._kbm_flash = flash_attention
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.supports_jit = False

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        if IS_LEGACY_KERAS:
            if any(hasattr(t, "to_tensor") for t in (query, value, key)):
                # Ragged inputs: tf-keras's own path handles them.
                return super().call(
                    query,
                    value,
                    key,
                    attention_mask,
                    return_attention_scores,
                    training,
                    use_causal_mask,
                )
            if not self._built_from_signature:
                self._build_from_signature(query=query, value=value, key=key)
            query_mask = get_keras_mask(query)
            value_mask = get_keras_mask(value)
            key_mask = get_keras_mask(key) if key is not None else None
        if key is None:
            key = value
            key_mask = None
        padding = combine_key_masks(value_mask, key_mask)
        if not IS_LEGACY_KERAS:
            for t in (query, value, key):
                set_keras_mask(t, None)

        gate = (
            self._gate_dense(query)
            if getattr(self, "_use_gate", False)
            else None
        )
        q = self._query_dense(query)
        k = self._key_dense(key)
        v = self._value_dense(value)
        if self.rope_max_wavelength:
            q, k = (
                apply_rotary_embedding(
                    t,
                    max_wavelength=self.rope_max_wavelength,
                    scaling_factor=self.rope_scaling_factor,
                )
                for t in (q, k)
            )

        unsupported = None
        if len(self._attention_axes) != 1 or q.shape.rank != 4:
            unsupported = "attention_axes other than the sequence axis"
        elif getattr(self, "_sliding_window", None) is not None:
            unsupported = "sliding_window"
        output = try_flash_attention(
            type(self).__name__,
            fused_mode(self._kbm_flash),
            q,
            k,
            v,
            key_mask=padding,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            scale=1.0 / math.sqrt(float(self._key_dim)),
            dropout=self._dropout,
            training=training,
            return_attention_scores=return_attention_scores,
            other_reason=unsupported,
        )
        scores = None
        if output is None:
            output, scores = self._keras_attention(
                query,
                value,
                key,
                q,
                k,
                v,
                query_mask,
                value_mask,
                key_mask,
                attention_mask,
                training,
                return_attention_scores,
                use_causal_mask,
            )
        if gate is not None:
            output = output * gate
        output = self._output_dense(output)
        if not IS_LEGACY_KERAS and query_mask is not None:
            set_keras_mask(output, query_mask)
        if return_attention_scores:
            return output, scores
        return output

    def _keras_attention(
        self,
        query,
        value,
        key,
        q,
        k,
        v,
        query_mask,
        value_mask,
        key_mask,
        attention_mask,
        training,
        return_attention_scores,
        use_causal_mask,
    ):
        """Keras's own masks and attention on the projected q, k, v."""
        if IS_LEGACY_KERAS:
            mask = self._compute_attention_mask(
                query,
                value,
                key=key,
                attention_mask=attention_mask,
                use_causal_mask=use_causal_mask,
            )
            return self._compute_attention(q, k, v, mask, training)
        mask = self._compute_attention_mask(
            query,
            value,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
        )
        return self._compute_attention(
            q, k, v, mask, training, return_attention_scores
        )

    def get_config(self):
        config = super().get_config()
        config.pop("flash_attention", None)
        if self.rope_max_wavelength is not None:
            config["rope_max_wavelength"] = self.rope_max_wavelength
            config["rope_scaling_factor"] = self.rope_scaling_factor
        return config
