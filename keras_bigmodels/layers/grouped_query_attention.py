"""`kbm.layers.GroupedQueryAttention`: Keras 3's GroupQueryAttention, flash."""

import math

import tensorflow as tf

from keras_bigmodels._validation import (
    check_bool,
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
    fused_mode,
    keras_attention_mask,
)
from keras_bigmodels.layers._projections import project, project_output
from keras_bigmodels.layers.rotary_embedding import apply_rotary_embedding


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{name} must be a positive integer. Received: {name}={value!r}"
        )


@register_serializable
class GroupedQueryAttention(keras.layers.Layer):
    """Grouped-query attention with a fused flash-attention kernel.

    Query heads are split into `num_key_value_heads` groups that share one
    key/value head (Ainslie et al., 2023); `num_key_value_heads=1` is
    multi-query attention. It has the constructor arguments, call signature
    and weights (`query`, `key`, `value`, `attention_output` and, with
    `use_gate`, `gate` einsum projections) of Keras 3's
    `keras.layers.GroupQueryAttention`, so weights copy over with
    `set_weights`; it also works under tf-keras, which has no such layer.

    The attention itself lives in `_compute_attention` (as in Keras: a
    subclass may override it) and runs `kbm.ops.flash_attention` for every
    Keras mask and with attention dropout, as in
    `kbm.layers.MultiHeadAttention`. The shared key/value heads are read in
    place by the kernel (never repeated in memory) unless a subclass
    overrides `_compute_attention`: it then receives them repeated to
    `num_query_heads`, as Keras passes them.

    Args:
        head_dim: Size of each attention head.
        num_query_heads: Number of query heads.
        num_key_value_heads: Number of key/value heads; must divide
            `num_query_heads`.
        dropout: Dropout rate on the attention probabilities. Defaults to
            `0.0`.
        use_bias: Whether the projections have biases. Defaults to `True`.
        sliding_window: If set, each query sees keys within
            `sliding_window - 1` positions. Defaults to `None`.
        flash_attention: `None` (use the kernel when possible), `True`
            (require it) or `False`. Defaults to `None`.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.
        kernel_regularizer: Defaults to `None`.
        bias_regularizer: Defaults to `None`.
        activity_regularizer: Defaults to `None`.
        kernel_constraint: Defaults to `None`.
        bias_constraint: Defaults to `None`.
        use_gate: Multiply the attention output by a sigmoid gate computed
            from the query. Defaults to `False`.
        seed: Seed of the dropout. Defaults to `None`.
        rope_max_wavelength: If set, rotary position embeddings are applied
            to the projected queries and keys. Defaults to `None`.
        rope_scaling_factor: Position scaling of the rotary embedding.
            Defaults to `1.0`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        query: `[batch, target_length, dim]`.
        value: `[batch, source_length, dim]`.
        key: Optional `[batch, source_length, dim]`; defaults to `value`.
        attention_mask: Optional boolean `[batch, target_length,
            source_length]`, `[target_length, source_length]` or
            `[batch, 1, source_length]`.
        return_attention_scores: Also return the attention probabilities
            `[batch, num_query_heads, target_length, source_length]`.
        training: Whether dropout is active.
        use_causal_mask: Mask future positions (query `i` sees keys
            `j <= i`).

    Returns:
        `[batch, target_length, dim]` (and the scores if requested).

    Example:

    ```python
    gqa = kbm.layers.GroupedQueryAttention(
        head_dim=64, num_query_heads=12, num_key_value_heads=4)
    y = gqa(x, x, use_causal_mask=True)
    ```

    Reference:
    - [Ainslie et al., 2023](https://arxiv.org/abs/2305.13245)
    - [Shazeer, 2019](https://arxiv.org/abs/1911.02150)
    """

    def __init__(
        self,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        dropout=0.0,
        use_bias=True,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _positive_int("head_dim", head_dim)
        _positive_int("num_query_heads", num_query_heads)
        _positive_int("num_key_value_heads", num_key_value_heads)
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                "num_query_heads must be a multiple of num_key_value_heads. "
                f"Received: num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        check_rate("dropout", dropout)
        check_positive_number(
            "rope_max_wavelength", rope_max_wavelength, allow_none=True
        )
        check_positive_number("rope_scaling_factor", rope_scaling_factor)
        check_bool("use_bias", use_bias)
        check_bool("use_gate", use_gate)
        if sliding_window is not None:
            _positive_int("sliding_window", sliding_window)
        if flash_attention not in (None, True, False):
            raise ValueError(
                "flash_attention must be None, True or False. "
                f"Received: flash_attention={flash_attention!r}"
            )
        self.head_dim = head_dim
        self.num_query_heads = num_query_heads
        self.num_key_value_heads = num_key_value_heads
        self.dropout = dropout
        self.use_bias = use_bias
        self.sliding_window = sliding_window
        self.use_gate = use_gate
        self.seed = seed
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.activity_regularizer_ = keras.regularizers.get(
            activity_regularizer
        )
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self._flash = flash_attention
        self.supports_masking = True
        self.supports_jit = False
        self._sublayers_built = False

    def _sublayer_kwargs(self):
        def clone(initializer):
            return initializer.__class__.from_config(initializer.get_config())

        return dict(
            kernel_initializer=clone(self.kernel_initializer),
            bias_initializer=clone(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            activity_regularizer=self.activity_regularizer_,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
        )

    def _build_sublayers(self, query_shape, value_shape, key_shape):
        einsum = keras.layers.EinsumDense
        self.feature_dim = query_shape[-1]
        hq, hkv, d = (
            self.num_query_heads,
            self.num_key_value_heads,
            self.head_dim,
        )
        # Created in Keras 3's order, so the weights come in the same order.
        self._query_dense = einsum(
            "bqm,muh->bquh",
            output_shape=(None, hq, d),
            bias_axes="uh" if self.use_bias else None,
            name="query",
            **self._sublayer_kwargs(),
        )
        self._query_dense.build(query_shape)
        self._key_dense = einsum(
            "bkm,mvh->bkvh",
            output_shape=(None, hkv, d),
            bias_axes="vh" if self.use_bias else None,
            name="key",
            **self._sublayer_kwargs(),
        )
        self._key_dense.build(key_shape)
        if self.use_gate:
            self._gate_dense = einsum(
                "bqm,muh->bquh",
                output_shape=(None, hq, d),
                bias_axes="uh" if self.use_bias else None,
                activation="sigmoid",
                name="gate",
                **self._sublayer_kwargs(),
            )
            self._gate_dense.build(query_shape)
        self._value_dense = einsum(
            "bkm,mvh->bkvh",
            output_shape=(None, hkv, d),
            bias_axes="vh" if self.use_bias else None,
            name="value",
            **self._sublayer_kwargs(),
        )
        self._value_dense.build(value_shape)
        self._dropout_layer = keras.layers.Dropout(
            rate=self.dropout, seed=self.seed, dtype=self.dtype_policy
        )
        self._output_dense = einsum(
            "bquh,uhm->bqm",
            output_shape=(None, self.feature_dim),
            bias_axes="m" if self.use_bias else None,
            name="attention_output",
            **self._sublayer_kwargs(),
        )
        self._output_dense.build((None, None, hq, d))
        self._sublayers_built = True

    def build(self, query_shape, value_shape=None, key_shape=None):
        if value_shape is None:
            # tf-keras passes only the first input's shape; the sublayers
            # are built on the first call instead.
            return
        key_shape = value_shape if key_shape is None else key_shape
        self._build_sublayers(query_shape, value_shape, key_shape)
        self.built = True
        resolve_sublayer_dtype_policies(self)

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
        self._return_attention_scores = return_attention_scores
        if IS_LEGACY_KERAS:
            query_mask = get_keras_mask(query)
            value_mask = get_keras_mask(value)
            key_mask = get_keras_mask(key) if key is not None else None
        if key is None:
            key = value
        if key is value:
            key_mask = None
        if not self._sublayers_built:
            self._build_sublayers(query.shape, value.shape, key.shape)

        overridden = (
            type(self)._compute_attention
            is not GroupedQueryAttention._compute_attention
        )
        causal_only = (
            use_causal_mask
            and query_mask is None
            and value_mask is None
            and key_mask is None
            and attention_mask is None
            and self.sliding_window is None
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
                sliding_window=self.sliding_window,
            )

        gate = self._gate_dense(query) if self.use_gate else None
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
        if overridden:
            # Keras hands `_compute_attention` one key/value head per
            # query head.
            group = self.num_query_heads // self.num_key_value_heads
            k = tf.repeat(k, group, axis=2)
            v = tf.repeat(v, group, axis=2)
        extra = {"use_causal_mask": True} if causal_only else {}
        output, scores = self._compute_attention(
            q, k, v, attention_mask=attention_mask, training=training, **extra
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
        use_causal_mask=False,
    ):
        """Attention of the projected query, key and value (override point).

        Args:
            query: `[B, T, num_query_heads, head_dim]`.
            key, value: `[B, S, H, head_dim]`, with `H` `num_key_value_heads`
                or `num_query_heads` (repeated heads).
            attention_mask: Boolean `[B, T, S]` (True = attend), or None.
            training: Whether dropout is active.
            use_causal_mask: Also mask future keys.

        Returns:
            `(output [B, T, num_query_heads, head_dim], scores or None)`;
            scores `[B, num_query_heads, T, S]` when the call asked for
            them.
        """
        query, key, value = (
            tf.convert_to_tensor(t) for t in (query, key, value)
        )
        return attention(
            type(self).__name__,
            fused_mode(self._flash),
            query,
            key,
            value,
            mask=attention_mask,
            use_causal_mask=use_causal_mask,
            scale=1.0 / math.sqrt(float(self.head_dim)),
            dropout=self.dropout,
            dropout_layer=self._dropout_layer,
            training=training,
            return_attention_scores=bool(
                getattr(self, "_return_attention_scores", False)
            ),
        )

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        if key_shape is None:
            key_shape = value_shape
        if query_shape[-1] != value_shape[-1]:
            raise ValueError(
                "The last dimension of `query_shape` and `value_shape` "
                f"must be equal, but are {query_shape[-1]}, "
                f"{value_shape[-1]}. Received: query_shape={query_shape}, "
                f"value_shape={value_shape}"
            )
        if tuple(value_shape[1:-1]) != tuple(key_shape[1:-1]):
            raise ValueError(
                "All dimensions of `value` and `key`, except the last one, "
                f"must be equal. Received: value_shape={value_shape} and "
                f"key_shape={key_shape}"
            )
        return tuple(query_shape)

    def compute_output_spec(
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
        shape = self.compute_output_shape(
            query.shape, value.shape, None if key is None else key.shape
        )
        spec = keras.KerasTensor(shape, dtype=self.compute_dtype)
        if return_attention_scores:
            kv_len = (value if key is None else key).shape[1]
            scores = keras.KerasTensor(
                (query.shape[0], self.num_query_heads, query.shape[1], kv_len),
                dtype=self.compute_dtype,
            )
            return spec, scores
        return spec

    def get_config(self):
        ser = keras.initializers.serialize
        config = {
            **super().get_config(),
            "head_dim": self.head_dim,
            "num_query_heads": self.num_query_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "sliding_window": self.sliding_window,
            "use_gate": self.use_gate,
            "kernel_initializer": ser(self.kernel_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
            "bias_regularizer": keras.regularizers.serialize(
                self.bias_regularizer
            ),
            "activity_regularizer": keras.regularizers.serialize(
                self.activity_regularizer_
            ),
            "kernel_constraint": keras.constraints.serialize(
                self.kernel_constraint
            ),
            "bias_constraint": keras.constraints.serialize(
                self.bias_constraint
            ),
            "seed": self.seed,
        }
        if self.rope_max_wavelength is not None:
            config["rope_max_wavelength"] = self.rope_max_wavelength
            config["rope_scaling_factor"] = self.rope_scaling_factor
        return with_sublayer_dtype_policies(self, config)
