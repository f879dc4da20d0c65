"""Tests for kbm.callbacks.FaithfulnessMonitor."""

import csv

import numpy as np

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from tests.explain._models import mlp


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def test_metrics_reach_history_csv_logger_and_early_stopping(tmp_path):
    x, y = data()
    model = mlp(features=6, outputs=2)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    faith = kbm.callbacks.FaithfulnessMonitor(
        kbm.explain.IntegratedGradients,
        x[:8],
        steps=6,
        method_args={"n_steps": 16},
    )
    log = tmp_path / "log.csv"
    stop = keras.callbacks.EarlyStopping(
        monitor="attr/deletion_auc", mode="min", patience=10
    )
    h = model.fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[faith, keras.callbacks.CSVLogger(str(log)), stop],
    )
    for key in (
        "attr/deletion_auc",
        "attr/insertion_auc",
        "attr/completeness_delta",
    ):
        assert len(h.history[key]) == 3
        assert np.isfinite(h.history[key]).all()
    assert max(h.history["attr/completeness_delta"]) < 1e-2
    rows = list(csv.DictReader(open(log)))
    assert len(rows) == 3 and "attr/deletion_auc" in rows[0]
    assert (
        float(rows[0]["attr/deletion_auc"]) == h.history["attr/deletion_auc"][0]
    )
    # The values are what the metrics module computes now.
    again = faith.measure()
    assert np.isclose(
        again["attr/deletion_auc"],
        h.history["attr/deletion_auc"][-1],
        rtol=1e-5,
    )


def test_epochs_between_measurements_get_nan():
    x, y = data()
    model = mlp(features=6, outputs=2)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    faith = kbm.callbacks.FaithfulnessMonitor(
        kbm.explain.Saliency, x[:4], targets=1, every_n_epochs=2, steps=4
    )
    h = model.fit(x, y, epochs=3, verbose=0, callbacks=[faith])
    auc = h.history["attr/deletion_auc"]
    assert np.isfinite(auc[0]) and np.isnan(auc[1]) and np.isfinite(auc[2])
    assert "attr/completeness_delta" not in h.history


def test_softmax_scores_curves_on_probabilities():
    x, y = data()
    model = mlp(features=6, outputs=2)
    faith = kbm.callbacks.FaithfulnessMonitor(
        kbm.explain.IntegratedGradients(model),
        x[:8],
        steps=4,
        softmax=True,
        method_args={"n_steps": 8},
    )
    faith.set_model(model)
    values = faith.measure()
    for key in ("attr/deletion_auc", "attr/insertion_auc"):
        assert 0.0 <= values[key] <= 1.0
