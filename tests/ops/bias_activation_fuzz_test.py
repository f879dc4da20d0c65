"""Property-based tests of bias + GELU (exact and tanh): kernels, public op.

Properties: no crash; the kernels (forward and gradient) match the
reference within `TOLERANCES` and are non-finite only where the reference
is; inconsistent inputs (bias, dy) are rejected with an error naming the
tensor.
"""

import numpy as np
import tensorflow as tf
from hypothesis import example, given
from hypothesis import strategies as st

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.bias_activation import (
    TOLERANCES,
    _bias_gelu_reference,
)
from tests.ops import _fuzz

FAMILY = "bias_activation"


def _shape(shape, empty):
    return shape[:-1] + (0,) if empty else shape


def _dx_tol(tol, dy):
    """dx = dy * gelu'(z): the kernel's erf has an absolute error (1.5e-7),
    so dx's error is absolute in units of |dy| (large in gelu's tails)."""
    d = _fuzz.to_f64(dy)
    big = float(np.nanmax(np.abs(d))) if d.size else 1.0
    big = big if np.isfinite(big) else 1.0
    return {"rtol": tol["rtol"], "atol": tol["atol"] * max(1.0, big)}


def _param_tol(tol, shape):
    rows = max(1, int(np.prod(shape[:-1])))
    return {k: v * np.sqrt(rows) for k, v in tol.items()}


def _dbias_tol(tol, dy, shape):
    """dbias sums dx over the rows: dx's absolute error (in units of |dy|,
    `_dx_tol`) grows like sqrt(rows). Both sides compute Phi(z) as
    0.5 * (1 + erf(z / sqrt 2)), which cancels for negative z, so a huge dy
    at one z in gelu's tail is off by erf's absolute error times |dy|."""
    return _param_tol(_dx_tol(tol, dy), shape)


# A huge dy (1e30) in gelu's negative tail (z about -4): dbias 3.911e26 vs
# 3.9109e26, within erf's absolute error times |dy|.
@example(
    approximate=False,
    shape=(4, 8191),
    empty=False,
    dtype=tf.float32,
    x_spec={"pattern": "normal", "seed": 0, "scale": 1e-3, "specials": []},
    b_spec={"pattern": "normal", "seed": 0, "scale": 3.0, "specials": []},
    dy_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 1e-3,
        "specials": [(0.05859375, 1e30)],
    },
)
@given(
    approximate=st.booleans(),
    shape=_fuzz.row_shapes(),
    empty=st.sampled_from([False] * 9 + [True]),
    dtype=_fuzz.dtypes(),
    x_spec=_fuzz.values(),
    b_spec=_fuzz.values(),
    dy_spec=_fuzz.values(),
)
@_fuzz.counted(FAMILY)
def test_kernels_match_reference(
    approximate, shape, empty, dtype, x_spec, b_spec, dy_spec
):
    lib = _loader.library()
    shape = _shape(shape, empty)
    x = _fuzz.tensor(x_spec, shape, dtype)
    bias = _fuzz.tensor(b_spec, shape[-1:], dtype, offset=1)
    dy = _fuzz.tensor(dy_spec, shape, dtype, offset=2)
    y = lib.kbm_bias_gelu(x, bias, approximate=approximate)
    dx, dbias = lib.kbm_bias_gelu_grad(dy, x, bias, approximate=approximate)
    with tf.GradientTape() as tape:
        tape.watch([x, bias])
        y_ref = _bias_gelu_reference(x, bias, approximate)
    dx_ref, dbias_ref = tape.gradient(y_ref, [x, bias], output_gradients=dy)
    tol = TOLERANCES[dtype]
    ordinary = _fuzz.is_ordinary(x_spec, b_spec, dy_spec)
    assert y.dtype == dtype and y.shape == x.shape
    _fuzz.check_matches(y, y_ref, tol, ordinary, "y")
    _fuzz.check_matches(dx, dx_ref, _dx_tol(tol, dy), ordinary, "dx")
    _fuzz.check_matches(
        dbias, dbias_ref, _dbias_tol(tol, dy, shape), ordinary, "dbias"
    )


# dy of scale 30: db 0.0128019 vs 0.0127969 (dx's error in units of |dy|).
@example(
    approximate=False,
    shape=(8191,),
    dtype=tf.float32,
    x_spec={"pattern": "normal", "seed": 0, "scale": 30.0, "specials": []},
    with_bias=True,
)
@given(
    approximate=st.booleans(),
    shape=_fuzz.row_shapes(max_elements=1 << 13),
    dtype=_fuzz.dtypes(),
    x_spec=_fuzz.values(allow_special=False),
    with_bias=st.booleans(),
)
@_fuzz.counted(FAMILY)
def test_public_op_fused_matches_reference(
    approximate, shape, dtype, x_spec, with_bias
):
    x = _fuzz.tensor(x_spec, shape, dtype)
    bias = _fuzz.tensor(x_spec, shape[-1:], dtype, offset=1)
    dy = _fuzz.tensor(x_spec, shape, dtype, offset=2)
    results = []
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, bias])
            y = kbm.ops.bias_gelu(
                x,
                bias if with_bias else None,
                approximate=approximate,
                use_fused_kernel=fused,
            )
        results.append((y, *tape.gradient(y, [x, bias], output_gradients=dy)))
    tol = TOLERANCES[dtype]
    ordinary = _fuzz.is_ordinary(x_spec)
    (y, dx, db), (y_ref, dx_ref, db_ref) = results
    _fuzz.check_matches(y, y_ref, tol, ordinary, "y")
    _fuzz.check_matches(dx, dx_ref, _dx_tol(tol, dy), ordinary, "dx")
    if with_bias:
        _fuzz.check_matches(
            db, db_ref, _dbias_tol(tol, dy, shape), ordinary, "db"
        )


