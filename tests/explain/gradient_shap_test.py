"""Tests for kbm.explain.GradientShap."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model, mlp

RNG = np.random.default_rng(3)
X = RNG.standard_normal((3, 5)).astype(np.float32)


def test_gradient_shap_on_a_linear_model():
    bg = RNG.standard_normal((10, 5)).astype(np.float32)
    gs = kbm.explain.GradientShap(
        linear_model(), background=bg[:1], n_samples=5
    )
    np.testing.assert_allclose(
        gs.attribute(X, target=0), W[:, 0] * (X - bg[:1]), atol=1e-5
    )
    # With a larger background it converges to w * (x - E[b]).
    gs = kbm.explain.GradientShap(linear_model(), background=bg, n_samples=4000)
    np.testing.assert_allclose(
        gs.attribute(X, target=0), W[:, 0] * (X - bg.mean(0)), atol=0.1
    )


def test_gradient_shap_deterministic_under_seed():
    model = mlp(features=5)
    bg = RNG.standard_normal((10, 5)).astype(np.float32)
    a = kbm.explain.GradientShap(model, bg, n_samples=8, seed=5).attribute(X)
    b = kbm.explain.GradientShap(model, bg, n_samples=8, seed=5).attribute(X)
    c = kbm.explain.GradientShap(model, bg, n_samples=8, seed=6).attribute(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs a background set"):
        kbm.explain.GradientShap(linear_model()).attribute(X)
    with pytest.raises(ValueError, match="shaped like the inputs"):
        kbm.explain.GradientShap(linear_model(), np.zeros((2, 4))).attribute(X)
