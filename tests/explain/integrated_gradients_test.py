"""Tests for kbm.explain.IntegratedGradients."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.explain.integrated_gradients import (
    METHODS,
    integration_points,
)
from tests.explain._models import W, linear_model, mlp, text_model

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 5)).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_integration_points_integrate_polynomials(method):
    alphas, weights = integration_points(method, 16)
    assert np.isclose(weights.sum(), 1.0)
    # Exact for linear functions (midpoint, trapezoid and Gauss-Legendre).
    if method in ("riemann_middle", "riemann_trapezoid", "gausslegendre"):
        assert np.isclose((weights * alphas).sum(), 0.5)


@pytest.mark.parametrize("method", METHODS)
def test_linear_model_gives_weight_times_difference(method):
    ig = kbm.explain.IntegratedGradients(linear_model())
    baseline = RNG.standard_normal(5).astype(np.float32)
    attr = ig.attribute(
        X, target=2, baselines=baseline, n_steps=8, method=method
    )
    np.testing.assert_allclose(attr, W[:, 2] * (X - baseline), atol=1e-5)


def test_per_example_targets_and_callable_target():
    ig = kbm.explain.IntegratedGradients(linear_model())
    t = np.array([0, 1, 2, 0])
    attr = ig.attribute(X, target=t, n_steps=4)
    np.testing.assert_allclose(attr, W[:, t].T * X, atol=1e-5)
    attr = ig.attribute(X, target=lambda out: out[:, 0] + out[:, 1], n_steps=4)
    np.testing.assert_allclose(attr, (W[:, 0] + W[:, 1]) * X, atol=1e-5)


def test_default_target_is_the_predicted_class():
    model = linear_model()
    ig = kbm.explain.IntegratedGradients(model)
    pred = np.asarray(model(X)).argmax(-1)
    np.testing.assert_allclose(
        ig.attribute(X, n_steps=4), W[:, pred].T * X, atol=1e-5
    )


def test_completeness_holds_within_reported_delta():
    model = mlp()
    x = RNG.standard_normal((6, 6)).astype(np.float32)
    ig = kbm.explain.IntegratedGradients(model, batch_size=64)
    attr, delta = ig.attribute(
        x, target=1, n_steps=64, return_convergence_delta=True
    )
    out = np.asarray(model(x))[:, 1] - np.asarray(model(np.zeros_like(x)))[:, 1]
    np.testing.assert_allclose(attr.sum(1) - out, delta, atol=1e-5)
    assert np.abs(delta).max() < 1e-3
    metric = kbm.explain.metrics.completeness_delta(model, x, attr, target=1)
    np.testing.assert_allclose(metric, delta, atol=1e-5)
    # More steps shrink the error (Riemann left converges at O(1/n)).
    _, d8 = ig.attribute(
        x,
        target=1,
        n_steps=8,
        method="riemann_left",
        return_convergence_delta=True,
    )
    _, d128 = ig.attribute(
        x,
        target=1,
        n_steps=128,
        method="riemann_left",
        return_convergence_delta=True,
    )
    assert np.abs(d128).mean() < np.abs(d8).mean()


def test_batch_size_does_not_change_the_result():
    model = mlp()
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    a = kbm.explain.IntegratedGradients(model, batch_size=7).attribute(
        x, target=0, n_steps=20
    )
    b = kbm.explain.IntegratedGradients(model, batch_size=1000).attribute(
        x, target=0, n_steps=20
    )
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_plain_callable_model():
    w = tf.constant(W[:, :1])
    ig = kbm.explain.IntegratedGradients(lambda x: tf.matmul(x, w))
    np.testing.assert_allclose(
        ig.attribute(X, n_steps=4), W[:, 0] * X, atol=1e-5
    )


def test_bad_inputs():
    ig = kbm.explain.IntegratedGradients(linear_model())
    with pytest.raises(ValueError, match="target index out of range"):
        ig.attribute(X, target=3)
    with pytest.raises(ValueError, match="one index per example"):
        ig.attribute(X, target=[0, 1])
    with pytest.raises(ValueError, match=r"baselines.shape=\(3,\)"):
        ig.attribute(X, baselines=np.zeros(3))
    with pytest.raises(ValueError, match="n_steps must be a positive"):
        ig.attribute(X, n_steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        ig.attribute(X, method="simpson")
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        kbm.explain.IntegratedGradients(linear_model(), batch_size=0)
    with pytest.raises(ValueError, match="model must be a Keras model"):
        kbm.explain.IntegratedGradients("model")
    with pytest.raises(ValueError, match="must be a batch"):
        ig.attribute(np.float32(1.0))


def test_non_differentiable_model_raises():
    ids = np.array([[1, 2, 3, 0, 0, 0]], np.int32)
    ig = kbm.explain.IntegratedGradients(text_model())
    with pytest.raises(Exception, match="LayerIntegratedGradients"):
        ig.attribute(ids, target=0)


def test_output_not_differentiable_raises():
    ig = kbm.explain.IntegratedGradients(
        lambda x: tf.cast(tf.argmax(x, axis=1), tf.float32)[:, None]
    )
    with pytest.raises(ValueError, match="does not depend on its inputs"):
        ig.attribute(X, n_steps=2)
