"""Tests for kbm.explain.KernelShap."""

import itertools
import math

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model, mlp

RNG = np.random.default_rng(1)


def exact_shapley(model, x, background, target):
    """Shapley values of v(S) = mean_b f(x_S, b_rest) by enumeration."""
    m = x.shape[0]
    coalitions = list(itertools.product((0, 1), repeat=m))
    rows = np.array(
        [
            np.where(np.array(c, bool), x, b)
            for c in coalitions
            for b in background
        ],
        np.float32,
    )
    out = np.asarray(model.predict(rows, verbose=0, batch_size=4096))
    v = dict(
        zip(
            coalitions,
            out[:, target]
            .reshape(len(coalitions), -1)
            .astype(np.float64)
            .mean(1),
        )
    )
    phi = np.zeros(m)
    for c in coalitions:
        s = sum(c)
        for i in range(m):
            if c[i]:
                continue
            with_i = c[:i] + (1,) + c[i + 1 :]
            weight = (
                math.factorial(s)
                * math.factorial(m - s - 1)
                / (math.factorial(m))
            )
            phi[i] += weight * (v[with_i] - v[c])
    return phi


def test_linear_model_gives_weight_times_difference():
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    b = RNG.standard_normal((1, 5)).astype(np.float32)
    ks = kbm.explain.KernelShap(linear_model(), background=b)
    np.testing.assert_allclose(
        ks.attribute(x, target=1), W[:, 1] * (x - b), atol=1e-5
    )
    # Sampled coalitions are exact too for an additive model.
    ks = kbm.explain.KernelShap(
        linear_model(), background=b, max_exact_features=0, n_samples=64
    )
    np.testing.assert_allclose(
        ks.attribute(x, target=1), W[:, 1] * (x - b), atol=1e-4
    )


def test_exact_mode_matches_enumerated_shapley_values():
    model = mlp(features=10, outputs=2)
    x = RNG.standard_normal((2, 10)).astype(np.float32)
    bg = RNG.standard_normal((3, 10)).astype(np.float32)
    ks = kbm.explain.KernelShap(model, background=bg)
    phi = ks.attribute(x, target=1)
    for i in range(2):
        np.testing.assert_allclose(
            phi[i], exact_shapley(model, x[i], bg, 1), atol=1e-6
        )
    # Efficiency: the values sum to f(x) - E f(background).
    fx = np.asarray(model(x))[:, 1]
    np.testing.assert_allclose(phi.sum(1), fx - ks.expected_value, atol=1e-5)


def test_sampled_mode_converges_to_exact_values():
    model = mlp(features=10, outputs=2)
    x = RNG.standard_normal((1, 10)).astype(np.float32)
    bg = RNG.standard_normal((3, 10)).astype(np.float32)
    exact = exact_shapley(model, x[0], bg, 0)
    errors = []
    for n in (100, 1000, 8000):
        ks = kbm.explain.KernelShap(
            model, background=bg, max_exact_features=0, n_samples=n
        )
        errors.append(np.abs(ks.attribute(x, target=0)[0] - exact).max())
    assert errors[-1] < errors[0]
    assert errors[-1] < 0.05 * np.abs(exact).max()


def test_feature_groups():
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    mask = np.array([0, 0, 1, 1, 2])
    ks = kbm.explain.KernelShap(
        linear_model(), background=np.zeros((1, 5)), feature_mask=mask
    )
    attr = ks.attribute(x, target=0)
    contrib = W[:, 0] * x
    group_sums = np.stack(
        [contrib[:, :2].sum(1), contrib[:, 2:4].sum(1), contrib[:, 4]], 1
    )
    np.testing.assert_allclose(attr, group_sums[:, mask], atol=1e-5)


def test_deterministic_under_seed():
    model = mlp(features=14, outputs=2)
    x = RNG.standard_normal((1, 14)).astype(np.float32)
    bg = RNG.standard_normal((2, 14)).astype(np.float32)
    a = kbm.explain.KernelShap(
        model, background=bg, n_samples=200, seed=3
    ).attribute(x, target=0)
    b = kbm.explain.KernelShap(
        model, background=bg, n_samples=200, seed=3
    ).attribute(x, target=0)
    c = kbm.explain.KernelShap(
        model, background=bg, n_samples=200, seed=4
    ).attribute(x, target=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_inputs():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="needs a background set"):
        kbm.explain.KernelShap(linear_model()).attribute(x)
    ks = kbm.explain.KernelShap(linear_model(), background=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shaped like the inputs"):
        ks.attribute(x)
    ks = kbm.explain.KernelShap(linear_model(), background=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="feature_mask must be shaped"):
        ks.attribute(x, feature_mask=np.zeros(3, int))
    with pytest.raises(ValueError, match="ids must be 0, 1"):
        ks.attribute(x, feature_mask=np.array([0, 0, 2, 2, 2]))
    with pytest.raises(ValueError, match="n_samples must be a positive"):
        kbm.explain.KernelShap(linear_model(), n_samples=-1)
