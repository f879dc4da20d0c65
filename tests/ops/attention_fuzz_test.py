"""Property-based tests of flash attention: kernels and public op.

Shapes (empty, single, prime and tile-boundary lengths; grouped-query
heads; value_dim != head_dim), causal masks in both alignments, key-padding
and general boolean masks (some, none or all keys masked), dropout, and
special values. Properties: no crash; the kernels (forward and gradient)
match the reference within `TOLERANCES` and are non-finite only where the
reference is; inconsistent inputs and companion tensors (d_o, o, lse,
masks, seed) are rejected with an error naming the tensor.
"""

import math

import numpy as np
import tensorflow as tf
from hypothesis import example, given
from hypothesis import strategies as st

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.attention import (
    TOLERANCES,
    _flash_attention_reference,
)
from tests.ops import _fuzz

FAMILY = "attention"
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 13, 31, 63, 64, 65, 127, 129]),
    st.integers(1, 80),
)
HEAD_DIMS = st.sampled_from([1, 3, 7, 8, 16, 31, 32, 64, 65, 128])
RATES = st.sampled_from([0.0, 0.0, 0.1, 0.5, 0.9])
SCORE_ELEMENTS = 1 << 14  # batch * q_heads * q_length * kv_length
TENSOR_ELEMENTS = 1 << 14


