"""Tests for kbm.explain.NoiseTunnel."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model, mlp

RNG = np.random.default_rng(3)
X = RNG.standard_normal((3, 5)).astype(np.float32)


def test_noise_tunnel_on_a_linear_model():
    sal = kbm.explain.Saliency(linear_model(), abs=False)
    sg = kbm.explain.NoiseTunnel(sal, n_samples=8, stdevs=0.5)
    np.testing.assert_allclose(
        sg.attribute(X, target=1), np.broadcast_to(W[:, 1], X.shape), atol=1e-6
    )
    sq = kbm.explain.NoiseTunnel(sal, "smoothgrad_sq", n_samples=8)
    np.testing.assert_allclose(
        sq.attribute(X, target=1),
        np.broadcast_to(W[:, 1] ** 2, X.shape),
        atol=1e-6,
    )
    var = kbm.explain.NoiseTunnel(sal, "vargrad", n_samples=8)
    np.testing.assert_allclose(var.attribute(X, target=1), 0.0, atol=1e-10)


def test_noise_tunnel_composes_with_integrated_gradients():
    model = mlp(features=5)
    ig = kbm.explain.IntegratedGradients(model)
    nt = kbm.explain.NoiseTunnel(ig, n_samples=4, stdevs=0.0)
    np.testing.assert_allclose(
        nt.attribute(X, target=0, n_steps=8),
        ig.attribute(X, target=0, n_steps=8),
        atol=1e-5,
    )
    noisy = kbm.explain.NoiseTunnel(ig, n_samples=4, stdevs=0.3, seed=1)
    a = noisy.attribute(X, n_steps=8)
    b = kbm.explain.NoiseTunnel(ig, n_samples=4, stdevs=0.3, seed=1).attribute(
        X, n_steps=8
    )
    np.testing.assert_array_equal(a, b)
    assert a.shape == X.shape


def test_bad_arguments():
    sal = kbm.explain.Saliency(linear_model())
    with pytest.raises(ValueError, match="nt_type must be one of"):
        kbm.explain.NoiseTunnel(sal, "smooth")
    with pytest.raises(ValueError, match="must be a kbm.explain method"):
        kbm.explain.NoiseTunnel(linear_model())
    with pytest.raises(ValueError, match="stdevs must be >= 0"):
        kbm.explain.NoiseTunnel(sal, stdevs=-1.0)
