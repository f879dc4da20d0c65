"""Property-based tests of the quantized matmuls (W8A8, weight-only).

Properties: no crash; the kernels match the references within `TOLERANCES`
and are non-finite only where the references are (rows with NaN or Inf are
NaN rows in both); inconsistent inputs are rejected with an error naming
the tensor.
"""

import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from keras_bigmodels import ops
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.quantization import TOLERANCES
from tests.ops import _fuzz

FAMILY = "quantization"
DTYPES = (tf.float16, tf.bfloat16, tf.float32)
ACTIVATIONS = ("linear", "relu", "gelu", "gelu_tanh")
K_SIZES = (1, 2, 3, 4, 5, 7, 8, 31, 64, 96, 129, 385)


@st.composite
def problems(draw, max_rows=300):
    rows = draw(
        st.one_of(st.sampled_from((0, 1, 3, 4, 5, 8)), st.integers(1, max_rows))
    )
    k = draw(st.one_of(st.sampled_from(K_SIZES), st.integers(1, 200)))
    n = draw(
        st.one_of(st.sampled_from((1, 7, 8, 9, 16, 17)), st.integers(1, 70))
    )
    return rows, k, n


def _weights(seed, k, n, bits=8, group=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    q, s = ops.quantize_kernel(w, bits=bits, group_size=group)
    return ops.pack_kernel(q, bits), s, rng.standard_normal(n).astype("f4")


@given(
    problem=problems(),
    dtype=st.sampled_from(DTYPES),
    activation=st.sampled_from(ACTIVATIONS),
    with_bias=st.booleans(),
    float_out=st.booleans(),
    x_spec=_fuzz.values(),
)
@_fuzz.counted(FAMILY)
def test_w8a8_kernel_matches_reference(
    problem, dtype, activation, with_bias, float_out, x_spec
):
    rows, k, n = problem
    x = _fuzz.tensor(x_spec, (rows, k), dtype)
    packed, scale, bias = _weights(x_spec["seed"], k, n)
    bias = tf.constant(bias if with_bias else np.zeros(0), tf.float32)
    out = tf.float32 if float_out else dtype
    y = _loader.library().kbm_quantized_mat_mul(
        x, packed, scale, bias, activation=activation, output_dtype=out
    )
    y_ref = ops.quantized_matmul(
        x,
        packed,
        scale,
        bias if with_bias else None,
        activation,
        out,
        use_fused_kernel=False,
    )
    assert y.dtype == out and y.shape == (rows, n)
    # NaN/Inf rows are NaN rows in both, by contract.
    np.testing.assert_array_equal(
        np.isnan(tf.cast(y, tf.float32)), np.isnan(tf.cast(y_ref, tf.float32))
    )
    ordinary = _fuzz.is_ordinary(x_spec)
    ordinary = ordinary if ordinary is _fuzz.NONFINITE else True
    _fuzz.check_matches(y, y_ref, TOLERANCES["int8"][out], ordinary, "y")


@given(
    problem=problems(max_rows=20),
    dtype=st.sampled_from(DTYPES),
    activation=st.sampled_from(ACTIVATIONS),
    quant=st.sampled_from(
        [(8, None), (8, "2"), (8, "all"), (4, "2"), (4, "half"), (4, "all")]
    ),
    with_bias=st.booleans(),
    x_spec=_fuzz.values(allow_special=False),
)
@_fuzz.counted(FAMILY)
def test_weight_only_kernel_matches_reference(
    problem, dtype, activation, quant, with_bias, x_spec
):
    rows, k, n = problem
    bits, how = quant
    group = None
    if how is not None:  # Grouped scales: an even K the groups divide.
        k = 2 * k
        half = k // 2 if k % 4 == 0 else k
        group = {"2": 2, "half": half, "all": k}[how]
    x = _fuzz.tensor(x_spec, (rows, k), dtype)
    packed, scale, bias = _weights(x_spec["seed"], k, n, bits, group)
    bias = bias if with_bias else None
    y, y_ref = [
        ops.weight_only_matmul(
            x,
            packed,
            scale,
            group,
            bits,
            bias,
            activation,
            use_fused_kernel=f,
        )
        for f in (True, False)
    ]
    assert y.dtype == dtype and y.shape == (rows, n)
    tol = TOLERANCES["weight_only"][dtype]
    ordinary = _fuzz.is_ordinary(x_spec)
    if ordinary is not True:  # Huge or denormal values.
        _fuzz.check_matches(y, y_ref, tol, ordinary, "y")
        return
    # Both sum K float32 products in different orders (the kernel may scale
    # a group's sum instead of each weight): with cancellation the error is
    # relative to sum |x| |w|, not to the result. Allow K * eps of that.
    w = ops.dequantize_kernel(packed, scale, k, bits).numpy()
    xf = np.abs(tf.cast(x, tf.float32).numpy().astype(np.float64))
    spread = xf @ np.abs(w.astype(np.float64))
    a = _fuzz.to_f64(y)
    e = _fuzz.to_f64(y_ref)
    bound = tol["atol"] + tol["rtol"] * np.abs(e) + k * 2.0**-24 * spread
    assert np.isfinite(a).all() and np.isfinite(e).all()
    assert (np.abs(a - e) <= bound).all(), float(np.max(np.abs(a - e) - bound))


@given(
    problem=problems(max_rows=8),
    weight_only=st.booleans(),
    target=st.sampled_from(["kernel_q", "kernel_scale", "bias"]),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
)
@_fuzz.counted(FAMILY)
def test_kernels_reject_inconsistent_inputs(problem, weight_only, target, how):
    rows, k, n = problem
    lib = _loader.library()
    packed, scale, _ = _weights(0, k, n)
    inputs = {
        "x": tf.ones((rows, k)),
        "kernel_q": packed,
        "kernel_scale": scale,
        "bias": tf.ones([n]),
    }
    other = {"kernel_q": tf.int32}.get(target, tf.float64)
    if target == "bias" and how == "drop" and n == 1:
        how = "grow"  # An empty bias means "no bias".
    inputs[target] = _fuzz.corrupt(inputs[target], how, other)
    op = (
        lib.kbm_weight_only_mat_mul
        if weight_only
        else lib.kbm_quantized_mat_mul
    )
    index = list(inputs).index(target)
    _fuzz.check_rejects_corrupt(
        lambda: op(*inputs.values(), output_dtype=tf.float32),
        [target, f"input #{index}", "kernel_q", "bias"],
        how,
    )
