"""Tests for kbm.explain.plot."""

import numpy as np
import pytest

from keras_bigmodels.explain import plot

pytest.importorskip("matplotlib")


def test_rgb_helpers():
    a = np.zeros((4, 4, 1), np.float32)
    a[0, 0], a[1, 1] = 2.0, -1.0
    heat = plot.heatmap_rgb(a)
    assert heat.shape == (4, 4, 3)
    np.testing.assert_allclose(heat[3, 3], 1.0)  # zero -> white
    assert heat[0, 0, 0] > heat[0, 0, 2]  # positive -> red
    assert heat[1, 1, 2] > heat[1, 1, 0]  # negative -> blue
    over = plot.overlay_rgb(np.ones((4, 4, 1)), a)
    assert over.shape == (4, 4, 3) and over.min() >= 0 and over.max() <= 1


def test_figures():
    import matplotlib.pyplot as plt

    fig = plot.image_overlay(np.ones((8, 8)), np.eye(8), title="t")
    assert fig.axes
    fig2 = plot.bar_chart(np.array([0.5, -1.0, 0.1]), ["a", "b", "c"], top_k=2)
    labels = [t.get_text() for t in fig2.axes[0].get_yticklabels()]
    assert labels == ["a", "b"]
    fig3 = plot.token_heatmap(["a", "great", "film"], [0.0, 2.0, -0.5])
    texts = [t.get_text() for t in fig3.axes[0].texts]
    assert texts == ["a", "great", "film"]
    for f in (fig, fig2, fig3):
        plt.close(f)


def test_token_html_escapes_and_colours():
    html = plot.token_html(["<b>", "fine"], [1.0, -1.0])
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert html.count("<span") == 2
    assert "rgb(204,25,25)" in html  # the strongest positive: red


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 tokens and 3 scores"):
        plot.token_html(["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="one image"):
        plot.heatmap_rgb(np.zeros(5))
    with pytest.raises(ValueError, match="feature_names has 2 names"):
        plot.bar_chart(np.zeros(3), ["a", "b"])
