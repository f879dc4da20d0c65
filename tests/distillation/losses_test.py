"""kbm.distillation.losses: values, projections, serialisation, errors."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.distillation.losses import (
    OUTPUT,
    FeatureDistillation,
    HiddenStateDistillation,
    LogitsDistillation,
    uniform_layer_map,
)
from keras_bigmodels.testing import assert_close, random_tensor


def numpy_kl_t2(t, s, temperature):
    def log_softmax(z):
        z = z / temperature
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    lp, lq = log_softmax(np.float64(t)), log_softmax(np.float64(s))
    return (np.exp(lp) * (lp - lq)).sum(-1).mean() * temperature**2


@pytest.mark.parametrize("fused", [True, False])
def test_logits_kl_golden(fused):
    t = random_tensor((16, 10), tf.float32, 0, scale=3).numpy()
    s = random_tensor((16, 10), tf.float32, 1, scale=3).numpy()
    loss = LogitsDistillation(temperature=4.0)
    with kbm.config.fused_kernels(fused):
        value = loss.compute_loss({OUTPUT: t}, {OUTPUT: s})
    assert_close(value, numpy_kl_t2(t, s, 4.0), 1e-5, 1e-6)


def test_logits_mse_golden():
    t = random_tensor((8, 5), tf.float32, 2).numpy()
    s = random_tensor((8, 5), tf.float32, 3).numpy()
    value = LogitsDistillation(2.0, loss="mse").compute_loss(
        {OUTPUT: t}, {OUTPUT: s}
    )
    assert_close(value, (((t - s) / 2.0) ** 2).mean(), 1e-6, 1e-7)


def test_t_squared_keeps_the_gradient_scale():
    # Hinton et al.: the T^2 factor makes the gradient magnitude roughly
    # independent of T (it scales as 1/T^2 without it).
    t = random_tensor((64, 10), tf.float32, 4, scale=2)
    s = random_tensor((64, 10), tf.float32, 5, scale=2)
    norms = []
    for temperature in (2.0, 8.0):
        with tf.GradientTape() as tape:
            tape.watch(s)
            value = LogitsDistillation(temperature).compute_loss(
                {OUTPUT: t}, {OUTPUT: s}
            )
        norms.append(float(tf.norm(tape.gradient(value, s))))
    assert 0.2 < norms[1] / norms[0] < 5.0


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="keras.distillation is Keras 3's")
@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_same_value_as_keras_distillation(keras, loss):
    t = random_tensor((32, 10), tf.float32, 6, scale=2)
    s = random_tensor((32, 10), tf.float32, 7, scale=2)
    ours = LogitsDistillation(3.0, loss=loss).compute_loss(
        {OUTPUT: t}, {OUTPUT: s}
    )
    # Keras 3.15 applies softmax only for a KLDivergence *instance*: its
    # string default "kl_divergence" resolves to a function and computes
    # KL on clipped raw logits.
    keras_loss = (
        keras.losses.KLDivergence() if loss == "kl" else "mean_squared_error"
    )
    ref = keras.distillation.LogitsDistillation(
        temperature=3.0, loss=keras_loss
    ).compute_loss(t, s)
    assert_close(ours, ref, 1e-5, 1e-6)


@pytest.mark.parametrize("mode", ["mse", "cosine"])
def test_feature_distillation_with_projection(mode):
    loss = FeatureDistillation("t_layer", "s_layer", loss=mode)
    loss.build(None, {"t_layer": (None, 7, 12)}, {"s_layer": (None, 7, 4)})
    (proj,) = loss.trainable_layers()
    assert proj.kernel.shape == (4, 12)
    t = random_tensor((3, 7, 12), tf.float32, 8).numpy()
    s = random_tensor((3, 7, 4), tf.float32, 9).numpy()
    w = np.asarray(proj.kernel)
    ps = s @ w
    if mode == "mse":
        expected = ((ps - t) ** 2).mean()
    else:
        cos = (ps * t).sum(-1) / (
            np.linalg.norm(ps, axis=-1) * np.linalg.norm(t, axis=-1)
        )
        expected = (1 - cos).mean()
    value = loss.compute_loss({"t_layer": t}, {"s_layer": s})
    assert_close(value, expected, 1e-5, 1e-6)


def test_feature_distillation_shape_errors():
    loss = FeatureDistillation("t", "s", projection=None)
    with pytest.raises(
        ValueError,
        match=r"teacher layer 't' and student "
        r"layer 's': widths differ \(4 vs 12\)",
    ):
        loss.build(None, {"t": (None, 12)}, {"s": (None, 4)})
    with pytest.raises(ValueError, match="every axis but the last"):
        FeatureDistillation("t", "s").build(
            None, {"t": (None, 8, 8, 3)}, {"s": (None, 4, 4, 3)}
        )


def test_hidden_state_distillation_is_the_mean_of_its_pairs():
    loss = HiddenStateDistillation({"s0": "t1", "s1": "t3"})
    shapes_t = {"t1": (None, 5, 8), "t3": (None, 5, 8)}
    loss.build(None, shapes_t, {"s0": (None, 5, 8), "s1": (None, 5, 8)})
    feats_t = {
        k: random_tensor((2, 5, 8), tf.float32, i)
        for i, k in enumerate(shapes_t)
    }
    feats_s = {
        "s0": random_tensor((2, 5, 8), tf.float32, 5),
        "s1": random_tensor((2, 5, 8), tf.float32, 6),
    }
    expected = np.mean(
        [
            np.mean((feats_s["s0"].numpy() - feats_t["t1"].numpy()) ** 2),
            np.mean((feats_s["s1"].numpy() - feats_t["t3"].numpy()) ** 2),
        ]
    )
    assert_close(loss.compute_loss(feats_t, feats_s), expected, 1e-6, 1e-7)


def test_uniform_layer_map():
    assert uniform_layer_map(["s0", "s1"], [f"t{i}" for i in range(6)]) == {
        "s0": "t2",
        "s1": "t5",
    }
    with pytest.raises(ValueError, match="at least as many teacher"):
        uniform_layer_map(["a", "b", "c"], ["x"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature=0"):
        LogitsDistillation(temperature=0)
    with pytest.raises(ValueError, match="temperature=-2"):
        LogitsDistillation(temperature=-2)
    with pytest.raises(ValueError, match="loss='hinge'"):
        LogitsDistillation(loss="hinge")
    with pytest.raises(ValueError, match="projection='linear'"):
        FeatureDistillation(projection="linear")
    with pytest.raises(ValueError, match="layer_map"):
        HiddenStateDistillation({})


def test_serialisation_round_trip(keras):
    for loss in (
        LogitsDistillation(2.5, "mse"),
        FeatureDistillation("a", "b", None, "cosine"),
        HiddenStateDistillation([("s", "t")], "mse"),
    ):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(loss)
        )
        assert type(restored) is type(loss)
        assert restored.get_config() == loss.get_config()
