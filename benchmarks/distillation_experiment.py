"""Experiment: does distillation beat training the same student alone?

The fine-tuned all-MiniLM-L6-v2 (6 blocks, hidden 384, 12 heads) is the
teacher on Rotten Tomatoes (the demo's data, tokenizer and classifier).
Each student is a `kbm.models.BertEncoder` made by
`kbm.distillation.student_from_teacher` (embeddings and uniformly mapped
blocks copied from the fine-tuned teacher; the narrow student's weights are
leading slices) with the demo's mean-pool classifier head, and is trained
in three modes, each over the same seeds:

- `alone`: the labels only (a `Distiller` with `student_loss_weight=1`, so
  that everything else is the same);
- `logits`: `LogitsDistillation(T)` and the labels (`student_loss_weight
  = alpha`);
- `full`: logits + `HiddenStateDistillation` (student block i to the
  teacher block it was copied from; projected for the narrow student) +
  `AttentionDistillation` (MiniLM's attention and value relations, 12
  relation heads), and the labels;
- `transfer` (not run by default: `--modes ...,transfer`): logits KD on
  the labelled reviews plus `--transfer-size` other training reviews whose
  labels are never used (weight 0 in the label loss), the teacher's soft
  targets on examples it was not fitted to.

The student `pruned` (not run by default: `--students pruned`) is the
fine-tuned teacher itself, made smaller by `kbm.pruning`: the heads and
feed-forward units with the lowest gradient importance
(`head_importance` / `neuron_importance` on the first training batches,
per-layer normalised, `select_lowest`) are removed, at least 40% of the
heads and 50% of the units; its head is the teacher's. It is then trained in
the same modes (its hidden-state map is 1:1; attention relations are
re-split into `PRUNED_RELATION_HEADS` heads, which divide every pruned
layer's width). Its records also hold the pruning (heads and units kept),
the accuracy before any training, the encoder's FLOPs against the
teacher's, and a short interleaved timing of both models' inference.

For one seed, every mode starts from the same initial weights (the head is
drawn after `keras.utils.set_random_seed(seed)`), sees the same data in the
same order, and trains for the same epochs with the same optimizer
(`kbm.optimizers.AdamW`, warmup + linear decay); distilled modes keep the
teacher's features in memory after the first epoch (`teacher_cache=
"memory"`: speed only, same values). Accuracy is measured on a
fixed held-out test subset. Gap closed = (distilled - alone) / (teacher -
alone), from the means over seeds.

The results go to `benchmarks/results/experiments/distillation_text.json`
(`distillation_text.quick.json` with `--quick`), written after every run:
rerunning resumes, skipping the (student, mode, seed) runs already there
(with the same settings). The fine-tuned teacher's weights are cached in
`--cache-dir`. The RESULTS.md section is regenerated from the JSON at the
end (`--report-only` regenerates it without training).

    python benchmarks/distillation_experiment.py            # the real run
    python benchmarks/distillation_experiment.py --quick    # a smoke test
    python benchmarks/distillation_experiment.py --seeds 1 --students 2
    python benchmarks/distillation_experiment.py --students pruned  # add it
"""

