"""CPU tests of the float64 softmax-KL references of the GPU harness:
a hand-computed golden, NumPy, masked classes, and autograd for the
gradients."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpu_harness import ops_distillation as ops  # noqa: E402


def _np_kl(t, s, temperature):
    t, s = t / temperature, s / temperature
    lse_t = np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1)) + t.max(-1)
    lse_s = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    lp = t - lse_t[..., None]
    lq = s - lse_s[..., None]
    return (np.exp(lp) * (lp - lq)).sum(-1), lse_t, lse_s


def test_golden():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 log 2 + 1/2 log(2/3).
    t = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    loss, lse_t, lse_s = ops.softmax_kl_ref(t, s)
    want = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    np.testing.assert_allclose(loss.numpy(), [want], rtol=1e-12)
    np.testing.assert_allclose(lse_t.numpy(), [math.log(2.0)], rtol=1e-12)
    np.testing.assert_allclose(lse_s.numpy(), [math.log(4.0)], rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 129), (2, 3, 5)])
def test_matches_numpy(shape, temperature):
    rng = np.random.default_rng(0)
    t = rng.normal(size=shape) * 3
    s = rng.normal(size=shape) * 3
    got = ops.softmax_kl_ref(
        torch.from_numpy(t), torch.from_numpy(s), temperature
    )
    for a, b in zip(got, _np_kl(t, s, temperature)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-10, atol=1e-12)


def test_masked_classes_contribute_zero():
    t = torch.tensor([[1.0, float("-inf"), 2.0]], dtype=torch.float64)
    s = torch.tensor([[0.5, 3.0, -1.0]], dtype=torch.float64)
    loss, _, _ = ops.softmax_kl_ref(t, s)
    tk = np.array([1.0, 2.0])
    p = np.exp(tk - np.log(np.exp(tk).sum()))
    lq = np.array([0.5, -1.0]) - np.log(np.exp([0.5, 3.0, -1.0]).sum())
    want = (p * (np.log(p) - lq)).sum()
    np.testing.assert_allclose(loss.numpy(), [want], rtol=1e-12)
    dt, ds = ops.softmax_kl_bwd_ref(
        torch.ones(1), t, s, *ops.softmax_kl_ref(t, s)
    )
    assert dt[0, 1].item() == 0.0
    assert np.isfinite(ds.numpy()).all()


def test_zero_teacher_probability_contributes_zero():
    # Teacher probability underflows to 0 where the student logit is -inf:
    # the CPU kernel skips the term (0 * inf), so the loss stays finite.
    t = torch.tensor([[1.0, -1e4, 2.0]], dtype=torch.float64)
    s = torch.tensor([[0.5, float("-inf"), -1.0]], dtype=torch.float64)
    loss, _, _ = ops.softmax_kl_ref(t, s)
    want, _, _ = ops.softmax_kl_ref(t[:, [0, 2]], s[:, [0, 2]])
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (2, 3, 5)])
def test_backward_matches_autograd(shape, temperature):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    s = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    dloss = torch.randn(shape[:-1], generator=g, dtype=torch.float64)
    ts, ss = t.clone().requires_grad_(True), s.clone().requires_grad_(True)
    loss, lse_t, lse_s = ops.softmax_kl_ref(ts, ss, temperature)
    want = torch.autograd.grad(loss, (ts, ss), dloss)
    got = ops.softmax_kl_bwd_ref(
        dloss, t, s, loss.detach(), lse_t.detach(), lse_s.detach(), temperature
    )
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
