"""Tests for kbm.explain.Saliency."""

import numpy as np

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model

RNG = np.random.default_rng(0)
X = RNG.standard_normal((4, 5)).astype(np.float32)


def test_saliency_is_the_gradient():
    sal = kbm.explain.Saliency(linear_model(), abs=False)
    np.testing.assert_allclose(
        sal.attribute(X, target=1), np.broadcast_to(W[:, 1], X.shape), atol=1e-6
    )
    sal = kbm.explain.Saliency(linear_model())
    assert (sal.attribute(X, target=1) >= 0).all()