import argparse
import datetime
import gc
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bigmodels as kbm  # noqa: E402
from keras_bigmodels import demo  # noqa: E402
from keras_bigmodels.backend import KERAS_LINE, keras  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results" / "experiments"
RESULTS_MD = ROOT / "RESULTS.md"
SECTION = "text-distillation"
MODES = ("alone", "logits", "full", "transfer")
DEFAULT_MODES = ("alone", "logits", "full")
MODE_LABEL = {
    "alone": "alone (labels)",
    "logits": "logits KD",
    "full": "logits + hidden + attention",
    "transfer": "logits KD + transfer set",
}
# name: (blocks, hidden, heads, intermediate); None = the teacher's size.
STUDENTS = {
    "2": (2, None, None, None),
    "3": (3, None, None, None),
    "3-narrow": (3, 192, 6, 768),
    "pruned": (None, None, None, None),  # The pruned teacher: see above.
}
DEFAULT_STUDENTS = "2,3,3-narrow"
PRUNED = "pruned"
RELATION_HEADS = 12
# The pruned student: shares of heads and feed-forward units removed (at
# least), batches scored, relation heads (a divisor of every pruned
# layer's query width heads * 32), and the timing protocol.
PRUNE_HEADS = 0.4
PRUNE_UNITS = 0.5
PRUNE_SCORE_BATCHES = 8
PRUNED_RELATION_HEADS = 8
TIMING_BATCH, TIMING_ROUNDS = 32, 7
TEACHER_ENCODER = "minilm"
STUDENT_ENCODER = "student_minilm"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke test")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--students",
        default=None,
        help=f"comma-separated, of {list(STUDENTS)}",
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, of {list(MODES)}",
    )
    parser.add_argument(
        "--transfer-size",
        type=int,
        default=None,
        help="transfer mode: unlabelled training reviews added",
    )
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="student_loss_weight"
    )
    parser.add_argument(
        "--weights",
        default="1,1,1",
        help="full mode: logits, hidden-state, attention loss weights",
    )
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(
            os.path.expanduser("~"), ".cache", "kbm_distillation_experiment"
        ),
    )
    parser.add_argument("--results", default=None, help="JSON path")
    parser.add_argument("--results-md", default=str(RESULTS_MD))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate the RESULTS.md section from the JSON",
    )
    args = parser.parse_args(argv)
    quick = {
        "seeds": 1,
        "students": DEFAULT_STUDENTS,
        "train_size": 256,
        "test_size": 200,
        "sequence_length": 24,
        "epochs": 1,
        "teacher_epochs": 1,
        "transfer_size": 256,
    }
    real = {
        "seeds": 3,
        "students": DEFAULT_STUDENTS,
        "train_size": 2000,
        "test_size": 1000,
        "sequence_length": 40,
        "epochs": 3,
        "teacher_epochs": 3,
        "transfer_size": 4000,
    }
    for key, value in (quick if args.quick else real).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.students = args.students.split(",")
    args.modes = args.modes.split(",")
    for s in args.students:
        if s not in STUDENTS:
            parser.error(f"unknown student {s!r}; choose from {list(STUDENTS)}")
    for m in args.modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}; choose from {list(MODES)}")
    args.weights = [float(w) for w in args.weights.split(",")]
    if len(args.weights) != 3:
        parser.error("--weights needs 3 numbers")
    if args.results is None:
        name = "distillation_text" + (".quick" if args.quick else "")
        args.results = str(RESULTS_DIR / f"{name}.json")
    return args


def settings(args):
    """What a run's result depends on (a resume must match it).

    The students and modes are not in it: one results file collects the
    runs of several invocations (e.g. `--students pruned` after the
    default students). The pruned student's own constants are recorded in
    its runs instead.
    """
    return {
        "train_size": args.train_size,
        "test_size": args.test_size,
        "sequence_length": args.sequence_length,
        "epochs": args.epochs,
        "teacher_epochs": args.teacher_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "weights": args.weights,
        "relation_heads": RELATION_HEADS,
        "quick": args.quick,
    }


# ------------------------------------------------------------------ data


def load_data(args):
    """(train, validation, test) token ids and labels; the data seed is
    fixed (0) whatever the run seeds."""
    data = kbm.datasets.load_text_classification("kbm_rotten_tomatoes")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(data.train_texts))[: args.train_size]
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(
        kbm.models.minilm_l6_v2_path()
    )

    def encode(texts):
        return tokenizer.encode(texts, sequence_length=args.sequence_length)[
            "token_ids"
        ]

    x = encode([data.train_texts[i] for i in idx])
    y = data.train_labels[idx]
    n_test = min(args.test_size, len(data.test_texts))
    x_test = encode(data.test_texts[:n_test])
    y_test = data.test_labels[:n_test]
    split = int(len(x) * 0.9)
    # The transfer set: other training reviews, their labels unused.
    rest = rng.permutation(len(data.train_texts))  # Not the first draw.
    used = set(idx.tolist())
    rest = [i for i in rest if i not in used][: args.transfer_size]
    x_transfer = encode([data.train_texts[i] for i in rest])
    return (
        (x[:split], y[:split]),
        (x[split:], y[split:]),
        (x_test, y_test),
        len(data.label_names),
        x_transfer,
    )


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=256, verbose=0)
    return float((logits.argmax(-1) == y).mean())


