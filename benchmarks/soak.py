"""Soak test: training killed at random points resumes to the same weights.

A supervisor (this script, without TensorFlow) trains a small encoder
(`kbm.layers.TokenAndPositionEmbedding`, two `kbm.layers.TransformerEncoder`
blocks with dropout, a fused `kbm.optimizers.AdamW` or `Lamb`) in a child
process with `keras.callbacks.BackupAndRestore(save_freq=<steps>,
double_checkpoint=True)`, SIGKILLs the child at random moments (while it
starts, restores, trains or writes a checkpoint) and starts it again, until
the configured number of epochs is done. Then it trains the same model
uninterrupted and compares the final weights and optimizer state of the two
runs, and loads every checkpoint left behind (the ones each restarted child
found, checked before restoring, and the ones on disk at the end).

What `BackupAndRestore` restores mid-epoch (Keras 3.15), and what this
script adds so the two runs take identical steps:

* It saves the model's weights and the optimizer's variables (its
  `iterations` included) every `save_freq` batches, and a JSON with the
  epoch. On restart it loads both and sets the initial epoch, but it does
  not use the batch it saved: `fit` replays the interrupted epoch from its
  first batch. Here the data is a function of the global step
  (`optimizer.iterations`: batch `s` holds examples `perm[s // S]` chunk
  `s % S`, a fixed permutation per epoch), the child starts its dataset at
  the restored step and stops `fit` when the step count is reached, so no
  batch is repeated or skipped.
* After a restart its epoch counter starts at 0 until the first epoch ends
  (it is set in `on_epoch_end` only), so a checkpoint written in the first
  resumed epoch records epoch 0. The subclass below sets it in
  `on_epoch_begin`.
* The dropout layers' random state (`keras.random.SeedGenerator`) is not in
  the checkpoint. A callback sets each generator's state from the global
  step before every batch (`[seed, step * 1024]`), so the masks of step `s`
  are the same whatever process runs it.
* Single thread (`intra_op`/`inter_op` 1), `tf.config.experimental.
  enable_op_determinism()`, `keras.utils.set_random_seed`; the child runs
  under `nice`.

With all of this the weights are expected to be bitwise equal; the result
records the largest absolute difference and how many arrays differ.

Checkpoints: the run uses `kbm.callbacks.BackupAndRestore`, which writes
each file under a temporary name and renames it over the old one, so a
kill leaves either the old or the new file. `--keras-callback` runs Keras's
own callback instead: it writes `latest.weights.h5` in place, so a SIGKILL
during a save leaves it unreadable (h5py's OSError); with
`double_checkpoint=True` it then restores the previous one (`.bkp`) and
training replays from there. The result counts such files as corrupt.

Keras 3 only (tf-keras's `BackupAndRestore` is a different implementation).
Not part of CI: `make soak` (30 minutes) or

    python benchmarks/soak.py --minutes 2 --out /tmp/soak.json   # smoke test

writes benchmarks/results/reliability_soak.json, which
`benchmarks/reliability.py` renders into RELIABILITY.md.
"""

import argparse
import collections
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULT = REPO_ROOT / "benchmarks" / "results" / "reliability_soak.json"
RESULT_KERAS = RESULT.with_name("reliability_soak_keras.json")
COMMAND = "make soak  (python benchmarks/soak.py --minutes 30)"

# The model and data (small: the soak is about restarts, not speed).
VOCAB = 512
SEQ = 32
DIM = 64
HEADS = 4
FFN = 128
LAYERS = 2
CLASSES = 4
BATCH = 16
STEPS_PER_EPOCH = 40
DROPOUT = 0.1
SEED = 1234
SEED_STRIDE = 1024  # dropout draws reserved per generator per step
SAVE_FREQ = 25  # BackupAndRestore save_freq, in batches
STARTUP_KILLS = 0.2  # the share of kills during start-up
TRAIN_KILL_S = (0.0, 30.0)  # kill this long after training started
CHECKPOINT_FILES = (
    "latest.weights.h5",
    "latest.weights.h5.bkp",
)


# ------------------------------------------------------------- the child ----


def _child_setup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()

    import keras_bigmodels as kbm
    from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

    if IS_LEGACY_KERAS:
        sys.exit("soak.py runs on Keras 3 only (unset TF_USE_LEGACY_KERAS)")
    status = kbm.ops.kernels_available()
    if not status.available:
        sys.exit(f"kbm fused kernels unavailable: {status.reason}")
    return tf, keras, kbm


