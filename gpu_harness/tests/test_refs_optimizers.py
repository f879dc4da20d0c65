"""CPU test of the optimizer references in gpu_harness/ops_optimizers.py
against NumPy goldens written from the CPU kernels' formulas."""

import numpy as np
import torch

from gpu_harness import ops_optimizers as ops


def _data(n=37, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=n),
        rng.normal(size=n),
        rng.uniform(0.0, 1.0, size=n),
        rng.normal(size=n),
    )


def test_adam_reference():
    p, m, v, g = _data()
    s = dict(
        omb1=0.1, omb2=0.001, coef_a=0.01, bias2=0.5, coef_sgd=0.002, eps=1e-7
    )
    got = ops.adam_reference(
        *map(torch.tensor, (p, m, v, g)), 0.01, *s.values()
    )
    m2 = m + (g - m) * s["omb1"]
    v2 = v + (g * g - v) * s["omb2"]
    p2 = p - p * 0.01
    p2 = p2 - (
        (m2 * s["coef_a"]) / (np.sqrt(v2 / s["bias2"]) + s["eps"])
        + m2 * s["coef_sgd"]
    )
    for a, b in zip(got, (p2, m2, v2)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-14, atol=0)


def test_adamw_scalars_match_keras_formula():
    s = ops.adamw_scalars(0.01, 0.9, 0.999, 1e-7, 3)
    np.testing.assert_allclose(
        s["coef_adaptive"], 0.01 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3)
    )
    assert s["bias_2"] == 1.0 and s["coef_sgd"] == 0.0


def test_lamb_reference():
    p, m, v, g = _data(seed=1)
    lr, omb1, omb2, b1, b2, eps, d = 0.01, 0.1, 0.001, 0.19, 0.002, 1e-6, 0.02
    got = ops.lamb_reference(
        *map(torch.tensor, (p, m, v, g)), d, lr, omb1, omb2, b1, b2, eps
    )
    m2 = m + (g - m) * omb1
    v2 = v + (g * g - v) * omb2
    pd = p - p * d
    u = (m2 / b1) / (np.sqrt(v2 / b2) + eps)
    r = np.linalg.norm(pd) / np.linalg.norm(u)
    for a, b in zip(got, (pd - r * lr * u, m2, v2)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-13, atol=1e-15)


def test_lamb_reference_ratio_one_for_zero_weights():
    _, m, v, g = _data(seed=2)
    p = np.zeros_like(m)
    got = ops.lamb_reference(
        *map(torch.tensor, (p, m, v, g)), 0.0, 0.1, 0.1, 0.01, 0.1, 0.01, 1e-6
    )
    m2 = m + (g - m) * 0.1
    v2 = v + (g * g - v) * 0.01
    u = (m2 / 0.1) / (np.sqrt(v2 / 0.01) + 1e-6)
    np.testing.assert_allclose(got[0].numpy(), -0.1 * u, rtol=1e-13)


def test_lion_reference():
    p, m, _, g = _data(seed=3)
    g[0] = -m[0] * 0.9 / 0.1  # c == 0 exactly: p only decays
    got = ops.lion_reference(
        *map(torch.tensor, (p, m, g)), 0.01, 0.1, 0.9, 0.99
    )
    c = m * 0.9 + g * 0.1
    want_p = (p - p * 0.01) - 0.1 * np.sign(c)
    want_m = m * 0.99 + g * 0.01
    np.testing.assert_allclose(got[0].numpy(), want_p, rtol=1e-14)
    np.testing.assert_allclose(got[1].numpy(), want_m, rtol=1e-14)
    np.testing.assert_allclose(got[2].numpy(), c, rtol=1e-14, atol=1e-15)
