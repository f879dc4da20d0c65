"""Profiles one workload of benchmarks/models.py: top TensorFlow ops by time.

Traces `--steps` calls (after `--warmup` untraced ones) of the MiniLM-L6 or
BERT-base classifier's training step or inference with TensorFlow's
profiler, reads the trace (the XPlane protobuf TensorFlow writes), and sums
the wall time of every TensorFlow op event on the host's op-executor
threads by op type: the ops' self times (TensorFlow's executor runs ops, not
nested calls, on those threads; function-call ops are left out, since
their bodies' ops are listed themselves). Prints a table of the op types
by total time, with their share of the summed op time, their count per
step, and the wall time of the traced steps; `--json` writes the same.

Usage:
    python tools/profile_step.py [--model MiniLM-L6] [--task train]
        [--batch 32] [--kernels on|off] [--json out.json]
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

# Function-call and control ops whose time is their body's time.
CALL_OPS = {
    "PartitionedCall",
    "StatefulPartitionedCall",
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "__inference",
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="MiniLM-L6")
    p.add_argument("--task", choices=("train", "infer"), default="train")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--kernels", choices=("on", "off"), default="on")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def op_times(logdir):
    """{op type: [total seconds, count]} from the XPlane files in logdir."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.defaultdict(lambda: [0.0, 0])
    files = list(Path(logdir).rglob("*.xplane.pb"))
    if not files:
        raise RuntimeError(f"no trace written under {logdir}")
    for path in files:
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {k: v.name for k, v in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    # TensorFlow op events are named "op_name:OpType".
                    # Framework events ("ExecutorState::Process") are not.
                    if ":" not in name or "::" in name:
                        continue
                    op_type = name.rsplit(":", 1)[1]
                    if not op_type or op_type in CALL_OPS:
                        continue
                    if not (op_type[0].isupper() or op_type[0] == "_"):
                        continue
                    totals[op_type][0] += event.duration_ps * 1e-12
                    totals[op_type][1] += 1
    return totals


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.kernels == "off":
        os.environ["KERAS_BIGMODELS_DISABLE_FUSED"] = "1"
    import models  # benchmarks/models.py
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    cfg = models.MODELS[args.model]
    model = models._kbm_model(cfg, args.length, "profiled")
    x, y = models.token_batch(args.batch, args.length)

    def step():
        if args.task == "train":
            return model.train_on_batch(x, y)
        return model.predict_on_batch(x)

    for _ in range(args.warmup):
        step()
    logdir = tempfile.mkdtemp(prefix="kbm-profile-")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - t0) / args.steps
    tf.profiler.experimental.stop()
    totals = op_times(logdir)
    summed = sum(t for t, _ in totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    out = {
        "model": args.model,
        "task": args.task,
        "batch": args.batch,
        "length": args.length,
        "kernels": args.kernels,
        "steps": args.steps,
        "wall_s_per_step": wall,
        "op_s_per_step": summed / args.steps,
        "ops": [
            {
                "op": op,
                "s_per_step": t / args.steps,
                "share": t / summed,
                "count_per_step": n / args.steps,
            }
            for op, (t, n) in rows
        ],
    }
    print(
        f"{args.model} {args.task} batch {args.batch}, kernels {args.kernels}:"
        f" {wall:.3f} s per step (wall), {summed / args.steps:.3f} s of op "
        "time per step summed over threads"
    )
    print(f"{'op type':32s} {'s/step':>8s} {'share':>7s} {'count':>7s}")
    for r in out["ops"][: args.top]:
        print(
            f"{r['op']:32s} {r['s_per_step']:8.3f} {100 * r['share']:6.1f}% "
            f"{r['count_per_step']:7.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
