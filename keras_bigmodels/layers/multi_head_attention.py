"""`kbm.layers.MultiHeadAttention`: Keras's MultiHeadAttention, flash."""

import math

import tensorflow as tf

from keras_bigmodels._validation import (
    check_positive_int,
    check_positive_number,
    check_rate,
)
from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    get_keras_mask,
    keras,
    register_serializable,
    resolve_sublayer_dtype_policies,
    set_keras_mask,
    with_sublayer_dtype_policies,
)
from keras_bigmodels.layers._attention_core import (
    attention,
    combine_masks,
    fused_mode,
    keras_attention_mask,
)
from keras_bigmodels.layers._projections import (
    project,
    project_output,
)
from keras_bigmodels.layers.rotary_embedding import apply_rotary_embedding


def _check_dim(name, value):
    """A positive int, with Keras 3's wording (on both Keras lines)."""
    try:
        check_positive_int(name, value)
    except ValueError:
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"positive integer. Received: {name}={value!r}"
        ) from None


def _check_optional_args(args, kwargs):
    """Checks `value_dim` and `dropout`, given by keyword or position (the
    third and fourth arguments of Keras's MultiHeadAttention)."""
    named = dict(zip(("value_dim", "dropout"), args))
    named.update(
        {k: kwargs[k] for k in ("value_dim", "dropout") if k in kwargs}
    )
    if named.get("value_dim") is not None:
        _check_dim("value_dim", named["value_dim"])
    if "dropout" in named:
        check_rate("dropout", named["dropout"])


