"""Property-based tests of LayerNorm and RMSNorm: kernels and public ops.

Properties: no crash; the kernels (forward and gradient) match the
references within `TOLERANCES` and are non-finite only where the reference
is; inconsistent inputs and companion tensors (mean, rstd, dy) are rejected
with an error naming the tensor.
"""

import numpy as np
import tensorflow as tf
from hypothesis import example, given
from hypothesis import strategies as st

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.normalization import (
    TOLERANCES,
    _layer_norm_reference,
    _rms_norm_reference,
)
from tests.ops import _fuzz

FAMILY = "normalization"
EPSILONS = st.sampled_from([0.0, 1e-12, 1e-6, 1e-5, 1e-3, 0.1, 1.0, 1e3])


def _u(dtype):
    return tf.float64 if dtype == tf.float64 else tf.float32


def _ordinary(eps, shape, *specs):
    # Rows of equal values (and single columns) are ill-conditioned unless
    # epsilon dominates their (rounding-error) variance: 1/sqrt(epsilon)
    # multiplies rounding errors, so only the finiteness property holds.
    ordinary = _fuzz.is_ordinary(*specs)
    equal = shape[-1] == 1 or any(s["pattern"] == "equal" for s in specs)
    if equal and eps < 1e-3 and ordinary is not _fuzz.NONFINITE:
        return None
    return ordinary


def _dx_tol(tol, x, dy, gamma, eps, rms):
    """dx's tolerance: its absolute error grows with |dy| |gamma| rstd (dx
    is rstd * (gamma dy - means of it), a difference of such terms)."""
    xs = _fuzz.to_f64(x)
    if not xs.size:
        return tol
    centred = xs if rms else xs - xs.mean(-1, keepdims=True)
    with np.errstate(all="ignore"):
        rstd = 1 / np.sqrt((centred**2).mean(-1) + eps)
    big = np.nanmax(np.abs(_fuzz.to_f64(dy))) * np.nanmax(
        np.abs(_fuzz.to_f64(gamma))
    )
    factor = float(np.nan_to_num(big * np.nanmax(rstd), posinf=1.0))
    return {k: v * max(1.0, factor) for k, v in tol.items()}


def _dx_overflows(dtype, dx_tol, tol):
    """True when dx's rounding error (u |dy| |gamma| rstd, the factor of
    `_dx_tol`) alone exceeds the output dtype's range: dx is then a
    difference of terms that cancel to about 0 (exactly, for one column)
    and whether it rounds to 0 or overflows to +-inf is rounding on either
    side (the reference gives 0 or +-inf by seed). Shapes only there."""
    factor = dx_tol["atol"] / tol["atol"]
    u = 2.3e-16 if dtype == tf.float64 else 1.2e-7
    return factor * u > float(dtype.max)


def _xhat_tol(tol, x, eps, rms, times):
    """`tol` plus xhat's rounding error times `times` (|gamma| for y,
    |dy| sqrt(rows) for dgamma). LayerNorm's x - mean cancels when |x| is
    much larger than the row's spread (8190 equal values and one 0: std =
    |x| / 90), an error of about eps |x - x0| rstd in xhat, differently
    summed on each side (dgamma 5e-5 off at 0.1)."""
    xs = _fuzz.to_f64(x)
    if rms or not xs.size:
        return tol
    u = 2.3e-16 if x.dtype == tf.float64 else 1.2e-7
    with np.errstate(all="ignore"):
        spread = np.abs(xs - xs[..., :1])
        centred = xs - xs.mean(-1, keepdims=True)
        rstd = 1 / np.sqrt((centred**2).mean(-1) + eps)
    big = [a[np.isfinite(a)] for a in (spread, rstd)]
    if not all(a.size for a in big):
        return tol
    extra = 4 * u * big[0].max() * big[1].max() * times
    if not np.isfinite(extra):
        return tol
    return {"rtol": tol["rtol"], "atol": tol["atol"] + extra}


def _finite_max(t):
    a = np.abs(_fuzz.to_f64(t))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _param_tol(tol, shape):
    # Parameter gradients sum over rows (as in kernel_vs_reference).
    rows = max(1, int(np.prod(shape[:-1])))
    return {k: v * np.sqrt(rows) for k, v in tol.items()}


