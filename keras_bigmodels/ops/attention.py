"""Flash attention: exact softmax attention without the T_q x T_k matrix.

Kernels: CPU, for float16, bfloat16 (both computed in float32), float32 and
float64. The forward kernel walks key tiles with an online softmax and keeps
only O(tile x head_dim) memory per thread; it returns the output and each
row's log-sum-exp, from which the backward kernel recomputes the scores tile
by tile (FlashAttention-2's algorithm). Grouped-query and multi-query
attention (fewer key/value heads than query heads) read the shared heads in
place. Masks: a key-padding mask `[B, Tk]`, causal masking, and a general
boolean mask `[B or 1, Tq, Tk]` (the kernel classifies its 64 x 64 blocks
once per call, so a causal or padding mask given densely costs little).
Attention dropout runs inside the kernels: a counter-based Philox4x32-10
stream keyed by a `seed` `[2]` and each probability's position, so the
backward pass regenerates the mask instead of storing it;
`attention_dropout_mask` reads it out. Elsewhere the op runs the reference:
plain softmax attention in float32 (or float64), whose dropout mask is the
same Philox stream computed with TensorFlow integer ops.
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

# Masked scores in the reference: the lowest finite value of the compute
# dtype. Finite, so a fully masked row's softmax stays finite (and is then
# zeroed) instead of producing NaN gradients; the lowest, so that no
# visible finite score loses to it (fuzzing found -1e30, the value before,
# beating visible scores of -1.16e30: the reference gave zeros there).


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


def _dense_mask_tensor(mask, q, k):
    """A boolean [B or 1, Tq, Tk] mask from a [Tq, Tk] or [B|1, Tq, Tk] one."""
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    if mask.dtype != tf.bool:
        mask = tf.cast(mask, tf.bool)
    if mask.shape.rank == 2:
        mask = mask[None]
    want = (None, q.shape[1], k.shape[1])
    if mask.shape.rank != 3 or any(
        a is not None and b is not None and a != b
        for a, b in zip(mask.shape[1:], want[1:])
    ):
        raise ValueError(
            "mask must have shape [query_length, key_length] or [batch or "
            f"1, query_length, key_length] with lengths {want[1:]}. "
            f"Received: mask.shape={tuple(mask.shape)}"
        )
    b, bm = q.shape[0], mask.shape[0]
    if b is not None and bm is not None and bm not in (1, b):
        raise ValueError(
            f"mask's first axis must be 1 or the batch size ({b}). "
            f"Received: mask.shape={tuple(mask.shape)}"
        )
    return mask


def _check_dropout(dropout_rate, seed):
    if not isinstance(dropout_rate, (int, float)) or not (
        0.0 <= dropout_rate < 1.0
    ):
        raise ValueError(
            "dropout_rate must be a number in [0, 1). "
            f"Received: dropout_rate={dropout_rate!r}"
        )
    if dropout_rate == 0:
        return tf.zeros([2], tf.int64)
    if seed is None:
        raise ValueError(
            "seed (int64 [2]) must be given when dropout_rate > 0. "
            f"Received: dropout_rate={dropout_rate}, seed=None"
        )
    return _as_seed(seed)


def _as_seed(seed):
    """An int64 [2] tensor from an integer [2] seed (uint32 included)."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(
            f"seed must be an integer tensor. Received: seed.dtype="
            f"{seed.dtype.name}"
        )
    if seed.shape.rank is not None and tuple(seed.shape) not in ((2,), (None,)):
        raise ValueError(
            "seed must have shape [2]. "
            f"Received: seed.shape={tuple(seed.shape)}"
        )
    if seed.dtype in (tf.uint32, tf.uint64):
        seed = tf.bitcast(tf.cast(seed, tf.uint64), tf.int64)
    return tf.cast(seed, tf.int64)


