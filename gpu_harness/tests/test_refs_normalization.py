"""CPU tests of the float64 normalisation references of the GPU harness:
NumPy goldens for the forward, autograd for the closed-form backward."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpu_harness import ops_normalization as ops  # noqa: E402


def _np_layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_rms_norm(x, gamma, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma


def test_layer_norm_golden():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    one, zero = torch.ones(3), torch.zeros(3)
    y, mean, rstd = ops.layer_norm_ref(x, one, zero, 0.0)
    s = np.sqrt(1.5)
    np.testing.assert_allclose(y.numpy(), [[-s, 0.0, s]], rtol=1e-12)
    np.testing.assert_allclose(mean.numpy(), [2.0])
    np.testing.assert_allclose(rstd.numpy(), [np.sqrt(1.5)], rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 129), (2, 3, 5)])
def test_references_match_numpy(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 2 + 0.5
    gamma = 1 + 0.1 * rng.normal(size=shape[-1])
    beta = 0.1 * rng.normal(size=shape[-1])
    t = torch.from_numpy
    y, _, _ = ops.layer_norm_ref(t(x), t(gamma), t(beta), 1e-3)
    np.testing.assert_allclose(
        y.numpy(), _np_layer_norm(x, gamma, beta, 1e-3), rtol=1e-12, atol=1e-12
    )
    y, _ = ops.rms_norm_ref(t(x), t(gamma), 1e-6)
    np.testing.assert_allclose(
        y.numpy(), _np_rms_norm(x, gamma, 1e-6), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (3, 129), (2, 3, 5)])
def test_backward_matches_autograd(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    gamma = 1 + 0.1 * torch.randn(shape[-1], generator=g, dtype=torch.float64)
    beta = 0.1 * torch.randn(shape[-1], generator=g, dtype=torch.float64)
    xs, gs, bs = (v.clone().requires_grad_(True) for v in (x, gamma, beta))
    y, mean, rstd = ops.layer_norm_ref(xs, gs, bs, 1e-3)
    want = torch.autograd.grad(y, (xs, gs, bs), dy)
    got = ops.layer_norm_bwd_ref(dy, x, gamma, mean.detach(), rstd.detach())
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9)
    xs, gs = x.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
    y, rstd = ops.rms_norm_ref(xs, gs, 1e-6)
    want = torch.autograd.grad(y, (xs, gs), dy)
    got = ops.rms_norm_bwd_ref(dy, x, gamma, rstd.detach())
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9)
