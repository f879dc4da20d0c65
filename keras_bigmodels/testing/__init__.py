"""Helpers for testing fused ops and layers (used by the test suite).

No test-framework imports here: failures are plain `AssertionError`s.
"""

import atexit
import copy
import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import tensorflow as tf


def to_numpy(x):
    """A tensor or variable as a float64 NumPy array."""
    return np.asarray(tf.cast(tf.convert_to_tensor(x), tf.float64))


def assert_close(actual, expected, rtol, atol, what="value"):
    """Asserts |actual - expected| <= atol + rtol * |expected|, elementwise.

    NaNs must be in the same places. The message reports the worst element.
    """
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {e.shape}")
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        raise AssertionError(
            f"{what}: NaN positions differ ({nan_a.sum()} vs {nan_e.sum()})"
        )
    a, e = np.where(nan_a, 0, a), np.where(nan_e, 0, e)
    err = np.abs(a - e) - (atol + rtol * np.abs(e))
    if a.size and err.max() > 0:
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(
            f"{what}: mismatch at {i}: got {a[i]!r}, expected {e[i]!r} "
            f"(rtol={rtol}, atol={atol}, max |diff|={np.abs(a - e).max():.3g})"
        )


def kbm_ops_in(concrete_function):
    """The sorted `Kbm>` op types in a concrete function's graph."""
    graph = concrete_function.graph.as_graph_def()
    ops = {n.op for n in graph.node}
    for f in graph.library.function:
        ops |= {n.op for n in f.node_def}
    return sorted(op for op in ops if op.startswith("Kbm>"))


def random_tensor(shape, dtype, seed, scale=1.0, offset=0.0):
    """Deterministic normal samples, generated in float64 and cast."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * scale + offset
    return tf.constant(values.astype(np.float64), dtype=dtype)


def kernel_vs_reference(fn, inputs, tolerances, seed=0, **kwargs):
    """Checks `fn`'s fused kernel against its reference, values and gradients.

    Calls `fn(*inputs, use_fused_kernel=True, **kwargs)` and the same with
    `False`, compares the outputs, then the gradients w.r.t. every input for
    the same random upstream gradient.

    Args:
        fn: A public op from `kbm.ops`.
        inputs: A list of tensors; `inputs[0]` sets the dtype looked up in
            `tolerances`.
        tolerances: `{dtype: {"rtol": ..., "atol": ...}}`, kept next to the
            op.
        seed: Seed of the upstream gradient.
    """
    tol = tolerances[inputs[0].dtype]
    results = {}
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = fn(*inputs, use_fused_kernel=fused, **kwargs)
        dy = random_tensor(y.shape, y.dtype, seed)
        grads = tape.gradient(y, inputs, output_gradients=dy)
        results[fused] = (y, grads)
    (y_k, g_k), (y_r, g_r) = results[True], results[False]
    assert_close(y_k, y_r, what="output", **tol)
    for i, (a, b) in enumerate(zip(g_k, g_r)):
        # Parameter gradients sum over rows: scale the tolerance with them.
        rows = max(1, int(np.prod(inputs[0].shape[:-1])))
        scale = 1.0 if a.shape == inputs[0].shape else np.sqrt(rows)
        assert_close(
            a,
            b,
            rtol=tol["rtol"] * scale,
            atol=tol["atol"] * scale,
            what=f"gradient of input {i}",
        )


# The loop of a reusable process (`run_python(..., reuse=...)`): one JSON
# request per line on stdin, one JSON reply per line on a copy of the
# original stdout; file descriptor 1 itself goes to stderr so that stray
# writes (C++ logs, print before redirect) cannot break the protocol.
_WORKER_LOOP = """
import contextlib, io, json, os, sys, traceback
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
for line in sys.stdin:
    code = json.loads(line)["code"]
    out, error = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            code = compile(code, "<run_python>", "exec")
            exec(code, {"__name__": "__main__"})
    except SystemExit as e:
        if e.code not in (None, 0):
            error = f"SystemExit({e.code!r})"
    except BaseException:
        error = traceback.format_exc()
    replies.write(json.dumps({"stdout": out.getvalue(), "error": error}))
    replies.write("\\n")
    replies.flush()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # Stdin closed: skip the slow interpreter teardown.
