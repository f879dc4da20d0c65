"""Inference latency of Keras models, measured the way the benchmarks do."""

import dataclasses
import gc
import statistics
import time
import weakref

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import keras

RUNS, WARMUP = 9, 2

# The clock; a module attribute so that tests can script it.
_now = time.perf_counter


@dataclasses.dataclass(frozen=True)
class Latency:
    """The timings of one model on one batch.

    Attributes:
        batch_size: Examples per call (the inputs' leading dimension).
        times_ms: The time of each timed call, in ms, in call order.
    """

    batch_size: int
    times_ms: tuple

    @property
    def median_ms(self):
        """Median time per call, in ms."""
        return statistics.median(self.times_ms)

    @property
    def min_ms(self):
        """Fastest call, in ms."""
        return min(self.times_ms)

    @property
    def max_ms(self):
        """Slowest call, in ms."""
        return max(self.times_ms)

    @property
    def per_example_ms(self):
        """Median time per call divided by the batch size, in ms."""
        return self.median_ms / self.batch_size

    def overlaps(self, other):
        """Whether the [min, max] spreads of two measurements overlap.

        Two measurements of the same work "agree" when they do.
        """
        return self.min_ms <= other.max_ms and other.min_ms <= self.max_ms

    def format(self, per_example=False):
        """`"12.3 ms (11.9-13.0)"`: the median and the min-max spread,
        per call, or per example when `per_example`."""
        scale = self.batch_size if per_example else 1
        return (
            f"{_digits(self.median_ms / scale)} ms "
            f"({_digits(self.min_ms / scale)}-{_digits(self.max_ms / scale)})"
        )


def _digits(ms):
    """About three significant digits, never in exponent notation."""
    for limit, decimals in ((100, 0), (10, 1), (1, 2)):
        if ms >= limit:
            return f"{ms:.{decimals}f}"
    return f"{ms:.3f}"


# Per Keras model, its traced inference calls, by input signature.
_FUNCTIONS = weakref.WeakKeyDictionary()


def _as_function(model, inputs):
    """A keras model or layer as a traced inference call for inputs like
    `inputs`, of any batch size (traced once per model and input
    structure, as a serving signature is); other callables are used as
    they are."""
    if isinstance(model, keras.layers.Layer):
        spec = tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), inputs
        )
        functions = _FUNCTIONS.setdefault(model, {})
        key = repr(spec)
        if key not in functions:
            ref = weakref.ref(model)  # The cache must not keep it alive.
            functions[key] = tf.function(
                lambda x: ref()(x, training=False), input_signature=[spec]
            )
        return functions[key]
    if not callable(model):
        raise ValueError(
            "Expected a Keras model or a callable. "
            f"Received: model={type(model).__name__}"
        )
    return model


def _fetch(outputs):
    """The outputs as NumPy arrays: waits for the device and copies to the
    host, as a caller that uses the result must."""
    return tf.nest.map_structure(np.asarray, outputs)


def _batch_size(inputs):
    flat = tf.nest.flatten(inputs)
    if not flat or not hasattr(flat[0], "shape") or not len(flat[0].shape):
        raise ValueError(
            "inputs must be batched arrays or tensors (a leading batch "
            f"dimension). Received: {type(inputs).__name__}"
        )
    return int(flat[0].shape[0])


def measure_latencies(models, inputs, runs=RUNS, warmup=WARMUP):
    """Times several models on the same inputs, interleaved.

    Each model is first called `warmup` times untimed (tracing, first
    allocations). Then every timed round calls each model once, in order
    (A, B, C, A, B, C, ...), so that a slow spell of the machine falls on
    all of them alike; each call is timed from the call until its outputs
    are on the host as NumPy arrays. Keras models and layers run as a
    `tf.function` of `model(inputs, training=False)`; other callables are
    called as they are, with `inputs`.

    Args:
        models: `{name: keras model or callable}`.
        inputs: The inputs of one call (an array, a tensor or a structure
            of them), with a leading batch dimension.
        runs: Timed calls per model, at least 5. Defaults to `9`.
        warmup: Untimed calls per model before the timed ones, at least 1.
            Defaults to `2`.

    Returns:
        `{name: Latency}`, in the order of `models`.

    Example:

    ```python
    x = np.zeros((32, 128), "int32")
    result = kbm.utils.measure_latencies({"fp32": model, "int8": q}, x)
    print(result["int8"].format(per_example=True))
    ```
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 5:
        raise ValueError(
            f"runs must be an integer >= 5. Received: runs={runs!r}"
        )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(
            f"warmup must be an integer >= 1. Received: warmup={warmup!r}"
        )
    if not models:
        raise ValueError("models must name at least one model.")
    batch_size = _batch_size(inputs)
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    functions = {name: _as_function(m, inputs) for name, m in models.items()}
    for _ in range(warmup):
        for fn in functions.values():
            _fetch(fn(inputs))
    times = {name: [] for name in functions}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            for name, fn in functions.items():
                start = _now()
                _fetch(fn(inputs))
                times[name].append((_now() - start) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {
        name: Latency(batch_size=batch_size, times_ms=tuple(ts))
        for name, ts in times.items()
    }


def measure_latency(model, inputs, runs=RUNS, warmup=WARMUP):
    """Times one model on one batch: warm-up, then `runs` timed calls.

    See `measure_latencies`, which times several models interleaved (use
    it to compare models: they then share the machine's slow spells).

    Args:
        model: A Keras model or layer (called as a `tf.function` with
            `training=False`), or any callable taking `inputs`.
        inputs: The inputs of one call, with a leading batch dimension.
        runs: Timed calls, at least 5. Defaults to `9`.
        warmup: Untimed calls first, at least 1. Defaults to `2`.

    Returns:
        A `Latency`: `median_ms`, `min_ms`, `max_ms`, `per_example_ms`.

    Example:

    ```python
    latency = kbm.utils.measure_latency(model, x[:1])
    print(f"{latency.median_ms:.2f} ms ({latency.min_ms:.2f}-"
          f"{latency.max_ms:.2f})")
    ```
    """
    return measure_latencies({"model": model}, inputs, runs, warmup)["model"]
