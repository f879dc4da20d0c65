"""kbm.optimizers.Lamb: Keras 3's Lamb math, fused (also on tf-keras)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import assert_close, optimizer_trajectory

SHAPES = [(6, 5), (5,), (2, 3, 4)]


def numpy_lamb(shapes, steps, lr, b1, b2, eps, wd, seed=0):
    """Keras 3's Lamb update (decoupled weight decay first), in NumPy."""
    rng = np.random.default_rng(seed)
    ps = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ms = [np.zeros(s) for s in shapes]
    vs = [np.zeros(s) for s in shapes]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            ps[i] = ps[i] - ps[i] * wd * lr
            ms[i] += (g - ms[i]) * (1 - b1)
            vs[i] += (g * g - vs[i]) * (1 - b2)
            u = (ms[i] / (1 - b1**t)) / (np.sqrt(vs[i] / (1 - b2**t)) + eps)
            w_norm, u_norm = np.linalg.norm(ps[i]), np.linalg.norm(u)
            ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
            ps[i] = ps[i] - ratio * lr * u
    return ps


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("wd", [None, 0.1])
def test_matches_numpy_reference(fused, wd):
    with kbm.config.fused_kernels(fused):
        got, _ = optimizer_trajectory(
            kbm.optimizers.Lamb(
                0.01, beta_1=0.85, beta_2=0.99, weight_decay=wd
            ),
            SHAPES,
            6,
        )
    expected = numpy_lamb(SHAPES, 6, 0.01, 0.85, 0.99, 1e-7, wd or 0.0)
    for a, b in zip(got, expected):
        assert_close(a, b, 1e-5, 1e-5)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="tf-keras has no Lamb")
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.02, weight_decay=0.05, clipnorm=1.0),
    ],
)
def test_same_trajectory_as_keras3(keras, kwargs):
    ours, opt = optimizer_trajectory(kbm.optimizers.Lamb(**kwargs), SHAPES, 5)
    ref, ref_opt = optimizer_trajectory(
        keras.optimizers.Lamb(**kwargs), SHAPES, 5
    )
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)
    for a, b in zip(opt._velocities, ref_opt._velocities):
        assert_close(np.asarray(a), np.asarray(b), 1e-6, 1e-6)


def test_zero_variable_uses_ratio_one():
    # ||w|| = 0: the trust ratio is 1, as in Keras.
    var = tf.Variable(tf.zeros((3, 3)))
    opt = kbm.optimizers.Lamb(0.1)
    opt.apply_gradients([(tf.ones((3, 3)), var)])
    assert_close(var.numpy(), np.full((3, 3), -0.1), 1e-5, 1e-6)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta_2=1.0"):
        kbm.optimizers.Lamb(beta_2=1.0)
    with pytest.raises(ValueError, match="learning_rate=-1"):
        kbm.optimizers.Lamb(learning_rate=-1)


def test_config_round_trip(keras):
    opt = kbm.optimizers.Lamb(0.002, beta_1=0.8, weight_decay=0.01)
    clone = kbm.optimizers.Lamb.from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()
