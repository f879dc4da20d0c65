import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.backend import keras
from keras_bigmodels.utils import latency as latency_lib
from keras_bigmodels.utils import measure_latencies, measure_latency


class ScriptedClock:
    """A clock that each call to `work` advances by the next duration."""

    def __init__(self, durations_ms):
        self.durations = list(durations_ms)
        self.now = 0.0
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self, x):
        self.calls += 1
        self.now += self.durations.pop(0) / 1e3
        return x


def test_median_and_spread_of_the_timed_calls(monkeypatch):
    # Two warm-up calls (not timed), then seven timed ones.
    clock = ScriptedClock([100, 100, 5, 3, 9, 4, 4, 6, 8])
    monkeypatch.setattr(latency_lib, "_now", clock)
    result = measure_latency(clock.work, np.zeros((4, 3)), runs=7)
    assert clock.calls == 9
    assert result.times_ms == pytest.approx((5, 3, 9, 4, 4, 6, 8))
    assert result.batch_size == 4
    assert result.median_ms == pytest.approx(5)
    assert result.min_ms == pytest.approx(3)
    assert result.max_ms == pytest.approx(9)
    assert result.per_example_ms == pytest.approx(1.25)
    assert result.format() == "5.00 ms (3.00-9.00)"
    assert result.format(per_example=True) == "1.25 ms (0.750-2.25)"
    wide = latency_lib.Latency(1, (1234.4, 99.94, 10.04, 0.01234, 5.0))
    assert wide.format() == "10.0 ms (0.012-1234)"


def test_models_are_interleaved(monkeypatch):
    order = []
    clock = ScriptedClock([1] * 14)
    monkeypatch.setattr(latency_lib, "_now", clock)

    def model(name):
        def call(x):
            order.append(name)
            return clock.work(x)

        return call

    result = measure_latencies(
        {"a": model("a"), "b": model("b")}, np.zeros((1, 2)), runs=5, warmup=2
    )
    assert order == ["a", "b"] * 7
    assert list(result) == ["a", "b"]
    assert all(len(r.times_ms) == 5 for r in result.values())


def test_overlaps():
    a = latency_lib.Latency(1, (1.0, 2.0, 3.0))
    assert a.overlaps(latency_lib.Latency(1, (3.0, 4.0)))
    assert not a.overlaps(latency_lib.Latency(1, (3.5, 4.0)))


def small_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(256, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


def test_identical_models_agree_within_the_spread():
    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    result = measure_latencies(
        {"first": small_model(1), "second": small_model(2)}, x
    )
    first, second = result["first"], result["second"]
    assert first.batch_size == second.batch_size == 32
    assert len(first.times_ms) == len(second.times_ms) == 9
    assert first.min_ms <= first.median_ms <= first.max_ms
    assert first.overlaps(second)


def test_keras_model_runs_in_inference_mode():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dropout(0.99)(inputs))
    x = np.ones((2, 8), "float32")
    call = latency_lib._as_function(model, tf.constant(x))
    np.testing.assert_array_equal(call(x), x)
    assert measure_latency(model, x, runs=5, warmup=1).batch_size == 2


def test_one_trace_per_model_for_every_batch_size():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    for batch in (1, 32, 7):
        measure_latency(model, np.ones((batch, 8), "float32"), runs=5)
    (call,) = latency_lib._FUNCTIONS[model].values()
    assert call.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runs": 4}, "runs must be an integer >= 5. Received: runs=4"),
        ({"warmup": 0}, "warmup must be an integer >= 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure_latency(lambda x: x, np.zeros((1, 1)), **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="leading batch dimension"):
        measure_latency(lambda x: x, 3.0)
    with pytest.raises(ValueError, match="Expected a Keras model"):
        measure_latency("model", np.zeros((1, 1)))
    with pytest.raises(ValueError, match="at least one model"):
        measure_latencies({}, np.zeros((1, 1)))
