"""kbm.distillation.Distiller: training, caching, saving, multi-teacher."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.distillation.losses import (
    FeatureDistillation,
    HiddenStateDistillation,
    LogitsDistillation,
)
from keras_bigmodels.testing import (
    assert_close,
    last_json_line,
    run_python,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((128, 12)).astype("float32")
Y = (X[:, :3].sum(1) > 0).astype("int32") + (X[:, 3] > 1).astype("int32")


def mlp(keras, width, name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,), name=f"{name}_in")
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_hidden")(
        inputs
    )
    return keras.Model(
        inputs, keras.layers.Dense(3, name=f"{name}_logits")(h), name=name
    )


@pytest.fixture(scope="module")
def teacher():
    from keras_bigmodels.backend import keras

    model = mlp(keras, 64, "teacher", 1)
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(X, Y, epochs=5, verbose=0)
    return model


def compile_distiller(keras, d, lr=1e-2):
    d.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return d


def test_fit_evaluate_predict_and_metrics(keras, teacher):
    student = mlp(keras, 8, "student", 2)
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher, student, LogitsDistillation(3.0), student_loss_weight=0.3
        ),
    )
    history = d.fit(X, Y, epochs=3, batch_size=32, verbose=0)
    for name in ("student_loss", "distillation_loss", "total_loss", "accuracy"):
        assert name in history.history
    assert history.history["total_loss"][-1] < history.history["total_loss"][0]
    results = d.evaluate(X, Y, verbose=0, return_dict=True)
    assert set(results) >= {"student_loss", "distillation_loss", "accuracy"}
    np.testing.assert_allclose(
        d.predict(X, verbose=0), student.predict(X, verbose=0), atol=1e-6
    )
    assert not teacher.trainable
    total = 0.3 * results["student_loss"] + 0.7 * results["distillation_loss"]
    assert abs(results["total_loss"] - total) < 1e-4


def test_teacher_weights_do_not_change(keras, teacher):
    before = [w.copy() for w in teacher.get_weights()]
    d = compile_distiller(
        keras, kbm.distillation.Distiller(teacher, mlp(keras, 8, "student", 3))
    )
    d.fit(X, Y, epochs=1, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="keras.distillation is Keras 3's")
def test_same_loss_as_keras_distiller(keras, teacher):
    student = mlp(keras, 8, "student", 4)
    ours = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher, student, LogitsDistillation(2.0), student_loss_weight=0.4
        ),
    )
    ref = keras.distillation.Distiller(
        teacher,
        student,
        keras.distillation.LogitsDistillation(
            temperature=2.0, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.4,
    )
    ref.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    y_pred = student(X)
    a = ours.compute_loss(x=X, y=Y, y_pred=y_pred)
    b = ref.compute_loss(x=X, y=Y, y_pred=y_pred)
    assert_close(a, b, 1e-5, 1e-6)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="keras.distillation is Keras 3's")
def test_keras_loss_objects_give_keras_distillers_loss(keras, teacher):
    # Keras's own loss objects, a logits and a layer-feature one, in kbm's
    # Distiller: the same total as in Keras's Distiller.
    student = mlp(keras, 64, "student", 6)  # the teacher's hidden width
    losses = [
        keras.distillation.LogitsDistillation(temperature=2.0),
        keras.distillation.FeatureDistillation(
            loss="mse",
            teacher_layer_name="teacher_hidden",
            student_layer_name="student_hidden",
        ),
    ]
    kwargs = dict(distillation_loss_weights=[1.0, 0.5], student_loss_weight=0.3)
    ours = compile_distiller(
        keras, kbm.distillation.Distiller(teacher, student, losses, **kwargs)
    )
    ref = keras.distillation.Distiller(teacher, student, losses, **kwargs)
    ref.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    y_pred = student(X)
    a = ours.compute_loss(x=X, y=Y, y_pred=y_pred, training=False)
    b = ref.compute_loss(x=X, y=Y, y_pred=y_pred, training=False)
    assert_close(a, b, 1e-5, 1e-6)
    assert ours.distillation_losses[0] is losses[0]
    restored = kbm.distillation.Distiller.from_config(ours.get_config())
    assert isinstance(
        restored.distillation_losses[1], keras.distillation.FeatureDistillation
    )


def test_feature_distillation_trains_its_projection(keras, teacher):
    student = mlp(keras, 8, "student", 5)
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher,
            student,
            [
                LogitsDistillation(2.0),
                FeatureDistillation("teacher_hidden", "student_hidden"),
            ],
            distillation_loss_weights=[1.0, 0.5],
        ),
    )
    (proj,) = d._projections
    assert proj.kernel.shape == (8, 64)
    before = np.asarray(proj.kernel).copy()
    d.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    assert not np.allclose(before, np.asarray(proj.kernel))


def test_hidden_state_distillation_on_transformer_stacks(keras):
    def encoder(name, width, blocks, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((6, 8))
        h = keras.layers.Dense(width, name=f"{name}_proj")(inputs)
        for i in range(blocks):
            h = kbm.layers.TransformerEncoder(
                2 * width, 2, name=f"{name}_block_{i}"
            )(h)
        h = keras.layers.GlobalAveragePooling1D()(h)
        return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)

    teacher = encoder("teacher", 16, 4, 6)
    student = encoder("student", 8, 2, 7)
    layer_map = kbm.distillation.losses.uniform_layer_map(
        [f"student_block_{i}" for i in range(2)],
        [f"teacher_block_{i}" for i in range(4)],
    )
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher,
            student,
            [LogitsDistillation(), HiddenStateDistillation(layer_map)],
        ),
    )
    x = RNG.standard_normal((32, 6, 8)).astype("float32")
    y = RNG.integers(0, 3, 32)
    history = d.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert len(d._projections) == 2


@pytest.mark.parametrize("mode", ["average", "per_teacher"])
def test_multi_teacher(keras, teacher, mode):
    second = mlp(keras, 32, "teacher2", 8)
    student = mlp(keras, 8, "student", 9)
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            [teacher, second],
            student,
            LogitsDistillation(2.0),
            teacher_weights=[0.75, 0.25],
            multi_teacher=mode,
            student_loss_weight=0.0,
        ),
    )
    s = student(X)
    got = d.compute_loss(x=X, y=tf.constant(Y), y_pred=s)
    t1, t2 = teacher(X).numpy() / 2.0, second(X).numpy() / 2.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    q = softmax(s.numpy() / 2.0)

    def kl(p):
        return (p * (np.log(p) - np.log(q))).sum(-1).mean() * 4.0

    if mode == "average":
        expected = kl(0.75 * softmax(t1) + 0.25 * softmax(t2))
    else:
        expected = 0.75 * kl(softmax(t1)) + 0.25 * kl(softmax(t2))
    assert_close(got, expected, 1e-4, 1e-5)


def indexed(shuffle=False):
    ds = kbm.distillation.with_example_index(
        tf.data.Dataset.from_tensor_slices((X, Y))
    )
    if shuffle:
        ds = ds.shuffle(128, seed=0, reshuffle_each_iteration=True)
    return ds.batch(32)


def test_memory_cache_gives_the_same_weights(keras, teacher):
    def train(cache):
        student = mlp(keras, 8, "student", 10)
        d = compile_distiller(
            keras,
            kbm.distillation.Distiller(teacher, student, teacher_cache=cache),
        )
        d.fit(indexed(), epochs=3, verbose=0)
        return student.get_weights(), d

    cached, d = train("memory")
    plain, _ = train(None)
    assert d.teacher_cache_size() == len(X)
    for a, b in zip(cached, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_cache_pairs_shuffled_examples_with_their_outputs(keras, teacher):
    student = mlp(keras, 8, "student", 11)
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(teacher, student, teacher_cache="memory"),
    )
    d.fit(indexed(shuffle=True), epochs=2, verbose=0)
    cache = d._hidden.cache
    index = tf.constant([5, 77, 3, 120], tf.int64)
    rows = tf.gather(X, index)
    replayed = cache.lookup_or_compute(index, rows, lambda: 1 / 0)
    assert_close(replayed[0], teacher(rows), 1e-6, 1e-6)


def test_cache_refuses_changed_inputs(keras, teacher):
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher, mlp(keras, 8, "student", 12), teacher_cache="memory"
        ),
    )
    d.fit(indexed(), epochs=1, verbose=0)
    noisy = indexed().map(lambda x, y: ({**x, "inputs": x["inputs"] + 0.5}, y))
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="input changed since its teacher outputs",
    ):
        d.fit(noisy, epochs=1, verbose=0)


def test_disk_cache_persists(keras, teacher, tmp_path):
    spec = f"disk:{tmp_path / 'cache'}"
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher, mlp(keras, 8, "student", 13), teacher_cache=spec
        ),
    )
    d.fit(indexed(), epochs=1, verbose=0)
    assert os.path.exists(tmp_path / "cache" / "teacher_cache.npz")
    d2 = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher, mlp(keras, 8, "student", 13), teacher_cache=spec
        ),
    )
    index = tf.constant([1, 2], tf.int64)
    out = d2._hidden.cache.lookup_or_compute(
        index, tf.gather(X, index), lambda: 1 / 0
    )
    assert_close(out[0], teacher(tf.gather(X, index)), 1e-6, 1e-6)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cache_teacher_outputs_skips_the_teacher(
    keras, teacher, tmp_path, cache
):
    spec = "memory" if cache == "memory" else f"disk:{tmp_path}"
    ds = tf.data.Dataset.from_tensor_slices((X, Y))
    cached = kbm.distillation.cache_teacher_outputs(
        teacher, ds, spec, batch_size=50
    )
    element = next(iter(cached.batch(128)))
    assert_close(element[0]["teacher_outputs"], teacher(X), 1e-6, 1e-6)

    class Refusing(keras.Model):
        def call(self, x):
            raise AssertionError("the teacher ran")

    d = kbm.distillation.Distiller(teacher, mlp(keras, 8, "student", 14))
    d._hidden.teacher_models = [Refusing()]
    compile_distiller(keras, d)
    history = d.fit(cached.shuffle(128).batch(32), epochs=2, verbose=0)
    assert np.isfinite(history.history["total_loss"]).all()


def test_save_load_and_export_student(keras, teacher, tmp_path):
    student = mlp(keras, 8, "student", 15)
    d = compile_distiller(
        keras,
        kbm.distillation.Distiller(
            teacher,
            student,
            [
                LogitsDistillation(2.0),
                FeatureDistillation("teacher_hidden", "student_hidden"),
            ],
        ),
    )
    d.fit(X, Y, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    d.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kbm.distillation.Distiller)
    np.testing.assert_allclose(
        loaded.predict(X, verbose=0), d.predict(X, verbose=0), atol=1e-6
    )
    for a, b in zip(
        loaded._projections[0].get_weights(), d._projections[0].get_weights()
    ):
        np.testing.assert_array_equal(a, b)
    student_path = d.export_student(str(tmp_path / "student.keras"))
    alone = keras.models.load_model(student_path)
    assert alone.count_params() == student.count_params()
    assert os.path.getsize(student_path) < os.path.getsize(path) / 2
    served = d.export_student(str(tmp_path / "student_savedmodel"))
    assert kbm.export.find_fused_ops(served) == {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(student_loss_weight=1.5), "student_loss_weight=1.5"),
        (dict(multi_teacher="max"), "multi_teacher='max'"),
        (dict(teacher_cache="redis"), "teacher_cache='redis'"),
        (
            dict(distillation_losses=[FeatureDistillation("nope", None)]),
            "teacher model 'teacher' has no layer named 'nope'",
        ),
        (
            dict(distillation_losses=[FeatureDistillation(None, "missing")]),
            "student model 'student' has no layer named 'missing'",
        ),
        (
            dict(
                distillation_losses=[
                    FeatureDistillation(
                        "teacher_hidden", "student_hidden", projection=None
                    )
                ]
            ),
            "widths differ",
        ),
    ],
)
def test_bad_arguments(keras, teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.distillation.Distiller(
            teacher, mlp(keras, 8, "student", 16), **kwargs
        )


def test_mismatched_outputs_need_a_projection(keras, teacher):
    keras.utils.set_random_seed(17)
    inputs = keras.Input((12,))
    student = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match=r"same shape"):
        d = compile_distiller(
            keras,
            kbm.distillation.Distiller(teacher, student, LogitsDistillation()),
        )
        d.compute_loss(x=X, y=tf.constant(Y), y_pred=student(X))


def test_mixed_precision(keras, teacher):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        student = mlp(keras, 8, "student", 18)
        d = compile_distiller(
            keras, kbm.distillation.Distiller(teacher, student)
        )
        history = d.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.isfinite(history.history["total_loss"]).all()


def test_mirrored_strategy_with_kbm_optimizer():
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
        x = rng.standard_normal((64, 12)).astype("float32")
        y = (x[:, 0] > 0).astype("int32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            def mlp(width):
                i = keras.Input((12,))
                h = kbm.layers.FusedDense(width, activation="gelu")(i)
                return keras.Model(i, keras.layers.Dense(2)(h))
            teacher, student = mlp(32), mlp(8)
            d = kbm.distillation.Distiller(teacher, student)
            d.compile(optimizer=kbm.optimizers.AdamW(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        h = d.fit(x, y, epochs=2, batch_size=16, verbose=0)
        print(json.dumps({"loss": h.history["total_loss"]}))
    """
    env = {"TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None}
    result = last_json_line(run_python(code, env=env))
    assert np.isfinite(result["loss"]).all()
