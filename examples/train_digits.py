"""Train a small kbm model on scikit-learn's digits and export it.

The digits data (1,797 real 8x8 handwritten digits) ships inside
scikit-learn, so this runs offline. The model uses the fused layers
(`FusedDense` with GELU epilogues, `LayerNormalization`, `RMSNormalization`);
it is trained with `model.fit`, saved to `.keras`, exported as a stock-ops
SavedModel for TF Serving, and the SavedModel is reloaded and checked
against the Keras model.

    python examples/train_digits.py [--out build/demo] [--epochs 30]

Works on either Keras line (set TF_USE_LEGACY_KERAS=1 for tf-keras).
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402


def build_model():
    inputs = keras.Input((64,), name="pixels")
    h = kbm.layers.FusedDense(256, activation="gelu")(inputs)
    h = kbm.layers.LayerNormalization()(h)
    h = kbm.layers.FusedDense(128, activation="gelu_tanh")(h)
    h = kbm.layers.RMSNormalization()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="digits_mlp")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)

    status = kbm.ops.kernels_available()
    print(f"Keras line: {KERAS_LINE} ({keras.__version__})")
    print(
        "fused kernels:",
        status.info if status else f"unavailable ({status.reason})",
    )

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=64,
        validation_split=0.1,
        verbose=2,
    )
    train_seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"test accuracy {accuracy:.4f} on {len(x_test)} held-out digits "
        f"({train_seconds:.1f} s training)"
    )

    model.save(out / "digits.keras")
    serving = kbm.export.export_saved_model(model, out / "digits_savedmodel")
    loaded = tf.saved_model.load(serving)
    serve = loaded.signatures["serving_default"]
    served = list(serve(pixels=tf.constant(x_test)).values())[0].numpy()
    expected = model.predict(x_test, verbose=0)
    max_diff = float(np.abs(served - expected).max())
    print(
        f"stock-ops SavedModel at {serving}: fused ops "
        f"{kbm.export.find_fused_ops(serving) or 'none'}, "
        f"max |served - keras| = {max_diff:.2e}"
    )
    if max_diff > 1e-4:
        raise SystemExit("the exported model disagrees with the Keras model")
    if accuracy < 0.9:
        raise SystemExit(f"accuracy {accuracy:.3f} is unexpectedly low")


if __name__ == "__main__":
    main()
