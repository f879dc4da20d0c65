"""Shared by the attention layers: when to call the flash kernel, and how."""

import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.attention import flash_attention


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


def key_mask_from_attention_mask(attention_mask, batch_first_mask=True):
    """A [B, S] key mask if `attention_mask` only masks keys, else None.

    Accepts [B, S] and [B, 1, S] boolean-like masks (the same for every
    query); a general [B, T, S] mask returns None.
    """
    mask = tf.convert_to_tensor(attention_mask)
    if mask.shape.rank == 2:
        return tf.cast(mask, tf.bool)
    if mask.shape.rank == 3 and mask.shape[1] == 1:
        return tf.cast(mask[:, 0, :], tf.bool)
    return None


def combine_key_masks(*masks):
    """AND of the given [B, S] masks (None entries ignored), or None."""
    result = None
    for m in masks:
        if m is None:
            continue
        m = tf.cast(m, tf.bool)
        result = m if result is None else tf.logical_and(result, m)
    return result


def try_flash_attention(
    layer_name,
    mode,
    query,
    key,
    value,
    *,
    key_mask,
    attention_mask,
    use_causal_mask,
    scale,
    dropout,
    training,
    return_attention_scores,
    other_reason=None,
):
    """Runs the fused kernel on projected q/k/v if this call allows it.

    Args:
        layer_name: For messages.
        mode: `use_fused_kernel` ("auto", True or False).
        query, key, value: `[B, T, Hq, D]`, `[B, S, Hkv, D]`, `[B, S, Hkv,
            Dv]` projections.
        key_mask: A [B, S] key padding mask, or None.
        attention_mask: The caller's explicit mask, or None.
        use_causal_mask: Keras's causal flag (top-left aligned).
        scale: The score scale.
        dropout: The layer's attention dropout rate.
        training: The training flag.
        return_attention_scores: Whether scores were requested.
        other_reason: A reason, from the layer, not to use the kernel.

    Returns:
        The attention output `[B, T, Hq, Dv]`, or None when the caller must
        run its own (reference) path.
    """
    if mode is False:
        return None
    reason = other_reason
    if attention_mask is not None:
        from_mask = key_mask_from_attention_mask(attention_mask)
        if from_mask is None:
            reason = reason or (
                "a general [batch, query, key] attention_mask has no kernel "
                "(key padding masks and causal masking do)"
            )
        else:
            key_mask = combine_key_masks(key_mask, from_mask)
    if return_attention_scores:
        reason = reason or "return_attention_scores=True"
    if dropout > 0 and training:
        reason = reason or "attention dropout is active (training)"
    lib = _loader.select(layer_name, mode, (query,), unsupported=reason)
    if lib is None:
        return None
    return flash_attention(
        query,
        key,
        value,
        causal=bool(use_causal_mask),
        key_mask=key_mask,
        scale=scale,
        causal_alignment="top_left",
        use_fused_kernel=True,
    )


_MASKED = -1e30


def dense_attention(
    query,
    key,
    value,
    mask,
    scale,
    dropout_layer=None,
    training=None,
):
    """Softmax attention with a general mask, in at least float32.

    The reference path of the attention layers (and their only path for
    general masks, returned scores and dropout).

    Args:
        query, key, value: `[B, T, Hq, D]`, `[B, S, Hkv, D]`, `[B, S, Hkv,
            Dv]`, with `Hq` a multiple of `Hkv`.
        mask: Boolean, broadcastable to `[B, T, S]` (True = attend), or None.
        scale: The score scale.
        dropout_layer: Applied to the probabilities, or None.
        training: Passed to `dropout_layer`.

    Returns:
        `(output [B, T, Hq, Dv], probabilities [B, Hq, T, S])`; a query with
        no visible key gets zero probabilities and a zero output.
    """
    dtype = tf.float64 if query.dtype == tf.float64 else tf.float32
    q, k, v = (tf.cast(t, dtype) for t in (query, key, value))
    group = tf.shape(q)[2] // tf.shape(k)[2]
    k = tf.repeat(k, group, axis=2)
    v = tf.repeat(v, group, axis=2)
    scores = tf.einsum("bqhd,bkhd->bhqk", q, k) * tf.cast(scale, dtype)
    if mask is not None:
        allowed = tf.cast(mask, tf.bool)
        while allowed.shape.rank < 3:
            allowed = allowed[None]
        allowed = allowed[:, None]  # [B, 1, T, S]
        scores = tf.where(allowed, scores, tf.cast(_MASKED, dtype))
        visible = tf.reduce_any(
            tf.broadcast_to(allowed, tf.shape(scores)), -1, keepdims=True
        )
        probs = tf.where(visible, tf.nn.softmax(scores, -1), 0.0)
    else:
        probs = tf.nn.softmax(scores, -1)
    probs = tf.cast(probs, query.dtype)
    dropped = probs
    if dropout_layer is not None:
        dropped = dropout_layer(probs, training=training)
    out = tf.einsum("bhqk,bkhd->bqhd", tf.cast(dropped, dtype), v)
    return tf.cast(out, query.dtype), probs
