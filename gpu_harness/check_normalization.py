"""Checks the normalisation launchers against float64 references on a GPU.

LayerNorm and RMSNorm, forward and backward, float32 / float16 / bfloat16,
odd row counts and widths (fast row-in-registers path, scalar path, general
path for wide rows), in place, misaligned, zero rows, determinism.
Run: python -m pytest -q gpu_harness/check_normalization.py
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from gpu_harness import ops_normalization as ops  # noqa: E402

# (rtol, atol as a fraction of the reference's largest magnitude) per dtype:
# "out" for y / dx (rounded to the dtype), "stat" for mean / rstd, "red" for
# dgamma / dbeta (float32 sums over rows).
TOL = {
    torch.float32: {
        "out": (2e-5, 2e-6),
        "stat": (2e-5, 2e-6),
        "red": (1e-4, 1e-5),
    },
    torch.float16: {
        "out": (1.5e-3, 1e-4),
        "stat": (2e-5, 2e-6),
        "red": (1e-4, 1e-5),
    },
    torch.bfloat16: {
        "out": (1.2e-2, 1e-3),
        "stat": (2e-5, 2e-6),
        "red": (1e-4, 1e-5),
    },
}
DTYPES = list(TOL)
DTYPE_IDS = ["f32", "f16", "bf16"]

# (rows, cols): odd sizes; 8193 (scalar loads, wider than the scalar fast
# path) and 40000 (vector loads, general path) exercise the wide-row path,
# 16384 is the fast path forward and the general path backward in float32.
SHAPES = [
    (1, 1),
    (7, 7),
    (127, 127),
    (128, 128),
    (129, 129),
    (1023, 1023),
    (4096, 4096),
    (129, 1),
    (1, 129),
    (4096, 7),
    (1023, 128),
    (128, 4096),
    (129, 1024),
    (7, 16384),
    (1, 16384),
    (7, 8193),
    (3, 40000),
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
    x = (torch.randn(rows, cols, device="cuda", generator=g) * 2 + 0.5).to(
        dtype
    )
    dy = torch.randn(rows, cols, device="cuda", generator=g).to(dtype)
    gamma = 1 + 0.1 * torch.randn(cols, device="cuda", generator=g)
    beta = 0.1 * torch.randn(cols, device="cuda", generator=g)
    return x, dy, gamma, beta


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_layer_norm(shape, dtype):
    rows, cols = shape
    ctx = f"layer_norm {rows}x{cols} {dtype}"
    tol = TOL[dtype]
    x, dy, gamma, beta = _inputs(rows, cols, dtype)
    y, mean, rstd = ops.layer_norm_fwd(x, gamma, beta, 1e-3)
    y_ref, mean_ref, rstd_ref = ops.layer_norm_ref(x, gamma, beta, 1e-3)
    assert_close("y", y, y_ref, tol["out"], ctx)
    assert_close("mean", mean, mean_ref, tol["stat"], ctx)
    assert_close("rstd", rstd, rstd_ref, tol["stat"], ctx)
    m32, r32 = mean_ref.float(), rstd_ref.float()
    dx, dgamma, dbeta = ops.layer_norm_bwd(dy, x, gamma, m32, r32)
    dx_ref, dg_ref, db_ref = ops.layer_norm_bwd_ref(dy, x, gamma, m32, r32)
    assert_close("dx", dx, dx_ref, tol["out"], ctx)
    assert_close("dgamma", dgamma, dg_ref, tol["red"], ctx)
    assert_close("dbeta", dbeta, db_ref, tol["red"], ctx)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_rms_norm(shape, dtype):
    rows, cols = shape
    ctx = f"rms_norm {rows}x{cols} {dtype}"
    tol = TOL[dtype]
    x, dy, gamma, _ = _inputs(rows, cols, dtype, seed=1)
    y, rstd = ops.rms_norm_fwd(x, gamma, 1e-6)
    y_ref, rstd_ref = ops.rms_norm_ref(x, gamma, 1e-6)
    assert_close("y", y, y_ref, tol["out"], ctx)
    assert_close("rstd", rstd, rstd_ref, tol["stat"], ctx)
    r32 = rstd_ref.float()
    dx, dgamma = ops.rms_norm_bwd(dy, x, gamma, r32)
    dx_ref, dg_ref = ops.rms_norm_bwd_ref(dy, x, gamma, r32)
    assert_close("dx", dx, dx_ref, tol["out"], ctx)
    assert_close("dgamma", dgamma, dg_ref, tol["red"], ctx)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_in_place_and_misaligned(dtype):
    """dx written over dy; x and dy starting one element past an aligned
    address (scalar loads)."""
    rows, cols = 129, 1024
    tol = TOL[dtype]
    x, dy, gamma, beta = _inputs(rows, cols, dtype, seed=2)
    _, mean, rstd = ops.layer_norm_ref(x, gamma, beta, 1e-3)
    mean, rstd = mean.float(), rstd.float()
    dx_ref, _, _ = ops.layer_norm_bwd_ref(dy, x, gamma, mean, rstd)
    inplace = dy.clone()
    ops.layer_norm_bwd(inplace, x, gamma, mean, rstd, out=inplace)
    assert_close("dx in place", inplace, dx_ref, tol["out"], f"{dtype}")
    buf = torch.empty(rows * cols + 1, dtype=dtype, device="cuda")
    xm = buf[1:].view(rows, cols)
    xm.copy_(x)
    y, _, _ = ops.layer_norm_fwd(xm, gamma, beta, 1e-3)
    y_ref, _, _ = ops.layer_norm_ref(x, gamma, beta, 1e-3)
    assert_close("y misaligned", y, y_ref, tol["out"], f"{dtype}")
    dx, _, _ = ops.layer_norm_bwd(dy, xm, gamma, mean, rstd)
    assert_close("dx misaligned", dx, dx_ref, tol["out"], f"{dtype}")


def test_zero_rows_and_determinism():
    x = torch.empty(0, 64, device="cuda")
    gamma = torch.ones(64, device="cuda")
    y, mean, rstd = ops.layer_norm_fwd(x, gamma, gamma, 1e-3)
    assert y.shape == (0, 64) and mean.shape == (0,)
    _, dgamma, dbeta = ops.layer_norm_bwd(x, x, gamma, mean, rstd)
    assert torch.equal(dgamma, torch.zeros_like(dgamma)), dgamma
    assert torch.equal(dbeta, torch.zeros_like(dbeta)), dbeta
    _, dgamma = ops.rms_norm_bwd(x, x, gamma, rstd)
    assert torch.equal(dgamma, torch.zeros_like(dgamma)), dgamma
    x, dy, gamma, beta = _inputs(4096, 4096, torch.bfloat16, seed=3)
    _, mean, rstd = ops.layer_norm_fwd(x, gamma, beta, 1e-3)
    first = ops.layer_norm_bwd(dy, x, gamma, mean, rstd)
    for _ in range(3):
        again = ops.layer_norm_bwd(dy, x, gamma, mean, rstd)
        for a, b in zip(first, again):
            assert torch.equal(a, b), "backward is not bitwise reproducible"
