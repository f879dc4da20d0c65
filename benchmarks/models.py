"""Benchmark: BERT-family models end to end, fine-tuning and inference.

What is measured, per model (MiniLM-L6 on its real all-MiniLM-L6-v2
checkpoint; a BERT-base-shaped encoder with random weights: 12 layers,
hidden 768, 12 heads, intermediate 3072), sequences of 128 tokens (random
ids, lengths 64-128, the rest padding), a classifier on top (masked mean
pooling, dropout 0.1, a 2-way dense head):

* **training step** at batch 32: forward with the checkpoint's dropouts
  (hidden and attention 0.1), cross-entropy, backward, AdamW update;
* **inference** at batch 1, 8 and 32 (dropout off).

Variants, each in its own process (the same thread count), timed
interleaved: in every round each variant runs one call in turn, while the
others wait, so drifts of a shared machine hit all of them alike. Inference
at batch 8 or less times, per round and variant, the mean of
`SMALL_BATCH_REPEAT` calls back to back after one untimed call, as a server
answers a stream of requests: a lone call right after another process's
timed call shares the cores with that process's worker threads, which
spin a while before they sleep (TensorFlow's pool, PyTorch's OpenMP), and
at these sizes that costs up to half the call:

* `kbm`: `kbm.models.BertEncoder` + `kbm.optimizers.AdamW`, fused kernels
  on; `model.train_on_batch` / `model.predict_on_batch`;
* `kbm, kernels off`: the same with `KERAS_BIGMODELS_DISABLE_FUSED=1` (the
  pure-TensorFlow references: what stock TensorFlow runs);
* `Keras layers`: the same architecture from stock Keras layers
  (`Embedding`, `MultiHeadAttention`, `LayerNormalization`, `Dense`) and
  `keras.optimizers.AdamW`;
* `SavedModel (stock ops)` and `SavedModel, jit_compile`: inference only;
  the kbm model exported by `kbm.export.export_saved_model` (stock ops),
  loaded by a process that never imports keras_bigmodels (what an
  unmodified TF Serving runs), its `serving_default` called directly; the
  second exported with `jit_compile=True` (its serving function is
  XLA-compiled where it is loaded);
* `PyTorch`: Hugging Face transformers' `BertModel` (its default attention,
  SDPA) with the same head, `torch.optim.AdamW`, eager; inference under
  `torch.inference_mode()`. It runs in its own virtual environment
  (`--torch-python`; `make bench-models` creates it with the pinned
  `torch==2.13.0` CPU wheel and transformers).

Model FLOPs count the matmuls of the encoder on all 128 positions (padding
included: every variant computes them): per layer and sequence
`2 S (4 H^2 + 2 H I) + 4 S^2 H`; a training step is 3x the forward pass.
"% of FMA peak" divides FLOP/s by this machine's float32 FMA peak,
measured in the same run (`benchmarks/_fma_peak.c`: 10 independent
8-wide FMA chains per thread, and 16-wide ones where the CPU has AVX-512,
the faster counting; as many threads as the variants use) before
and after the timings; the table uses the larger of the two. A ratio is
the median over rounds of (variant time / kbm time in the same round): above
1 means kbm is faster.

Run alone with `python benchmarks/models.py [--quick] [--models ...]`
(Keras 3; it needs the checkpoint package for MiniLM).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALLOCATORS = ("default",)
FAMILY = "models"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
LENGTH, QUICK_LENGTH = 128, 16
TRAIN_BATCH = 32
INFER_BATCHES = (1, 8, 32)
# Inference calls at batch <= SMALL_BATCH are timed as the mean of this many
# back-to-back calls after an untimed one (see the module docstring).
SMALL_BATCH, SMALL_BATCH_REPEAT = 8, 5
QUICK_TRAIN_BATCH, QUICK_INFER_BATCHES = 4, (1, 4)
VOCAB = 30522

MODELS = {
    "MiniLM-L6": {
        "num_layers": 6,
        "hidden": 384,
        "heads": 12,
        "intermediate": 1536,
        "checkpoint": True,
    },
    "BERT-base": {
        "num_layers": 12,
        "hidden": 768,
        "heads": 12,
        "intermediate": 3072,
        "checkpoint": False,
        # Six BERT-base processes need more than 24 GiB: the variants run
        # in two passes, each beside the same kbm process; kernels off and
        # the SavedModels share one, as the serving target compares them.
        "passes": [
            [
                "kbm, kernels off",
                "SavedModel (stock ops)",
                "SavedModel, jit_compile",
            ],
            ["Keras layers", "PyTorch"],
        ],
    },
}
QUICK_MODELS = {
    "tiny": {
        "num_layers": 2,
        "hidden": 64,
        "heads": 4,
        "intermediate": 128,
        "checkpoint": False,
    }
}

KBM = "kbm"
VARIANTS = {
    # name: (worker kind, extra environment, tasks)
    KBM: ("kbm", {}, ("train", "infer")),
    "kbm, kernels off": (
        "kbm",
        {"KERAS_BIGMODELS_DISABLE_FUSED": "1"},
        ("train", "infer"),
    ),
    "Keras layers": ("keras", {}, ("train", "infer")),
    "SavedModel (stock ops)": ("savedmodel", {}, ("infer",)),
    "SavedModel, jit_compile": ("savedmodel_xla", {}, ("infer",)),
    "PyTorch": ("torch", {}, ("train", "infer")),
}
TORCH_VENV = REPO_ROOT / "build" / "torch-venv"


def model_gflop(cfg, batch, length, train):
    s, h, i = length, cfg["hidden"], cfg["intermediate"]
    per_layer = 2 * s * (4 * h * h + 2 * h * i) + 4 * s * s * h
    forward = cfg["num_layers"] * per_layer * batch
    return forward * (3 if train else 1) / 1e9


def token_batch(batch, length, seed=1):
    """Token ids [batch, length] (lengths length/2..length, 0 = padding) and
    labels, as NumPy arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, length // 2), length + 1, batch)
    ids = rng.integers(1000, VOCAB, (batch, length)).astype("int32")
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = 101  # [CLS]
    labels = rng.integers(0, 2, (batch,)).astype("int32")
    return ids, labels