def flash_attention(
    q,
    k,
    v,
    causal=False,
    key_mask=None,
    scale=None,
    attention_bias=None,
    causal_alignment="bottom_right",
    mask=None,
    dropout_rate=0.0,
    seed=None,
    use_fused_kernel="auto",
):
    """Exact softmax attention with a tiled, memory-efficient kernel.

    Computes `softmax(scale * q k^T + mask) v` per head. Memory is linear in
    the sequence length: the `[T_q, T_k]` score matrix is never
    materialised, in the forward or the backward pass.

    Kernels exist on CPU for float16, bfloat16 (computed in float32),
    float32 and float64, with a fused gradient, for every boolean mask and
    for attention dropout. A general additive `attention_bias` has no
    kernel: such calls run the reference (one warning with
    `use_fused_kernel="auto"`). Elsewhere (other devices,
    `jit_compile=True`, library not built) the reference runs too.

    Args:
        q: Queries `[batch, q_length, q_heads, head_dim]`.
        k: Keys `[batch, kv_length, kv_heads, head_dim]`; `q_heads` must be
            a multiple of `kv_heads` (grouped-query / multi-query attention:
            query head `h` uses key/value head `h // (q_heads // kv_heads)`).
        v: Values `[batch, kv_length, kv_heads, value_dim]`.
        causal: Mask future keys. Defaults to `False`.
        key_mask: Keys to attend to: boolean `[batch, kv_length]` (True =
            attend) or integer lengths `[batch]`. Masked keys count as
            zeros: a NaN or inf in their keys or values reaches neither the
            output nor the gradients. Defaults to `None`.
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
        mask: Optional boolean mask of the keys each query may see (True =
            attend), `[q_length, kv_length]` or `[batch or 1, q_length,
            kv_length]`, shared by all heads. Defaults to `None`.
        dropout_rate: Attention dropout on the probabilities, in `[0, 1)`:
            probability `[b, h, i, j]` is kept (times `1 / (1 - rate)`) when
            `attention_dropout_mask(seed, ...)` is True there. Defaults to
            `0.0`.
        seed: Integer `[2]`, the dropout stream's key (e.g. from a
            `keras.random.SeedGenerator`); required when `dropout_rate > 0`.
            The same seed gives the same mask on every path.
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
        key_mask = _key_mask_tensor(key_mask, k)
        mask = _dense_mask_tensor(mask, q, k)
        seed = _check_dropout(dropout_rate, seed)
        # The kernel takes the rate as a float32 attribute: both paths use
        # the float32 value.
        dropout_rate = float(np.float32(dropout_rate))
        unsupported = None
        if attention_bias is not None:
            unsupported = "a general additive attention_bias has no kernel"
        lib = _loader.select(
            "flash_attention", use_fused_kernel, (q, k, v), unsupported
        )
        if lib is None:
            return _flash_attention_reference(
                q,
                k,
                v,
                causal,
                key_mask,
                scale,
                attention_bias,
                causal_alignment,
                mask=mask,
                dropout_rate=dropout_rate,
                seed=seed,
            )
        return _flash_attention_kernel(
            lib,
            q,
            k,
            v,
            causal,
            key_mask,
            scale,
            causal_alignment,
            mask,
            dropout_rate,
            seed,
        )


_EMPTY_MASK_SHAPE = [0]


def _flash_attention_kernel(
    lib, q, k, v, causal, key_mask, scale, alignment, mask, rate, seed
):
    if key_mask is None:
        key_mask = tf.zeros(_EMPTY_MASK_SHAPE, tf.bool)
    if mask is None:
        mask = tf.zeros(_EMPTY_MASK_SHAPE, tf.bool)
    u = compute_dtype(q.dtype)
    o, _ = lib.kbm_flash_attention(
        q,
        k,
        v,
        key_mask,
        mask,
        seed,
        scale=scale,
        causal=causal,
        causal_top_left=alignment == "top_left",
        dropout_rate=rate,
        U=u,
    )
    return o


def dropout_threshold(rate):
    """The smallest 32-bit Philox draw kept at dropout `rate` (float32)."""
    t = float(np.float32(rate)) * 4294967296.0
    if not rate > 0:
        return 0
    return 0xFFFFFFFF if t >= 4294967295.0 else int(t)


def attention_dropout_mask(seed, shape, rate, use_fused_kernel="auto"):
    """The keep mask `[B, H, Tq, Tk]` of attention dropout at `rate`.

    It is the mask `flash_attention(..., dropout_rate=rate, seed=seed)`
    applies to the probabilities of query head `h` (on every path):
    element `[b, h, i, j]` with flat index `f = ((b * H + h) * Tq + i) * Tk
    + j` is kept when draw `f % 4` of Philox4x32-10 with key `seed[0]` and
    counter `(f // 4, seed[1])` is at least `rate * 2**32`.

    Args:
        seed: Integer `[2]`.
        shape: `[B, H, Tq, Tk]` (ints or an integer tensor).
        rate: Dropout rate in `[0, 1)`.
        use_fused_kernel: `"auto"`, `True` or `False`.

    Returns:
        Boolean `[B, H, Tq, Tk]`.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1). Received: rate={rate!r}")
    seed = _as_seed(seed)
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int64)
    lib = _loader.select("attention_dropout_mask", use_fused_kernel, ())
    if lib is None:
        return _attention_dropout_mask_reference(seed, shape, rate)
    return lib.kbm_attention_dropout_mask(seed, shape, rate=float(rate))