def teacher_fingerprint(teacher, x):
    """A digest of the teacher's test-set predictions (rounded logits):
    runs distilled from different teachers (a retrained one, when the
    weight cache is gone) must not share one table."""
    logits = teacher.predict(x, batch_size=256, verbose=0)
    return hashlib.sha1(np.round(logits, 2).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------- teacher


def teacher_model(args, data):
    """The fine-tuned MiniLM classifier, from the cache or trained now."""
    train, _, _, num_classes, _ = data
    config = json.dumps(
        {k: v for k, v in settings(args).items() if "teacher" in k}
        | {
            "train_size": args.train_size,
            "sequence_length": args.sequence_length,
            "batch_size": args.batch_size,
        },
        sort_keys=True,
    )
    digest = hashlib.sha1(config.encode()).hexdigest()[:12]
    path = Path(args.cache_dir) / f"teacher_{KERAS_LINE}_{digest}.weights.h5"
    encoder = kbm.models.BertEncoder.from_checkpoint(
        kbm.models.minilm_l6_v2_path(),
        attention_dropout=0.0,
        name=TEACHER_ENCODER,
    )
    keras.utils.set_random_seed(0)
    teacher = demo.classifier(
        encoder, num_classes, args.sequence_length, "teacher"
    )
    if path.exists():
        teacher.load_weights(str(path))
        print(f"teacher: loaded {path}", flush=True)
        return teacher, encoder, 0.0
    start = time.perf_counter()
    steps = args.teacher_epochs * int(np.ceil(len(train[0]) / args.batch_size))
    teacher.compile(
        optimizer=kbm.optimizers.AdamW(
            demo.schedule(1e-4, steps), weight_decay=0.01
        ),
        loss=demo.loss(),
        metrics=["accuracy"],
    )
    teacher.fit(
        *train,
        epochs=args.teacher_epochs,
        batch_size=args.batch_size,
        verbose=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    teacher.save_weights(str(path))
    return teacher, encoder, time.perf_counter() - start


def teacher_confidence(teacher, data, temperature):
    """The teacher's accuracy and mean top-class probability (at T = 1
    and at the distillation temperature) on the students' training
    reviews and on the test reviews: how much its soft targets carry
    beyond the labels."""
    out = {}
    for name, (x, y) in (("train", data[0]), ("test", data[2])):
        logits = teacher.predict(x, batch_size=256, verbose=0)
        out[f"{name}_accuracy"] = float((logits.argmax(-1) == y).mean())
        for t in (1.0, temperature):
            p = tf.nn.softmax(logits / t, axis=-1).numpy()
            out[f"{name}_top_probability_T{t:g}"] = float(p.max(-1).mean())
    return out


# --------------------------------------------------------------- students


def _fraction(share, total):
    """The fraction for `select_lowest` that removes at least `share`."""
    return int(np.ceil(share * total - 1e-9)) / total


_PLANS = {}


def pruning_plan(args, teacher, data):
    """Which heads and feed-forward units the pruned student loses.

    Scored once per process on the first `PRUNE_SCORE_BATCHES` training
    batches (fixed order, labels and the demo's loss), so every seed and
    mode starts from the same pruned model.
    """
    if id(teacher) in _PLANS:
        return _PLANS[id(teacher)]
    x, y = data[0]
    n = min(len(x), PRUNE_SCORE_BATCHES * args.batch_size)
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size])
        for i in range(0, n, args.batch_size)
    ]
    prefix = f"{TEACHER_ENCODER}/"
    plan = {}
    for what, score, share in (
        ("heads", kbm.pruning.head_importance, PRUNE_HEADS),
        ("units", kbm.pruning.neuron_importance, PRUNE_UNITS),
    ):
        scores = {
            k.removeprefix(prefix): v
            for k, v in score(teacher, batches, loss=demo.loss()).items()
        }
        total = sum(len(v) for v in scores.values())
        chosen = kbm.pruning.select_lowest(scores, _fraction(share, total))
        plan[what] = chosen
        plan[f"{what}_total"] = total
        plan[f"{what}_removed"] = sum(len(v) for v in chosen.values())
    plan["score_batches"] = len(batches)
    _PLANS[id(teacher)] = plan
    return plan