# ------------------------------------------------------------- workers ----


def _kbm_model(cfg, length, name):
    import keras_bigmodels as kbm
    from keras_bigmodels.backend import keras
    from keras_bigmodels.demo import classifier

    if cfg["checkpoint"]:
        encoder = kbm.models.BertEncoder.from_checkpoint(
            kbm.models.minilm_l6_v2_path(), name=f"{name}_encoder"
        )
    else:
        encoder = kbm.models.BertEncoder(
            vocabulary_size=VOCAB,
            num_layers=cfg["num_layers"],
            num_heads=cfg["heads"],
            hidden_dim=cfg["hidden"],
            intermediate_dim=cfg["intermediate"],
            dropout=0.1,
            attention_dropout=0.1,
            name=f"{name}_encoder",
        )
    model = classifier(encoder, 2, length, name)
    model.compile(
        optimizer=kbm.optimizers.AdamW(2e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _keras_model(cfg, length):
    """The same classifier from stock Keras layers (post-LN BERT)."""
    from keras_bigmodels.backend import keras

    ops = keras.ops
    h, heads = cfg["hidden"], cfg["heads"]

    class Glue(keras.layers.Layer):
        """Positions, segments and the attention mask from token ids."""

        def call(self, t):
            m = ops.not_equal(t, 0)
            positions = ops.zeros_like(t) + ops.arange(length, dtype=t.dtype)
            attn = ops.broadcast_to(
                m[:, None, :], (ops.shape(t)[0], length, length)
            )
            return positions, ops.zeros_like(t), attn, m

    class MeanPool(keras.layers.Layer):
        def call(self, seq, m):
            m = ops.cast(m, seq.dtype)[:, :, None]
            return ops.sum(seq * m, axis=1) / ops.maximum(
                ops.sum(m, axis=1), 1.0
            )

    ids = keras.Input((length,), dtype="int32", name="token_ids")
    positions, segments, attn_mask, mask = Glue()(ids)
    x = keras.layers.Add()(
        [
            keras.layers.Embedding(VOCAB, h)(ids),
            keras.layers.Embedding(512, h)(positions),
            keras.layers.Embedding(2, h)(segments),
        ]
    )
    x = keras.layers.LayerNormalization(epsilon=1e-12)(x)
    x = keras.layers.Dropout(0.1)(x)
    for _ in range(cfg["num_layers"]):
        a = keras.layers.MultiHeadAttention(heads, h // heads, dropout=0.1)(
            x, x, attention_mask=attn_mask
        )
        a = keras.layers.Dropout(0.1)(a)
        x = keras.layers.LayerNormalization(epsilon=1e-12)(
            keras.layers.Add()([x, a])
        )
        f = keras.layers.Dense(cfg["intermediate"], activation="gelu")(x)
        f = keras.layers.Dropout(0.1)(keras.layers.Dense(h)(f))
        x = keras.layers.LayerNormalization(epsilon=1e-12)(
            keras.layers.Add()([x, f])
        )
    pooled = MeanPool()(x, mask)
    pooled = keras.layers.Dropout(0.1)(pooled)
    logits = keras.layers.Dense(2)(pooled)
    model = keras.Model(ids, logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def export_stock_savedmodel(cfg, length, path, jit_compile=False):
    """Writes the kbm classifier as a stock-ops SavedModel (own process)."""
    import keras_bigmodels as kbm

    model = _kbm_model(cfg, length, "exported")
    kbm.export.export_saved_model(
        model, path, stock_ops=True, jit_compile=jit_compile
    )


_KEEP_ALIVE = []


def _tf_worker(kind, cfg, length):
    """Returns {task: fn(batch) -> None} for a TensorFlow variant."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if kind in ("kbm", "keras"):
        from keras_bigmodels.backend import keras

        keras.utils.set_random_seed(0)
        model = (
            _kbm_model(cfg, length, "classifier")
            if kind == "kbm"
            else _keras_model(cfg, length)
        )
        data = {}

        def get(batch):
            if batch not in data:
                data[batch] = token_batch(batch, length)
            return data[batch]

        return {
            "train": lambda b: model.train_on_batch(*get(b)),
            "infer": lambda b: model.predict_on_batch(get(b)[0]),
        }
    # A SavedModel, exported by a child process that imports kbm; this one
    # imports only TensorFlow.
    path = Path(tempfile.mkdtemp(prefix="kbm-models-")) / "saved"
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--export",
            str(path),
            "--model-config",
            json.dumps(cfg),
            "--length",
            str(length),
            *(["--jit-compile"] if kind == "savedmodel_xla" else []),
        ],
        check=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    if "keras_bigmodels" in sys.modules:
        raise RuntimeError("the SavedModel worker must not import kbm")
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    _KEEP_ALIVE.append(loaded)  # Its variables must outlive this frame.
    # savedmodel_xla: exported with jit_compile=True, so the loaded
    # serving function itself is XLA-compiled.
    fn = lambda ids: serve(token_ids=ids)  # noqa: E731
    data = {}

    def infer(batch):
        if batch not in data:
            data[batch] = tf.constant(token_batch(batch, length)[0])
        return fn(data[batch])

    return {"infer": infer}


def worker_main(kind, cfg, length, threads):
    """Serves timing requests on stdin: "TASK BATCH REPEAT" -> seconds per
    call on stdout (REPEAT > 1: the mean of REPEAT calls back to back, after
    an untimed one)."""
    if kind == "torch":
        import _models_torch

        tasks = _models_torch.tasks(cfg, length, threads, token_batch)
    else:
        tasks = _tf_worker(kind, cfg, length)
    print("ready", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        task, batch, repeat = parts[0], int(parts[1]), int(parts[2])
        if repeat > 1:
            tasks[task](batch)  # Untimed: wakes this process's threads.
        t0 = time.perf_counter()
        for _ in range(repeat):
            tasks[task](batch)
        print(json.dumps((time.perf_counter() - t0) / repeat), flush=True)


class Worker:
    """One variant's process."""

    def __init__(self, name, kind, env, cfg, length, threads, torch_python):
        self.name = name
        python = torch_python if kind == "torch" else sys.executable
        if kind == "torch" and cfg["checkpoint"]:
            # The torch venv lacks the checkpoint package: pass its path.
            from keras_bigmodels.models.presets import minilm_l6_v2_path

            env = {"KBM_MINILM_PATH": minilm_l6_v2_path(), **env}
        cmd = [
            str(python),
            __file__,
            "--worker",
            kind,
            "--model-config",
            json.dumps(cfg),
            "--length",
            str(length),
            "--threads",
            str(threads),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(BENCH_DIR)]),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **env,
            },
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"{name}: worker failed to start ({line!r})")

    def run(self, task, batch, repeat=1):
        self.proc.stdin.write(f"{task} {batch} {repeat}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: worker died during {task}")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)