def _reference_grads(fn, dy, inputs):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = fn(*inputs)
    return y, tape.gradient(y, inputs, output_gradients=dy)


# Long run: float64, an outlier of 1e30 in first place: the mean shifted by
# x0 = 1e30 lost 1e-9 of itself (8190 sums of -1e30), dgamma too; the
# kernels now correct the mean by the mean of the residuals (and the
# variance with it), as the reference does.
@example(
    rms=False,
    shape=(8191,),
    dtype=tf.float64,
    x_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.0, 1e30)],
    },
    p_spec={"pattern": "normal", "seed": 0, "scale": 0.001, "specials": []},
    dy_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 0.001,
        "specials": [(0.5, 1e30)],
    },
    eps=0.0,
)
# Long run: a row of 8190 equal values (~30) and one 1e-40: the spread is
# |x| / 90 and x - mean cancels, dgamma 5e-5 off at 0.1 (`_xhat_tol`).
@example(
    rms=False,
    shape=(8191,),
    dtype=tf.float32,
    x_spec={
        "pattern": "equal",
        "seed": 0,
        "scale": 30.0,
        "specials": [(0.0, 1e-40)],
    },
    p_spec={"pattern": "normal", "seed": 0, "scale": 1e-3, "specials": []},
    dy_spec={
        "pattern": "normal",
        "seed": 0,
        "scale": 3.0,
        "specials": [(0.0, 1e-40)],
    },
    eps=1e-3,
)
# Long run: a row of one value (30 * N(0, 1)) at epsilon 1e-3: the float32
# mean of 8191 copies was 17 ulp off, y = beta + that / sqrt(epsilon) on
# both sides, differently. The kernels and the reference now shift the row
# by its first element: y = beta exactly.
@example(
    rms=False,
    shape=(8191,),
    dtype=tf.float32,
    x_spec={"pattern": "equal", "seed": 0, "scale": 30.0, "specials": []},
    p_spec={"pattern": "normal", "seed": 0, "scale": 1.0, "specials": []},
    dy_spec={"pattern": "normal", "seed": 0, "scale": 1e-3, "specials": []},
    eps=1e-3,
)
# Long run: float16 RMSNorm of one column, gamma ~ 1e30, epsilon 0: dx
# = rstd gamma dy (1 - xhat^2) is 0, but its terms are 1e30 and their
# rounding error (1e23) overflows float16: the kernel's dx -inf, the
# reference's 0 (or +-inf, by seed). See `_dx_overflows`.
@example(
    rms=True,
    shape=(3, 1),
    dtype=tf.float16,
    x_spec={"pattern": "normal", "seed": 2, "scale": 1.0, "specials": []},
    p_spec={"pattern": "huge", "seed": 2, "scale": 1.0, "specials": []},
    dy_spec={"pattern": "normal", "seed": 2, "scale": 1.0, "specials": []},
    eps=0.0,
)
@given(
    rms=st.booleans(),
    shape=_fuzz.row_shapes(),
    dtype=_fuzz.dtypes(),
    x_spec=_fuzz.values(),
    p_spec=_fuzz.values(allow_special=False),
    dy_spec=_fuzz.values(),
    eps=EPSILONS,
)
@_fuzz.counted(FAMILY)
def test_kernels_match_reference(
    rms, shape, dtype, x_spec, p_spec, dy_spec, eps
):
    lib = _loader.library()
    u = _u(dtype)
    eps = float(np.float32(eps))
    x = _fuzz.tensor(x_spec, shape, dtype)
    dy = _fuzz.tensor(dy_spec, shape, dtype, offset=1)
    gamma = _fuzz.tensor(p_spec, shape[-1:], u, offset=2)
    beta = _fuzz.tensor(p_spec, shape[-1:], u, offset=3)
    tol = TOLERANCES[dtype]
    ordinary = _ordinary(eps, shape, x_spec, p_spec, dy_spec)
    if rms:
        y, rstd = lib.kbm_fused_rms_norm(x, gamma, epsilon=eps)
        dx, dgamma = lib.kbm_fused_rms_norm_grad(
            dy, x, gamma, rstd, epsilon=eps
        )
        y_ref, (dx_ref, dgamma_ref) = _reference_grads(
            lambda x, g: _rms_norm_reference(x, g, eps), dy, [x, gamma]
        )
        pairs = [(dgamma, dgamma_ref, "dgamma")]
    else:
        y, mean, rstd = lib.kbm_fused_layer_norm(x, gamma, beta, epsilon=eps)
        dx, dgamma, dbeta = lib.kbm_fused_layer_norm_grad(
            dy, x, gamma, mean, rstd, epsilon=eps
        )
        y_ref, (dx_ref, dgamma_ref, dbeta_ref) = _reference_grads(
            lambda x, g, b: _layer_norm_reference(x, g, b, eps),
            dy,
            [x, gamma, beta],
        )
        pairs = [(dgamma, dgamma_ref, "dgamma"), (dbeta, dbeta_ref, "dbeta")]
    assert y.dtype == dtype and y.shape == x.shape and rstd.dtype == u
    y_tol = _xhat_tol(tol, x, eps, rms, _finite_max(gamma))
    _fuzz.check_matches(y, y_ref, y_tol, ordinary, "y")
    # Huge or special dy: dx's rounding error is relative to |dy|, not to
    # dx (0 for a single column): finiteness only.
    dx_ordinary = None if ordinary is False else ordinary
    dx_tol = _dx_tol(tol, x, dy, gamma, eps, rms)
    if _dx_overflows(dtype, dx_tol, tol):
        dx_ordinary = _fuzz.NONFINITE
    _fuzz.check_matches(dx, dx_ref, dx_tol, dx_ordinary, "dx")
    rows = max(1, int(np.prod(shape[:-1])))
    p_tol = _xhat_tol(
        _param_tol(tol, shape), x, eps, rms, _finite_max(dy) * np.sqrt(rows)
    )
    for got, want, what in pairs:
        _fuzz.check_matches(got, want, p_tol, ordinary, what)