def _build(keras, kbm, optimizer_name):
    """The encoder and its optimizer, built, with deterministic weights."""
    keras.backend.clear_session()  # the same layer names in every build
    keras.utils.set_random_seed(SEED)
    tokens = keras.Input((SEQ,), dtype="int32")
    x = kbm.layers.TokenAndPositionEmbedding(VOCAB, SEQ, DIM)(tokens)
    for i in range(LAYERS):
        x = kbm.layers.TransformerEncoder(
            FFN, HEADS, dropout=DROPOUT, name=f"encoder_{i}"
        )(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    logits = kbm.layers.FusedDense(CLASSES)(x)
    model = keras.Model(tokens, logits)
    if optimizer_name == "adamw":
        optimizer = kbm.optimizers.AdamW(1e-3, weight_decay=0.01)
    else:
        optimizer = kbm.optimizers.Lamb(1e-3, weight_decay=0.01)
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    optimizer.build(model.trainable_variables)
    return model


def _data(tf, epochs):
    """Per-step batch indices and the examples: batch `s` is a function of
    `s` only (epoch `s // S` has its own fixed permutation)."""
    import numpy as np

    n = STEPS_PER_EPOCH * BATCH
    rng = np.random.default_rng(SEED)
    x = rng.integers(1, VOCAB, size=(n, SEQ), dtype=np.int32)
    # A learnable label from two tokens, with 10% noise.
    y = ((x[:, 0] + x[:, 1]) % CLASSES).astype(np.int32)
    noise = rng.random(n) < 0.1
    y[noise] = rng.integers(0, CLASSES, size=int(noise.sum()))
    order = np.stack(
        [
            np.random.default_rng(SEED + 1 + e).permutation(n)
            for e in range(epochs)
        ]
    ).reshape(epochs * STEPS_PER_EPOCH, BATCH)
    return tf.constant(x), tf.constant(y), order


def _seed_states(model):
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _try_load(model, path):
    """None if `path` loads into `model`, else the error.

    Keras loads only names ending in `.weights.h5`; the previous checkpoint
    (`latest.weights.h5.bkp`) is loaded from a copy with that name, as
    `BackupAndRestore` does when it falls back on it.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        if not path.name.endswith(".weights.h5"):
            copy = Path(tmp) / "copy.weights.h5"
            shutil.copy(path, copy)
            path = copy
        try:
            model.load_weights(str(path))
            return None
        except Exception as e:  # any failure means the file is unusable
            return f"{type(e).__name__}: {str(e)[:200]}"


def child_train(args):
    tf, keras, kbm = _child_setup()
    work = Path(args.workdir)
    backup = work / "backup"
    log = work / "events.jsonl"
    started = time.time()
    total = args.epochs * STEPS_PER_EPOCH
    model = _build(keras, kbm, args.optimizer)

    # The checkpoints the previous (killed) process left: each must load.
    checked = []
    for name in CHECKPOINT_FILES:
        path = backup / name
        if path.exists():
            checked.append({"file": name, "error": _try_load(model, path)})
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = backup / name
        if path.exists():
            try:
                json.loads(path.read_text())
                error = None
            except ValueError as e:
                error = f"{type(e).__name__}: {e}"
            checked.append({"file": name, "error": error})
    # Restore what BackupAndRestore will restore (latest, else the previous
    # one), to start the data at the restored step.
    model = _build(keras, kbm, args.optimizer)
    start = 0
    latest = backup / "latest.weights.h5"
    if latest.exists():
        if _try_load(model, latest) is not None:
            previous = backup / "latest.weights.h5.bkp"
            # BackupAndRestore falls back on an OSError only; make the
            # fallback explicit for any error.
            shutil.copy(previous, latest)
            meta = backup / "training_metadata.json"
            if (backup / "training_metadata.json.bkp").exists():
                shutil.copy(backup / "training_metadata.json.bkp", meta)
            if _try_load(model, latest) is not None:
                raise RuntimeError("no checkpoint loads")
        start = int(model.optimizer.iterations.numpy())
    seeds = _seed_states(model)
    initial = [s.numpy() for s in seeds]

    x, y, order = _data(tf, args.epochs)
    ds = (
        tf.data.Dataset.from_tensor_slices(order[start:total])
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
        .prefetch(2)
    )

    if args.keras_callback:
        # Keras's own callback, with its epoch counter set at each epoch's
        # start (Keras 3.15 records epoch 0 until a resumed epoch ends).
        class Backup(keras.callbacks.BackupAndRestore):
            def on_epoch_begin(self, epoch, logs=None):
                self._current_epoch = epoch

    else:
        # Atomic writes, the same epoch fix, fallback on any load error.
        Backup = kbm.callbacks.BackupAndRestore

    class StepSeeds(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            for var, init in zip(seeds, initial):
                var.assign(init + [0, step * SEED_STRIDE])

    class Progress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.file = open(work / "progress", "w")

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            self.file.seek(0)
            self.file.write(f"{step:12d}\n")
            self.file.flush()
            if step >= total:
                self.model.stop_training = True

    callbacks = [
        Backup(
            str(backup),
            save_freq=SAVE_FREQ,
            double_checkpoint=True,
            delete_checkpoint=False,
        ),
        StepSeeds(),
        Progress(),
    ]
    with open(log, "a") as f:
        f.write(
            json.dumps(
                {
                    "event": "start",
                    "pid": os.getpid(),
                    "start_step": start,
                    "setup_s": round(time.time() - started, 2),
                    "checked": checked,
                }
            )
            + "\n"
        )
    history = model.fit(
        ds,
        epochs=args.epochs,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=callbacks,
        verbose=0,
    )
    steps = int(model.optimizer.iterations.numpy())
    if steps != total:
        raise RuntimeError(f"trained to step {steps}, expected {total}")
    model.save_weights(str(work / "final.weights.h5"))
    losses = history.history.get("loss", [])
    with open(log, "a") as f:
        f.write(
            json.dumps(
                {
                    "event": "done",
                    "pid": os.getpid(),
                    "steps": steps,
                    "last_loss": float(losses[-1]) if losses else None,
                    "seconds": round(time.time() - started, 2),
                }
            )
            + "\n"
        )


def child_check(args):
    """Loads every checkpoint file given; prints one JSON line per file."""
    _, keras, kbm = _child_setup()
    model = _build(keras, kbm, args.optimizer)
    for path in args.check:
        print(json.dumps({"file": path, "error": _try_load(model, path)}))


# -------------------------------------------------------- the supervisor ----


def _child_cmd(args, *extra):
    return [
        "nice",
        "-n",
        str(args.nice),
        sys.executable,
        os.path.abspath(__file__),
        "--optimizer",
        args.optimizer,
        *(["--keras-callback"] if args.keras_callback else []),
        *extra,
    ]


def _child_env():
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="3",
        OMP_NUM_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def _events(work):
    path = Path(work) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _progress(work):
    try:
        return int((Path(work) / "progress").read_text().strip() or 0)
    except (OSError, ValueError):
        return None


def _wait_for_start(proc, work, count, timeout):
    """Waits until the child logs its start (True) or exits (False)."""
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            return False
        if len(_events(work)) > count:
            return True
        time.sleep(0.2)
    return False


def run_interrupted(args, work, total, setup, deadline):
    """Runs the child, killing it at random, until it finishes.

    Each start is killed with probability STARTUP_KILLS during its start-up
    (imports, build, checks, restore: a uniform time in 20-90% of the
    measured start-up), else a uniform TRAIN_KILL_S seconds after it
    logged its start (training, checkpoint writes), until `deadline`;
    after that it runs to the end.
    """
    rng = random.Random(args.seed)
    kills = {"start-up": 0, "training": 0}
    trained = 0  # steps run by all processes, replays included
    while True:
        before = len(_events(work))
        proc = subprocess.Popen(
            _child_cmd(
                args,
                "--train",
                "--workdir",
                str(work),
                "--epochs",
                str(args.epochs),
            ),
            env=_child_env(),
            stdout=subprocess.DEVNULL,
            stderr=open(Path(work) / "child.stderr", "a"),
        )
        phase = None
        if time.time() < deadline:
            if rng.random() < STARTUP_KILLS:
                phase = "start-up"
                try:
                    proc.wait(timeout=rng.uniform(0.2, 0.9) * setup)
                except subprocess.TimeoutExpired:
                    pass
            elif _wait_for_start(proc, work, before, 20 * setup + 600):
                phase = "training"
                try:
                    proc.wait(timeout=rng.uniform(*TRAIN_KILL_S))
                except subprocess.TimeoutExpired:
                    pass
        if phase is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            events = _events(work)
            if events and events[-1]["event"] == "done":
                # It finished (and was exiting) when the kill came.
                trained += total - events[-2]["start_step"]
                return kills, trained
            kills[phase] += 1
            step = _progress(work) if len(events) > before else None
            if step is not None:
                trained += max(0, step - events[-1]["start_step"])
            print(
                f"[soak] kill {sum(kills.values())} during {phase}, at step "
                f"{step} / {total}",
                flush=True,
            )
            continue
        rc = proc.wait()
        if rc != 0:
            tail = (Path(work) / "child.stderr").read_text()[-3000:]
            raise RuntimeError(f"training process failed ({rc}):\n{tail}")
        trained += total - _events(work)[-2]["start_step"]
        return kills, trained


def run_reference(args, work):
    subprocess.run(
        _child_cmd(
            args,
            "--train",
            "--workdir",
            str(work),
            "--epochs",
            str(args.epochs),
        ),
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(Path(work) / "child.stderr", "a"),
        check=True,
    )


def compare(a, b):
    """Max |a - b| over every array in two .weights.h5 files."""
    import h5py
    import numpy as np

    arrays = {}

    def collect(store, name, obj):
        if isinstance(obj, h5py.Dataset):
            store[name] = obj[()]

    with h5py.File(a) as fa, h5py.File(b) as fb:
        wa, wb = {}, {}
        fa.visititems(lambda n, o: collect(wa, n, o))
        fb.visititems(lambda n, o: collect(wb, n, o))
    if wa.keys() != wb.keys():
        raise RuntimeError(f"different arrays: {sorted(wa)} vs {sorted(wb)}")
    max_diff = 0.0
    differ = 0
    for name in wa:
        arrays[name] = wa[name].size
        if wa[name].tobytes() != wb[name].tobytes():
            differ += 1
        d = np.abs(
            wa[name].astype(np.float64) - wb[name].astype(np.float64)
        ).max(initial=0.0)
        max_diff = max(max_diff, float(d))
    return {
        "arrays": len(wa),
        "values": int(sum(arrays.values())),
        "arrays_not_bitwise_equal": differ,
        "max_abs_diff": max_diff,
    }


def check_left_behind(args, works):
    paths = [
        str(Path(w) / "backup" / name)
        for w in works
        for name in CHECKPOINT_FILES
        if (Path(w) / "backup" / name).exists()
    ]
    out = subprocess.run(
        _child_cmd(args, "--check", *paths),
        env=_child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        json.loads(line) for line in out.splitlines() if line.startswith("{")
    ]


def _command():
    """This run's command line (without --out and --keep)."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out=") and a != "--keep":
            argv.append(a)
    line = " ".join(["python benchmarks/soak.py", *argv])
    return COMMAND if line == "python benchmarks/soak.py" else line


def supervise(args):
    t0 = time.time()
    budget = args.minutes * 60
    root = Path(tempfile.mkdtemp(prefix="kbm-soak-"))
    print(f"[soak] working in {root}", flush=True)
    # Calibration: two epochs with everything the real runs do.
    calibration = root / "calibration"
    calibration.mkdir()
    t = time.time()
    subprocess.run(
        _child_cmd(
            args, "--train", "--workdir", str(calibration), "--epochs", "2"
        ),
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(calibration / "child.stderr", "a"),
        check=True,
    )
    wall = time.time() - t
    start, done = _events(calibration)
    fit_s = done["seconds"] - start["setup_s"]
    setup = wall - fit_s
    step_s = fit_s / (2 * STEPS_PER_EPOCH)
    # Interrupted run: per training-phase kill, `train` seconds of
    # training, minus half a save interval replayed, cost a start-up; one
    # start-up kill per 1 / STARTUP_KILLS - 1 of those costs ~0.55 start-up.
    train = sum(TRAIN_KILL_S) / 2
    useful = max(1.0, train - SAVE_FREQ * step_s / 2)
    cost = setup + train + STARTUP_KILLS / (1 - STARTUP_KILLS) * 0.55 * setup
    remaining = budget - (time.time() - t0) - 2 * setup
    if args.epochs is None:
        steps = remaining / (step_s * (cost / useful + 1))
        args.epochs = max(2, int(steps // STEPS_PER_EPOCH))
    total = args.epochs * STEPS_PER_EPOCH
    print(
        f"[soak] start-up {setup:.1f} s, {step_s * 1e3:.0f} ms/step: "
        f"{args.epochs} epochs x {STEPS_PER_EPOCH} steps = {total} steps",
        flush=True,
    )

    interrupted = root / "interrupted"
    reference = root / "reference"
    interrupted.mkdir()
    reference.mkdir()
    t1 = time.time()
    # Kills stop at the point where the rest must go to the finish and the
    # uninterrupted run.
    kill_deadline = t1 + (remaining - total * step_s) * 0.9
    kills, trained = run_interrupted(
        args, interrupted, total, setup, kill_deadline
    )
    t_interrupted = time.time() - t1
    print(f"[soak] interrupted run done: kills {kills}", flush=True)
    t2 = time.time()
    run_reference(args, reference)
    t_reference = time.time() - t2
    print("[soak] uninterrupted run done", flush=True)

    diff = compare(
        interrupted / "final.weights.h5", reference / "final.weights.h5"
    )
    events = _events(interrupted)
    starts = [e for e in events if e["event"] == "start"]
    found = [c for e in starts for c in e["checked"]]
    left = check_left_behind(args, [interrupted, reference])
    corrupt = [c for c in found + left if c["error"]]
    done = [e for e in events if e["event"] == "done"][-1]
    minutes = (time.time() - t0) / 60
    equal = diff["arrays_not_bitwise_equal"] == 0
    result = {
        "topic": "soak_keras" if args.keras_callback else "soak",
        "title": (
            "Soak with Keras's own BackupAndRestore (writes in place)"
            if args.keras_callback
            else "Soak: training killed at random points and resumed "
            "(kbm.callbacks.BackupAndRestore)"
        ),
        "command": _command(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "machine": _machine.describe(system=True),
        "columns": [
            "optimizer",
            "minutes",
            "epochs x steps",
            "kills (start-up / training)",
            "restarts",
            "steps run (with replays)",
            "checkpoints checked",
            "corrupt",
            "max |weight diff|",
            "bitwise equal",
        ],
        "rows": [
            [
                args.optimizer,
                round(minutes, 1),
                f"{args.epochs} x {STEPS_PER_EPOCH}",
                f"{kills['start-up']} / {kills['training']}",
                len(starts) - 1,
                trained,
                len(found) + len(left),
                len(corrupt),
                diff["max_abs_diff"],
                "yes" if equal else "no",
            ]
        ],
        "notes": [
            f"Model: TokenAndPositionEmbedding({VOCAB}, {SEQ}, {DIM}), "
            f"{LAYERS} x TransformerEncoder({FFN}, {HEADS} heads, dropout "
            f"{DROPOUT}), FusedDense({CLASSES}); batch {BATCH}, kbm "
            f"{args.optimizer}; "
            + (
                "keras.callbacks.BackupAndRestore"
                if args.keras_callback
                else "kbm.callbacks.BackupAndRestore"
            )
            + f"(save_freq={SAVE_FREQ}, double_checkpoint=True); one "
            "thread, op determinism, nice "
            f"{args.nice}; Keras 3 line only.",
            f"SIGKILL: {STARTUP_KILLS:.0%} of starts at a uniform random "
            "time in 20-90% of the start-up (imports, build, checkpoint "
            f"checks, restore; {setup:.0f} s), the others a uniform "
            f"{TRAIN_KILL_S[0]:.0f}-{TRAIN_KILL_S[1]:.0f} s after training "
            f"began ({step_s * 1e3:.0f} ms/step); restarts counts the "
            "processes that got as far as training. Interrupted run "
            f"{t_interrupted / 60:.1f} min, uninterrupted "
            f"{t_reference / 60:.1f} min.",
            f"Compared {diff['arrays']} arrays ({diff['values']} values: "
            "weights and optimizer state); "
            f"{diff['arrays_not_bitwise_equal']} not bitwise equal. Last "
            f"epoch loss {done['last_loss']:.4f}.",
            "Checked: each restarted process loaded the checkpoint files "
            "(both h5 and metadata) the killed one left before restoring; "
            "at the end every backup file on disk was loaded into a fresh "
            "model.",
            "Keras 3.15's BackupAndRestore restores weights, optimizer state "
            "and the epoch, not the batch (the epoch is replayed from its "
            "start) nor dropout's random state; the data is indexed by the "
            "global step and dropout seeded from it, so replays do not "
            "change the result (see benchmarks/soak.py).",
        ]
        + (
            [
                f"{len(corrupt)} corrupt files, each found by a restarted "
                "process, which then restored the previous checkpoint "
                "(.bkp)."
            ]
            if corrupt and not [c for c in left if c["error"]]
            else []
        )
        + [
            f"Corrupt ({n}x): {what}"
            for what, n in collections.Counter(
                f"{Path(c['file']).name}: {c['error']}" for c in corrupt
            ).items()
        ],
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["rows"][0]), flush=True)
    print(f"[soak] wrote {out_path}", flush=True)
    if not args.keep:
        shutil.rmtree(root)
    return 0 if equal and not corrupt else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument(
        "--optimizer", choices=("adamw", "lamb"), default="adamw"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: what fits in --minutes",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the kill times"
    )
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument(
        "--keras-callback",
        action="store_true",
        help="Keras's BackupAndRestore (writes in place) instead of "
        "kbm.callbacks.BackupAndRestore; results go to "
        "reliability_soak_keras.json",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory"
    )
    # Internal: the child process's modes.
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.out is None:
        args.out = str(RESULT_KERAS if args.keras_callback else RESULT)
    if args.train:
        return child_train(args)
    if args.check:
        return child_check(args)
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