@given(
    approximate=st.booleans(),
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    dtype=_fuzz.dtypes(),
    grad=st.booleans(),
    target=st.sampled_from(["dy", "bias"]),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
)
@_fuzz.counted(FAMILY)
def test_kernels_reject_inconsistent_inputs(
    approximate, shape, dtype, grad, target, how
):
    lib = _loader.library()
    x = tf.ones(shape, dtype)
    inputs = {"dy": x, "x": x, "bias": tf.ones(shape[-1:], dtype)}
    op = lib.kbm_bias_gelu_grad
    if not grad:
        del inputs["dy"]
        target = "bias"
        op = lib.kbm_bias_gelu
    other = tf.float64 if dtype != tf.float64 else tf.float32
    inputs[target] = _fuzz.corrupt(inputs[target], how, other)
    index = list(inputs).index(target)
    _fuzz.check_rejects_corrupt(
        lambda: op(*inputs.values(), approximate=approximate),
        [target, f"input #{index}"],
        how,
    )


@given(
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    how=st.sampled_from(["drop", "grow", "rank_up", "scalar"]),
    fused=st.sampled_from([True, False, "auto"]),
)
@_fuzz.counted(FAMILY)
def test_public_op_rejects_inconsistent_bias(shape, how, fused):
    x = tf.ones(shape)
    bias = _fuzz.corrupt(tf.ones(shape[-1:]), how, tf.float32)
    _fuzz.check_rejects(
        lambda: kbm.ops.bias_gelu(x, bias, use_fused_kernel=fused), ["bias"]
    )


# ------------------------------------------------------------- dropout ----

SEEDS = st.integers(-(2**63), 2**63 - 1)
RATES = st.one_of(
    st.sampled_from([0.0, 1e-9, 0.1, 0.5, 0.9, 0.999999]),
    st.floats(0.0, 0.999, allow_nan=False),
)


def _exact(actual, expected, what):
    """Bitwise equal, NaN where NaN (the same draws, the same product)."""
    np.testing.assert_array_equal(
        _fuzz.to_f64(actual), _fuzz.to_f64(expected), err_msg=what
    )


@given(
    shape=_fuzz.row_shapes(max_elements=1 << 13),
    dtype=_fuzz.dtypes(),
    x_spec=_fuzz.values(),
    rate=RATES,
    seed=st.tuples(SEEDS, SEEDS),
)
@_fuzz.counted(FAMILY)
def test_dropout_kernel_equals_reference(shape, dtype, x_spec, rate, seed):
    from keras_bigmodels.ops.bias_activation import _dropout_reference

    lib = _loader.library()
    x = _fuzz.tensor(x_spec, shape, dtype)
    s = tf.constant(seed, tf.int64)
    y = lib.kbm_dropout(x, s, rate=rate)
    # The gradient is the same op on dy: one draw of the stream checks both.
    with tf.GradientTape() as tape:
        tape.watch(x)
        y_ref = _dropout_reference(x, s, rate)
    dy = _fuzz.tensor(x_spec, shape, dtype, offset=2)
    dx_ref = tape.gradient(y_ref, x, output_gradients=dy)
    dx = lib.kbm_dropout(dy, s, rate=rate)
    assert y.dtype == dtype and y.shape == x.shape
    _exact(y, y_ref, "y")
    _exact(dx, dx_ref, "dx")


@given(
    seed_shape=st.sampled_from([(), (1,), (3,), (2, 1), (1, 2)]),
    rate=st.one_of(
        st.floats(allow_nan=True).filter(lambda r: not 0 <= r < 1),
        st.sampled_from([1.0, -1e-9]),
    ),
    which=st.sampled_from(["seed", "rate"]),
    fused=st.sampled_from([True, False, "auto"]),
)
@_fuzz.counted(FAMILY)
def test_dropout_rejects_bad_seed_and_rate(seed_shape, rate, which, fused):
    x = tf.ones([3, 5])
    if which == "seed":
        seed = tf.zeros(seed_shape, tf.int64)
        _fuzz.check_rejects(
            lambda: kbm.ops.dropout(x, 0.5, seed, use_fused_kernel=fused),
            ["seed"],
        )
        lib = _loader.library()
        _fuzz.check_rejects(
            lambda: lib.kbm_dropout(x, seed, rate=0.5), ["seed"]
        )
    else:
        _fuzz.check_rejects(
            lambda: kbm.ops.dropout(x, rate, [1, 2], use_fused_kernel=fused),
            ["rate"],
        )
