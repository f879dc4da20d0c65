"""Tests for kbm.explain.metrics."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.explain import metrics
from tests.explain._models import (
    W,
    linear_model,
    mlp,
    patch_images,
    salient_cnn,
)

RNG = np.random.default_rng(4)


def test_deletion_and_insertion_curves_on_a_linear_model():
    model = linear_model()
    x = np.abs(RNG.standard_normal((3, 5))).astype(np.float32) + 0.1
    attr = W[:, 0] * x
    curve = metrics.deletion_curve(model, x, attr, target=0, steps=5)
    np.testing.assert_allclose(curve.fractions, np.linspace(0, 1, 6))
    out = np.asarray(model(x))[:, 0]
    np.testing.assert_allclose(curve.scores[:, 0], out, atol=1e-5)
    np.testing.assert_allclose(curve.scores[:, -1], 0.1, atol=1e-5)  # bias
    # Removing the largest contributions first: the curve falls fastest, so
    # the true attributions give the lowest deletion AUC.
    order = np.argsort(-attr, axis=1)
    removed = np.cumsum(np.take_along_axis(attr, order, 1), 1)
    np.testing.assert_allclose(
        curve.scores[:, 1:], out[:, None] - removed, atol=1e-5
    )
    worse = metrics.deletion_curve(model, x, -attr, target=0, steps=5)
    assert (curve.auc < worse.auc).all()
    ins = metrics.insertion_curve(model, x, attr, target=0, steps=5)
    ins_worse = metrics.insertion_curve(model, x, -attr, target=0, steps=5)
    assert (ins.auc > ins_worse.auc).all()
    np.testing.assert_allclose(ins.scores[:, -1], out, atol=1e-5)


def test_curves_with_feature_groups_on_images():
    model = salient_cnn()
    x = patch_images()
    mask = np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1)
    attr = kbm.explain.Occlusion(model).attribute(
        x, target=0, sliding_window_shapes=(2, 2, 1), strides=(2, 2, 1)
    )
    curve = metrics.deletion_curve(
        model, x, attr, target=0, steps=16, feature_mask=mask
    )
    # The salient patch is one group: gone after the first step.
    np.testing.assert_allclose(curve.scores[:, 1], 0.0, atol=1e-6)
    assert (curve.scores[:, 0] > 0).all()


def test_completeness_and_sensitivity():
    model = mlp(features=5)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    ig = kbm.explain.IntegratedGradients(model)
    attr = ig.attribute(x, target=2, n_steps=64)
    delta = metrics.completeness_delta(model, x, attr, target=2)
    assert np.abs(delta).max() < 1e-3
    # Saliency of a linear model does not move under noise; IG of a linear
    # model (w * x) moves by w * noise.
    sal = kbm.explain.Saliency(linear_model(), abs=False)
    np.testing.assert_allclose(
        metrics.sensitivity_max(sal, x, target=0), 0.0, atol=1e-6
    )
    s = metrics.sensitivity_max(
        kbm.explain.IntegratedGradients(linear_model()),
        x,
        target=0,
        n_steps=2,
        radius=0.1,
    )
    assert (s > 0).all() and (s < 1).all()


def test_model_randomization_check():
    model = mlp(features=8)
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    check = metrics.model_randomization_check(
        kbm.explain.IntegratedGradients, model, x, n_steps=16
    )
    assert len(check.layers) == 3
    assert check.rank_correlation.shape == (3, 4)
    # Fully randomised: attributions decorrelate from the trained model's.
    assert np.abs(check.rank_correlation[-1]).mean() < 0.8
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)

    class Edge:
        """Ignores the model: fails the sanity check (correlation 1)."""

        def __init__(self, model):
            pass

        def attribute(self, inputs, target=None):
            return inputs

    check = metrics.model_randomization_check(Edge, model, x, target=0)
    np.testing.assert_allclose(check.rank_correlation, 1.0)


def test_spearman():
    a = RNG.standard_normal((2, 30))
    np.testing.assert_allclose(metrics.spearman(a, a), 1.0)
    np.testing.assert_allclose(metrics.spearman(a, -a), -1.0)
    np.testing.assert_allclose(metrics.spearman(a, np.exp(a)), 1.0)


def test_bad_inputs():
    x = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="attributions must be shaped"):
        metrics.deletion_curve(linear_model(), x, np.ones((2, 4)))
    with pytest.raises(ValueError, match="steps must be a positive"):
        metrics.insertion_curve(linear_model(), x, x, steps=0)
    with pytest.raises(ValueError, match="target index out of range"):
        metrics.completeness_delta(linear_model(), x, x, target=5)
