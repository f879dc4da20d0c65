"""Tests for kbm.callbacks.AttributionMonitor."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.testing import last_json_line, run_python
from tests.explain._models import patch_images, text_model


def read_events(log_dir):
    acc = event_accumulator.EventAccumulator(
        os.path.join(log_dir, "attributions"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    acc.Reload()
    return acc


def small_cnn():
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(i)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    m = keras.Model(i, keras.layers.Dense(2)(h))
    m.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return m


def image_data(n=32):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.2, (n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    x[y == 1] += patch_images(int((y == 1).sum()))
    return x, y


def test_image_summaries_and_files(tmp_path):
    x, y = image_data()
    model = small_cnn()
    monitor = kbm.callbacks.AttributionMonitor(
        kbm.explain.IntegratedGradients,
        x[:3],
        targets=y[:3],
        log_dir=str(tmp_path / "logs"),
        save_dir=str(tmp_path / "files"),
        method_args={"n_steps": 8},
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[monitor])
    acc = read_events(str(tmp_path / "logs"))
    # TF 2 writes image summaries as tensors: [width, height, png, ...].
    assert "attributions/overlay" in acc.Tags()["tensors"]
    events = acc.Tensors("attributions/overlay")
    assert [e.step for e in events] == [0, 1]  # one per epoch
    parts = events[-1].tensor_proto.string_val
    assert parts[:2] == [b"8", b"8"] and len(parts) == 2 + 3  # 3 samples
    png = tf.io.decode_png(parts[2]).numpy()
    assert png.shape == (8, 8, 3)
    files = sorted(os.listdir(tmp_path / "files"))
    assert "epoch_0001.json" in files
    assert "epoch_0001_sample_2.png" in files
    record = json.load(open(tmp_path / "files" / "epoch_0001.json"))
    assert record["method"] == "IntegratedGradients"
    assert record["targets"] == y[:3].tolist()
    np.testing.assert_allclose(record["attributions"], monitor.attributions)
    assert monitor.attributions.shape == (3, 8, 8, 1)


def test_monitor_does_not_change_training_state():
    x, y = image_data()
    model = small_cnn()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    iterations = int(model.optimizer.iterations.numpy())
    monitor = kbm.callbacks.AttributionMonitor(
        kbm.explain.GradCam(model, "conv"), x[:4]
    )
    monitor.set_model(model)
    monitor.on_epoch_end(0, {})
    assert monitor.attributions.shape == (4, 8, 8, 1)
    for a, b in zip(before, model.get_weights()):  # incl. BatchNorm stats
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations.numpy()) == iterations


def test_token_summaries(tmp_path):
    model = text_model()
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    ids = np.array([[3, 7, 1, 9, 0, 0], [5, 5, 2, 0, 0, 0]] * 8, np.int32)
    y = np.array([0, 1] * 8)
    vocab = [f"w{i}" for i in range(20)]
    monitor = kbm.callbacks.AttributionMonitor(
        lambda m: kbm.explain.LayerIntegratedGradients(m, "embed"),
        ids[:2],
        targets=1,
        every_n_epochs=2,
        vocabulary=vocab,
        log_dir=str(tmp_path),
        save_dir=str(tmp_path / "files"),
        method_args={"n_steps": 8},
    )
    model.fit(ids, y, epochs=3, verbose=0, callbacks=[monitor])
    acc = read_events(str(tmp_path))
    events = acc.Tensors("attributions/tokens")
    assert [e.step for e in events] == [0, 2]  # every 2nd epoch from 0
    text = events[-1].tensor_proto.string_val[0].decode()
    assert "w3(" in text and "w9(" in text and "w0(" not in text
    files = sorted(os.listdir(tmp_path / "files"))
    assert files == [
        "epoch_0000.html",
        "epoch_0000.json",
        "epoch_0002.html",
        "epoch_0002.json",
    ]
    html = open(tmp_path / "files" / "epoch_0002.html").read()
    assert ">w7</span>" in html


def test_bad_arguments():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="method must be"):
        kbm.callbacks.AttributionMonitor(3, x)
    with pytest.raises(ValueError, match="every_n_epochs must be"):
        kbm.callbacks.AttributionMonitor(
            kbm.explain.Saliency, x, every_n_epochs=0
        )
    with pytest.raises(ValueError, match="one int per sample"):
        kbm.callbacks.AttributionMonitor(
            kbm.explain.Saliency, x, targets=[1, 2, 3]
        )
    with pytest.raises(ValueError, match="kind must be one of"):
        kbm.callbacks.AttributionMonitor(kbm.explain.Saliency, x, kind="audio")


def test_mirrored_strategy(tmp_path):
    code = f"""
        import json, os
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras_bigmodels as kbm
        from keras_bigmodels.backend import keras
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8, 8, 1)).astype("float32")
        y = (x[:, 4, 4, 0] > 0).astype("int32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            i = keras.Input((8, 8, 1))
            h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(i)
            h = keras.layers.GlobalAveragePooling2D()(h)
            model = keras.Model(i, keras.layers.Dense(2)(h))
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
        monitor = kbm.callbacks.AttributionMonitor(
            lambda m: kbm.explain.GradCam(m, "conv"), x[:2],
            log_dir={str(tmp_path)!r})
        faith = kbm.callbacks.FaithfulnessMonitor(
            kbm.explain.IntegratedGradients, x[:4], steps=4,
            method_args={{"n_steps": 8}})
        h = model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                      callbacks=[monitor, faith])
        print(json.dumps({{"shape": list(monitor.attributions.shape),
                          "auc": h.history["attr/deletion_auc"]}}))
    """
    env = {"TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None}
    result = last_json_line(run_python(code, env=env))
    assert result["shape"] == [2, 8, 8, 1]
    assert np.isfinite(result["auc"]).all() and len(result["auc"]) == 2
    assert read_events(str(tmp_path)).Tensors("attributions/overlay")