def pruned_encoder(teacher_encoder, plan):
    """The teacher's encoder without the planned heads and units, renamed
    to the students' encoder name (the distillation losses find the two
    models' blocks by these names)."""
    pruned = kbm.pruning.prune(
        teacher_encoder, heads=plan["heads"], units=plan["units"]
    )
    config = pruned.get_config() | {"name": STUDENT_ENCODER}
    encoder = kbm.models.BertEncoder.from_config(config)
    encoder.set_weights(pruned.get_weights())
    return encoder


def encoder_flops(encoder, length):
    """Multiply-add FLOPs (x2) of an encoder's blocks on one sequence:
    the query/key/value/output projections, the attention scores and
    context, and the feed-forward net (embeddings, norms and softmax are
    left out)."""
    config = encoder.get_config()
    d = config["hidden_dim"]
    head_dim = config.get("head_dim") or d // config["num_heads"]
    total = 0
    for block in encoder.transformer_layers:
        width = block.num_heads * head_dim
        total += 2 * length * d * width * 4  # q, k, v in; output back.
        total += 2 * 2 * length * length * width  # scores and context.
        total += 2 * 2 * length * d * block.intermediate_dim
    return total


def inference_timing(teacher, student, x):
    """Median per-round ratio teacher time / student time of a forward
    pass at batch `TIMING_BATCH`, interleaved (quick: a loaded machine
    makes it noisy; the FLOPs ratio is exact)."""
    x = tf.constant(x[:TIMING_BATCH])
    fns = [
        tf.function(lambda x, m=m: m(x, training=False))
        for m in (teacher, student)
    ]
    for fn in fns:
        fn(x)
        fn(x)
    times = [[], []]
    for _ in range(TIMING_ROUNDS):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn(x).numpy()
            ts.append(time.perf_counter() - start)
    return {
        "teacher_ms": 1e3 * float(np.median(times[0])),
        "student_ms": 1e3 * float(np.median(times[1])),
        "speedup": float(np.median(np.divide(times[0], times[1]))),
        "batch": int(x.shape[0]),
        "rounds": TIMING_ROUNDS,
    }


def pruned_student(args, teacher, teacher_encoder, num_classes, seed, plan):
    keras.utils.set_random_seed(seed)
    encoder = pruned_encoder(teacher_encoder, plan)
    model = demo.classifier(
        encoder, num_classes, args.sequence_length, f"student_{PRUNED}"
    )
    model.get_layer("logits").set_weights(
        teacher.get_layer("logits").get_weights()
    )
    return model, encoder


def student_model(args, student, teacher_encoder, num_classes, seed):
    blocks, hidden, heads, intermediate = STUDENTS[student]
    keras.utils.set_random_seed(seed)
    encoder = kbm.distillation.student_from_teacher(
        teacher_encoder,
        num_layers=blocks,
        hidden_dim=hidden,
        num_heads=heads,
        intermediate_dim=intermediate,
        name=STUDENT_ENCODER,
    )
    model = demo.classifier(
        encoder, num_classes, args.sequence_length, f"student_{student}"
    )
    return model, encoder


def distillation_losses(
    args, mode, student_blocks, teacher_blocks, relation_heads=RELATION_HEADS
):
    logits = kbm.distillation.losses.LogitsDistillation(args.temperature)
    if mode == "logits":
        return [logits], [1.0]
    layer_map = kbm.distillation.losses.uniform_layer_map(
        range(student_blocks), range(teacher_blocks)
    )
    hidden = kbm.distillation.losses.HiddenStateDistillation(
        {
            f"{STUDENT_ENCODER}/transformer_layer_{s}": (
                f"{TEACHER_ENCODER}/transformer_layer_{t}"
            )
            for s, t in layer_map.items()
        }
    )
    attention = kbm.distillation.losses.AttentionDistillation(
        TEACHER_ENCODER,
        STUDENT_ENCODER,
        layer_map=layer_map,
        relations=("qk", "vv"),
        relation_heads=relation_heads,
    )
    return [logits, hidden, attention], list(args.weights)