"""

_workers = {}


def _process_env(env):
    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    return full_env


class _Worker:
    """A Python process that runs the code sent to it, one call at a time."""

    def __init__(self, env):
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_LOOP],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def stderr_tail(self, n=4000):
        """The end of the worker's stderr, after the first sanitizer report
        line if there is one (a long stack trace pushes it out of the end,
        and the sanitizer runs count reports by these lines)."""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        report = next(
            (
                line
                for line in text.splitlines()
                if "runtime error:" in line or "ERROR: AddressSanitizer" in line
            ),
            None,
        )
        tail = text[-n:]
        return (
            tail if report is None or report in tail else report + "\n" + tail
        )

    def run(self, code, timeout):
        try:
            self.proc.stdin.write(json.dumps({"code": code}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # It died: reported below, with its stderr.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise AssertionError(
                f"reused process died (exit code {self.proc.returncode}):\n"
                f"{self.stderr_tail()}"
            )
        return json.loads(line)

    def close(self, wait=True):
        if self.proc.poll() is None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if wait:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@atexit.register
def _close_workers():
    workers = list(_workers.values())
    _workers.clear()
    for worker in workers:  # All at once: each exits on its own.
        worker.close(wait=False)
    for worker in workers:
        worker.close()


def run_python(code, env=None, timeout=300, reuse=None):
    """Runs `code` in a separate Python process; returns its stdout.

    By default each call starts a fresh process. With `reuse`, calls with
    the same `reuse` key and `env` share one process, started by the first
    of them (with the environment of that moment plus `env`) and kept
    until this process exits: each call runs in its own
    `__main__` namespace, but modules imported and global state set by
    earlier calls stay. That saves the interpreter and TensorFlow start-up
    (seconds) per call; keep `reuse=None` where a check needs a pristine
    process (what an import pulls in, a first load).

    Args:
        code: Python source (dedented).
        env: Extra environment variables (values None remove a variable).
        timeout: Seconds before the process is killed. Defaults to `300`.
        reuse: None, or a string naming a process to share. Defaults to
            `None`.

    Raises:
        AssertionError: The code failed (exception or non-zero exit); the
            message holds its traceback and stderr.
        subprocess.TimeoutExpired: The code ran past `timeout`.
    """
    code = textwrap.dedent(code)
    full_env = _process_env(env)
    if reuse is not None:
        # Keyed on `env`, not the whole environment: pytest changes
        # PYTEST_CURRENT_TEST for every test.
        key = (reuse, tuple(sorted((env or {}).items())))
        worker = _workers.get(key)
        if worker is None or worker.proc.poll() is not None:
            worker = _workers[key] = _Worker(full_env)
        reply = worker.run(code, timeout)
        if reply["error"] is not None:
            raise AssertionError(
                f"code failed in a reused process:\n{reply['error'][-4000:]}"
                f"\nstderr:\n{worker.stderr_tail(2000)}"
            )
        return reply["stdout"]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc.stdout


def last_json_line(stdout):
    """The last line of `stdout` that parses as JSON."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"no JSON line in output:\n{stdout[-2000:]}")


def optimizer_trajectory(
    optimizer, shapes, steps, seed=0, dtype=tf.float32, sparse_rows=None
):
    """Runs `steps` updates of `optimizer` on fresh variables.

    Gradients are deterministic random tensors (one list per step). With
    `sparse_rows`, the first variable's gradient is a `tf.IndexedSlices`
    over those rows.

    Returns:
        `(variables, optimizer)`: the final variable values as NumPy arrays,
        and the optimizer (for its slots).
    """
    from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

    rng = np.random.default_rng(seed)
    if IS_LEGACY_KERAS:
        variables = [
            tf.Variable(
                rng.standard_normal(s).astype(dtype.as_numpy_dtype),
                name=f"w{i}",
            )
            for i, s in enumerate(shapes)
        ]
    else:
        variables = [
            keras.Variable(
                rng.standard_normal(s).astype(dtype.as_numpy_dtype),
                name=f"w{i}",
            )
            for i, s in enumerate(shapes)
        ]
    grads = [
        [tf.constant(rng.standard_normal(s), dtype) for s in shapes]
        for _ in range(steps)
    ]
    for step_grads in grads:
        if sparse_rows is not None:
            g0 = step_grads[0]
            rows = tf.constant(sparse_rows, tf.int32)
            step_grads = [
                tf.IndexedSlices(
                    tf.gather(g0, rows), rows, tf.shape(g0, out_type=tf.int32)
                ),
                *step_grads[1:],
            ]
        optimizer.apply_gradients(zip(step_grads, variables))
    return [np.asarray(v.numpy()) for v in variables], optimizer