# Long run: dx of two columns (exactly 0) against a tolerance that did not
# grow with |dy| |gamma| rstd.
# Then: a constant row at epsilon 1e-3 (as in test_kernels_match_reference),
# and at epsilon 0, where the kernel gave NaN (0/0) and the reference a
# finite rounding error of its mean over sqrt(its rounding-error variance).
# Both now give the documented NaN.
@example(
    rms=False,
    shape=(8191,),
    dtype=tf.float32,
    x_spec={"pattern": "equal", "seed": 0, "scale": 30.0, "specials": []},
    eps=1e-3,
)
@example(
    rms=False,
    shape=(127,),
    dtype=tf.float32,
    x_spec={"pattern": "equal", "seed": 0, "scale": 1e-3, "specials": []},
    eps=0.0,
)
@example(
    rms=False,
    shape=(2, 2),
    dtype=tf.float32,
    x_spec={"pattern": "normal", "seed": 1, "scale": 30.0, "specials": []},
    eps=0.0,
)
# Long run: 8191 values ~ N(0, 30), gamma too: y -7.95e-4 for -7.75e-4
# where x - mean cancels (y's tolerance is now xhat's, as in
# test_kernels_match_reference).
@example(
    rms=False,
    shape=(8191,),
    dtype=tf.float32,
    x_spec={
        "pattern": "normal",
        "seed": 11095431,
        "scale": 30.0,
        "specials": [],
    },
    eps=0.0,
)
# Long run: 32768 equal values (x, gamma and dy), eps 1e-3: dx 0.0071 for
# -0.0007 (mean(gamma dy) summed 1024 equal terms per SIMD lane in a row,
# times rstd = 32); the row sums now add blocks of 512 columns.
@example(
    rms=False,
    shape=(32768,),
    dtype=tf.float32,
    x_spec={"pattern": "equal", "seed": 2, "scale": 3.0, "specials": []},
    eps=0.001,
)
@example(
    rms=True,
    shape=(32768,),
    dtype=tf.float32,
    x_spec={"pattern": "equal", "seed": 2, "scale": 3.0, "specials": []},
    eps=0.001,
)
@given(
    rms=st.booleans(),
    shape=_fuzz.row_shapes(max_elements=1 << 13),
    dtype=_fuzz.dtypes(),
    x_spec=_fuzz.values(allow_special=False),
    eps=EPSILONS,
)
@_fuzz.counted(FAMILY)
def test_public_ops_fused_match_reference(rms, shape, dtype, x_spec, eps):
    x = _fuzz.tensor(x_spec, shape, dtype)
    gamma = _fuzz.tensor(x_spec, shape[-1:], tf.float32, offset=2)
    dy = _fuzz.tensor(x_spec, shape, dtype, offset=1)
    results = []
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma])
            if rms:
                y = kbm.ops.rms_norm(x, gamma, eps, use_fused_kernel=fused)
            else:
                y = kbm.ops.layer_norm(
                    x, gamma, None, eps, use_fused_kernel=fused
                )
        results.append((y, *tape.gradient(y, [x, gamma], output_gradients=dy)))
    tol = TOLERANCES[dtype]
    ordinary = _ordinary(eps, shape, x_spec)
    (y, dx, dg), (y_ref, dx_ref, dg_ref) = results
    y_tol = _xhat_tol(tol, x, eps, rms, _finite_max(gamma))
    _fuzz.check_matches(y, y_ref, y_tol, ordinary, "y")
    dx_tol = _dx_tol(tol, x, dy, gamma, eps, rms)
    dx_ordinary = ordinary
    if _dx_overflows(dtype, dx_tol, tol):
        dx_ordinary = _fuzz.NONFINITE
    _fuzz.check_matches(dx, dx_ref, dx_tol, dx_ordinary, "dx")
    _fuzz.check_matches(dg, dg_ref, _param_tol(tol, shape), ordinary, "dgamma")