def train_student(args, data, teacher, teacher_encoder, student, mode, seed):
    train, _, (x_test, y_test), num_classes, x_transfer = data
    pruning = None
    relation_heads = RELATION_HEADS
    if student == PRUNED:
        plan = pruning_plan(args, teacher, data)
        model, encoder = pruned_student(
            args, teacher, teacher_encoder, num_classes, seed, plan
        )
        relation_heads = PRUNED_RELATION_HEADS
        length = args.sequence_length
        pruning = {
            **plan,
            "heads_share": PRUNE_HEADS,
            "units_share": PRUNE_UNITS,
            "relation_heads": relation_heads,
            "sequence_length": length,
            "teacher_flops": encoder_flops(teacher_encoder, length),
            "student_flops": encoder_flops(encoder, length),
            "layer_num_heads": [
                b.num_heads for b in encoder.transformer_layers
            ],
            "layer_intermediate_dims": [
                b.intermediate_dim for b in encoder.transformer_layers
            ],
            "accuracy_before_training": accuracy(model, x_test, y_test),
            "timing": inference_timing(teacher, model, x_test),
        }
    else:
        model, encoder = student_model(
            args, student, teacher_encoder, num_classes, seed
        )
    if mode == "alone":
        losses, weights, alpha = None, None, 1.0
    elif mode == "transfer":
        losses, weights = distillation_losses(args, "logits", 0, 0)
        alpha = args.alpha
    else:
        losses, weights = distillation_losses(
            args,
            mode,
            encoder.num_layers,
            teacher_encoder.num_layers,
            relation_heads,
        )
        alpha = args.alpha
    distiller = kbm.distillation.Distiller(
        teacher,
        model,
        losses,
        distillation_loss_weights=weights,
        student_loss_weight=alpha,
        teacher_cache=None if mode == "alone" else "memory",
    )
    n = len(train[0])
    elements = train
    if mode == "transfer":
        # Unlabelled reviews weigh 0 in the label loss; the labelled ones
        # are scaled so that a batch's label loss keeps its size.
        total = n + len(x_transfer)
        elements = (
            np.concatenate([train[0], x_transfer]),
            np.concatenate([train[1], np.zeros(len(x_transfer), "int64")]),
            np.concatenate(
                [np.full(n, total / n), np.zeros(len(x_transfer))]
            ).astype("float32"),
        )
        n = total
    steps = args.epochs * int(np.ceil(n / args.batch_size))
    distiller.compile(
        optimizer=kbm.optimizers.AdamW(
            demo.schedule(args.learning_rate, steps), weight_decay=0.01
        ),
        loss=demo.loss(),
        metrics=["accuracy"],
    )
    dataset = (
        kbm.distillation.with_example_index(
            tf.data.Dataset.from_tensor_slices(elements)
        )
        .shuffle(n, seed=seed)
        .batch(args.batch_size)
    )
    start = time.perf_counter()
    history = distiller.fit(
        dataset, epochs=args.epochs, shuffle=False, verbose=0
    ).history
    seconds = time.perf_counter() - start
    run = {
        "examples": int(n),
        "accuracy": accuracy(model, x_test, y_test),
        "seconds": seconds,
        "parameters": int(model.count_params()),
        "token_table": int(np.prod(encoder.token_embedding.embeddings.shape)),
        "final_student_loss": float(history["student_loss"][-1]),
        "final_distillation_loss": float(history["distillation_loss"][-1]),
    }
    if pruning is not None:
        run["pruning"] = pruning
    return run


# ------------------------------------------------------------------ JSON


def load_results(path, args):
    if not Path(path).exists():
        return {"settings": settings(args), "teacher": None, "runs": {}}
    results = json.loads(Path(path).read_text())
    if results["settings"] != settings(args):
        sys.exit(
            f"error: {path} holds runs with other settings "
            f"({results['settings']}); pass another --results path or "
            "remove it"
        )
    return results


def save_results(path, results):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_key(student, mode, seed):
    return f"{student}/{mode}/{seed}"


# -------------------------------------------------------------- RESULTS.md