# ------------------------------------------------------------- driver ----


def _add_arguments(parser):
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=sorted(MODELS, reverse=True),
        help="models to run (default: all)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="variants to run (default: all; kbm is always run)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="threads per variant (default: the CPU count)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the profiler table of MiniLM's training step",
    )
    parser.add_argument(
        "--torch-python",
        type=Path,
        default=TORCH_VENV / "bin" / "python",
        help="Python of the PyTorch virtual environment",
    )


def _repeat(task, batch):
    """Calls per timing sample (see the module docstring)."""
    return SMALL_BATCH_REPEAT if task == "infer" and batch <= SMALL_BATCH else 1


def _bench_model(results, model_name, cfg, args, length, peak):
    import _harness

    train_batch = QUICK_TRAIN_BATCH if args.quick else TRAIN_BATCH
    infer_batches = QUICK_INFER_BATCHES if args.quick else INFER_BATCHES
    names = [KBM] + [v for v in args.variants if v != KBM]
    if not args.torch_python.exists() and "PyTorch" in names:
        names.remove("PyTorch")
        results.notes.append(
            f"PyTorch skipped: no {args.torch_python} (make bench-models "
            "creates it)."
        )
    others = [n for n in names if n != KBM]
    passes = [
        [n for n in group if n in others] for group in cfg.get("passes", [])
    ] or [others]
    passes[0] += [n for n in others if not any(n in g for g in passes)]
    cases = [("train", train_batch)] + [("infer", b) for b in infer_batches]
    # (task, batch) -> [(variant, seconds per round, kbm's seconds in the
    # same rounds, or None for kbm's own row)], pass by pass.
    times = {case: [] for case in cases}
    workers = {}
    try:
        workers[KBM] = _start(KBM, cfg, length, args, model_name)
        for p, group in enumerate(passes):
            for name in group:
                workers[name] = _start(name, cfg, length, args, model_name)
            for task, batch in cases:
                active = [KBM] + [n for n in group if task in VARIANTS[n][2]]
                _harness.progress(FAMILY, f"{model_name}: {task} batch {batch}")
                repeat = _repeat(task, batch)
                for _ in range(args.warmup):
                    for n in active:
                        workers[n].run(task, batch)
                got = {n: [] for n in active}
                for _ in range(args.rounds):
                    for n in active:
                        got[n].append(workers[n].run(task, batch, repeat))
                label = KBM if len(passes) == 1 else f"{KBM} (pass {p + 1})"
                times[(task, batch)].append((label, got[KBM], None))
                for n in active[1:]:
                    times[(task, batch)].append((n, got[n], got[KBM]))
            for name in group:
                _stop(workers.pop(name))
    finally:
        for w in workers.values():
            _stop(w)
    rows = []
    for task, batch in cases:
        gflop = model_gflop(cfg, batch, length, task == "train")
        for n, ts, kbm_ts in times[(task, batch)]:
            med = statistics.median(ts)
            ratios = (
                None
                if kbm_ts is None
                else statistics.median(t / k for t, k in zip(ts, kbm_ts))
            )
            rows.append(
                {
                    "model": model_name,
                    "task": (
                        f"training step, batch {batch}"
                        if task == "train"
                        else f"inference, batch {batch}"
                    ),
                    "variant": n,
                    "kbm": kbm_ts is None,
                    "ms": 1e3 * med,
                    "gflop": gflop,
                    "gflops": gflop / med,
                    "pct_peak": 100.0 * gflop / med / peak,
                    "kbm_speedup": ratios,
                    "times_ms": [1e3 * t for t in ts],
                }
            )
    if len(passes) > 1:
        results.notes.append(
            f"{model_name}: the variants ran in {len(passes)} passes ("
            + "; ".join(", ".join(g) for g in passes)
            + "), each beside the same kbm process, to fit this machine's "
            "memory; kbm has a row per pass, and a ratio compares rounds of "
            "the same pass."
        )
    return rows


