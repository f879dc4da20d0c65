"""kbm.optimizers.Lookahead: any inner optimizer, on both Keras lines."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.optimizers.lookahead import Lookahead
from keras_bigmodels.testing import assert_close, last_json_line, run_python

# A quadratic loss 0.5 * sum(a * (w - c)**2) over two variables: its
# gradient a * (w - c) depends on the weights, so the trajectory checks the
# reset of the fast weights as well as the slow-weight update.
RNG = np.random.default_rng(0)
SHAPES = [(3,), (2, 2)]
W0 = [RNG.standard_normal(s).astype(np.float32) for s in SHAPES]
A = [RNG.uniform(0.5, 2.0, s).astype(np.float32) for s in SHAPES]
C = [RNG.standard_normal(s).astype(np.float32) for s in SHAPES]


def numpy_lookahead(inner_step, steps, sync_period, slow_step_size):
    """Weights after `steps` steps of Lookahead around `inner_step`."""
    fast = [w.astype(np.float64) for w in W0]
    slow = [w.copy() for w in fast]
    for t in range(1, steps + 1):
        grads = [a * (w - c) for a, w, c in zip(A, fast, C)]
        fast = inner_step(t, fast, grads)
        if t % sync_period == 0:
            slow = [s + slow_step_size * (f - s) for s, f in zip(slow, fast)]
            fast = [s.copy() for s in slow]
    return fast


def numpy_sgd(lr):
    def step(t, weights, grads):
        return [w - lr * g for w, g in zip(weights, grads)]

    return step


def numpy_adam(lr, b1=0.9, b2=0.999, eps=1e-7):
    m = [np.zeros(s) for s in SHAPES]
    v = [np.zeros(s) for s in SHAPES]

    def step(t, weights, grads):
        out = []
        for i, (w, g) in enumerate(zip(weights, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            out.append(w - alpha * m[i] / (np.sqrt(v[i]) + eps))
        return out

    return step


def new_variable(value):
    if IS_LEGACY_KERAS:
        return tf.Variable(value)
    return keras.Variable(value)


def run_quadratic(optimizer, steps, mode):
    """Runs `steps` steps on the quadratic loss; returns the weights."""
    variables = [new_variable(w) for w in W0]
    a = [tf.constant(x) for x in A]
    c = [tf.constant(x) for x in C]

    def step():
        grads = [
            ai * (tf.convert_to_tensor(v) - ci)
            for ai, v, ci in zip(a, variables, c)
        ]
        if mode == "apply":
            optimizer.apply(grads, variables)
        else:
            optimizer.apply_gradients(zip(grads, variables))

    fn = tf.function(step) if mode != "eager" else step
    for _ in range(steps):
        fn()
    assert int(optimizer.iterations) == steps
    return [np.asarray(v) for v in variables]


MODES = ["eager", "tf.function"] + ([] if IS_LEGACY_KERAS else ["apply"])


@pytest.mark.parametrize("mode", MODES)
def test_matches_numpy_with_sgd(mode):
    optimizer = Lookahead(keras.optimizers.SGD(0.1), 3, 0.5)
    got = run_quadratic(optimizer, 10, mode)
    want = numpy_lookahead(numpy_sgd(0.1), 10, 3, 0.5)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-6, 1e-6, what="weights after 10 steps")


def test_matches_numpy_with_adam():
    optimizer = Lookahead(keras.optimizers.Adam(0.05), 4, 0.8)
    got = run_quadratic(optimizer, 14, "tf.function")
    want = numpy_lookahead(numpy_adam(0.05), 14, 4, 0.8)
    # Keras's float32 Adam alone is 5e-6 away from this float64 NumPy Adam
    # after 14 steps (its bias corrections 1 - beta**t lose digits in
    # float32); a wrong sync is 1e-2 away.
    for g, w in zip(got, want):
        assert_close(g, w, 2e-5, 2e-5, what="weights after 14 steps")


def test_sync_every_step_with_full_step_is_the_inner_optimizer():
    got = run_quadratic(
        Lookahead(keras.optimizers.Adam(0.05), 1, 1.0), 5, "eager"
    )
    want = run_quadratic(keras.optimizers.Adam(0.05), 5, "eager")
    for g, w in zip(got, want):
        assert_close(g, w, 0, 0, what="weights")


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="tf-keras has no accumulation")
def test_sync_period_counts_updates_under_gradient_accumulation():
    # Two calls per update; both see the same weights, so the accumulated
    # gradient is the plain one: 8 calls are 4 SGD steps, synced twice.
    inner = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    got = run_quadratic(Lookahead(inner, 2, 0.5), 8, "eager")
    want = numpy_lookahead(numpy_sgd(0.1), 4, 2, 0.5)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-6, 1e-6, what="weights after 4 updates")


def test_state_holds_slow_weights_and_inner_variables():
    variables = [new_variable(w) for w in W0]
    inner = keras.optimizers.Adam(0.05)
    optimizer = Lookahead(inner)
    optimizer.build(variables)
    own = [v for v in optimizer.variables if "slow" in v.name]
    assert len(own) == len(variables)
    for slow, w in zip(own, W0):
        assert_close(slow, w, 0, 0, what="initial slow weights")
    inner_ids = {id(v) for v in inner.variables}
    assert inner_ids <= {id(v) for v in optimizer.variables}


def regression_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 4)).astype("float32")
    y = x @ rng.standard_normal((4, 1)).astype("float32") + 0.5
    return x, y


def regression_model():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def test_fit_decreases_loss_and_learning_rate_goes_to_inner():
    x, y = regression_data()
    model = regression_model()
    inner = keras.optimizers.Adam(0.02)
    optimizer = Lookahead(inner, sync_period=3)
    model.compile(optimizer=optimizer, loss="mse")
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.02 if epoch < 2 else 0.01
    )
    history = model.fit(
        x, y, batch_size=16, epochs=3, callbacks=[schedule], verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert int(optimizer.iterations) == 12
    assert float(inner.learning_rate) == pytest.approx(0.01)
    optimizer.learning_rate = 0.005
    assert float(inner.learning_rate) == pytest.approx(0.005)
    assert float(optimizer.learning_rate) == pytest.approx(0.005)


def test_config_round_trip():
    optimizer = Lookahead(
        keras.optimizers.SGD(0.1, momentum=0.9), 4, 0.7, name="la"
    )
    config = optimizer.get_config()
    assert config["sync_period"] == 4
    assert config["slow_step_size"] == 0.7
    assert config["inner_optimizer"]["class_name"] == "SGD"
    restored = Lookahead.from_config(config)
    assert restored.get_config() == config
    assert isinstance(restored.inner_optimizer, keras.optimizers.SGD)
    assert restored.inner_optimizer.momentum == 0.9
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(again, Lookahead)
    assert again.get_config() == config


def test_save_load_keras_and_continue(tmp_path):
    x, y = regression_data()
    model = regression_model()
    model.compile(
        optimizer=Lookahead(keras.optimizers.Adam(0.02), sync_period=3),
        loss="mse",
    )
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(str(tmp_path), "lookahead.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, Lookahead)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == 4
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        assert_close(b, a, 0, 0, what=f"optimizer variable {a.name}")
    # The loaded model continues exactly as the original would.
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        assert_close(b, a, 1e-6, 1e-6, what="weights after more training")


def test_checkpoint_mid_training_resumes_exactly(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")

    def make():
        keras.utils.set_random_seed(4)
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        return model, Lookahead(keras.optimizers.Adam(0.05), sync_period=3)

    def train(model, optimizer, steps):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - y) ** 2)
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))

        for _ in range(steps):
            step()

    model, optimizer = make()
    train(model, optimizer, 9)
    want = model.get_weights()

    model, optimizer = make()
    train(model, optimizer, 4)  # mid-way between syncs (3 and 6)
    prefix = os.path.join(str(tmp_path), "ckpt")
    path = tf.train.Checkpoint(optimizer=optimizer, model=model).save(prefix)

    # Restored into a built optimizer, and into one built on its first step.
    for build_first in (True, False):
        model, optimizer = make()
        if build_first:
            optimizer.build(model.trainable_variables)
        status = tf.train.Checkpoint(optimizer=optimizer, model=model)
        status = status.restore(path)
        train(model, optimizer, 5)
        status.assert_consumed()
        assert int(optimizer.iterations) == 9
        for a, b in zip(want, model.get_weights()):
            assert_close(b, a, 0, 0, what="weights after resuming")


def test_mirrored_strategy_matches_one_device():
    """Two CPU replicas: every copy synced, same result as one device."""
    out = run_python(
        """
        import json
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_bigmodels.backend import keras
        from keras_bigmodels.optimizers.lookahead import Lookahead
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 3)).astype("float32")
        y = rng.standard_normal((32, 1)).astype("float32")

        def run(strategy):
            with strategy.scope():
                keras.utils.set_random_seed(1)
                model = keras.Sequential(
                    [keras.Input((3,)), keras.layers.Dense(1)])
                optimizer = Lookahead(keras.optimizers.SGD(0.1), 2)
                model.compile(optimizer=optimizer, loss="mse")
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False,
                      verbose=0)
            return model, optimizer, strategy

        one, _, _ = run(tf.distribute.get_strategy())
        two, opt, strategy = run(
            tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        diff = max(float(np.abs(a - b).max())
                   for a, b in zip(one.get_weights(), two.get_weights()))
        spread = 0.0
        for v in list(two.trainable_variables) + list(opt._slow_weights):
            if isinstance(v, getattr(keras, "Variable", ())):
                v = v.value  # Keras 3: the tf.Variable behind it
            copies = [c.numpy() for c in
                      strategy.experimental_local_results(v)]
            spread = max(spread, float(np.abs(copies[0] - copies[1]).max()))
            n = len(copies)
        print(json.dumps({"diff": diff, "spread": spread, "copies": n}))
        """,
        env={"TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None},
    )
    result = last_json_line(out)
    assert result["copies"] == 2
    assert result["spread"] == 0.0
    assert result["diff"] < 1e-6, json.dumps(result)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sync_period": 0}, ValueError, "Received: sync_period=0"),
        ({"sync_period": 2.5}, ValueError, "Received: sync_period=2.5"),
        ({"sync_period": True}, ValueError, "Received: sync_period=True"),
        ({"slow_step_size": 0}, ValueError, "Received: slow_step_size=0"),
        ({"slow_step_size": 1.5}, ValueError, "Received: slow_step_size=1.5"),
        ({"slow_step_size": "a"}, ValueError, "Received: slow_step_size='a'"),
        ({"clipnorm": 1.0}, ValueError, "Received: clipnorm=1.0"),
        ({"use_ema": True}, ValueError, "Received: use_ema=True"),
        ({"learning_rate": 0.1}, ValueError, "Received: learning_rate=0.1"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Lookahead(keras.optimizers.SGD(0.1), **kwargs)


def test_inner_optimizer_must_be_of_the_line_in_use():
    with pytest.raises(TypeError, match="Received: inner_optimizer='adam'"):
        Lookahead("adam")
    with pytest.raises(TypeError, match="Received: inner_optimizer="):
        Lookahead(tf.Module())
    if IS_LEGACY_KERAS:
        with pytest.raises(TypeError, match="not a `legacy` one"):
            Lookahead(keras.optimizers.legacy.SGD(0.1))