def _confidence_lines(teacher, temperature):
    if not teacher or "train_accuracy" not in teacher:
        return []
    t = f"{temperature:g}"

    def side(name):
        return (
            f"accuracy {teacher[f'{name}_accuracy']:.4f}, mean top-class "
            f"probability {teacher[f'{name}_top_probability_T1']:.3f} at "
            f"T = 1 and {teacher[f'{name}_top_probability_T{t}']:.3f} at "
            f"T = {t}"
        )

    return [
        "The teacher on the training reviews the students learn from: "
        f"{side('train')}; on the test reviews: {side('test')}. The closer "
        "its training-set accuracy and confidence are to 1, the less its "
        "soft targets on those same reviews carry beyond the labels (the "
        "transfer set gives it reviews it was not fitted to).",
        "",
    ]


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_std(values):
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def _fmt(mean, std, n):
    if mean is None:
        return "not run"
    return f"{mean:.4f} ± {std:.4f} (n={n})"


def render(results):
    s = results["settings"]
    teacher = results["teacher"]
    runs = results["runs"]
    students = [k for k in STUDENTS if any(r.startswith(f"{k}/") for r in runs)]
    transfer = [r for k, r in runs.items() if "/transfer/" in k]
    modes = DEFAULT_MODES + (("transfer",) if transfer else ())
    transfer_examples = (
        transfer[0]["examples"] - round(s["train_size"] * 0.9)
        if transfer
        else 0
    )
    lines = [
        f"<!-- section:{SECTION} -->",
        "## Text: MiniLM on Rotten Tomatoes",
        "",
        "<!-- Generated by `python benchmarks/distillation_experiment.py` "
        "from benchmarks/results/experiments/. Do not edit by hand. -->",
        "",
    ]
    if s["quick"]:
        lines += [
            "> **QUICK SMOKE-TEST RESULTS** (`--quick`: few examples, one "
            "epoch, one seed). They show the pipeline runs, not what "
            "distillation buys.",
            "",
        ]
    lines += [
        f"Generated {results.get('updated_utc', '?')} on "
        f"{results.get('machine', '?')}, {results.get('software', '?')}.",
        "",
        "Claim checked (DistilBERT, TinyBERT, MiniLM): a student distilled "
        "from a fine-tuned teacher (logits, and also hidden states and "
        "self-attention relations) closes a large part of the accuracy gap "
        "between the same student trained alone and the teacher.",
        "",
        f"Method: the demo's data (`kbm_rotten_tomatoes`, "
        f"{s['train_size']} training reviews, 10% of them held back, "
        f"{s['test_size']} held-out test reviews, {s['sequence_length']} "
        "tokens); teacher = all-MiniLM-L6-v2 (6 blocks, hidden 384) "
        f"fine-tuned {_plural(s['teacher_epochs'], 'epoch')} with a "
        "mean-pool head. "
        "Students are made by `kbm.distillation.student_from_teacher` "
        "(embeddings and uniformly mapped teacher blocks copied; the narrow "
        "one's weights are leading slices) and trained "
        f"{_plural(s['epochs'], 'epoch')}, batch {s['batch_size']}, AdamW peak "
        f"{s['learning_rate']:g} with warmup + linear decay: alone on the "
        "labels; with `LogitsDistillation(T="
        f"{s['temperature']:g})`; and with logits + "
        "`HiddenStateDistillation` (each student block to the teacher "
        "block it was copied from) + `AttentionDistillation` (attention "
        f"and value relations, {s['relation_heads']} relation heads), loss "
        f"weights {s['weights']}; distilled modes use "
        f"`student_loss_weight={s['alpha']:g}`. For each seed all modes "
        "share the initial weights, data order and schedule. Accuracy = "
        "mean ± std over seeds on the test reviews. Gap closed = "
        "(distilled - alone) / (teacher - alone) on the means."
        + (
            " Transfer set: logits KD on the labelled reviews plus "
            f"{transfer_examples} other training reviews whose labels are "
            "not used (weight 0 in the label loss), same epochs (so more "
            "steps)."
            if transfer_examples
            else ""
        ),
        "",
        "Teacher test accuracy: "
        + (f"{teacher['accuracy']:.4f}" if teacher else "not measured")
        + (f", {teacher['parameters']:,} parameters." if teacher else "."),
        "",
        *_confidence_lines(teacher, s["temperature"]),
        "| student | parameters (outside the token table) | "
        + " | ".join(MODE_LABEL[m] for m in modes)
        + "".join(f" | gap closed: {MODE_LABEL[m]}" for m in modes[1:])
        + " |",
        "|---|---|" + "---|" * (2 * len(modes) - 1),
    ]
    for student in students:
        blocks, hidden, heads, _ = STUDENTS[student]
        accs = {
            m: [
                r["accuracy"]
                for k, r in runs.items()
                if k.startswith(f"{student}/{m}/")
            ]
            for m in modes
        }
        stats = {m: _mean_std(v) for m, v in accs.items()}
        any_run = next(
            r for k, r in runs.items() if k.startswith(f"{student}/")
        )
        if student == PRUNED:
            p = any_run["pruning"]
            name = (
                f"pruned teacher: {len(p['layer_num_heads'])} blocks, "
                f"{p['heads_total'] - p['heads_removed']} of "
                f"{p['heads_total']} heads, "
                f"{p['units_total'] - p['units_removed']:,} of "
                f"{p['units_total']:,} FFN units"
            )
        else:
            name = f"{blocks} blocks" + (
                f", hidden {hidden}, {heads} heads" if hidden else ""
            )
        gaps = []
        for m in modes[1:]:
            alone, dist = stats["alone"][0], stats[m][0]
            if alone is None or dist is None or teacher is None:
                gaps.append("–")
            elif teacher["accuracy"] - alone <= 0:
                gaps.append("no gap (alone ≥ teacher)")
            else:
                gap = (dist - alone) / (teacher["accuracy"] - alone)
                gaps.append(f"{gap:.0%}")
        params = any_run["parameters"]
        lines.append(
            f"| {name} | {params:,} ({params - any_run['token_table']:,}) | "
            + " | ".join(_fmt(*stats[m], len(accs[m])) for m in modes)
            + "".join(f" | {g}" for g in gaps)
            + " |"
        )
    if PRUNED in students:
        lines += _pruned_lines(runs, teacher, modes, s)
    lines += [
        "",
        f"Runs recorded: {len(runs)}; raw results, per-run times and "
        "final losses in the JSON.",
        f"<!-- /section:{SECTION} -->",
    ]
    return "\n".join(lines) + "\n"


