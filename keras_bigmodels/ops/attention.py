"""Flash attention: exact softmax attention without the T_q x T_k matrix.

Kernels: CPU, for float16, bfloat16 (both computed in float32), float32 and
float64. The forward kernel walks key tiles with an online softmax and keeps
only O(tile x head_dim) memory per thread; it returns the output and each
row's log-sum-exp, from which the backward kernel recomputes the scores tile
by tile (FlashAttention-2's algorithm). Grouped-query and multi-query
attention (fewer key/value heads than query heads) read the shared heads in
place. Elsewhere the op runs the reference: plain softmax attention in
float32 (or float64).
"""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops._utils import (
    FLOAT_DTYPES,
    compute_dtype,
    reference_vjp,
)

# Kernel-vs-reference tolerances per input dtype (outputs and gradients).
TOLERANCES = {
    tf.float16: {"rtol": 4e-3, "atol": 4e-3},
    tf.bfloat16: {"rtol": 3e-2, "atol": 3e-2},
    tf.float32: {"rtol": 2e-5, "atol": 2e-5},
    tf.float64: {"rtol": 1e-10, "atol": 1e-10},
}

CAUSAL_ALIGNMENTS = ("bottom_right", "top_left")

# Masked scores in the reference: finite, so a fully masked row's softmax
# stays finite (and is then zeroed) instead of producing NaN gradients.
_MASKED = -1e30


def _check_inputs(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor. "
                f"Received: {name}.dtype={t.dtype.name}"
            )
        if t.shape.rank is not None and t.shape.rank != 4:
            raise ValueError(
                f"{name} must have rank 4 ([batch, length, heads, "
                f"head_dim]). Received: {name}.shape={tuple(t.shape)}"
            )
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(
            "q, k and v must have the same dtype. Received: "
            f"{q.dtype.name}, {k.dtype.name}, {v.dtype.name}"
        )

    def dims_differ(a, b):
        return a is not None and b is not None and a != b

    if dims_differ(q.shape[3], k.shape[3]):
        raise ValueError(
            "q and k must have the same head_dim (last axis). Received: "
            f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}"
        )
    for axis, what in ((1, "length"), (2, "number of heads")):
        if dims_differ(k.shape[axis], v.shape[axis]):
            raise ValueError(
                f"k and v must have the same {what}. Received: "
                f"k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}"
            )
    for t, name in ((k, "k"), (v, "v")):
        if dims_differ(q.shape[0], t.shape[0]):
            raise ValueError(
                f"q and {name} must have the same batch size. Received: "
                f"q.shape={tuple(q.shape)}, {name}.shape={tuple(t.shape)}"
            )
    hq, hkv = q.shape[2], k.shape[2]
    if hq is not None and hkv is not None and (hkv == 0 or hq % hkv):
        raise ValueError(
            f"The number of query heads ({hq}) must be a multiple of the "
            f"number of key/value heads ({hkv}). Received: "
            f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}"
        )


def _key_mask_tensor(key_mask, k):
    """A boolean [B, Tk] mask from a boolean mask or per-example lengths."""
    if key_mask is None:
        return None
    key_mask = tf.convert_to_tensor(key_mask)
    if key_mask.dtype.is_integer:
        if key_mask.shape.rank != 1:
            raise ValueError(
                "key_mask given as lengths must have shape [batch]. "
                f"Received: key_mask.shape={tuple(key_mask.shape)}"
            )
        return tf.sequence_mask(key_mask, tf.shape(k)[1])
    if key_mask.dtype != tf.bool:
        raise TypeError(
            "key_mask must be boolean [batch, key_length] or integer lengths "
            f"[batch]. Received: key_mask.dtype={key_mask.dtype.name}"
        )
    want = (k.shape[0], k.shape[1])
    if key_mask.shape.rank != 2 or any(
        a is not None and b is not None and a != b
        for a, b in zip(key_mask.shape, want)
    ):
        raise ValueError(
            f"key_mask must have shape [batch, key_length] = {want}. "
            f"Received: key_mask.shape={tuple(key_mask.shape)}"
        )
    return key_mask


