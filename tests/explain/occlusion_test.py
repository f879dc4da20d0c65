"""Tests for kbm.explain.Occlusion."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.explain._models import W, linear_model, patch_images, salient_cnn


def test_finds_the_salient_patch():
    x = patch_images()
    occ = kbm.explain.Occlusion(salient_cnn())
    attr = occ.attribute(
        x, target=0, sliding_window_shapes=(2, 2, 1), strides=(2, 2, 1)
    )
    assert attr.shape == x.shape
    # Covering the patch removes all the output; other windows nothing.
    assert (attr[:, 4:6, 4:6] > 0).all()
    np.testing.assert_allclose(attr[:, :4], 0.0, atol=1e-6)
    np.testing.assert_allclose(attr[:, 6:], 0.0, atol=1e-6)


def test_overlapping_windows_average():
    x = np.ones((1, 5), np.float32)
    occ = kbm.explain.Occlusion(linear_model())
    # Window 1: the exact contribution of each feature.
    np.testing.assert_allclose(
        occ.attribute(x, 0, sliding_window_shapes=(1,)),
        W[:, 0][None],
        atol=1e-6,
    )
    attr = occ.attribute(x, 0, sliding_window_shapes=(2,), strides=(1,))
    w = W[:, 0]
    pairs = w[:-1] + w[1:]
    expected = [
        pairs[0],
        (pairs[0] + pairs[1]) / 2,
        (pairs[1] + pairs[2]) / 2,
        (pairs[2] + pairs[3]) / 2,
        pairs[3],
    ]
    np.testing.assert_allclose(attr[0], expected, atol=1e-6)


def test_bad_windows():
    occ = kbm.explain.Occlusion(linear_model())
    x = np.ones((1, 5), np.float32)
    with pytest.raises(ValueError, match="one size per axis"):
        occ.attribute(x, 0)
    with pytest.raises(ValueError, match="Invalid window"):
        occ.attribute(x, 0, sliding_window_shapes=(6,))
    with pytest.raises(ValueError, match="Invalid window"):
        occ.attribute(x, 0, sliding_window_shapes=(2,), strides=(0,))