def _pruned_lines(runs, teacher, modes, s):
    """The pruning table: the pruned teacher before and after recovery,
    against the unpruned teacher."""
    pruned = {k: r for k, r in runs.items() if k.startswith(f"{PRUNED}/")}
    p = next(iter(pruned.values()))["pruning"]
    timings = [r["pruning"]["timing"] for r in pruned.values()]
    speedups = [t["speedup"] for t in timings]
    before = p["accuracy_before_training"]
    t_acc = teacher["accuracy"] if teacher else None
    t_params = teacher["parameters"] if teacher else None
    params = next(iter(pruned.values()))["parameters"]
    heads_pct = 100 * p["heads_removed"] / p["heads_total"]
    units_pct = 100 * p["units_removed"] / p["units_total"]

    def versus(acc):
        if t_acc is None or acc is None:
            return "–", "–"
        return f"{acc / t_acc:.1%}", f"{100 * (acc - t_acc):+.1f}"

    lines = [
        "",
        "### Pruned MiniLM: pruned + distilled vs pruned + fine-tuned alone",
        "",
        "The pruned student is the fine-tuned teacher with "
        f"{p['heads_removed']} of {p['heads_total']} attention heads "
        f"({heads_pct:.1f}%) and {p['units_removed']:,} of "
        f"{p['units_total']:,} feed-forward units ({units_pct:.1f}%) "
        "removed (`kbm.pruning.prune`): those with the lowest gradient "
        "importance (`head_importance`, `neuron_importance`) on "
        f"{p['score_batches']} training batches, per-layer normalised "
        "(`select_lowest`, at least one per layer). Heads kept per block: "
        f"{p['layer_num_heads']}; feed-forward units kept: "
        f"{p['layer_intermediate_dims']}. It keeps the teacher's head and "
        "is trained in the modes above (hidden states mapped block i to "
        "block i; attention relations re-split into "
        f"{p['relation_heads']} relation heads, which divide every pruned "
        "block's width). FLOPs: the encoder blocks' matmuls at "
        f"{s['sequence_length']} tokens; measured: the median per-round ratio "
        "of a forward pass at batch "
        f"{timings[0]['batch']} x {s['sequence_length']} tokens, teacher vs "
        f"pruned, {timings[0]['rounds']} interleaved rounds, once per run "
        "(median over runs; see BENCHMARKS.md's compression section for "
        "the full benchmark at 128 tokens).",
        "",
        "| model | parameters | encoder FLOPs | inference speed-up "
        "(measured) | test accuracy | % of teacher | points vs teacher |",
        "|---|---:|---:|---:|---|---:|---:|",
        f"| teacher (unpruned) | {t_params or 0:,} | 1.00× (of "
        f"{p['teacher_flops'] / 1e9:.2f} GFLOP) | 1.00× | "
        + (f"{t_acc:.4f}" if t_acc is not None else "–")
        + " | 100% | 0 |",
    ]
    flops = p["teacher_flops"] / p["student_flops"]
    size = (
        f"{params:,} ({params / t_params:.0%})" if t_params else f"{params:,}"
    )
    lead = f"| {{}} | {size} | {flops:.2f}× | {np.median(speedups):.2f}× | "
    lines.append(
        lead.format("pruned, no training")
        + f"{before:.4f} | "
        + " | ".join(versus(before))
        + " |"
    )
    for m in modes:
        accs = [
            r["accuracy"]
            for k, r in pruned.items()
            if k.startswith(f"{PRUNED}/{m}/")
        ]
        mean, std = _mean_std(accs)
        lines.append(
            lead.format(f"pruned + {MODE_LABEL[m]}")
            + _fmt(mean, std, len(accs))
            + " | "
            + " | ".join(versus(mean))
            + " |"
        )
    return lines