def flash_attention(
    q,
    k,
    v,
    causal=False,
    key_mask=None,
    scale=None,
    attention_bias=None,
    causal_alignment="bottom_right",
    use_fused_kernel="auto",
):
    """Exact softmax attention with a tiled, memory-efficient kernel.

    Computes `softmax(scale * q k^T + mask) v` per head. Memory is linear in
    the sequence length: the `[T_q, T_k]` score matrix is never
    materialised, in the forward or the backward pass.

    Kernels exist on CPU for float16, bfloat16 (computed in float32),
    float32 and float64, with a fused gradient. A general additive
    `attention_bias` has no kernel: such calls run the reference (one
    warning with `use_fused_kernel="auto"`). Elsewhere (other devices,
    `jit_compile=True`, library not built) the reference runs too.

    Args:
        q: Queries `[batch, q_length, q_heads, head_dim]`.
        k: Keys `[batch, kv_length, kv_heads, head_dim]`; `q_heads` must be
            a multiple of `kv_heads` (grouped-query / multi-query attention:
            query head `h` uses key/value head `h // (q_heads // kv_heads)`).
        v: Values `[batch, kv_length, kv_heads, value_dim]`.
        causal: Mask future keys. Defaults to `False`.
        key_mask: Keys to attend to: boolean `[batch, kv_length]` (True =
            attend) or integer lengths `[batch]`. Defaults to `None`.
        scale: Score scale, used at float32 precision. Defaults to
            `1 / sqrt(head_dim)`.
        attention_bias: Optional additive bias broadcastable to
            `[batch, q_heads, q_length, kv_length]` (reference path only).
            Defaults to `None`.
        causal_alignment: With `causal=True` and `q_length != kv_length`,
            `"bottom_right"` lets query `i` see keys `j <= i + kv_length -
            q_length` (the last query sees every key, as when decoding with
            a key/value cache); `"top_left"` lets it see `j <= i` (Keras's
            `use_causal_mask`). Defaults to `"bottom_right"`.
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.

    Returns:
        `[batch, q_length, q_heads, value_dim]`, in the dtype of `q`. A
        query that sees no key (all its keys masked) gets zeros.

    Example:

    ```python
    out = kbm.ops.flash_attention(q, k, v, causal=True, key_mask=lengths)
    ```

    Reference:
    - [Dao et al., 2022](https://arxiv.org/abs/2205.14135)
    - [Dao, 2023](https://arxiv.org/abs/2307.08691)
    """
    if causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(
            f"causal_alignment must be one of {CAUSAL_ALIGNMENTS}. "
            f"Received: causal_alignment={causal_alignment!r}"
        )
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be True or False. Received: {causal!r}")
    with tf.name_scope("flash_attention"):
        q, k, v = (tf.convert_to_tensor(t) for t in (q, k, v))
        _check_inputs(q, k, v)
        head_dim = q.shape[3]
        if scale is None:
            if head_dim is None:
                raise ValueError(
                    "scale must be given when head_dim (q's last axis) is "
                    f"not static. Received: q.shape={tuple(q.shape)}"
                )
            scale = 1.0 / math.sqrt(head_dim)
        # The kernel takes scale as a float32 attribute: both paths use the
        # float32 value.
        scale = float(np.float32(scale))
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite. Received: scale={scale}")
        mask = _key_mask_tensor(key_mask, k)
        unsupported = None
        if attention_bias is not None:
            unsupported = "a general additive attention_bias has no kernel"
        lib = _loader.select(
            "flash_attention", use_fused_kernel, (q, k, v), unsupported
        )
        if lib is None:
            return _flash_attention_reference(
                q, k, v, causal, mask, scale, attention_bias, causal_alignment
            )
        return _flash_attention_kernel(
            lib, q, k, v, causal, mask, scale, causal_alignment
        )