PROFILE_TOP = 12
TARGET_TORCH, TARGET_OFF, TARGET_PEAK = 1.3, 1.5, 75.0


def _met(value, target):
    return "met" if value >= target else "not met"


def _target_notes(rows):
    """The issue's targets against one model's rows (ratios: the variant's
    time / kbm's, medians over rounds)."""
    by = {(r["task"], r["variant"]): r for r in rows}
    notes = []
    train = next((r for r in rows if r["task"].startswith("training")), None)
    if train is not None:
        task = train["task"]
        parts = []
        for variant, target in (
            ("PyTorch", TARGET_TORCH),
            ("kbm, kernels off", TARGET_OFF),
            ("Keras layers", None),
        ):
            r = by.get((task, variant))
            if r is None:
                continue
            text = f"{r['kbm_speedup']:.2f}x faster than {variant}"
            if target:
                text += f" (target {target}x: {_met(r['kbm_speedup'], target)})"
            parts.append(text)
        kbm = next(
            r for r in rows if r["task"] == task and r["kbm_speedup"] is None
        )
        parts.append(
            f"{kbm['pct_peak']:.0f} % of the FMA peak (target "
            f"{TARGET_PEAK:.0f} %: {_met(kbm['pct_peak'], TARGET_PEAK)})"
        )
        notes.append(f"{task}: kbm " + "; ".join(parts) + ".")
    for r in rows:
        inference = r["task"].startswith("inference")
        if not (inference and r["variant"] == "PyTorch"):
            continue
        task = r["task"]
        text = (
            f"{task}: kbm {r['kbm_speedup']:.2f}x faster than PyTorch eager "
            f"(target {TARGET_TORCH}x: {_met(r['kbm_speedup'], TARGET_TORCH)})"
        )
        off = by.get((task, "kbm, kernels off"))
        for variant in ("SavedModel (stock ops)", "SavedModel, jit_compile"):
            saved = by.get((task, variant))
            if saved is None or off is None:
                continue
            # Both against kbm's time in their own rounds.
            ratio = off["kbm_speedup"] / saved["kbm_speedup"]
            text += (
                f"; {variant} {ratio:.2f}x the speed of the Keras model with "
                f"kernels off (target >= 1: {_met(ratio, 1.0)})"
            )
        notes.append(text + ".")
    return notes


