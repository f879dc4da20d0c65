"""Pieces shared by TransformerEncoder and TransformerDecoder."""

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
    with_sublayer_dtype_policies,
)
from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.layers.grouped_query_attention import (
    GroupedQueryAttention,
)
from keras_bigmodels.layers.layer_normalization import LayerNormalization
from keras_bigmodels.layers.multi_head_attention import MultiHeadAttention
from keras_bigmodels.layers.rms_normalization import RMSNormalization

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
NORMS = ("layer", "rms")


def check_block_args(
    intermediate_dim,
    num_heads,
    num_key_value_heads,
    dropout,
    attention_dropout,
    activation,
    norm,
    layer_norm_epsilon,
    norm_first=False,
    rope_max_wavelength=None,
    flash_attention=None,
    head_dim=None,
):
    if head_dim is not None and (
        isinstance(head_dim, bool)
        or not isinstance(head_dim, int)
        or head_dim <= 0
    ):
        raise ValueError(
            f"head_dim must be None or a positive integer. Received: "
            f"head_dim={head_dim!r}"
        )
    for name, value in (
        ("intermediate_dim", intermediate_dim),
        ("num_heads", num_heads),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"{name} must be a positive integer. Received: {name}={value!r}"
            )
    if num_key_value_heads is not None and (
        not isinstance(num_key_value_heads, int)
        or isinstance(num_key_value_heads, bool)
        or num_key_value_heads <= 0
        or num_heads % num_key_value_heads
    ):
        raise ValueError(
            "num_key_value_heads must be None or a positive divisor of "
            f"num_heads ({num_heads}). Received: "
            f"num_key_value_heads={num_key_value_heads!r}"
        )
    check_rate("dropout", dropout)
    check_rate("attention_dropout", attention_dropout, allow_none=True)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {ACTIVATIONS}. "
            f"Received: activation={activation!r}"
        )
    if norm not in NORMS:
        raise ValueError(
            f"norm must be one of {NORMS}. Received: norm={norm!r}"
        )
    check_positive_number("layer_norm_epsilon", layer_norm_epsilon)
    check_bool("norm_first", norm_first)
    check_positive_number(
        "rope_max_wavelength", rope_max_wavelength, allow_none=True
    )
    if flash_attention not in (None, True, False):
        raise ValueError(
            "flash_attention must be None, True or False. "
            f"Received: flash_attention={flash_attention!r}"
        )


def make_norm(norm, epsilon, name, dtype):
    cls = LayerNormalization if norm == "layer" else RMSNormalization
    return cls(epsilon=epsilon, name=name, dtype=dtype)


def make_attention(
    hidden_dim,
    num_heads,
    num_key_value_heads,
    dropout,
    common,
    name,
    dtype,
    rope_max_wavelength,
    flash_attention,
    head_dim=None,
):
    """Self- or cross-attention: MultiHeadAttention, or GroupedQueryAttention
    when there are fewer key/value heads. `common()` gives initializers.
    `head_dim` None means `hidden_dim // num_heads`."""
    if head_dim is None:
        if hidden_dim % num_heads:
            raise ValueError(
                f"The hidden size ({hidden_dim}) must be a multiple of "
                f"num_heads ({num_heads})."
            )
        head_dim = hidden_dim // num_heads
    kwargs = dict(
        dropout=dropout,
        name=name,
        dtype=dtype,
        flash_attention=flash_attention,
        rope_max_wavelength=rope_max_wavelength,
        **common(),
    )
    if num_key_value_heads in (None, num_heads):
        return MultiHeadAttention(
            num_heads=num_heads, key_dim=head_dim, **kwargs
        )
    return GroupedQueryAttention(
        head_dim=head_dim,
        num_query_heads=num_heads,
        num_key_value_heads=num_key_value_heads,
        **kwargs,
    )