def _flash_attention_kernel(lib, q, k, v, causal, mask, scale, alignment):
    if mask is None:
        mask = tf.zeros([0], tf.bool)
    u = compute_dtype(q.dtype)
    o, _ = lib.kbm_flash_attention(
        q,
        k,
        v,
        mask,
        scale=scale,
        causal=causal,
        causal_top_left=alignment == "top_left",
        U=u,
    )
    return o


def causal_mask(q_length, kv_length, alignment="bottom_right"):
    """Boolean `[q_length, kv_length]`: which keys each query may see."""
    rows = tf.range(q_length)[:, None]
    cols = tf.range(kv_length)[None, :]
    if alignment == "bottom_right":
        rows = rows + (kv_length - q_length)
    return cols <= rows


def _flash_attention_reference(
    q,
    k,
    v,
    causal,
    key_mask,
    scale,
    attention_bias=None,
    causal_alignment="bottom_right",
    return_probs=False,
):
    """Plain softmax attention in float32 (float64): fallback and oracle.

    Returns the output, and the probabilities `[batch, q_heads, q_length,
    kv_length]` when `return_probs` (rows of masked-out queries are zeros).
    """
    dtype = compute_dtype(q.dtype)
    q, k, v = (tf.cast(t, dtype) for t in (q, k, v))
    group = tf.shape(q)[2] // tf.shape(k)[2]
    k = tf.repeat(k, group, axis=2)
    v = tf.repeat(v, group, axis=2)
    scores = tf.einsum("bqhd,bkhd->bhqk", q, k) * tf.cast(scale, dtype)
    allowed = tf.ones_like(scores, tf.bool)
    if key_mask is not None:
        allowed = tf.logical_and(allowed, key_mask[:, None, None, :])
    if causal:
        allowed = tf.logical_and(
            allowed,
            causal_mask(tf.shape(q)[1], tf.shape(k)[1], causal_alignment),
        )
    if attention_bias is not None:
        scores = scores + tf.cast(attention_bias, dtype)
    scores = tf.where(allowed, scores, tf.cast(_MASKED, dtype))
    probs = tf.nn.softmax(scores, axis=-1)
    # A query with no visible key gets zeros, not a uniform average.
    any_visible = tf.reduce_any(allowed, axis=-1, keepdims=True)
    probs = tf.where(any_visible, probs, tf.zeros_like(probs))
    out = tf.einsum("bhqk,bkhd->bqhd", probs, v)
    out = tf.cast(out, q.dtype if not return_probs else out.dtype)
    if return_probs:
        return out, probs
    return out


def _attrs(op):
    return {
        "scale": op.get_attr("scale"),
        "causal": op.get_attr("causal"),
        "causal_top_left": op.get_attr("causal_top_left"),
    }


@tf.RegisterGradient("Kbm>FlashAttention")
def _flash_attention_grad(op, d_o, unused_dlse):
    q, k, v, mask = op.inputs
    o, lse = op.outputs
    dq, dk, dv = _loader.library().kbm_flash_attention_grad(
        d_o, q, k, v, mask, o, lse, **_attrs(op)
    )
    return dq, dk, dv, None


@tf.RegisterGradient("Kbm>FlashAttentionGrad")
def _flash_attention_grad_grad(op, ddq, ddk, ddv):
    d_o, q, k, v, mask, _, _ = op.inputs
    attrs = _attrs(op)
    key_mask = None if mask.shape.num_elements() == 0 else mask
    alignment = "top_left" if attrs["causal_top_left"] else "bottom_right"

    def reference(q, k, v):
        return _flash_attention_reference(
            q,
            k,
            v,
            attrs["causal"],
            key_mask,
            attrs["scale"],
            causal_alignment=alignment,
        )

    def backward(d_o, q, k, v):
        return reference_vjp(
            lambda q, k, v: [reference(q, k, v)], [q, k, v], [d_o]
        )

    grads = reference_vjp(backward, [d_o, q, k, v], [ddq, ddk, ddv])
    return [*grads, None, None, None]
