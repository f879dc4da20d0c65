"""Tests for kbm.explain.Lime."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model, mlp

RNG = np.random.default_rng(2)


def test_recovers_linear_coefficients():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    lime = kbm.explain.Lime(linear_model(), n_samples=300, alpha=1e-6)
    # Switching feature i off (to the zero baseline) changes the output by
    # W[i] * x[i]: the surrogate's coefficient.
    np.testing.assert_allclose(
        lime.attribute(x, target=2), W[:, 2] * x, atol=1e-4
    )
    # The default ridge penalty shrinks a little but keeps the ranking.
    attr = kbm.explain.Lime(linear_model(), n_samples=1000).attribute(
        x, target=2
    )
    for a, e in zip(attr, W[:, 2] * x):
        assert (
            np.argsort(-np.abs(a))[:2].tolist()
            == np.argsort(-np.abs(e))[:2].tolist()
        )


def test_baseline_and_groups():
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    b = np.ones(5, np.float32)
    mask = np.array([0, 0, 1, 1, 1])
    attr = kbm.explain.Lime(
        linear_model(), n_samples=100, alpha=1e-6, feature_mask=mask
    ).attribute(x, 0, baselines=b)
    contrib = W[:, 0] * (x - b)
    expected = np.stack([contrib[:, :2].sum(1), contrib[:, 2:].sum(1)], 1)
    np.testing.assert_allclose(attr, expected[:, mask], atol=1e-4)


def test_deterministic_under_seed():
    model = mlp()
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    a = kbm.explain.Lime(model, n_samples=50, seed=1).attribute(x, 0)
    b = kbm.explain.Lime(model, n_samples=50, seed=1).attribute(x, 0)
    c = kbm.explain.Lime(model, n_samples=50, seed=2).attribute(x, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel_width must be > 0"):
        kbm.explain.Lime(linear_model(), kernel_width=0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        kbm.explain.Lime(linear_model(), alpha=-1)
    with pytest.raises(ValueError, match="n_samples must be a positive"):
        kbm.explain.Lime(linear_model(), n_samples=0)
