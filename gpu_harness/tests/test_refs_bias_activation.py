"""CPU tests of the float64 bias + GELU references of the GPU harness:
hand-computed goldens, NumPy / math.erf, and autograd for the gradient."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpu_harness import ops_bias_activation as ops  # noqa: E402


def test_gelu_golden():
    z = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(
        ops.gelu_ref(z).numpy(),
        [-0.15865525393145707, 0.0, 0.8413447460685429],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        ops.gelu_ref(z, approximate=True).numpy(),
        [-0.15880800939172324, 0.0, 0.8411919906082768],
        rtol=1e-12,
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_bias_gelu_matches_numpy(approximate):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)) * 2
    b = rng.normal(size=5)
    z = x + b
    if approximate:
        c = math.sqrt(2 / math.pi)
        want = 0.5 * z * (1 + np.tanh(c * (z + 0.044715 * z**3)))
    else:
        erf = np.vectorize(math.erf)
        want = 0.5 * z * (1 + erf(z / math.sqrt(2)))
    got = ops.bias_gelu_ref(
        torch.from_numpy(x), torch.from_numpy(b), approximate
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (2, 3, 5)])
def test_backward_matches_autograd(shape, approximate):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
    mode = "tanh" if approximate else "none"
    y = torch.nn.functional.gelu(xs + bs, approximate=mode)
    want = torch.autograd.grad(y, (xs, bs), dy)
    got = ops.bias_gelu_bwd_ref(dy, x, b, approximate)
    for a, w in zip(got, want):
        np.testing.assert_allclose(a.numpy(), w.numpy(), rtol=1e-10, atol=1e-12)