def _profile_table(results, length):
    """MiniLM's training step under TensorFlow's profiler, kernels on and
    off (tools/profile_step.py, one process each): the top op types by
    time."""
    import _harness

    table = results.table(
        "MiniLM-L6 training step: TensorFlow ops by time",
        [
            _harness.Column("kernels", "kbm kernels", group=True),
            _harness.Column("op", "op type"),
            _harness.Column("ms", "ms per step", "ms"),
            _harness.Column("share", "share of op time", "pct"),
            _harness.Column("count", "calls per step"),
        ],
    )
    walls = []
    with table:
        for kernels in ("on", "off"):
            _harness.progress(FAMILY, f"profiling, kernels {kernels}")
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "profile.json"
                subprocess.run(
                    [
                        sys.executable,
                        str(REPO_ROOT / "tools" / "profile_step.py"),
                        "--model",
                        "MiniLM-L6",
                        "--batch",
                        str(TRAIN_BATCH),
                        "--length",
                        str(length),
                        "--kernels",
                        kernels,
                        "--json",
                        str(out),
                    ],
                    check=True,
                    capture_output=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                )
                prof = json.loads(out.read_text())
            walls.append(
                f"kernels {kernels}: {prof['wall_s_per_step']:.3f} s per "
                f"step (wall, profiler on), {prof['op_s_per_step']:.3f} s of "
                "op time"
            )
            for op in prof["ops"][:PROFILE_TOP]:
                table.rows.append(
                    {
                        "kernels": kernels,
                        "op": op["op"],
                        "ms": 1e3 * op["s_per_step"],
                        "share": 100 * op["share"],
                        "count": f"{op['count_per_step']:.0f}",
                    }
                )
    table.description = (
        f"Batch {TRAIN_BATCH}, {length} tokens, the checkpoint's dropouts; "
        f"the {PROFILE_TOP} op types with the most time, summed over the "
        "executor threads (op time exceeds wall time where ops overlap). "
        + "; ".join(walls)
        + "."
    )


