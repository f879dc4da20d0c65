"""kbm.optimizers.schedules: warmup schedules, the same on both Keras lines."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.backend import keras
from keras_bigmodels.optimizers import schedules
from keras_bigmodels.testing import assert_close

# Golden values: the formulas written out in float64.


def numpy_warmup(step, peak, warmup, initial, decay_fn):
    step = max(step, 0.0)
    if step < warmup:
        return initial + (peak - initial) * step / warmup
    return decay_fn(step - warmup)


def numpy_cosine(step, peak, warmup, decay, alpha=0.0, initial=0.0):
    def decay_fn(s):
        t = min(s, decay) / decay
        return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)

    return numpy_warmup(step, peak, warmup, initial, decay_fn)


def numpy_linear(step, peak, warmup, decay, end=0.0, initial=0.0):
    def decay_fn(s):
        return peak + (end - peak) * min(s, decay) / decay

    return numpy_warmup(step, peak, warmup, initial, decay_fn)


def numpy_inverse_sqrt(step, peak, warmup, initial=0.0):
    def decay_fn(s):
        s += warmup
        if warmup == 0:
            return peak / math.sqrt(max(s, 1.0))
        return peak * math.sqrt(warmup / s)

    return numpy_warmup(step, peak, warmup, initial, decay_fn)


WARMUP, DECAY = 10, 100
# 0, 1, warmup - 1, warmup, warmup + 1, mid-decay, end, beyond the end,
# and fractional steps (float step tensors).
STEPS = [0, 1, 9, 10, 11, 35.25, 60, 110, 111, 1000, 4.5]

CASES = {
    "cosine": (
        lambda: schedules.WarmupCosineDecay(
            2e-3, WARMUP, DECAY, alpha=0.1, initial_learning_rate=1e-4
        ),
        lambda s: numpy_cosine(s, 2e-3, WARMUP, DECAY, 0.1, 1e-4),
    ),
    "cosine_defaults": (
        lambda: schedules.WarmupCosineDecay(1.0, WARMUP, DECAY),
        lambda s: numpy_cosine(s, 1.0, WARMUP, DECAY),
    ),
    "cosine_no_warmup": (
        lambda: schedules.WarmupCosineDecay(0.5, 0, DECAY, alpha=0.2),
        lambda s: numpy_cosine(s, 0.5, 0, DECAY, 0.2),
    ),
    "linear": (
        lambda: schedules.WarmupLinearDecay(
            1e-3,
            WARMUP,
            DECAY,
            end_learning_rate=1e-5,
            initial_learning_rate=2e-4,
        ),
        lambda s: numpy_linear(s, 1e-3, WARMUP, DECAY, 1e-5, 2e-4),
    ),
    "linear_no_warmup": (
        lambda: schedules.WarmupLinearDecay(1.0, 0, DECAY),
        lambda s: numpy_linear(s, 1.0, 0, DECAY),
    ),
    "inverse_sqrt": (
        lambda: schedules.WarmupInverseSqrtDecay(
            7e-4, WARMUP, initial_learning_rate=1e-5
        ),
        lambda s: numpy_inverse_sqrt(s, 7e-4, WARMUP, 1e-5),
    ),
    "inverse_sqrt_no_warmup": (
        lambda: schedules.WarmupInverseSqrtDecay(1.0, 0),
        lambda s: numpy_inverse_sqrt(s, 1.0, 0),
    ),
}


def check(schedule, golden, steps, to_step, fn=None):
    fn = fn or schedule
    for step in steps:
        lr = fn(to_step(step))
        assert lr.dtype == tf.float32
        assert_close(lr, golden(step), 1e-6, 1e-9, what=f"lr at step {step}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_values_eager(case):
    make, golden = CASES[case]
    check(make(), golden, STEPS, lambda s: s)


@pytest.mark.parametrize("case", ["cosine", "linear", "inverse_sqrt"])
def test_tensor_steps_inside_tf_function(case):
    make, golden = CASES[case]
    schedule = make()
    fn = tf.function(schedule)
    ints = [s for s in STEPS if float(s).is_integer()]
    for dtype in (tf.int64, tf.int32):
        check(schedule, golden, ints, lambda s: tf.constant(s, dtype))
        check(schedule, golden, ints, lambda s: tf.constant(s, dtype), fn)
    check(schedule, golden, STEPS, lambda s: tf.constant(s, tf.float32), fn)
    check(schedule, golden, [11], lambda s: tf.Variable(s, dtype=tf.int64))


def test_negative_steps_count_as_zero():
    make, golden = CASES["cosine"]
    assert_close(make()(-5), golden(0), 1e-6, 0)


@pytest.mark.parametrize("case", ["cosine", "linear", "inverse_sqrt"])
def test_serialize_round_trip(case):
    schedule = CASES[case][0]()
    config = keras.optimizers.schedules.serialize(schedule)
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    # And the plain get_config / from_config pair.
    again = type(schedule).from_config(schedule.get_config())
    for step in (0, 10, 37, 500):
        assert float(restored(step)) == float(schedule(step))
        assert float(again(step)) == float(schedule(step))


def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    w = rng.standard_normal((3, 1)).astype("float32")
    b = np.array([0.1], "float32")
    return x, y, w, b


def tiny_model(w, b):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.set_weights([w, b])
    return model


def test_drives_adam_in_fit():
    """Two fit steps of Adam match NumPy Adam at the scheduled rates."""
    x, y, w, b = tiny_data()
    # lr(0) = 0.02, lr(1) = 0.1: both steps use their own rate.
    schedule = schedules.WarmupCosineDecay(
        0.1, 1, 4, initial_learning_rate=0.02
    )
    model = tiny_model(w, b)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert int(optimizer.iterations) == 2

    params = [w.astype(np.float64), b.astype(np.float64)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-7
    for step in range(2):
        xb, yb = x[4 * step : 4 * step + 4], y[4 * step : 4 * step + 4]
        r = xb @ params[0] + params[1] - yb
        grads = [2 / 4 * xb.T @ r, 2 / 4 * r.sum(axis=0)]
        lr = numpy_cosine(step, 0.1, 1, 4, 0.0, 0.02)
        t = step + 1
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            params[i] = params[i] - alpha * m[i] / (np.sqrt(v[i]) + eps)
    for got, want in zip(model.get_weights(), params):
        assert_close(got, want, 1e-5, 1e-6, what="weights after 2 steps")


def test_saved_with_the_optimizer(tmp_path):
    x, y, w, b = tiny_data()
    schedule = schedules.WarmupLinearDecay(
        1e-3, 5, 50, end_learning_rate=1e-5, initial_learning_rate=1e-4
    )
    model = tiny_model(w, b)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(str(tmp_path), "scheduled.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    config = loaded.optimizer.get_config()["learning_rate"]
    restored = keras.optimizers.schedules.deserialize(config)
    assert isinstance(restored, schedules.WarmupLinearDecay)
    assert restored.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 1
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: schedules.WarmupCosineDecay(1e-3, -1, 10),
            "Received: warmup_steps=-1",
        ),
        (
            lambda: schedules.WarmupCosineDecay(1e-3, 1, 0),
            "Received: decay_steps=0",
        ),
        (
            lambda: schedules.WarmupCosineDecay(-1e-3, 1, 10),
            "Received: peak_learning_rate=-0.001",
        ),
        (
            lambda: schedules.WarmupCosineDecay(1e-3, 1, 10, alpha=1.5),
            "Received: alpha=1.5",
        ),
        (
            lambda: schedules.WarmupCosineDecay(1e-3, 1, 10, alpha=-0.1),
            "Received: alpha=-0.1",
        ),
        (
            lambda: schedules.WarmupCosineDecay(
                1e-3, 1, 10, initial_learning_rate=-1.0
            ),
            "Received: initial_learning_rate=-1.0",
        ),
        (
            lambda: schedules.WarmupLinearDecay(1e-3, 1, 0.5),
            "Received: decay_steps=0.5",
        ),
        (
            lambda: schedules.WarmupLinearDecay(
                1e-3, 1, 10, end_learning_rate=-1e-5
            ),
            "Received: end_learning_rate=-1e-05",
        ),
        (
            lambda: schedules.WarmupInverseSqrtDecay(1e-3, -3),
            "Received: warmup_steps=-3",
        ),
        (
            lambda: schedules.WarmupInverseSqrtDecay("fast", 10),
            "Received: peak_learning_rate='fast'",
        ),
        (
            lambda: schedules.WarmupInverseSqrtDecay(1e-3, float("nan")),
            "Received: warmup_steps=nan",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
