"""Tests for kbm.explain.GradCam and GradCamPlusPlus."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from tests.explain._models import mlp, patch_images, salient_cnn


@pytest.mark.parametrize(
    "cls", [kbm.explain.GradCam, kbm.explain.GradCamPlusPlus]
)
def test_map_peaks_on_the_salient_patch(cls):
    x = patch_images()
    cam = cls(salient_cnn(), "conv").attribute(x, target=0)
    assert cam.shape == x.shape
    assert (cam >= 0).all()
    for c in cam[..., 0]:
        r, col = np.unravel_index(c.argmax(), c.shape)
        assert 3 <= r <= 6 and 3 <= col <= 6
        assert c[0, 0] < 0.1 * c.max()
    # Target 1 reads the negated channel: its relu is zero everywhere.
    np.testing.assert_allclose(
        cls(salient_cnn(), "conv").attribute(x, target=1), 0.0, atol=1e-6
    )


def test_layer_object_and_one_dimensional_convolutions():
    i = keras.Input((16, 3))
    conv = keras.layers.Conv1D(4, 3, padding="same", name="c1")
    h = keras.layers.GlobalAveragePooling1D()(conv(i))
    model = keras.Model(i, keras.layers.Dense(2)(h))
    x = np.random.default_rng(0).standard_normal((2, 16, 3)).astype("f")
    cam = kbm.explain.GradCam(model, conv).attribute(x, target=1)
    assert cam.shape == x.shape
    np.testing.assert_array_equal(cam[..., 0], cam[..., 2])


def test_bad_layers():
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        kbm.explain.GradCam(salient_cnn(), "nope")
    model = mlp()
    with pytest.raises(ValueError, match="needs a convolutional layer"):
        kbm.explain.GradCam(model, model.layers[1].name)