def _example_inputs(shape, dtype, seed, input_range):
    """Deterministic example inputs of `shape` (full shape, batch first)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        low, high = input_range or (0, 10)
        return rng.integers(low, high, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _same_config(a, b, what):
    if json.dumps(a, sort_keys=True, default=str) != json.dumps(
        b, sort_keys=True, default=str
    ):
        raise AssertionError(f"{what}: {a} != {b}")


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    supports_masking=None,
    input_dtype="float32",
    input_range=None,
    call_kwargs=None,
    run_training_check=True,
    run_mixed_precision_check=True,
    run_saving_check=True,
    tmp_dir=None,
    rtol=1e-5,
    atol=1e-5,
):
    """The contract of a kbm layer, in one call (after Keras's own helper).

    Checks, in order:

    1. `get_config` / `from_config` round-trip to the same config;
    2. an eager call builds the layer: output shape (also from
       `compute_output_shape` and a symbolic `keras.Input` call), weight
       counts and `supports_masking` as expected;
    3. the layer called in `tf.function` gives the eager output;
    4. (`run_training_check`) one `fit` epoch of `inputs -> layer` on MSE to
       zeros has a finite loss and changes the trainable weights;
    5. (`run_mixed_precision_check`) with `dtype="mixed_float16"` the
       output is float16, the weights stay float32, and with the float32
       layer's weights the output matches it to float16 precision;
    6. (`run_saving_check`, needs `tmp_dir`) the model saved as `.keras`
       loads in another process with the kernel library disabled and gives
       the same predictions. That process is started fresh for the first
       case of `layer_cls` and reused for its later cases (see
       `run_python`'s `reuse`).

    Args:
        layer_cls: The layer class.
        init_kwargs: Constructor arguments.
        input_shape: The full input shape (batch first), or a tuple of
            shapes for a layer called on several positional inputs.
        expected_output_shape: The full output shape, or None to skip.
        expected_num_trainable_weights: Or None to skip.
        expected_num_non_trainable_weights: Or None to skip.
        supports_masking: The expected `layer.supports_masking`, or None.
        input_dtype: Dtype of the example inputs. Defaults to `"float32"`.
        input_range: `(low, high)` of integer inputs. Defaults to `(0, 10)`.
        call_kwargs: Extra call arguments. Defaults to `None`.
        run_training_check: Defaults to `True`.
        run_mixed_precision_check: Defaults to `True`.
        run_saving_check: Defaults to `True`.
        tmp_dir: A directory for the saved model (the saving check).
        rtol, atol: Tolerances of the float32 comparisons.
    """
    from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

    multi = isinstance(input_shape[0], (tuple, list))
    shapes = [tuple(s) for s in input_shape] if multi else [tuple(input_shape)]
    call_kwargs = dict(call_kwargs or {})
    xs = [
        _example_inputs(s, input_dtype, seed, input_range)
        for seed, s in enumerate(shapes)
    ]

    def call(layer, inputs, **kwargs):
        return layer(*inputs, **call_kwargs, **kwargs)

    # 1. Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    # A copy: some `from_config`s pop keys (tf-keras's MHA: the shapes).
    clone = layer_cls.from_config(copy.deepcopy(config))
    _same_config(clone.get_config(), config, "config round trip")

    # 2. Build, shapes, weights, masking.
    y = call(layer, [tf.constant(x) for x in xs])
    if expected_output_shape is not None:
        if tuple(y.shape) != tuple(expected_output_shape):
            raise AssertionError(
                f"output shape {tuple(y.shape)} != {expected_output_shape}"
            )
        computed = layer.compute_output_shape(*shapes)
        if tuple(computed) != tuple(expected_output_shape):
            raise AssertionError(
                f"compute_output_shape {tuple(computed)} != "
                f"{expected_output_shape}"
            )
    counts = (
        ("trainable", layer.trainable_weights, expected_num_trainable_weights),
        (
            "non-trainable",
            layer.non_trainable_weights,
            expected_num_non_trainable_weights,
        ),
    )
    for what, weights, expected in counts:
        if expected is not None and len(weights) != expected:
            raise AssertionError(
                f"{len(weights)} {what} weights, expected {expected}"
            )
    if supports_masking is not None and bool(layer.supports_masking) != bool(
        supports_masking
    ):
        raise AssertionError(
            f"supports_masking is {layer.supports_masking}, expected "
            f"{supports_masking}"
        )
    symbolic_inputs = [
        keras.Input(s[1:], batch_size=None, dtype=input_dtype) for s in shapes
    ]
    symbolic = call(layer_cls(**init_kwargs), symbolic_inputs)
    if expected_output_shape is not None:
        got = tuple(symbolic.shape)[1:]
        if got != tuple(expected_output_shape)[1:]:
            raise AssertionError(
                f"symbolic output shape {got} != "
                f"{tuple(expected_output_shape)[1:]} (batch dims dropped)"
            )

    # 3. Eager vs tf.function.
    graph = tf.function(lambda *a: call(layer, a))(
        *[tf.constant(x) for x in xs]
    )
    assert_close(graph, y, rtol, atol, what="tf.function vs eager")

    # 4. Training.
    model_layer = layer_cls(**init_kwargs)
    model_inputs = [keras.Input(s[1:], dtype=input_dtype) for s in shapes]
    model = keras.Model(
        model_inputs if multi else model_inputs[0],
        call(model_layer, model_inputs),
    )
    x_fit = xs if multi else xs[0]
    y_fit = np.zeros(tuple(y.shape), np.float32)
    if run_training_check:
        model(x_fit)
        before = [w.numpy().copy() for w in model_layer.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        history = model.fit(x_fit, y_fit, epochs=1, batch_size=8, verbose=0)
        loss = history.history["loss"][-1]
        if not np.isfinite(loss):
            raise AssertionError(f"fit gave a non-finite loss {loss}")
        changed = [
            not np.allclose(b, w.numpy())
            for b, w in zip(before, model_layer.trainable_weights)
        ]
        if before and not any(changed):
            raise AssertionError("fit did not change the layer's weights")

    # 5. Mixed precision.
    if run_mixed_precision_check:
        mixed = layer_cls(**{**init_kwargs, "dtype": "mixed_float16"})
        y16 = call(mixed, [tf.constant(x) for x in xs])
        if y16.dtype != tf.float16:
            raise AssertionError(
                f"mixed_float16 output dtype {y16.dtype}, expected float16"
            )
        for w in mixed.weights:
            dtype = tf.as_dtype(w.dtype)
            if dtype.is_floating and dtype != tf.float32:
                raise AssertionError(f"mixed_float16 weight {w.name}: {dtype}")
        mixed.set_weights(layer.get_weights())
        y16 = call(mixed, [tf.constant(x) for x in xs])
        assert_close(y16, y, 2e-2, 2e-2, what="mixed_float16 vs float32 output")

    # 6. Saving, loaded without kernels.
    if run_saving_check:
        if tmp_dir is None:
            raise ValueError("run_saving_check needs tmp_dir")
        _check_saved_model(
            model, x_fit, tmp_dir, rtol, atol, IS_LEGACY_KERAS, layer_cls
        )


def _check_saved_model(model, x, tmp_dir, rtol, atol, legacy, layer_cls):
    """`.keras` round trip, loaded in a process without the kernels.

    The loading process is shared by the cases of one layer class: the
    class's first case loads in a fresh process, the others reuse it.
    """
    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_dir), "layer_test.keras")
    model.save(path)
    inputs = x if isinstance(x, list) else [x]
    x_paths = []
    for i, xi in enumerate(inputs):
        x_paths.append(os.path.join(str(tmp_dir), f"x{i}.npy"))
        np.save(x_paths[-1], xi)
    single = not isinstance(x, list)
    out = run_python(
        f"""
        import json
        import numpy as np
        import keras_bigmodels as kbm
        from keras_bigmodels.backend import keras
        status = kbm.ops.kernels_available()
        model = keras.models.load_model({path!r})
        xs = [np.load(p) for p in {x_paths!r}]
        y = model.predict(xs[0] if {single!r} else xs, verbose=0)
        print(json.dumps({{"available": status.available, "y": y.tolist()}}))
        """,
        env={
            "KERAS_BIGMODELS_DISABLE_FUSED": "1",
            "TF_USE_LEGACY_KERAS": "1" if legacy else None,
        },
        reuse=f"layer_test:{layer_cls.__module__}.{layer_cls.__qualname__}",
    )
    result = last_json_line(out)
    if result["available"]:
        raise AssertionError("kernels were available in the loading process")
    assert_close(
        np.array(result["y"]),
        expected,
        rtol,
        atol,
        what="predictions after loading without kernels",
    )
