"""Checks the softmax-KL launchers against float64 references on a GPU.

Forward (loss, log-sum-exps) and backward (dteacher, dstudent), float32 /
float16 / bfloat16, temperatures 1 and 2, masked classes (teacher logit
-inf), rows up to 256k classes, no teacher gradient, in place, misaligned.
Run: python -m pytest -q gpu_harness/check_distillation.py
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from gpu_harness import ops_distillation as ops  # noqa: E402

# (rtol, atol as a fraction of the reference's largest magnitude) per dtype:
# "loss" for loss and log-sum-exps (float32; plus an absolute floor: a
# loss of exactly 0, e.g. one class, comes out as a rounding residue), "grad"
# for dteacher / dstudent (rounded to the dtype).
TOL = {
    torch.float32: {"loss": (1e-4, 1e-5, 1e-5), "grad": (1e-4, 1e-5)},
    torch.float16: {"loss": (1e-4, 1e-5, 1e-5), "grad": (1.5e-3, 1e-4)},
    torch.bfloat16: {"loss": (1e-4, 1e-5, 1e-5), "grad": (1.2e-2, 1e-3)},
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
    (3, 262144),
    (2, 100003),
]


def assert_close(name, got, want, tol, ctx):
    """Elementwise |got - want| <= rtol |want| + atol max|want| + floor, with
    the count, the worst element and its index in the message."""
    rtol, atol, *floor = tol
    got64 = got.detach().double()
    want = want.detach().double().to(got64.device)
    assert got64.shape == want.shape, (
        f"{ctx} {name}: shape {got64.shape} != {want.shape}"
    )
    if want.numel() == 0:
        return
    scale = want.abs().max().item()
    err = (got64 - want).abs()
    bound = rtol * want.abs() + atol * scale + (floor[0] if floor else 1e-30)
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


def _inputs(rows, cols, dtype, seed=0, masked=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(dtype)
    s = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(dtype)
    dloss = torch.randn(rows, device="cuda", generator=g)
    if masked and cols > 1:
        t[:, ::3] = float("-inf")  # masked classes (teacher -inf)
        s[:, ::6] = float("-inf")  # some masked in both
    return t, s, dloss


def _check(rows, cols, dtype, temperature, masked, teacher_gradient=True):
    ctx = f"softmax_kl {rows}x{cols} {dtype} T={temperature} masked={masked}"
    tol = TOL[dtype]
    t, s, dloss = _inputs(rows, cols, dtype, masked=masked)
    loss, lse_t, lse_s = ops.softmax_kl_fwd(t, s, temperature)
    loss_ref, lse_t_ref, lse_s_ref = ops.softmax_kl_ref(t, s, temperature)
    assert_close("loss", loss, loss_ref, tol["loss"], ctx)
    assert_close("teacher_lse", lse_t, lse_t_ref, tol["loss"], ctx)
    assert_close("student_lse", lse_s, lse_s_ref, tol["loss"], ctx)
    stats = (loss_ref.float(), lse_t_ref.float(), lse_s_ref.float())
    dt, ds = ops.softmax_kl_bwd(
        dloss, t, s, *stats, temperature, teacher_gradient
    )
    dt_ref, ds_ref = ops.softmax_kl_bwd_ref(dloss, t, s, *stats, temperature)
    assert_close("dstudent", ds, ds_ref, tol["grad"], ctx)
    if teacher_gradient:
        assert_close("dteacher", dt, dt_ref, tol["grad"], ctx)
    else:
        assert dt is None


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{c}" for r, c in SHAPES])
def test_softmax_kl(shape, dtype):
    _check(*shape, dtype, temperature=1.0, masked=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(7, 7), (129, 1024), (3, 262144)])
def test_softmax_kl_masked_temperature(shape, dtype):
    _check(*shape, dtype, temperature=2.0, masked=True)
    _check(*shape, dtype, temperature=0.5, masked=False, teacher_gradient=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_student_masked_teacher_underflows(dtype):
    # A class with student logit -inf and a teacher weight that underflows
    # to 0 adds nothing (CPU semantics); 0 * inf must not make the loss NaN,
    # also when the large teacher logit comes after the tiny one.
    rows, cols = 5, 4099
    t, s, _ = _inputs(rows, cols, dtype, seed=2)
    t[:, :40] = -1e4
    s[:, :40] = float("-inf")
    t[:, 3000] = 60.0
    loss, lse_t, lse_s = ops.softmax_kl_fwd(t, s, 1.0)
    loss_ref, lse_t_ref, _ = ops.softmax_kl_ref(t, s, 1.0)
    assert torch.isfinite(loss).all(), f"{dtype}: loss {loss}"
    assert_close("loss", loss, loss_ref, TOL[dtype]["loss"], f"{dtype}")
    assert_close(
        "teacher_lse", lse_t, lse_t_ref, TOL[dtype]["loss"], f"{dtype}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_in_place_and_misaligned(dtype):
    rows, cols = 129, 1024
    tol = TOL[dtype]
    t, s, dloss = _inputs(rows, cols, dtype, seed=1)
    loss_ref, lse_t_ref, lse_s_ref = ops.softmax_kl_ref(t, s, 1.5)
    stats = (loss_ref.float(), lse_t_ref.float(), lse_s_ref.float())
    dt_ref, ds_ref = ops.softmax_kl_bwd_ref(dloss, t, s, *stats, 1.5)
    inplace = s.clone()
    ops.softmax_kl_bwd(dloss, t, inplace, *stats, 1.5, out=inplace)
    assert_close("dstudent in place", inplace, ds_ref, tol["grad"], f"{dtype}")
    buf = torch.empty(rows * cols + 1, dtype=dtype, device="cuda")
    sm = buf[1:].view(rows, cols)
    sm.copy_(s)
    loss, _, _ = ops.softmax_kl_fwd(t, sm, 1.5)
    assert_close("loss misaligned", loss, loss_ref, tol["loss"], f"{dtype}")
    dt, ds = ops.softmax_kl_bwd(dloss, t, sm, *stats, 1.5)
    assert_close("dstudent misaligned", ds, ds_ref, tol["grad"], f"{dtype}")
    assert_close("dteacher misaligned", dt, dt_ref, tol["grad"], f"{dtype}")


def test_zero_rows():
    t = torch.empty(0, 10, device="cuda")
    loss, lse_t, lse_s = ops.softmax_kl_fwd(t, t)
    assert loss.shape == (0,)
    dt, ds = ops.softmax_kl_bwd(loss, t, t, loss, lse_t, lse_s)
    assert dt.shape == (0, 10) and ds.shape == (0, 10)