@st.composite
def attention_shapes(draw):
    """(batch, tq, tk, hq, hkv, d, dv) within the element budgets."""
    b = draw(st.sampled_from([0, 1, 1, 2, 3]))
    hkv = draw(st.sampled_from([1, 1, 2, 3]))
    hq = hkv * draw(st.sampled_from([1, 1, 2, 3]))
    tq, tk = draw(LENGTHS), draw(LENGTHS)
    d = draw(HEAD_DIMS)
    dv = draw(st.one_of(st.just(d), HEAD_DIMS))
    while b * hq * tq * tk > SCORE_ELEMENTS and max(tq, tk) > 1:
        tq, tk = max(1, tq // 2), max(1, tk // 2)
    while b * max(tq, tk) * hq * max(d, dv) > TENSOR_ELEMENTS and d > 1:
        d, dv = max(1, d // 2), max(1, dv // 2)
    return b, tq, tk, hq, hkv, d, dv


def _masks(kind, b, tq, tk, seed):
    """key_mask [b, tk] and mask [b or 1, tq, tk] (None when absent)."""
    rng = np.random.default_rng(seed)
    key_mask = mask = None
    if kind in ("key", "both", "all_masked"):
        key_mask = rng.random((b, tk)) < 0.7
        if kind == "all_masked":
            key_mask[:] = False
    if kind in ("dense", "both", "dense_shared"):
        mb = 1 if kind == "dense_shared" else b
        mask = rng.random((mb, tq, tk)) < 0.6
        if tq and tk and rng.random() < 0.3:
            mask[..., rng.integers(tq), :] = False  # a fully masked row
    to_tensor = lambda m: None if m is None else tf.constant(m)  # noqa: E731
    return to_tensor(key_mask), to_tensor(mask)


MASK_KINDS = st.sampled_from(
    ["none", "key", "dense", "dense_shared", "both", "all_masked"]
)


def _grad_tol(tol, dtype, *specs, tensors=None):
    """The gradient tolerance. Half types: the kernel's delta = rowsum(dO *
    O) reads the output rounded to float16/bfloat16 (as FlashAttention
    does), an error of about ulp(|O|) |dO| |K| in dQ: the tolerance grows
    with the square of the values' scale above 1. Any dtype, `tensors` =
    (q, k, v, d_o, scale): dS = P * (dP - delta) is a difference of terms
    of size |dO| |V| (it cancels to 0 for one key), so its rounding error
    is absolute, about eps |dO| |V| sqrt(Dv), and dQ, dK sum it times
    scale |K| or scale |Q| over the keys or queries (dQ -2.3e-5 for 0 with
    |dO| ~ 30 and one key; dK -8.4e-5 for 0 over 13 queries)."""
    factor = 1.0
    if dtype in (tf.float16, tf.bfloat16):
        factor = max([1.0] + [s["scale"] for s in specs]) ** 2
    tol = {k: v * factor for k, v in tol.items()}
    if tensors is not None:
        q, k, v, d_o, scale = tensors[:5]
        rate = tensors[5] if len(tensors) > 5 else 0.0
        # Half types: delta reads O rounded to the output dtype. Equal
        # values round the same way, so the errors add up linearly over
        # Dv and over the queries (of every head of a group) or keys, and
        # dropout's 1 / (1 - rate) scales O (long run: dK 0.011 for 0 in
        # float16 with equal values, two heads, Dv = 3, rate 0.1).
        # dP = dO . V and delta = dO . O are dot products of Dv terms,
        # each off by up to about Dv u times the sum of their terms' sizes
        # (u = eps / 2), whatever the order, when the terms are alike and
        # round the same way; O adds its own rounding (P V, then / l). So
        # about max(3, Dv) eps per term of Dv (long run: dK -6.8e-5 for 0
        # with Dv = 31 against 1 eps's 4.7e-5; dQ 2.6e-4 for 0 with Dv = 64
        # against 3 eps's 2.3e-4).
        eps = max(3, v.shape[-1]) * _EPS[dtype]
        big = [_finite_max(t) for t in (q, k, v, d_o)]
        group = max(1, q.shape[2] // max(1, k.shape[2]))
        n = max(1, q.shape[1] * group, k.shape[1])
        cancel = eps * big[3] * big[2] * max(1, v.shape[-1]) / (1 - rate)
        cancel *= max(big[0], big[1]) * scale * n
        tol["atol"] += cancel
    return tol


def _out_tol(tol, dtype, q, k, v, scale):
    """The output's tolerance: a score s = scale q.k is rounded to about
    eps sqrt(D) |s| (in float32 for every input dtype but float64), an
    error relative in P, so O (an average of V) is off by that times |V|
    (float32, D = 128, values ~ 3: |s| ~ 60, O 4.8e-5 off)."""
    eps = 2.3e-16 if dtype == tf.float64 else 1.2e-7
    with np.errstate(all="ignore"):
        norms = [
            _finite_max(np.linalg.norm(_fuzz.to_f64(t), axis=-1))
            for t in (q, k)
        ]
    s_max = abs(scale) * norms[0] * norms[1]
    d = max(1, q.shape[-1])
    extra = eps * math.sqrt(d) * s_max * _finite_max(v)
    return {"rtol": tol["rtol"], "atol": tol["atol"] + extra}


_EPS = {
    tf.float16: 2.0**-11,
    tf.bfloat16: 2.0**-8,
    tf.float32: 2.0**-23,
    tf.float64: 2.0**-52,
}


def _finite_max(t):
    a = np.abs(_fuzz.to_f64(t))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _grad_ordinary(ordinary, dtype, *specs):
    """Half types with values above 1: delta's rounding error (see
    `_grad_tol`) is divided by nothing and the gradients of a saturated
    softmax are tiny differences of it: finiteness only."""
    half = dtype in (tf.float16, tf.bfloat16)
    # Any dtype: with values ~30 the scores saturate the softmax and dS =
    # P * (dP - delta) is a rounding error of dP (e.g. 0.0036 for 0 in
    # float32 with one key).
    limit = 1 if half else 10
    if ordinary is not _fuzz.NONFINITE and any(
        s["scale"] > limit for s in specs if s["pattern"] != "huge"
    ):
        return None
    return ordinary


def _huge(*specs):
    """Values near 1e30: scores overflow, and the gradients are not checked
    (only that they run). The backward pass's delta = rowsum(dO * O) reads
    O rounded to the output dtype; with |q|, |k| ~ 1e30 its rounding error
    is multiplied into dQ, dK without bound (the reference, from the
    unrounded O, gets 0 where the kernel gets 1e15 or inf)."""
    return any(s["pattern"] == "huge" for s in specs[:2])


def _empty_bool():
    return tf.zeros([0], tf.bool)


# Found by fuzzing: an infinite dO on a query that sees no key made its
# dQ NaN (0 * (dP - delta)); the reference gives 0.
@example(
    shape=(1, 2, 1, 1, 1, 1, 1),
    dtype=tf.float16,
    q_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    kv_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    do_spec={"pattern": "huge", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="dense",
    causal=False,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    scale=None,
)
# ci run: float16, |dO| ~ 30 over 63 keys: dQ 0.013 off (delta's rounding
# of O to float16, see `_grad_tol`).
@example(
    shape=(1, 63, 63, 1, 1, 1, 1),
    dtype=tf.float16,
    q_spec={"pattern": "normal", "seed": 26, "scale": 0.001, "specials": []},
    kv_spec={"pattern": "normal", "seed": 0, "scale": 1.0, "specials": []},
    do_spec={"pattern": "normal", "seed": 0, "scale": 30.0, "specials": []},
    mask_kind="both",
    causal=True,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    scale=None,
)
# Long run: float16 turned a key's and a value's 1e30 into inf, hidden from
# query 0 by the causal mask: O NaN on both sides, dQ NaN in the kernel
# only (see the test's comment). Checked for shapes only, as inf inputs.
@example(
    shape=(1, 2, 2, 1, 1, 3, 3),
    dtype=tf.float16,
    q_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    kv_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.5, 1e30)],
    },
    do_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    causal=True,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    scale=None,
)
# Long run: the same for a masked key (dK NaN for 0): dS = 0 * (dP -
# delta) for every key of P = 0 (masked, padded) now stays 0 exactly.
@example(
    shape=(1, 1, 7, 1, 1, 1, 1),
    dtype=tf.float16,
    q_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    kv_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    do_spec={"pattern": "huge", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="key",
    causal=False,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    scale=None,
)
# Long run: one key, dO ~ 30: dQ -2.3e-5 for 0 (a rounding error of dP -
# delta, in units of |dO|; see `_grad_tol`).
@example(
    shape=(1, 1, 1, 1, 1, 7, 7),
    dtype=tf.float32,
    q_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    kv_spec={"pattern": "normal", "seed": 0, "scale": 3.0, "specials": []},
    do_spec={"pattern": "normal", "seed": 0, "scale": 30.0, "specials": []},
    mask_kind="none",
    causal=False,
    top_left=False,
    rate=0.0,
    seed=(0, 0),
    scale=None,
)
# Long run: a key and value of 1e30 (injected) in bfloat16, dropout 0.1:
# the kernel's dQ = scale * P * (dP - delta) * K, with delta's rounding
# error (O rounded to bfloat16) times 1e30, overflowed float32 to inf where
# the reference's dQ is 0. dQ and dK are not compared when the predicted
# error is past the compute dtype's range.
@example(
    shape=(1, 1, 1, 1, 1, 1, 1),
    dtype=tf.bfloat16,
    q_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    kv_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, 1e30)],
    },
    do_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    causal=False,
    top_left=False,
    rate=0.1,
    seed=(0, 0),
    scale=None,
)
# Long run: equal values, dense mask, dropout 0.5 in float32: dQ/dK's
# rounding errors (delta) add up linearly (see `_grad_tol`).
@example(
    shape=(1, 63, 3, 2, 1, 3, 3),
    dtype=tf.float32,
    q_spec={"pattern": "equal", "seed": 3, "scale": 3.0, "specials": []},
    kv_spec={"pattern": "equal", "seed": 0, "scale": 3.0, "specials": []},
    do_spec={"pattern": "normal", "seed": 0, "scale": 0.1, "specials": []},
    mask_kind="dense",
    causal=False,
    top_left=False,
    rate=0.5,
    seed=(0, 0),
    scale=10.0,
)
# Long run: scores of -1.16e30 with causality: the reference's masked
# score, -1e30 then, beat the visible ones (zeros for dK 2e26); it is now
# the compute dtype's lowest finite value.
@example(
    shape=(1, 2, 13, 1, 1, 1, 1),
    dtype=tf.float32,
    q_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, 1e30)],
    },
    kv_spec={"pattern": "equal", "seed": 84813, "scale": 1.0, "specials": []},
    do_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    causal=True,
    top_left=False,
    rate=0.1,
    seed=(0, 0),
    scale=None,
)
# Long run: a query element of 1e30 against 13 equal keys (scores ~1e27,
# bfloat16, dropout 0.1): lse = m + log(13) rounded to float32 is m, so the
# backward pass's P = exp(S - lse) was 1 for each key, and dK 13x too large.
# Rows whose |lse| is too large to hold log(l) now get their max and sum
# recomputed (kLseExactLimit in cc/attention/kernels/attention.h).
@example(
    shape=(1, 1, 13, 1, 1, 1, 1),
    dtype=tf.bfloat16,
    q_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, 1e30)],
    },
    kv_spec={"pattern": "equal", "seed": 0, "scale": 0.001, "specials": []},
    do_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    causal=False,
    top_left=False,
    rate=0.1,
    seed=(0, 0),
    scale=None,
)
@given(
    shape=attention_shapes(),
    dtype=_fuzz.dtypes(),
    q_spec=_fuzz.values(),
    kv_spec=_fuzz.values(),
    do_spec=_fuzz.values(allow_special=False),
    mask_kind=MASK_KINDS,
    causal=st.booleans(),
    top_left=st.booleans(),
    rate=RATES,
    seed=st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(0, 99)),
    scale=st.sampled_from([None, 0.01, 1.0, 10.0]),
)
@_fuzz.counted(FAMILY)
def test_kernels_match_reference(
    shape,
    dtype,
    q_spec,
    kv_spec,
    do_spec,
    mask_kind,
    causal,
    top_left,
    rate,
    seed,
    scale,
):
    lib = _loader.library()
    b, tq, tk, hq, hkv, d, dv = shape
    u = tf.float64 if dtype == tf.float64 else tf.float32
    q = _fuzz.tensor(q_spec, (b, tq, hq, d), dtype)
    k = _fuzz.tensor(kv_spec, (b, tk, hkv, d), dtype, offset=1)
    v = _fuzz.tensor(kv_spec, (b, tk, hkv, dv), dtype, offset=2)
    d_o = _fuzz.tensor(do_spec, (b, tq, hq, dv), dtype, offset=3)
    key_mask, mask = _masks(mask_kind, b, tq, tk, q_spec["seed"])
    seed = tf.constant(seed, tf.int64)
    scale = float(np.float32(1 / math.sqrt(d) if scale is None else scale))
    rate = float(np.float32(rate))
    attrs = dict(
        scale=scale, causal=causal, causal_top_left=top_left, dropout_rate=rate
    )
    km = _empty_bool() if key_mask is None else key_mask
    dm = _empty_bool() if mask is None else mask
    o, lse = lib.kbm_flash_attention(q, k, v, km, dm, seed, U=u, **attrs)
    dq, dk, dv_ = lib.kbm_flash_attention_grad(
        d_o, q, k, v, km, dm, seed, o, lse, **attrs
    )
    with tf.GradientTape() as tape:
        tape.watch([q, k, v])
        o_ref = _flash_attention_reference(
            q,
            k,
            v,
            causal,
            key_mask,
            scale,
            causal_alignment="top_left" if top_left else "bottom_right",
            mask=mask,
            dropout_rate=rate,
            seed=seed,
        )
    grads = tape.gradient(o_ref, [q, k, v], output_gradients=d_o)
    tol = TOLERANCES[dtype]
    ordinary = _fuzz.is_ordinary(q_spec, kv_spec, do_spec)
    if not all(
        np.isfinite(t.numpy().astype(np.float64)).all() for t in (q, k, v)
    ):
        # 1e30 in float16 is inf: an infinite input as much as an injected
        # one (`is_ordinary`). With a causal or dense mask, a hidden key's
        # inf value makes O NaN on both sides (0 * inf), and the kernel's
        # delta = rowsum(dO * O) then NaN dQ where the reference's autodiff
        # does not read O. (Key-masked keys count as zeros on both sides.)
        ordinary = _fuzz.NONFINITE
    assert o.shape == (b, tq, hq, dv) and lse.shape == (b, hq, tq)
    o_tol = _out_tol(tol, dtype, q, k, v, scale)
    _fuzz.check_matches(o, o_ref, o_tol, ordinary, "o")
    if _huge(q_spec, kv_spec, do_spec):
        return
    g_tol = _grad_tol(
        tol, dtype, q_spec, kv_spec, tensors=(q, k, v, d_o, scale, rate)
    )
    ordinary = _grad_ordinary(ordinary, dtype, q_spec, kv_spec)
    checked = zip((dq, dk, dv_), grads, ("dq", "dk", "dv"))
    if g_tol["atol"] > np.finfo(u.as_numpy_dtype).max:
        # The rounding error `_grad_tol` predicts for dQ and dK (delta from
        # the rounded O, times |K| or |Q|: an injected 1e30, as in `_huge`)
        # is past the range of the compute dtype: they may overflow where
        # the reference's cancel to 0. dV does not read delta.
        checked = [(dv_, grads[2], "dv")]
    for got, want, what in checked:
        _fuzz.check_matches(got, want, g_tol, ordinary, what)


