"""Tests for kbm.explain.LayerIntegratedGradients."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from tests.explain._models import text_model

IDS = np.array([[3, 7, 1, 9, 0, 0], [5, 5, 2, 0, 0, 0]], np.int32)


def test_token_attributions_of_a_linear_text_model():
    model = text_model()
    lig = kbm.explain.LayerIntegratedGradients(model, "embed")
    attr, delta = lig.attribute(
        IDS, target=1, n_steps=8, return_convergence_delta=True
    )
    assert attr.shape == IDS.shape
    # Masked mean then Dense: token t contributes E[id_t] . w / length;
    # the baseline (all padding) embeds as E[0].
    emb = model.get_layer("embed").get_weights()[0]
    w = model.get_layer("head").get_weights()[0][:, 1]
    for a, ids in zip(attr, IDS):
        n = (ids != 0).sum()
        expected = (emb[ids] - emb[0]) @ w / n
        np.testing.assert_allclose(a[:n], expected[:n], atol=1e-5)
        np.testing.assert_allclose(a[n:], 0.0, atol=1e-7)
    assert np.abs(delta).max() < 1e-5


def test_unreduced_attributions_have_the_layer_shape():
    lig = kbm.explain.LayerIntegratedGradients(text_model(), "embed")
    attr = lig.attribute(IDS, target=0, n_steps=4, reduce=None)
    assert attr.shape == IDS.shape + (4,)
    np.testing.assert_allclose(
        attr.sum(-1), lig.attribute(IDS, target=0, n_steps=4), atol=1e-6
    )


def test_transformer_classifier_completeness():
    keras.utils.set_random_seed(0)
    i = keras.Input((8,), dtype="int32")
    h = kbm.layers.TokenAndPositionEmbedding(
        50, 8, 16, mask_zero=True, name="tok"
    )(i)
    h = kbm.layers.TransformerEncoder(32, num_heads=2)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(i, keras.layers.Dense(2)(h))
    ids = np.array(
        [[4, 9, 13, 2, 0, 0, 0, 0], [7, 1, 8, 8, 30, 3, 0, 0]], np.int32
    )
    lig = kbm.explain.LayerIntegratedGradients(model, "tok")
    attr, delta = lig.attribute(
        ids, target=1, n_steps=64, return_convergence_delta=True
    )
    assert attr.shape == ids.shape
    # Delta is small against the attributions' scale.
    assert np.abs(delta).max() < 0.02 * np.abs(attr).sum(1).max() + 1e-4
    # More steps, smaller delta.
    _, delta8 = lig.attribute(
        ids,
        target=1,
        n_steps=4,
        method="riemann_left",
        return_convergence_delta=True,
    )
    assert np.abs(delta).max() < np.abs(delta8).max()
    # The model works normally afterwards (the layer is restored).
    assert "call" not in vars(model.get_layer("tok"))
    assert np.isfinite(np.asarray(model(ids))).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="no layer named 'missing'"):
        kbm.explain.LayerIntegratedGradients(text_model(), "missing")
    lig = kbm.explain.LayerIntegratedGradients(text_model(), "embed")
    with pytest.raises(ValueError, match=r"baselines.shape=\(3,\)"):
        lig.attribute(IDS, baselines=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="reduce must be"):
        lig.attribute(IDS, reduce="mean")
    with pytest.raises(ValueError, match="target index out of range"):
        lig.attribute(IDS, target=2)