class FeedForward:
    """The position-wise feed-forward network of a block (not a layer: its
    Dense sublayers are attributes of the block, so weights keep the block's
    names)."""

    def __init__(
        self, block, hidden_dim, intermediate_dim, activation, common, dtype
    ):
        self.activation = activation
        if activation == "swiglu":
            # One projection to 2 * intermediate_dim: silu(a) * b.
            block._ffn_intermediate = FusedDense(
                2 * intermediate_dim,
                name="feedforward_intermediate_dense",
                dtype=dtype,
                **common(),
            )
        else:
            block._ffn_intermediate = FusedDense(
                intermediate_dim,
                activation=activation,
                name="feedforward_intermediate_dense",
                dtype=dtype,
                **common(),
            )
        block._ffn_output = FusedDense(
            hidden_dim,
            name="feedforward_output_dense",
            dtype=dtype,
            **common(),
        )
        self.block = block

    def build(self, input_shape, intermediate_dim):
        self.block._ffn_intermediate.build(input_shape)
        self.block._ffn_output.build(
            tuple(input_shape[:-1]) + (intermediate_dim,)
        )

    def __call__(self, x):
        h = self.block._ffn_intermediate(x)
        if self.activation == "swiglu":
            a, b = tf.split(h, 2, axis=-1)
            h = tf.nn.silu(a) * b
        return self.block._ffn_output(h)


def padding_to_attention_mask(inputs, padding_mask):
    """[B, 1, S] key mask from `padding_mask` and/or the Keras mask."""
    masks = [m for m in (padding_mask, get_keras_mask(inputs)) if m is not None]
    if not masks:
        return None
    mask = tf.cast(masks[0], tf.bool)
    for m in masks[1:]:
        mask = tf.logical_and(mask, tf.cast(m, tf.bool))
    return mask[:, None, :]


def initializer_factory(kernel_initializer, bias_initializer):
    """A function returning fresh copies of the initializers per sublayer."""
    kernel = keras.initializers.get(kernel_initializer)
    bias = keras.initializers.get(bias_initializer)

    def clone(initializer):
        return initializer.__class__.from_config(initializer.get_config())

    return lambda: dict(
        kernel_initializer=clone(kernel), bias_initializer=clone(bias)
    )


def residual_block(norm_first, x, sublayer, norm, dropout, training):
    """`norm(x + sublayer(x))` (post-LN) or `x + sublayer(norm(x))`."""
    residual = x
    if norm_first:
        x = norm(x)
    x = residual + dropout(sublayer(x), training=training)
    if not norm_first:
        x = norm(x)
    return x


def build_attention(layer, query_shape, value_shape):
    """Builds an attention sublayer's weights now (Keras 3 needs a parent's
    build() to create all child state, for loading)."""
    if IS_LEGACY_KERAS and isinstance(layer, keras.layers.MultiHeadAttention):
        layer._build_from_signature(query=query_shape, value=value_shape)
        layer.built = True
    else:
        layer.build(query_shape, value_shape)


class TransformerBlock(keras.layers.Layer):
    """The constructor, attributes and config shared by the encoder and
    decoder blocks (their docstrings document the arguments)."""

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        num_key_value_heads=None,
        dropout=0.0,
        attention_dropout=None,
        activation="gelu",
        norm="layer",
        norm_first=False,
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        rope_max_wavelength=None,
        flash_attention=None,
        head_dim=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_block_args(
            intermediate_dim,
            num_heads,
            num_key_value_heads,
            dropout,
            attention_dropout,
            activation,
            norm,
            layer_norm_epsilon,
            norm_first,
            rope_max_wavelength,
            flash_attention,
            head_dim,
        )
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation = activation
        self.norm = norm
        self.norm_first = norm_first
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.rope_max_wavelength = rope_max_wavelength
        self.head_dim = head_dim
        self._flash = flash_attention
        self.supports_masking = True
        self.supports_jit = False

    def _attention_rate(self):
        if self.attention_dropout is None:
            return self.dropout
        return self.attention_dropout

    def _initializers(self):
        """The factory of kernel/bias initializer kwargs for sublayers."""
        return initializer_factory(
            self.kernel_initializer, self.bias_initializer
        )

    def get_config(self):
        extra = {} if self.head_dim is None else {"head_dim": self.head_dim}
        config = {
            **super().get_config(),
            **extra,
            "intermediate_dim": self.intermediate_dim,
            "num_heads": self.num_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation": self.activation,
            "norm": self.norm,
            "norm_first": self.norm_first,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "rope_max_wavelength": self.rope_max_wavelength,
        }
        return with_sublayer_dtype_policies(self, config)
