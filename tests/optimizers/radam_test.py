"""kbm.optimizers.RAdam against a NumPy reference of the paper's update."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import assert_close, optimizer_trajectory

SHAPES = [(6, 3), (3,)]


def numpy_radam(shapes, steps, lr, b1, b2, eps, wd, threshold, seed=0):
    """Liu et al. 2020, Algorithm 2, with decoupled weight decay."""
    rng = np.random.default_rng(seed)
    ps = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ms = [np.zeros(s) for s in shapes]
    vs = [np.zeros(s) for s in shapes]
    rho_inf = 2 / (1 - b2) - 1
    for t, step_grads in enumerate(grads, start=1):
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        for i, g in enumerate(step_grads):
            ps[i] = ps[i] - lr * wd * ps[i]
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat = ms[i] / (1 - b1**t)
            if rho_t >= threshold:
                r = math.sqrt(
                    (rho_t - 4)
                    * (rho_t - 2)
                    * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                v_hat = np.sqrt(vs[i] / (1 - b2**t))
                ps[i] = ps[i] - lr * r * m_hat / (v_hat + eps)
            else:
                ps[i] = ps[i] - lr * m_hat
    return ps


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
        dict(
            learning_rate=0.02,
            beta_1=0.8,
            beta_2=0.9,
            epsilon=1e-6,
            weight_decay=0.1,
        ),
        dict(
            learning_rate=0.01,
            beta_1=0.9,
            beta_2=0.99,
            epsilon=1e-7,
            sma_threshold=4.0,
        ),
    ],
)
def test_matches_numpy_reference(fused, kwargs):
    # 12 steps cover the momentum-SGD phase and the rectified phase.
    expected = numpy_radam(
        SHAPES,
        12,
        kwargs["learning_rate"],
        kwargs["beta_1"],
        kwargs["beta_2"],
        kwargs["epsilon"],
        kwargs.get("weight_decay", 0.0),
        kwargs.get("sma_threshold", 5.0),
    )
    with kbm.config.fused_kernels(fused):
        got, _ = optimizer_trajectory(
            kbm.optimizers.RAdam(**kwargs), SHAPES, 12
        )
    for a, b in zip(got, expected):
        assert_close(a, b, 2e-5, 2e-5)


def test_float64_matches_numpy_closely():
    expected = numpy_radam(SHAPES, 10, 0.01, 0.9, 0.95, 1e-8, 0.0, 5.0)
    got, _ = optimizer_trajectory(
        kbm.optimizers.RAdam(0.01, beta_2=0.95, epsilon=1e-8),
        SHAPES,
        10,
        dtype=tf.float64,
    )
    # Step scalars are computed in float32 (as Keras does for its own).
    for a, b in zip(got, expected):
        assert_close(a, b, 1e-6, 1e-6)


def test_lazy_sparse_rows():
    start, _ = optimizer_trajectory(kbm.optimizers.RAdam(0.01), [(4, 3)], 0)
    lazy, _ = optimizer_trajectory(
        kbm.optimizers.RAdam(0.01, lazy_sparse_updates=True),
        [(4, 3)],
        4,
        sparse_rows=[0, 2],
    )
    np.testing.assert_array_equal(lazy[0][[1, 3]], start[0][[1, 3]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=-0.1), "learning_rate=-0.1"),
        (dict(beta_1=1.5), "beta_1=1.5"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.optimizers.RAdam(**kwargs)


def test_config_round_trip(keras):
    opt = kbm.optimizers.RAdam(
        0.003, beta_2=0.98, weight_decay=0.01, sma_threshold=4.0
    )
    clone = kbm.optimizers.RAdam.from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is kbm.optimizers.RAdam