_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_LOW32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 in TensorFlow integer ops (uint64 holding 32 bits).

    Args:
        counter: Four uint64 tensors of one shape (32-bit values).
        key: Two uint64 scalars (32-bit values).

    Returns:
        The four 32-bit outputs, as uint64 tensors.
    """
    low = tf.constant(_LOW32, tf.uint64)
    shift = tf.constant(32, tf.uint64)
    m0 = tf.constant(_PHILOX_M0, tf.uint64)
    m1 = tf.constant(_PHILOX_M1, tf.uint64)
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0 = c0 * m0
        p1 = c2 * m1
        hi0, lo0 = (
            tf.bitwise.right_shift(p0, shift),
            tf.bitwise.bitwise_and(p0, low),
        )
        hi1, lo1 = (
            tf.bitwise.right_shift(p1, shift),
            tf.bitwise.bitwise_and(p1, low),
        )
        c0, c1, c2, c3 = (
            tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi1, c1), k0),
            lo1,
            tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(hi0, c3), k1),
            lo0,
        )
        k0 = tf.bitwise.bitwise_and(k0 + _PHILOX_W0, low)
        k1 = tf.bitwise.bitwise_and(k1 + _PHILOX_W1, low)
    return c0, c1, c2, c3


def _attention_dropout_mask_reference(seed, shape, rate):
    """The dropout keep mask from the Philox stream in TF integer ops."""
    seed = tf.bitcast(tf.cast(seed, tf.int64), tf.uint64)
    low = tf.constant(_LOW32, tf.uint64)
    shift = tf.constant(32, tf.uint64)
    n = tf.reduce_prod(shape)
    groups = tf.cast(tf.range((n + 3) // 4), tf.uint64)
    s1_lo = tf.bitwise.bitwise_and(seed[1], low)
    s1_hi = tf.bitwise.right_shift(seed[1], shift)
    counter = (
        tf.bitwise.bitwise_and(groups, low),
        tf.bitwise.right_shift(groups, shift),
        tf.fill(tf.shape(groups), s1_lo),
        tf.fill(tf.shape(groups), s1_hi),
    )
    key = (
        tf.bitwise.bitwise_and(seed[0], low),
        tf.bitwise.right_shift(seed[0], shift),
    )
    draws = tf.reshape(tf.stack(philox4x32_10(counter, key), axis=-1), [-1])
    draws = tf.cast(draws[:n], tf.int64)  # 32-bit values: exact.
    keep = draws >= dropout_threshold(rate)
    return tf.reshape(keep, shape)


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
    mask=None,
    dropout_rate=0.0,
    seed=None,
):
    """Plain softmax attention in float32 (float64): fallback and oracle.

    Returns the output, and the probabilities `[batch, q_heads, q_length,
    kv_length]` before dropout when `return_probs` (rows of masked-out
    queries are zeros). `mask` is a boolean `[B or 1, Tq, Tk]` (or per head
    `[B or 1, Hq, Tq, Tk]`); dropout uses `attention_dropout_mask`'s stream.
    """
    out_dtype = q.dtype
    dtype = compute_dtype(q.dtype)
    q, k, v = (tf.cast(t, dtype) for t in (q, k, v))
    if key_mask is not None:
        # Key-masked keys (padding) count as zeros, as in the kernels: a NaN
        # or inf there reaches neither the output (0 * NaN in the weighted
        # sum) nor the gradients.
        keep = tf.cast(key_mask, tf.bool)[:, :, None, None]
        k = tf.where(keep, k, tf.zeros_like(k))
        v = tf.where(keep, v, tf.zeros_like(v))
    group = tf.shape(q)[2] // tf.shape(k)[2]
    k = tf.repeat(k, group, axis=2)
    v = tf.repeat(v, group, axis=2)
    scores = tf.einsum("bqhd,bkhd->bhqk", q, k) * tf.cast(scale, dtype)
    allowed = tf.ones_like(scores, tf.bool)
    if key_mask is not None:
        allowed = tf.logical_and(allowed, key_mask[:, None, None, :])
    if mask is not None:
        mask = tf.cast(mask, tf.bool)
        # [B or 1, Tq, Tk], or per head [B or 1, H, Tq, Tk].
        allowed = tf.logical_and(
            allowed, mask if mask.shape.rank == 4 else mask[:, None]
        )
    if causal:
        allowed = tf.logical_and(
            allowed,
            causal_mask(tf.shape(q)[1], tf.shape(k)[1], causal_alignment),
        )
    if attention_bias is not None:
        scores = scores + tf.cast(attention_bias, dtype)
    scores = tf.where(allowed, scores, tf.constant(dtype.min, dtype))
    probs = tf.nn.softmax(scores, axis=-1)
    # A query with no visible key gets zeros, not a uniform average; a
    # masked key gets exactly 0 even when every visible score is -inf
    # (overflow), where the finite masked score would otherwise win.
    probs = tf.where(allowed, probs, tf.zeros_like(probs))
    dropped = probs
    if dropout_rate > 0:
        keep = _attention_dropout_mask_reference(
            seed, tf.shape(probs, out_type=tf.int64), dropout_rate
        )
        # A product, as in the kernels, not a select: a NaN row of
        # probabilities (scores overflowing to +inf) stays NaN when dropout
        # happens to drop all of its keys, rather than becoming 0.
        dropped = (
            probs
            * tf.cast(keep, dtype)
            / tf.constant(1.0 - dropout_rate, dtype)
        )
    out = tf.einsum("bhqk,bkhd->bqhd", dropped, v)
    # In q's dtype (q itself was cast to the compute dtype above).
    out = tf.cast(out, out_dtype if not return_probs else out.dtype)
    if return_probs:
        return out, probs
    return out


def _attrs(op):
    return {
        "scale": op.get_attr("scale"),
        "causal": op.get_attr("causal"),
        "causal_top_left": op.get_attr("causal_top_left"),
        "dropout_rate": op.get_attr("dropout_rate"),
    }


@tf.RegisterGradient("Kbm>FlashAttention")
def _flash_attention_grad(op, d_o, unused_dlse):
    q, k, v, key_mask, mask, seed = op.inputs
    o, lse = op.outputs
    dq, dk, dv = _loader.library().kbm_flash_attention_grad(
        d_o, q, k, v, key_mask, mask, seed, o, lse, **_attrs(op)
    )
    return dq, dk, dv, None, None, None


def _optional(mask):
    """None for the ops' empty-tensor stand-in of an absent mask."""
    return None if mask.shape.num_elements() == 0 else mask


@tf.RegisterGradient("Kbm>FlashAttentionGrad")
def _flash_attention_grad_grad(op, ddq, ddk, ddv):
    d_o, q, k, v, key_mask, mask, seed, _, _ = op.inputs
    attrs = _attrs(op)
    alignment = "top_left" if attrs["causal_top_left"] else "bottom_right"

    def reference(q, k, v):
        return _flash_attention_reference(
            q,
            k,
            v,
            attrs["causal"],
            _optional(key_mask),
            attrs["scale"],
            causal_alignment=alignment,
            mask=_optional(mask),
            dropout_rate=attrs["dropout_rate"],
            seed=seed,
        )

    def backward(d_o, q, k, v):
        return reference_vjp(
            lambda q, k, v: [reference(q, k, v)], [q, k, v], [d_o]
        )

    grads = reference_vjp(backward, [d_o, q, k, v], [ddq, ddk, ddv])
    return [*grads, None, None, None, None, None]