@register_serializable
class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """Multi-head attention with a fused flash-attention kernel.

    A drop-in replacement for `keras.layers.MultiHeadAttention` of the Keras
    line in use: same constructor arguments, same call signature, same
    weights (query/key/value/output `EinsumDense` kernels and biases), so
    `layer.set_weights(keras_layer.get_weights())` gives the same outputs.

    The attention itself lives in `_compute_attention` (the override point
    Keras documents: a subclass's override replaces it) and runs
    `kbm.ops.flash_attention`, a tiled CPU kernel whose memory grows
    linearly with the sequence length, for every Keras mask (query, value
    and key masks, `attention_mask` of shape `[T, S]` or `[B, T, S]`,
    `use_causal_mask`, `sliding_window`) and with attention dropout while
    training (a Philox stream seeded from the layer's `Dropout`, regenerated
    in the backward pass). `return_attention_scores=True` and attention
    over several axes run the op's reference. With `flash_attention=None`
    (the default) the layer decides per call; `True` requires the kernel (a
    `ValueError` says why it cannot run), `False` always uses the
    reference. The choice is never saved in the config.

    Differences from Keras: a query whose keys are all masked (a masked
    query row) gets a zero attention output (Keras averages all values);
    the output carries the query mask.

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
            source_length]`, `[target_length, source_length]` or
            `[batch, 1, source_length]`.
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
        _check_dim("num_heads", num_heads)
        _check_dim("key_dim", key_dim)
        _check_optional_args(args, kwargs)
        check_positive_number(
            "rope_max_wavelength", rope_max_wavelength, allow_none=True
        )
        check_positive_number("rope_scaling_factor", rope_scaling_factor)
        super().__init__(num_heads, key_dim, *args, **kwargs)
        if not IS_LEGACY_KERAS:
            # Keras's attribute; the kernel supports dropout, so Keras's
            # "dropout with flash attention" error does not apply.
            self._flash_attention = flash_attention
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
            value_mask = get_keras_mask(value)
            key_mask = get_keras_mask(key) if key is not None else None
        query_mask = get_keras_mask(query)
        if key is None:
            key = value
        if key is value:
            key_mask = None
        if not IS_LEGACY_KERAS:
            for t in (query, value, key):
                set_keras_mask(t, None)

        # As in Keras: causal masking alone reaches `_compute_attention` as
        # a flag (the kernel's causal path), unless a subclass overrides
        # `_compute_attention` with the signature that lacks it.
        overridden = (
            type(self)._compute_attention
            is not MultiHeadAttention._compute_attention
        )
        causal_only = (
            use_causal_mask
            and query_mask is None
            and value_mask is None
            and key_mask is None
            and attention_mask is None
            and getattr(self, "_sliding_window", None) is None
            and not overridden
        )
        if causal_only:
            attention_mask = None
        else:
            attention_mask = keras_attention_mask(
                query,
                key,
                query_mask=query_mask,
                value_mask=value_mask,
                key_mask=key_mask,
                attention_mask=attention_mask,
                use_causal_mask=use_causal_mask,
                sliding_window=getattr(self, "_sliding_window", None),
            )

        gate = (
            self._gate_dense(query)
            if getattr(self, "_use_gate", False)
            else None
        )
        q, k, v = project(
            (self._query_dense, self._key_dense, self._value_dense),
            query,
            key,
            value,
        )
        if self.rope_max_wavelength:
            q, k = (
                apply_rotary_embedding(
                    t,
                    max_wavelength=self.rope_max_wavelength,
                    scaling_factor=self.rope_scaling_factor,
                )
                for t in (q, k)
            )
        extra = {"use_causal_mask": True} if causal_only else {}
        if IS_LEGACY_KERAS:
            # tf-keras's signature has no return_attention_scores: pass it
            # only to this class's own method.
            if not overridden:
                extra["return_attention_scores"] = return_attention_scores
            output, scores = self._compute_attention(
                q, k, v, attention_mask, training, **extra
            )
        else:
            output, scores = self._compute_attention(
                q,
                k,
                v,
                attention_mask,
                training,
                return_attention_scores,
                **extra,
            )
        if gate is not None:
            output = output * gate
        output = project_output(self._output_dense, output)
        if not IS_LEGACY_KERAS and query_mask is not None:
            set_keras_mask(output, query_mask)
        if return_attention_scores:
            return output, scores
        return output

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Attention of the projected query, key and value.

        The override point Keras documents: a subclass may replace it with
        its own attention. This one runs `kbm.ops.flash_attention` (kernel,
        or its reference where no kernel applies), dropout included.

        Args:
            query: `[B, T, N, key_dim]`.
            key: `[B, S, N, key_dim]`.
            value: `[B, S, N, value_dim]`.
            attention_mask: Boolean `[B, T, S]` (True = attend), or None.
            training: Whether dropout is active.
            return_attention_scores: Also return the probabilities (they
                come from the op's reference).
            use_causal_mask: Also mask future keys (query `i` sees `j <=
                i`).

        Returns:
            `(output [B, T, N, value_dim], scores [B, N, T, S] or None)`.
        """
        query, key, value = (
            tf.convert_to_tensor(t) for t in (query, key, value)
        )
        if len(self._attention_axes) != 1 or query.shape.rank != 4:
            return self._general_axes_attention(
                query,
                key,
                value,
                attention_mask,
                training,
                bool(return_attention_scores),
                use_causal_mask,
            )
        return attention(
            type(self).__name__,
            fused_mode(self._kbm_flash),
            query,
            key,
            value,
            mask=attention_mask,
            use_causal_mask=use_causal_mask,
            scale=1.0 / math.sqrt(float(self._key_dim)),
            dropout=self._dropout,
            dropout_layer=self._dropout_layer,
            training=training,
            return_attention_scores=bool(return_attention_scores),
        )

    def _general_axes_attention(
        self,
        query,
        key,
        value,
        attention_mask,
        training,
        return_attention_scores,
        use_causal_mask,
    ):
        """Keras's einsum attention, for `attention_axes` over several axes.

        The flash op covers one sequence axis; attention over several axes
        (images, videos) runs Keras's equations with a masked softmax.
        """
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = combine_masks(attention_mask, causal)
        query = query * tf.cast(
            1.0 / math.sqrt(float(self._key_dim)), query.dtype
        )
        scores = tf.einsum(self._dot_product_equation, key, query)
        scores = self._masked_softmax(scores, attention_mask)
        dropped = self._dropout_layer(scores, training=training)
        output = tf.einsum(self._combine_equation, dropped, value)
        return output, scores

    if not IS_LEGACY_KERAS:
        # tf-keras's MultiHeadAttention builds from its first call instead
        # (and has no quantization to resolve).
        def build(self, query_shape, value_shape, key_shape=None):
            super().build(query_shape, value_shape, key_shape)
            resolve_sublayer_dtype_policies(self)

    def get_config(self):
        config = super().get_config()
        config.pop("flash_attention", None)
        if self.rope_max_wavelength is not None:
            config["rope_max_wavelength"] = self.rope_max_wavelength
            config["rope_scaling_factor"] = self.rope_scaling_factor
        return with_sublayer_dtype_policies(self, config)
