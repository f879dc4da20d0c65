"""Checks the bias + GELU launchers against float64 references on a GPU.

Exact (erf) and tanh GELU, forward and backward (dx, dbias), float32 /
float16 / bfloat16, odd shapes, in place, misaligned, zero rows, determinism.
Run: python -m pytest -q gpu_harness/check_bias_activation.py
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from gpu_harness import ops_bias_activation as ops  # noqa: E402

# (rtol, atol as a fraction of the reference's largest magnitude) per dtype:
# "out" for y / dx (rounded to the dtype), "red" for dbias (float32 sums over
# rows, rounded to the dtype).
TOL = {
    torch.float32: {"out": (2e-5, 2e-6), "red": (1e-4, 1e-5)},
    torch.float16: {"out": (1.5e-3, 1e-4), "red": (1.5e-3, 1e-4)},
    torch.bfloat16: {"out": (1.2e-2, 1e-3), "red": (1.2e-2, 1e-3)},
}
DTYPES = list(TOL)
DTYPE_IDS = ["f32", "f16", "bf16"]

SHAPES = [
    (1, 1),
    (7, 7),
    (127, 127),
    (128, 128),
    (129, 129),
    (1023, 1023),
    (4096, 4096),
    (129, 1),
    (4096, 7),
    (1023, 128),
    (7, 16384),
    (129, 1024),
]


def assert_close(name, got, want, tol, ctx):
    """Elementwise |got - want| <= rtol |want| + atol max|want|, with the
    count, the worst element and its index in the message."""
    rtol, atol = tol
    got64 = got.detach().double()
    want = want.detach().double().to(got64.device)
    assert got64.shape == want.shape, (
        f"{ctx} {name}: shape {got64.shape} != {want.shape}"
    )
    if want.numel() == 0:
        return
    scale = want.abs().max().item()
    err = (got64 - want).abs()
    bound = rtol * want.abs() + atol * scale + 1e-30
    bad = ~(err <= bound)
    if bad.any():
        ratio = torch.where(bad, (err / bound).nan_to_num(float("inf")), 0.0)
        i = int(ratio.flatten().argmax())
        idx = np.unravel_index(i, tuple(want.shape))
        where = tuple(int(k) for k in idx)
        g_i, w_i = got64.flatten()[i].item(), want.flatten()[i].item()
        raise AssertionError(
            f"{ctx} {name}: {int(bad.sum())}/{want.numel()} out of "
            f"tolerance (rtol {rtol}, atol {atol} * {scale:.4g}); worst at "
            f"{where}: got {g_i:.8g}, want {w_i:.8g}; "
            f"NaN in got: {int(torch.isnan(got64).sum())}"
        )


def _inputs(rows, cols, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(rows, cols, device="cuda", generator=g) * 2).to(dtype)
    dy = torch.randn(rows, cols, device="cuda", generator=g).to(dtype)
    bias = (0.5 * torch.randn(cols, device="cuda", generator=g)).to(dtype)
    return x, dy, bias


@pytest.mark.parametrize("approximate", [False, True], ids=["erf", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_bias_gelu(shape, dtype, approximate):
    rows, cols = shape
    ctx = f"bias_gelu {rows}x{cols} {dtype} approximate={approximate}"
    tol = TOL[dtype]
    x, dy, bias = _inputs(rows, cols, dtype)
    y = ops.bias_gelu_fwd(x, bias, approximate)
    assert_close(
        "y", y, ops.bias_gelu_ref(x, bias, approximate), tol["out"], ctx
    )
    dx, dbias = ops.bias_gelu_bwd(dy, x, bias, approximate)
    dx_ref, dbias_ref = ops.bias_gelu_bwd_ref(dy, x, bias, approximate)
    assert_close("dx", dx, dx_ref, tol["out"], ctx)
    assert_close("dbias", dbias, dbias_ref, tol["red"], ctx)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_in_place_and_misaligned(dtype):
    rows, cols = 129, 1024
    tol = TOL[dtype]
    x, dy, bias = _inputs(rows, cols, dtype, seed=1)
    y_ref = ops.bias_gelu_ref(x, bias)
    dx_ref, dbias_ref = ops.bias_gelu_bwd_ref(dy, x, bias)
    inplace = x.clone()
    ops.bias_gelu_fwd(inplace, bias, out=inplace)
    assert_close("y in place", inplace, y_ref, tol["out"], f"{dtype}")
    inplace = dy.clone()
    ops.bias_gelu_bwd(inplace, x, bias, out=inplace)
    assert_close("dx in place", inplace, dx_ref, tol["out"], f"{dtype}")
    buf = torch.empty(rows * cols + 1, dtype=dtype, device="cuda")
    xm = buf[1:].view(rows, cols)
    xm.copy_(x)
    assert_close(
        "y misaligned",
        ops.bias_gelu_fwd(xm, bias),
        y_ref,
        tol["out"],
        f"{dtype}",
    )
    dx, dbias = ops.bias_gelu_bwd(dy, xm, bias)
    assert_close("dx misaligned", dx, dx_ref, tol["out"], f"{dtype}")
    assert_close("dbias misaligned", dbias, dbias_ref, tol["red"], f"{dtype}")


def test_zero_rows_and_determinism():
    x = torch.empty(0, 64, device="cuda")
    bias = torch.ones(64, device="cuda")
    assert ops.bias_gelu_fwd(x, bias).shape == (0, 64)
    _, dbias = ops.bias_gelu_bwd(x, x, bias)
    assert torch.equal(dbias, torch.zeros_like(dbias)), dbias
    x, dy, bias = _inputs(4096, 4096, torch.bfloat16, seed=2)
    first = ops.bias_gelu_bwd(dy, x, bias)
    for _ in range(3):
        again = ops.bias_gelu_bwd(dy, x, bias)
        for a, b in zip(first, again):
            assert torch.equal(a, b), "backward is not bitwise reproducible"
