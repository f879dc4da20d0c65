"""Shared by the attention layers: Keras masks in, `flash_attention` out.

The attention itself is `kbm.ops.flash_attention` (its kernel, or its
reference, the one fallback); this module only turns the layers' masks,
flags and dropout into that op's arguments.
"""

import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.attention import (
    _flash_attention_reference,
    flash_attention,
)


def fused_mode(flash_attention_arg):
    """Maps Keras's `flash_attention` argument to `use_fused_kernel`.

    `True` requires the kernel (an error says why it cannot run), `False`
    never uses it, `None` uses it whenever it can.
    """
    if flash_attention_arg is True:
        return True
    if flash_attention_arg is False:
        return False
    return "auto"


def combine_masks(*masks):
    """AND of boolean masks broadcastable to each other (None ignored)."""
    result = None
    for m in masks:
        if m is None:
            continue
        m = tf.cast(m, tf.bool)
        result = m if result is None else tf.logical_and(result, m)
    return result


def keras_attention_mask(
    query,
    key,
    query_mask=None,
    value_mask=None,
    key_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    sliding_window=None,
):
    """The boolean `[B or 1, T, S]` mask Keras's attention layers build.

    The query mask masks whole query rows, value/key masks mask keys,
    `use_causal_mask` lets query `i` see keys `j <= i`, `sliding_window`
    keeps `|i - j| < sliding_window`, and `attention_mask` (`[T, S]` or
    `[B, T, S]`) is ANDed in. None when there is no mask at all.
    """
    t, s = tf.shape(query)[1], tf.shape(key)[1]
    parts = []
    if query_mask is not None:
        parts.append(tf.cast(query_mask, tf.bool)[:, :, None])
    for m in (value_mask, key_mask):
        if m is not None:
            parts.append(tf.cast(m, tf.bool)[:, None, :])
    rows = tf.range(t)[:, None]
    cols = tf.range(s)[None, :]
    if use_causal_mask:
        parts.append((cols <= rows)[None])
    if sliding_window is not None:
        parts.append((tf.abs(rows - cols) < sliding_window)[None])
    if attention_mask is not None:
        m = tf.cast(attention_mask, tf.bool)
        parts.append(m[None] if m.shape.rank == 2 else m)
    return combine_masks(*parts)


def draw_dropout_seed(dropout_layer):
    """An int64 `[2]` dropout seed from the layer's Keras random generator.

    Keras 3: the next state of the `Dropout` layer's `SeedGenerator` (so
    `seed=` on the layer makes runs reproducible); tf-keras: a draw under
    the global seed (`tf.keras.utils.set_random_seed` makes runs
    reproducible; tf-keras's attention layer has no `seed=`).
    """
    if IS_LEGACY_KERAS:
        return tf.random.uniform([2], 0, 2**62, dtype=tf.int64)
    return dropout_layer.seed_generator.next()


def attention(
    layer_name,
    mode,
    query,
    key,
    value,
    *,
    mask,
    use_causal_mask,
    scale,
    dropout,
    dropout_layer,
    training,
    return_attention_scores,
    other_reason=None,
):
    """Softmax attention of projected q/k/v: the layers' one attention path.

    Args:
        layer_name: For messages.
        mode: `use_fused_kernel` ("auto", True or False).
        query, key, value: `[B, T, Hq, D]`, `[B, S, Hkv, D]`, `[B, S, Hkv,
            Dv]` projections, `Hq` a multiple of `Hkv`.
        mask: Boolean, `[T, S]` or `[B or 1, T, S]` (True = attend; a
            per-head `[B, H, T, S]` mask runs the op's reference), or None.
            A query row with no visible key gets zeros.
        use_causal_mask: Keras's causal flag (top-left aligned), applied on
            top of `mask`.
        scale: The score scale.
        dropout: The attention dropout rate.
        dropout_layer: The layer's `Dropout`, whose random generator seeds
            the dropout stream.
        training: The training flag.
        return_attention_scores: Also return the probabilities
            `[B, Hq, T, S]` (before dropout); these run the op's reference.
        other_reason: A reason, from the layer, not to use the kernel.

    Returns:
        `(output [B, T, Hq, Dv], probabilities or None)`.
    """
    per_head = None
    if mask is not None:
        mask = tf.cast(mask, tf.bool)
        if mask.shape.rank == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]  # [B, 1, T, S]: the same for every head.
        elif mask.shape.rank == 4:
            per_head = "a per-head [batch, heads, query, key] mask"
        # Broadcast a [B or 1, 1 or T, S] mask to full length once here.
        if mask.shape.rank == 3:
            mask = tf.broadcast_to(
                mask,
                tf.stack(
                    [
                        tf.shape(mask)[0],
                        tf.shape(query)[1],
                        tf.shape(key)[1],
                    ]
                ),
            )
    rate = float(dropout) if (dropout > 0 and training) else 0.0
    seed = draw_dropout_seed(dropout_layer) if rate > 0 else None
    if per_head is not None:
        other_reason = other_reason or per_head
    if return_attention_scores or per_head is not None:
        if mode is True and return_attention_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to "
                "access attention scores."
            )
        _loader.select(
            layer_name,
            mode,
            (query,),
            unsupported=other_reason or "return_attention_scores=True",
        )
        output, probs = _flash_attention_reference(
            query,
            key,
            value,
            bool(use_causal_mask),
            None,
            scale,
            causal_alignment="top_left",
            return_probs=True,
            mask=mask,
            dropout_rate=rate,
            seed=seed,
        )
        probs = tf.cast(probs, query.dtype) if return_attention_scores else None
        return tf.cast(output, query.dtype), probs
    fused = mode
    if other_reason is not None:
        # Report (or raise) once, then run the op's reference.
        _loader.select(layer_name, mode, (query,), unsupported=other_reason)
        fused = False
    output = flash_attention(
        query,
        key,
        value,
        causal=bool(use_causal_mask),
        scale=scale,
        causal_alignment="top_left",
        mask=mask,
        dropout_rate=rate,
        seed=seed,
        use_fused_kernel=fused,
    )
    return tf.cast(output, query.dtype), None