def write_section(path, text, section=SECTION):
    """Replaces one section of RESULTS.md (or appends it): this script's,
    or `section` of another experiment script."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Distillation results\n"
    begin, end = f"<!-- section:{section} -->", f"<!-- /section:{section} -->"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def machine_line():
    import platform

    cpus = os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} x {cpus}"


# ------------------------------------------------------------------ main


def main(argv=None):
    args = parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    results = load_results(args.results, args)
    if args.report_only:
        write_section(args.results_md, render(results))
        print(render(results))
        return results
    results["machine"] = machine_line()
    results["software"] = (
        f"{KERAS_LINE} (keras {keras.__version__}), TensorFlow {tf.__version__}"
    )
    print(f"results: {args.results}", flush=True)
    data = load_data(args)
    teacher, teacher_encoder, seconds = teacher_model(args, data)
    fingerprint = teacher_fingerprint(teacher, data[2][0])
    recorded = (results["teacher"] or {}).get("fingerprint")
    if results["runs"] and recorded != fingerprint:
        sys.exit(
            f"error: {args.results} holds runs distilled from another "
            f"teacher (fingerprint {recorded}, this one {fingerprint}: "
            "the cached teacher weights were retrained); pass another "
            "--results path or remove it"
        )
    if results["teacher"] is None or recorded is None:
        results["teacher"] = {
            "accuracy": accuracy(teacher, *data[2]),
            "parameters": int(teacher.count_params()),
            "seconds": seconds,
            "fingerprint": fingerprint,
        }
        save_results(args.results, results)
    if "train_accuracy" not in results["teacher"]:
        results["teacher"].update(
            teacher_confidence(teacher, data, args.temperature)
        )
        save_results(args.results, results)
    print(f"teacher accuracy {results['teacher']['accuracy']:.4f}")
    for seed in range(args.seeds):
        for student in args.students:
            for mode in args.modes:
                key = run_key(student, mode, seed)
                if key in results["runs"]:
                    continue
                print(f"{key} ...", end=" ", flush=True)
                run = train_student(
                    args, data, teacher, teacher_encoder, student, mode, seed
                )
                results["runs"][key] = run
                results["updated_utc"] = datetime.datetime.now(
                    datetime.timezone.utc
                ).strftime("%Y-%m-%d %H:%M UTC")
                save_results(args.results, results)
                print(
                    f"accuracy {run['accuracy']:.4f} ({run['seconds']:.0f} s)",
                    flush=True,
                )
                gc.collect()
    write_section(args.results_md, render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