# Found by fuzzing: the reference returned float32 for float16/bfloat16
# inputs (so did the public op's fallback path); and, when every visible
# score overflowed to -inf, it attended to a masked key.
@example(
    shape=(1, 3, 2, 1, 1, 1, 1),
    dtype=tf.float16,
    spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.0,
)
@example(
    shape=(1, 3, 2, 1, 1, 1, 1),
    dtype=tf.bfloat16,
    spec={"pattern": "huge", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=True,
    alignment="bottom_right",
    rate=0.0,
)
# ci run (after the first fixes): one key, 13 queries, values ~ 3 in
# float32: dK -8.4e-5 for 0 (see `_grad_tol`).
@example(
    shape=(1, 13, 1, 1, 1, 1, 16),
    dtype=tf.float32,
    spec={"pattern": "normal", "seed": 0, "scale": 3.0, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.0,
)
# Long run: float32, head_dim 128, values ~ 3: O 4.8e-5 off (the scores'
# rounding, see `_out_tol`).
@example(
    shape=(1, 7, 29, 1, 1, 128, 128),
    dtype=tf.float32,
    spec={"pattern": "normal", "seed": 559, "scale": 3.0, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.0,
)
# Long run: bfloat16 values near 1e30, scores +-inf, dropout 0.9 dropping
# every key of the row: the kernel's output NaN (the row's probabilities
# are NaN), the reference's 0 (its dropout was a select). The reference
# now multiplies by the keep mask, as the kernel: NaN on both.
@example(
    shape=(1, 1, 65, 1, 1, 1, 1),
    dtype=tf.bfloat16,
    spec={"pattern": "huge", "seed": 0, "scale": 0.001, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.9,
)
# Long run: dK 0.011 for 0 in float16, equal values, two heads, Dv = 3,
# rate 0.1 (`_grad_tol`: the errors add up linearly).
@example(
    shape=(1, 2, 1, 2, 1, 1, 3),
    dtype=tf.float16,
    spec={"pattern": "equal", "seed": 2084846, "scale": 1.0, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.1,
)
# Long run: one key, three equal queries, Dv = 31, dropout 0.1 in float32:
# dK -6.8e-5 for 0 (dS = dP - delta cancels; see `_grad_tol`); the same
# with Dv = 64 and one query: dQ 2.6e-4 for 0.
@example(
    shape=(1, 1, 1, 1, 1, 64, 64),
    dtype=tf.float32,
    spec={"pattern": "equal", "seed": 80, "scale": 3.0, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.1,
)
@example(
    shape=(1, 3, 1, 1, 1, 31, 31),
    dtype=tf.float32,
    spec={"pattern": "equal", "seed": 1, "scale": 3.0, "specials": []},
    mask_kind="none",
    lengths=False,
    causal=False,
    alignment="bottom_right",
    rate=0.1,
)
@given(
    shape=attention_shapes(),
    dtype=_fuzz.dtypes(),
    spec=_fuzz.values(allow_special=False),
    mask_kind=MASK_KINDS,
    lengths=st.booleans(),
    causal=st.booleans(),
    alignment=st.sampled_from(["bottom_right", "top_left"]),
    rate=RATES,
)
@_fuzz.counted(FAMILY)
def test_public_op_fused_matches_reference(
    shape, dtype, spec, mask_kind, lengths, causal, alignment, rate
):
    b, tq, tk, hq, hkv, d, dv = shape
    q = _fuzz.tensor(spec, (b, tq, hq, d), dtype)
    k = _fuzz.tensor(spec, (b, tk, hkv, d), dtype, offset=1)
    v = _fuzz.tensor(spec, (b, tk, hkv, dv), dtype, offset=2)
    d_o = _fuzz.tensor(spec, (b, tq, hq, dv), dtype, offset=3)
    key_mask, mask = _masks(mask_kind, b, tq, tk, spec["seed"])
    if lengths and key_mask is not None:
        key_mask = tf.reduce_sum(tf.cast(key_mask, tf.int32), axis=1)
    results = []
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            o = kbm.ops.flash_attention(
                q,
                k,
                v,
                causal=causal,
                key_mask=key_mask,
                causal_alignment=alignment,
                mask=mask,
                dropout_rate=rate,
                seed=[spec["seed"], 7],
                use_fused_kernel=fused,
            )
        results.append((o, *tape.gradient(o, [q, k, v], output_gradients=d_o)))
    tol = TOLERANCES[dtype]
    ordinary = _fuzz.is_ordinary(spec)
    g_tol = _grad_tol(
        tol,
        dtype,
        spec,
        tensors=(q, k, v, d_o, 1 / math.sqrt(max(1, d)), rate),
    )
    for got, want, what in zip(*results, ("o", "dq", "dk", "dv")):
        if what != "o" and _huge(spec):
            break
        if what == "o":
            o_tol = _out_tol(tol, dtype, q, k, v, 1 / math.sqrt(max(1, d)))
            _fuzz.check_matches(got, want, o_tol, ordinary, what)
        else:
            g_ordinary = _grad_ordinary(ordinary, dtype, spec)
            _fuzz.check_matches(got, want, g_tol, g_ordinary, what)


GRAD_TARGETS = ["d_o", "key_mask", "mask", "seed", "o", "lse"]


# Long run: a corrupted key_mask of shape [1, 1] (batch = kv_length = 1)
# or with no elements (= no mask) was a valid one; the test now makes one
# of no valid shape.
@example(
    shape=(1, 0, 1, 1, 1, 1, 1),
    dtype=tf.float16,
    target="key_mask",
    how="drop",
    forward=False,
    mask_kind="key",
)
@example(
    shape=(1, 0, 1, 1, 1, 1, 1),
    dtype=tf.float16,
    target="key_mask",
    how="drop",
    forward=False,
    mask_kind="none",
)
@given(
    shape=attention_shapes(),
    dtype=_fuzz.dtypes(),
    target=st.sampled_from(GRAD_TARGETS),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
    forward=st.booleans(),
    mask_kind=st.sampled_from(["none", "key", "both"]),
)
@_fuzz.counted(FAMILY)
def test_kernels_reject_inconsistent_inputs(
    shape, dtype, target, how, forward, mask_kind
):
    lib = _loader.library()
    b, tq, tk, hq, hkv, d, dv = shape
    u = tf.float64 if dtype == tf.float64 else tf.float32
    q = tf.ones((b, tq, hq, d), dtype)
    k = tf.ones((b, tk, hkv, d), dtype)
    v = tf.ones((b, tk, hkv, dv), dtype)
    key_mask, mask = _masks(mask_kind, b, tq, tk, 0)
    km = _empty_bool() if key_mask is None else key_mask
    dm = _empty_bool() if mask is None else mask
    seed = tf.constant([1, 2], tf.int64)
    attrs = dict(scale=0.5, dropout_rate=0.25)
    o, lse = lib.kbm_flash_attention(q, k, v, km, dm, seed, U=u, **attrs)
    inputs = {
        "d_o": o,
        "q": q,
        "k": k,
        "v": v,
        "key_mask": km,
        "mask": dm,
        "seed": seed,
        "o": o,
        "lse": lse,
    }
    if forward:
        del inputs["d_o"], inputs["o"], inputs["lse"]
        if target not in inputs:
            target = "seed"
    t = inputs[target]
    if t.dtype == tf.bool:
        if how == "dtype":
            bad = tf.cast(t, tf.int32)
        elif t.shape.num_elements() == 0:
            # Non-empty and of no valid shape ([1, 1] is a valid key_mask
            # when batch = kv_length = 1).
            bad = tf.zeros([b + 2, tk + 3], tf.bool)
        else:
            bad = tf.cast(_fuzz.corrupt(tf.cast(t, tf.int32), how, u), tf.bool)
            if bad.shape.num_elements() == 0:  # empty = no mask: valid
                bad = tf.zeros([b + 2, tk + 3], tf.bool)
    else:
        other = tf.float64 if t.dtype != tf.float64 else tf.float32
        if t.dtype == tf.int64:
            other = tf.int32
        bad = _fuzz.corrupt(t, how, other)
    inputs[target] = bad
    op = lib.kbm_flash_attention if forward else lib.kbm_flash_attention_grad
    if forward:
        attrs["U"] = u
    index = list(inputs).index(target)
    _fuzz.check_rejects_corrupt(
        lambda: op(*inputs.values(), **attrs),
        [target, f"input #{index}"],
        how,
    )


@given(
    shape=attention_shapes(),
    what=st.sampled_from(
        ["head_dim", "kv_length", "heads", "batch", "scale", "rate", "rank"]
    ),
    raw=st.booleans(),
    bad_value=st.sampled_from([float("nan"), float("inf"), -0.5, 1.0, 1.5]),
)
@_fuzz.counted(FAMILY)
def test_rejects_inconsistent_qkv_and_attributes(shape, what, raw, bad_value):
    b, tq, tk, hq, hkv, d, dv = shape
    dims = {"q": [b, tq, hq, d], "k": [b, tk, hkv, d], "v": [b, tk, hkv, dv]}
    scale, rate = 0.5, 0.0
    names = []
    if what == "head_dim":
        dims["k"][3] += 1
        names = ["head_dim", "k must"]
    elif what == "kv_length":
        dims["v"][1] += 1
        names = ["v must", "length"]
    elif what == "heads":
        dims["k"][2] = dims["v"][2] = hq + 1
        names = ["heads"]
    elif what == "batch":
        dims["v"][0] += 1
        dims["k"][0] += 1
        names = ["batch"]
    elif what == "rank":
        dims["q"] = dims["q"][1:]
        names = ["q must have rank 4"]
    elif what == "scale":
        scale = float("nan") if bad_value != float("inf") else bad_value
        names = ["scale"]
    else:
        rate = bad_value if not 0 <= bad_value < 1 else 1.0
        names = ["dropout_rate"]
    q, k, v = (tf.ones(dims[n]) for n in ("q", "k", "v"))
    if raw:
        lib = _loader.library()
        none = _empty_bool()
        seed = tf.constant([1, 2], tf.int64)
        fn = lambda: lib.kbm_flash_attention(  # noqa: E731
            q, k, v, none, none, seed, scale=scale, dropout_rate=rate
        )
    else:
        fn = lambda: kbm.ops.flash_attention(  # noqa: E731
            q, k, v, scale=scale, dropout_rate=rate, seed=[1, 2]
        )
    _fuzz.check_rejects(fn, names)