def _layer_products(cfg, rows):
    """The float32 products of one training step of an encoder layer, one
    entry each: forward X W (fused Q/K/V, output, FFN in and out), and the
    backward dX = dY W^T (as rows x out x in) and dW = X^T dY (as in x rows
    x out)."""
    h, i = cfg["hidden"], cfg["intermediate"]
    forward = [(rows, h, 3 * h), (rows, h, h), (rows, h, i), (rows, i, h)]
    shapes = []
    for m, k, n in forward:
        shapes += [(m, k, n), (m, n, k), (k, m, n)]
    return shapes


def _matmul_shapes(cfg, rows):
    """The distinct shapes of `_layer_products`."""
    return list(dict.fromkeys(_layer_products(cfg, rows)))


def _matmul_floor_note(model_name, rows, floor, peak):
    """What the step's matmuls alone take, against the step's rows.

    `floor`: the encoder layers' products at TensorFlow's matmul-alone
    times, in seconds (the embeddings' and the head's are left out)."""
    by = {r["variant"]: r for r in rows if r["task"].startswith("training")}
    kbm = next((r for r in by.values() if r["kbm_speedup"] is None), None)
    off = by.get("kbm, kernels off")
    if kbm is None or off is None:
        return None
    gflop, off_ms = kbm["gflop"], off["ms"]
    return (
        f"{model_name}: the training step's encoder matmuls alone, at the "
        f"TensorFlow rates of the matmul table, take {1000 * floor:.0f} ms, "
        f"{100 * floor / (kbm['ms'] / 1000):.0f} % of kbm's step "
        f"({kbm['ms']:.0f} ms); the rest is attention, the element-wise "
        "ops, the optimizer and the framework. A step that took only that "
        f"time would be {off_ms / 1000 / floor:.2f}x faster than kbm with "
        f"kernels off and reach {100 * gflop / floor / peak:.0f} % "
        f"of the FMA peak (the targets: {TARGET_OFF}x and {TARGET_PEAK:.0f} %)."
    )


