"""All kbm optimizers in training: fit, mixed precision, checkpoints,
MirroredStrategy."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import assert_close, last_json_line, run_python

OPTIMIZERS = {
    "AdamW": lambda: kbm.optimizers.AdamW(0.01, weight_decay=0.01),
    "Lamb": lambda: kbm.optimizers.Lamb(0.01, weight_decay=0.01),
    "Lion": lambda: kbm.optimizers.Lion(0.001, weight_decay=0.01),
    "RAdam": lambda: kbm.optimizers.RAdam(0.01, weight_decay=0.01),
}


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 1))).astype("float32")
    return x, y


def make_model(keras, dtype=None):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,))
    h = kbm.layers.FusedDense(16, activation="gelu", dtype=dtype)(inputs)
    h = kbm.layers.LayerNormalization(dtype=dtype)(h)
    outputs = keras.layers.Dense(1, dtype="float32")(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_decreases_the_loss(keras, name):
    x, y = data()
    model = make_model(keras)
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "name, policy",
    [
        ("AdamW", "mixed_float16"),
        ("Lamb", "mixed_bfloat16"),
        # Each optimizer and each policy once above; the other pairs in
        # `make test-slow`.
        pytest.param("AdamW", "mixed_bfloat16", marks=pytest.mark.slow),
        pytest.param("Lamb", "mixed_float16", marks=pytest.mark.slow),
    ],
)
def test_mixed_precision(keras, name, policy):
    x, y = data()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = make_model(keras)
        model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
        history = model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert model.layers[1].kernel.dtype == tf.float32


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_keras_file_resume_gives_the_same_trajectory(keras, name, tmp_path):
    x, y = data()
    full = make_model(keras)
    full.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    full.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0)

    half = make_model(keras)
    half.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    half.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    path = str(tmp_path / "mid.keras")
    half.save(path)
    resumed = keras.models.load_model(path)
    assert type(resumed.optimizer).__name__ == name
    resumed.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(resumed.get_weights(), full.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_checkpoint_resume_gives_the_same_trajectory(keras, name, tmp_path):
    x, y = data()

    def steps(model, opt, start, stop):
        for i in range(start, stop):
            xb, yb = x[i * 16 : (i + 1) * 16], y[i * 16 : (i + 1) * 16]
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(xb) - yb) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))

    full, full_opt = make_model(keras), OPTIMIZERS[name]()
    steps(full, full_opt, 0, 4)

    first, first_opt = make_model(keras), OPTIMIZERS[name]()
    steps(first, first_opt, 0, 2)
    ckpt = tf.train.Checkpoint(model=first, optimizer=first_opt)
    path = ckpt.save(str(tmp_path / "ckpt"))

    second, second_opt = make_model(keras), OPTIMIZERS[name]()
    second_opt.build(second.trainable_variables)
    tf.train.Checkpoint(model=second, optimizer=second_opt).restore(
        path
    ).assert_existing_objects_matched()
    steps(second, second_opt, 2, 4)
    for a, b in zip(second.get_weights(), full.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mirrored_strategy_on_two_cpus(tmp_path):
    code = """
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras_bigmodels as kbm
        from keras_bigmodels.backend import keras

        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8)).astype("float32")
        y = (x @ rng.standard_normal((8, 1))).astype("float32")

        def run(strategy, make_opt):
            with strategy.scope():
                keras.utils.set_random_seed(1)
                inputs = keras.Input((8,))
                h = kbm.layers.FusedDense(16, activation="gelu")(inputs)
                model = keras.Model(inputs, keras.layers.Dense(1)(h))
                model.compile(optimizer=make_opt(), loss="mse")
            model.fit(x, y, epochs=3, batch_size=16, shuffle=False,
                      verbose=0)
            return [w.tolist() for w in model.get_weights()]

        out = {}
        for name, make in [
            ("AdamW", lambda: kbm.optimizers.AdamW(0.01, weight_decay=0.01)),
            ("Lamb", lambda: kbm.optimizers.Lamb(0.01)),
            ("Lion", lambda: kbm.optimizers.Lion(0.001)),
            ("RAdam", lambda: kbm.optimizers.RAdam(0.01)),
        ]:
            mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            out[name] = [run(mirrored, make),
                         run(tf.distribute.get_strategy(), make)]
        print(json.dumps(out))
    """
    env = {"TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None}
    result = last_json_line(run_python(code, env=env))
    for name, (mirrored, single) in result.items():
        for a, b in zip(mirrored, single):
            assert_close(np.array(a), np.array(b), 1e-5, 1e-5, what=name)
    assert json.dumps(sorted(result)) == json.dumps(sorted(OPTIMIZERS))


@pytest.mark.parametrize(
    "name,op",
    [
        ("AdamW", "adam_update"),
        ("Lamb", "lamb_update"),
        ("Lion", "lion_update"),
        ("RAdam", "adam_update"),
    ],
)
def test_fit_runs_one_multi_tensor_update(keras, monkeypatch, name, op):
    from keras_bigmodels.ops import optimizers as optimizer_ops

    calls = []
    original = getattr(optimizer_ops, op)

    def spy(variables, *args, **kwargs):
        calls.append((len(variables), kwargs["use_fused_kernel"]))
        return original(variables, *args, **kwargs)

    monkeypatch.setattr(optimizer_ops, op, spy)
    x, y = data()
    model = make_model(keras)
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    # Traced once: one call with every trainable variable, on the kernel.
    assert calls and calls[0] == (len(model.trainable_variables), True)


@pytest.mark.parametrize("name", ["AdamW", "Lamb", "Lion", "RAdam"])
def test_gradients_cast_to_variable_dtype(keras, name):
    # As Keras 3's optimizers do: a float64 variable, float32 gradients give
    # what float64 gradients of the same values give.
    def run(grad_dtype):
        optimizer = getattr(kbm.optimizers, name)(learning_rate=0.01)
        variable = (
            tf.Variable(np.ones(10), dtype=tf.float64)
            if IS_LEGACY_KERAS
            else keras.Variable(np.ones(10), dtype="float64")
        )
        grads = tf.cast(tf.range(0.1, 1.1, 0.1, dtype=tf.float32), grad_dtype)
        for _ in range(3):
            optimizer.apply_gradients([(grads, variable)])
        return np.asarray(variable.numpy())

    fused = run(tf.float32)
    with kbm.config.fused_kernels(False):
        reference = run(tf.float64)
    assert fused.dtype == np.float64
    np.testing.assert_allclose(fused, reference, rtol=1e-6, atol=1e-7)
    assert np.all(fused < 1.0)
