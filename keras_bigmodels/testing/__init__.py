"""Helpers for testing fused ops and layers (used by the test suite).

No test-framework imports here: failures are plain `AssertionError`s.
"""

import json
import os
import subprocess
import sys
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


def run_python(code, env=None, timeout=300):
    """Runs `code` in a fresh Python process; returns its stdout.

    Args:
        code: Python source (dedented).
        env: Extra environment variables (values None remove a variable).
        timeout: Seconds before the process is killed.

    Raises:
        AssertionError: The process failed; the message holds its stderr.
    """
    full_env = dict(os.environ)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
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


def check_layer_contract(
    make_layer, input_shape, tmp_dir, rtol=1e-5, atol=1e-5
):
    """The layer contract: eager, tf.function, fit, save and load elsewhere.

    Builds `Input(input_shape) -> make_layer() -> Dense(1)` and runs
    `check_model_contract` on it; also checks that one fit epoch changes the
    layer's weights.

    Args:
        make_layer: A callable returning a new layer.
        input_shape: The per-example input shape.
        tmp_dir: A directory for the saved model.
    """
    from keras_bigmodels.backend import keras

    layer = make_layer()
    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(1)(layer(inputs))
    model = keras.Model(inputs, outputs)
    x = random_tensor((32, *input_shape), tf.float32, seed=1).numpy()
    y = random_tensor((32, *input_shape[:-1], 1), tf.float32, seed=2).numpy()
    before = [w.numpy().copy() for w in layer.weights]
    check_model_contract(model, x, y, tmp_dir, rtol, atol)
    changed = [
        not np.allclose(b, w.numpy()) for b, w in zip(before, layer.weights)
    ]
    if before and not any(changed):
        raise AssertionError("fit did not change the layer's weights")


def check_model_contract(model, x, y, tmp_dir, rtol=1e-5, atol=1e-5):
    """Eager == tf.function, one fit epoch, and a `.keras` round trip.

    The saved model is loaded in a fresh process with
    `KERAS_BIGMODELS_DISABLE_FUSED=1` (no kernels) and must give the same
    predictions.

    Args:
        model: A Keras model (not compiled).
        x, y: NumPy inputs and targets (one input, one output).
        tmp_dir: A directory for the saved model.
    """
    from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

    eager = model(x)
    graph = tf.function(model)(x)
    assert_close(graph, eager, rtol, atol, what="tf.function vs eager")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        raise AssertionError(f"fit gave a non-finite loss {loss}")
    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_dir), "contract.keras")
    x_path = os.path.join(str(tmp_dir), "x.npy")
    model.save(path)
    np.save(x_path, x)
    out = run_python(
        f"""
        import json
        import numpy as np
        import keras_bigmodels as kbm
        from keras_bigmodels.backend import keras
        status = kbm.ops.kernels_available()
        model = keras.models.load_model({path!r})
        y = model.predict(np.load({x_path!r}), verbose=0)
        print(json.dumps({{"available": status.available,
                          "reason": status.reason, "y": y.tolist()}}))
        """,
        env={
            "KERAS_BIGMODELS_DISABLE_FUSED": "1",
            "TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None,
        },
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