@given(
    rms=st.booleans(),
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    dtype=_fuzz.dtypes(),
    target=st.sampled_from(["dy", "x", "gamma", "mean", "rstd"]),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
)
@_fuzz.counted(FAMILY)
def test_gradient_kernels_reject_inconsistent_inputs(
    rms, shape, dtype, target, how
):
    lib = _loader.library()
    u = _u(dtype)
    x = tf.ones(shape, dtype)
    gamma = tf.ones(shape[-1:], u)
    if rms:
        _, rstd = lib.kbm_fused_rms_norm(x, gamma)
        inputs = {"dy": x, "x": x, "gamma": gamma, "rstd": rstd}
        op = lib.kbm_fused_rms_norm_grad
    else:
        _, mean, rstd = lib.kbm_fused_layer_norm(x, gamma, gamma)
        inputs = {"dy": x, "x": x, "gamma": gamma, "mean": mean, "rstd": rstd}
        op = lib.kbm_fused_layer_norm_grad
    if target not in inputs:
        target = "rstd"
    other = tf.float64 if inputs[target].dtype != tf.float64 else tf.float32
    bad = _fuzz.corrupt(inputs[target], how, other)
    inputs[target] = bad
    index = list(inputs).index(target)
    names = [target, f"input #{index}"]
    if target == "x":
        # x sets the expected shapes: the others are then inconsistent.
        names += ["dy", "gamma", "mean", "rstd", "x"]
    _fuzz.check_rejects_corrupt(lambda: op(*inputs.values()), names, how)


@given(
    rms=st.booleans(),
    shape=_fuzz.row_shapes(max_elements=1 << 10),
    target=st.sampled_from(["gamma", "beta", "epsilon", "x"]),
    how=st.sampled_from(["drop", "grow", "rank_up", "scalar"]),
    eps=st.sampled_from([-1.0, -1e-30, float("nan"), float("inf")]),
    fused=st.sampled_from([True, False, "auto"]),
)
@_fuzz.counted(FAMILY)
def test_public_ops_reject_inconsistent_inputs(
    rms, shape, target, how, eps, fused
):
    x = tf.ones(shape)
    gamma = tf.ones(shape[-1:])
    kwargs = {"gamma": gamma, "use_fused_kernel": fused}
    if not rms:
        kwargs["beta"] = gamma
    if target == "beta" and rms:
        target = "gamma"
    if target == "epsilon":
        kwargs["epsilon"] = eps
    elif target == "x":
        x = tf.ones(shape[:-1] + (0,)) if how != "scalar" else tf.ones([])
    else:
        kwargs[target] = _fuzz.corrupt(kwargs[target], how, tf.float32)
    op = kbm.ops.rms_norm if rms else kbm.ops.layer_norm
    _fuzz.check_rejects(lambda: op(x, **kwargs), [target])