def _matmul_table(results, models, length, args, peak):
    """The step's float32 matmuls alone (benchmarks/_matmul_alone.py),
    TensorFlow and PyTorch, each in its own process: how far the libraries'
    GEMMs are from the FMA peak at these shapes. Returns {model: seconds of
    one training step's encoder-layer products at TensorFlow's times}."""
    import _harness

    floors = {}
    table = results.table(
        "float32 matmul alone at the training step's shapes",
        [
            _harness.Column("model", "model", group=True),
            _harness.Column("shape", "M x K x N"),
            _harness.Column("tf", "TensorFlow GFLOP/s", "gflops"),
            _harness.Column("tf_pct", "TF % of FMA peak", "pct"),
            _harness.Column("torch", "PyTorch GFLOP/s", "gflops"),
            _harness.Column("torch_pct", "PyTorch % of FMA peak", "pct"),
        ],
    )
    with table:
        for model_name, cfg in models.items():
            shapes = _matmul_shapes(cfg, TRAIN_BATCH * length)
            got = {}
            for lib, python in (
                ("tf", sys.executable),
                ("torch", args.torch_python),
            ):
                if not Path(python).exists():
                    continue
                _harness.progress(FAMILY, f"{model_name}: {lib} matmuls")
                out = subprocess.run(
                    [
                        str(python),
                        str(BENCH_DIR / "_matmul_alone.py"),
                        lib,
                        str(args.threads),
                        json.dumps(shapes),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                ).stdout
                got[lib] = json.loads(out.strip().splitlines()[-1])
            if "tf" in got:
                floors[model_name] = cfg["num_layers"] * sum(
                    got["tf"][f"{m}x{k}x{n}"]
                    for m, k, n in _layer_products(cfg, TRAIN_BATCH * length)
                )
            for m, k, n in shapes:
                key, gflop = f"{m}x{k}x{n}", 2 * m * k * n / 1e9
                row = {"model": model_name, "shape": key}
                for lib in ("tf", "torch"):
                    seconds = got.get(lib, {}).get(key)
                    row[lib] = gflop / seconds if seconds else None
                    row[f"{lib}_pct"] = (
                        100 * row[lib] / peak if seconds else None
                    )
                table.rows.append(row)
    table.description = (
        f"{args.threads} threads; best of 10 after 2 warm-up calls; rows = "
        f"batch {TRAIN_BATCH} x {length} tokens; each layer's forward "
        "products (Q/K/V fused, output, FFN in, FFN out), then their dX "
        "(M x N x K) and dW (K x M x N) products; % of the FMA peak "
        "measured before the model timings."
    )
    return floors


def _start(name, cfg, length, args, model_name):
    import _harness

    kind, env, _ = VARIANTS[name]
    _harness.progress(FAMILY, f"{model_name}: starting {name}")
    return Worker(name, kind, env, cfg, length, args.threads, args.torch_python)


def _stop(worker):
    try:
        worker.close()
    except Exception:  # noqa: BLE001 - best effort at shutdown
        worker.proc.kill()


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("--worker", "--export"):
        p = argparse.ArgumentParser()
        p.add_argument("--worker")
        p.add_argument("--export")
        p.add_argument("--jit-compile", action="store_true")
        p.add_argument("--model-config", type=json.loads)
        p.add_argument("--length", type=int)
        p.add_argument("--threads", type=int, default=os.cpu_count())
        a = p.parse_args(argv)
        if a.export:
            return export_stock_savedmodel(
                a.model_config, a.length, a.export, a.jit_compile
            )
        return worker_main(a.worker, a.model_config, a.length, a.threads)

    import _harness

    args = _harness.parse_args(
        __doc__,
        argv,
        add_arguments=_add_arguments,
        quick_rounds=2,
        quick_warmup=1,
    )
    if "--rounds" not in " ".join(argv) and not args.quick:
        args.rounds = 5
    if "--warmup" not in " ".join(argv) and not args.quick:
        args.warmup = 1
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    length = QUICK_LENGTH if args.quick else LENGTH
    models = QUICK_MODELS if args.quick else {m: MODELS[m] for m in args.models}
    peak_before = _harness.fma_peak(args.threads)
    results.notes = []
    columns = [
        _harness.Column("task", "task", group=True),
        _harness.Column("variant", "variant"),
        _harness.Column("ms", "median ms", "ms"),
        _harness.Column("gflops", "model GFLOP/s", "gflops"),
        _harness.Column("pct_peak", "% of FMA peak", "pct"),
        _harness.Column("kbm_speedup", "time / kbm time", "ratio"),
    ]
    tables = {}
    for model_name, cfg in models.items():
        table = results.table(
            f"{model_name}: fine-tuning step and inference", columns
        )
        with table:
            table.rows = _bench_model(
                results, model_name, cfg, args, length, peak_before
            )
        tables[model_name] = table
    if not args.quick and "MiniLM-L6" in models and not args.no_profile:
        _profile_table(results, length)
    floors = {}
    if not args.quick:
        floors = _matmul_table(results, models, length, args, peak_before)
    peak_after = _harness.fma_peak(args.threads)
    peak = max(peak_before, peak_after)
    results.shapes = {"token_ids": [[None, length]]}
    for model_name, table in tables.items():
        cfg = models[model_name]
        for row in table.rows:  # Against the larger of the two readings.
            row["pct_peak"] = 100.0 * row["gflops"] / peak
        table.description = (
            f"{cfg['num_layers']} layers, hidden {cfg['hidden']}, "
            f"{cfg['heads']} heads, intermediate {cfg['intermediate']}"
            + (
                ", the all-MiniLM-L6-v2 checkpoint"
                if cfg["checkpoint"]
                else ", random weights"
            )
            + f"; {length} tokens; {args.threads} threads per variant; "
            f"float32 FMA peak {peak_before:.1f} GFLOP/s before and "
            f"{peak_after:.1f} after the timings; inference at batch "
            f"{SMALL_BATCH} or less: each round's time is the mean of "
            f"{SMALL_BATCH_REPEAT} calls back to back after an untimed one "
            "(a lone call shares the cores with the previous variant's "
            "still-spinning threads)."
        )
        others = [f"{m}:" for m in models if m != model_name]
        table.notes = _target_notes(table.rows) + [
            n for n in results.notes if not n.startswith(tuple(others))
        ]
        if model_name in floors:
            note = _matmul_floor_note(
                model_name, table.rows, floors[model_name], peak
            )
            if note:
                table.notes.append(note)
    results.fma_peak = {"before": peak_before, "after": peak_after}
    out = args.out or _harness.results_path(FAMILY, args.quick)
    results.write(out)
    # Keep the peak in the JSON next to the copy bandwidth.
    payload = json.loads(Path(out).read_text())
    payload["fma_peak_gflops"] = results.fma_peak
    payload["threads"] = args.threads
    Path(out).write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
