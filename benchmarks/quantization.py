"""Benchmark: int8 W8A8 and int8/int4 weight-only matmuls, CPU.

Table "W8A8 + bias + GELU": `gelu(x @ W + b)` at BERT shapes (rows 128,
512, 2048 of x; K x N = 384 x 1536, 768 x 3072, 3072 x 768), each variant
in a `tf.function` (graph mode), timed interleaved round-robin in one
process (see `_harness.bench`):

* `tf.matmul f32`: the float32 matmul alone (TF's default CPU settings);
* `tf.matmul f32 + bias + gelu`: the float32 layer, composite epilogue;
* `keras int8 Dense`: `keras.layers.Dense(N, activation="gelu")` after
  `layer.quantize("int8")` (Keras 3 only; its int8 matmul is TF's
  `BatchMatMulV3`);
* `keras int8 Dense + kbm accelerate`: the same Keras int8 layer after
  `kbm.quantization.accelerate(layer)` (Keras 3 only): its int8 matmul
  swapped for kbm's kernel, Keras's variables and numerics kept;
* `kbm W8A8`: `kbm.ops.quantized_matmul(x, packed, scale, b, "gelu",
  use_fused_kernel=True)`: activations quantized per row inside the kernel,
  exact int32 sums, the epilogue fused.

Peers measured afterwards, each in its own process (not interleaved with
kbm: their "kbm speed-up" divides their median by kbm's median above):

* `tf.matmul f32, oneDNN on` / `oneDNN off`: the float32 matmul alone with
  `TF_ENABLE_ONEDNN_OPTS=1` and `=0` (TF's default depends on the CPU: on
  with AVX-512 VNNI or AMX; the run records which). The float32 target
  uses the fastest float32 matmul measured (in-process default or either
  setting);
* `ORT DynamicQuantizeMatMul`: ONNX Runtime's `com.microsoft`
  `DynamicQuantizeMatMul` (uint8 activations quantized per tensor, int8
  per-channel weights, bias) + `Gelu`, 2 intra-op threads
  (benchmarks/_quantization_ort.py), in a venv under build/ort-venv that
  this script creates on first use (`pip install onnxruntime onnx numpy`);
  skipped with a note when that fails.

GOPS counts 2 * M * K * N operations (multiply-adds twice, int8 or
float); "% of FMA peak" divides by the float32 FMA peak measured in the
same run (benchmarks/_fma_peak.c: independent FMA chains, AVX2 and, where
the CPU has it, AVX-512, one thread per core); "kbm speed-up" is the median
of the per-round ratios (variant time / kbm time).

Table "weight-only": `x @ W + b` at rows 1, 4, 8 and 16 for the same K x N
(which fit this machine's 32 MB L3 cache in float32), and at rows 1 and 8
for K x N = 4096 x 8192 (128 MB in float32, read from DRAM):
`tf.matmul f32` (+ bias), `kbm int8` (per-channel scales) and `kbm int4`
(group 128) of `kbm.ops.weight_only_matmul`, 8 ops per tf.function call
(8 different x, the same weights, outputs summed: a model step runs its
layers in one call, whose own cost, measured in the same run and given in
a note, is then shared), each sample 10 calls back to back (as a model's
consecutive steps run). "weight GB/s" is the packed weight bytes
(float32: 4 per weight) read per second.

Table "MiniLM classifier": end to end, the classifier of
`python -m keras_bigmodels.demo` (`kbm.models.BertEncoder` from the packaged
all-MiniLM-L6-v2 checkpoint, masked mean pooling, a 2-class Dense head with
random weights: accuracy is the demo's business) on token ids of
128 tokens (32 with `--quick`; half to all of them real, the rest
padding) at batch 1 and 32: float32 against copies quantized by
`kbm.quantization.quantize(model, mode)` for each mode, each called in a
`tf.function`, interleaved; sequences/s and the median per-round ratio to
float32.

Outputs are not checked for agreement (quantized and float results differ
by the quantization error); the kernels are checked against their
references in tests/ops/quantization_test.py.

Run alone with `python benchmarks/quantization.py [--quick] [--out PATH]
[--skip onednn,ort,e2e]` (`--quick`: one shape, 3 rounds, sequences of 32
tokens; a few minutes); `benchmarks/run_all.py` runs it once per
allocator setting, and `python benchmarks/report.py` renders the JSON into
BENCHMARKS.md.
"""

import argparse
import json
import os
import subprocess
import sys

import _harness
import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

FAMILY = "quantization"
ROWS = [128, 512, 2048]
QUICK_ROWS = [128]
KN = [(384, 1536), (768, 3072), (3072, 768)]
QUICK_KN = [(384, 1536)]
WO_ROWS = [1, 4, 8, 16]
QUICK_WO_ROWS = [1, 8]
# A weight matrix past the last-level cache (128 MB in float32): the regime
# (LLM-sized layers) where weight-only kernels are bound by DRAM reads.
WO_LARGE_KN = [(4096, 8192)]
WO_LARGE_ROWS = [1, 8]
# Weight-only ops per tf.function call: a model's decoding step runs all its
# layers in one call, so the call's own cost (about 0.1 ms here, as much as
# a small matmul) is shared; each op gets its own input (no two alike, so
# the graph optimizer cannot merge them) and the same weights.
WO_CHAIN = 8
# Calls per timed sample (`_harness.bench`'s `repeat`): one call lasts well
# under a millisecond.
WO_REPEAT = 10
GROUP = 128
KBM = "kbm W8A8"
F32 = "tf.matmul f32"
F32_ACT = "tf.matmul f32 + bias + gelu"
KERAS_INT8 = "keras int8 Dense"
ACCEL = "keras int8 Dense + kbm accelerate"
ONEDNN = {"1": "tf.matmul f32, oneDNN on", "0": "tf.matmul f32, oneDNN off"}
ORT = "ORT DynamicQuantizeMatMul"
ORT_VENV = _harness.REPO_ROOT / "build" / "ort-venv"
ORT_THREADS = 2
PEER_ROUNDS = 5  # At most, for the float32 matmul peers.
ORT_PACKAGES = ["onnxruntime", "onnx", "numpy"]
SKIPPABLE = ("onednn", "ort", "e2e")
E2E_LENGTH, QUICK_E2E_LENGTH = 128, 32
E2E_BATCHES = [1, 32]
E2E_ROUNDS = 5  # At most; the batch-32 calls take seconds each.
E2E_VARIANTS = ("float32", "int8", "int8_weight_only", "int4_weight_only")
TARGETS = {
    "f32": 1.3,
    "keras": 4.0,
    "int8_wo": 2.5,
    "int4_wo": 3.5,
    "e2e_int8": 1.3,
}

W8A8_COLUMNS = [
    _harness.Column("shape", "M x K x N", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("gops", "GOPS", "gflops"),
    _harness.Column("pct_peak", "% of FMA peak", "pct"),
    _harness.Column("kbm_speedup", "kbm speed-up", "ratio"),
]
E2E_COLUMNS = [
    _harness.Column("batch", "batch", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("seq_per_s", "sequences/s", "gflops"),
    _harness.Column("speedup", "throughput vs float32", "ratio"),
]
WO_COLUMNS = [
    _harness.Column("shape", "M x K x N", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("gbps", "weight GB/s", "gbps"),
    _harness.Column("gops", "GOPS", "gflops"),
    _harness.Column("speedup", "speed-up vs f32", "ratio"),
]


def fma_peak(quick):
    """float32 FMA GFLOP/s on every core (`_harness.fma_peak`)."""
    threads = os.cpu_count() or 1
    runs = 3 if quick else 5
    return {
        "gflops": _harness.fma_peak(threads, runs=runs),
        "runs": runs,
        "threads": threads,
    }


def _problem(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.standard_normal((m, k)), tf.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, tf.constant(w), tf.constant(b)


def _keras_int8_dense(w, b):
    if IS_LEGACY_KERAS:
        return None
    layer = keras.layers.Dense(w.shape[1], activation="gelu")
    layer.build((None, w.shape[0]))
    layer.set_weights([w.numpy(), b.numpy()])
    layer.quantize("int8")
    return layer


def _accelerated_dense(w, b):
    layer = _keras_int8_dense(w, b)
    if layer is None:
        return None
    report = kbm.quantization.accelerate(layer)
    if report["skipped"]:
        raise RuntimeError(f"accelerate skipped the layer: {report}")
    return layer


def _tf_matmul_worker(spec):
    """Times `tf.matmul` float32 in this process (a subprocess of the main
    run, with its own TF_ENABLE_ONEDNN_OPTS); prints one JSON line."""
    from tensorflow.python.util import _pywrap_util_port

    out = {"onednn": bool(_pywrap_util_port.IsMklEnabled())}
    for m, k, n in spec["shapes"]:
        x, w, _ = _problem(m, k, n)
        fn = tf.function(lambda x, w=w: tf.matmul(x, w))
        meas = _harness.bench(
            {"f": lambda fn=fn, x=x: fn(x)}, spec["rounds"], spec["warmup"]
        )["f"]
        out[f"{m} x {k} x {n}"] = {"times_ms": meas.times_ms}
    print(json.dumps(out))


def _run_json(cmd, env=None, timeout=1200):
    """Runs a worker; (its last stdout line as JSON, None) or (None, why)."""
    try:
        proc = subprocess.run(
            cmd,
            env=dict(os.environ, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def ensure_ort_venv():
    """(python of build/ort-venv, None), creating it on first use, or
    (None, why not)."""
    python = ORT_VENV / "bin" / "python"
    probe = [str(python), "-c", "import onnx, onnxruntime"]

    def imports():
        return subprocess.run(probe, capture_output=True).returncode == 0

    if python.exists() and imports():
        return python, None
    _harness.progress(
        FAMILY, f"creating {ORT_VENV} ({', '.join(ORT_PACKAGES)})"
    )
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(ORT_VENV)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *ORT_PACKAGES],
            check=True,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        detail = str(detail).strip().splitlines()[-1:] or [type(e).__name__]
        return None, f"pip install {' '.join(ORT_PACKAGES)} failed: {detail[0]}"
    if not imports():
        return None, "onnxruntime installed but does not import"
    return python, None


def _peer_times(cases, results, skip):
    """{shape: {variant: times_ms}} of the out-of-process peers, and notes."""
    spec = {
        "shapes": [list(c) for c in cases],
        "rounds": results.rounds,
        "warmup": results.warmup,
        "threads": ORT_THREADS,
    }
    times, notes = {}, []
    if "onednn" not in skip:
        # Fewer rounds: oneDNN off is slow at 2048 rows.
        tf_spec = dict(spec, rounds=min(spec["rounds"], PEER_ROUNDS))
        for value, name in ONEDNN.items():
            _harness.progress(FAMILY, f"peer: {name} (own process)")
            out, why = _run_json(
                [
                    sys.executable,
                    __file__,
                    "--tf-matmul-worker",
                    json.dumps(tf_spec),
                ],
                env={
                    "TF_ENABLE_ONEDNN_OPTS": value,
                    "TF_CPP_MIN_LOG_LEVEL": "3",
                },
            )
            if out is None:
                notes.append(f"{name}: not measured ({why}).")
                continue
            if out.pop("onednn") != (value == "1"):
                notes.append(f"{name}: TF did not honour the setting.")
            for shape, entry in out.items():
                times.setdefault(shape, {})[name] = entry["times_ms"]
    if "ort" not in skip:
        python, why = ensure_ort_venv()
        if python is not None:
            _harness.progress(FAMILY, f"peer: {ORT} ({ORT_THREADS} threads)")
            worker = str(_harness.BENCH_DIR / "_quantization_ort.py")
            out, why = _run_json([str(python), worker, json.dumps(spec)])
        if python is None or out is None:
            notes.append(f"{ORT}: not measured ({why}).")
        else:
            versions = out.pop("versions")
            notes.append(
                f"{ORT}: onnxruntime {versions['onnxruntime']}, "
                f"{ORT_THREADS} intra-op threads, in its own process."
            )
            for shape, entry in out.items():
                times.setdefault(shape, {})[ORT] = entry["times_ms"]
    return times, notes


def run_w8a8(results, rows, shapes, peak, skip=()):
    table = results.table(
        "W8A8 + bias + GELU",
        W8A8_COLUMNS,
        description=(
            "gelu(x @ W + b), x float32 [M, K]; GOPS = 2 M K N / time; "
            "kbm speed-up = variant time / kbm time (median of per-round "
            "ratios, interleaved in one process); the oneDNN on/off and ORT "
            "rows ran afterwards in their own processes (ratio of medians; "
            f"ORT on {ORT_THREADS} threads). Targets: kbm >= "
            f"{TARGETS['f32']}x the fastest tf.matmul f32 row and >= "
            f"{TARGETS['keras']}x keras int8 Dense."
        ),
    )
    by_shape, kbm_ms = {}, {}
    with table:
        for k, n in shapes:
            for m in rows:
                x, w, b = _problem(m, k, n)
                q, s = kbm.ops.quantize_kernel(w)
                packed = kbm.ops.pack_kernel(q)
                fns = {
                    F32: tf.function(lambda x, w=w: tf.matmul(x, w)),
                    F32_ACT: tf.function(
                        lambda x, w=w, b=b: tf.nn.gelu(tf.matmul(x, w) + b)
                    ),
                    KBM: tf.function(
                        lambda x, p=packed, s=s, b=b: kbm.ops.quantized_matmul(
                            x, p, s, b, "gelu", use_fused_kernel=True
                        )
                    ),
                }
                layer = _keras_int8_dense(w, b)
                if layer is not None:
                    fns[KERAS_INT8] = tf.function(lambda x, lyr=layer: lyr(x))
                    accel = _accelerated_dense(w, b)
                    fns[ACCEL] = tf.function(lambda x, lyr=accel: lyr(x))
                calls = {name: (lambda f=f: f(x)) for name, f in fns.items()}
                _harness.progress(FAMILY, f"W8A8 {m}x{k}x{n}")
                measured = results.bench(calls, reference=KBM)
                shape = f"{m} x {k} x {n}"
                by_shape[shape] = [
                    _w8a8_row(shape, name, meas.median_ms, meas.ratio, meas)
                    for name, meas in measured.items()
                ]
                kbm_ms[shape] = measured[KBM].median_ms
        cases = [(m, k, n) for k, n in shapes for m in rows]
        peers, notes = _peer_times(cases, results, skip)
        for shape, variants in peers.items():
            for name, times in variants.items():
                median = float(np.median(times))
                ratio = median / kbm_ms[shape]
                by_shape[shape].append(
                    _w8a8_row(shape, name, median, ratio, times_ms=times)
                )
    for shape_rows in by_shape.values():
        for row in shape_rows:
            ops = 2 * np.prod([int(v) for v in row["shape"].split(" x ")])
            row["gops"] = float(ops / (row["ms"] * 1e-3) / 1e9)
            row["pct_peak"] = (
                100.0 * row["gops"] / peak["gflops"] if peak else None
            )
            table.rows.append(row)
    table.notes.extend(notes)
    _target_notes(table)


def _w8a8_row(shape, name, median_ms, ratio, meas=None, times_ms=None):
    return {
        "shape": shape,
        "variant": name,
        "kbm": name in (KBM, ACCEL),
        "ms": median_ms,
        "kbm_speedup": None if name == KBM else ratio,
        "times_ms": meas.times_ms if meas is not None else times_ms,
    }


def _target_notes(table):
    by_shape = {}
    for row in table.rows:
        by_shape.setdefault(row["shape"], {})[row["variant"]] = row
    floats = (F32, F32_ACT, *ONEDNN.values())
    f32 = [
        min(r[name]["kbm_speedup"] for name in floats if name in r)
        for r in by_shape.values()
    ]
    table.notes.append(
        "kbm W8A8 vs the fastest float32 variant (in-process default, "
        f"+ bias + gelu, oneDNN on/off): {min(f32):.2f}x to "
        f"{max(f32):.2f}x (target {TARGETS['f32']}x)."
    )
    accel = [
        _harness.median_ratio(r[KERAS_INT8]["times_ms"], r[ACCEL]["times_ms"])
        for r in by_shape.values()
        if ACCEL in r
    ]
    if accel:
        table.notes.append(
            "kbm.quantization.accelerate on Keras's int8 Dense: "
            f"{min(accel):.2f}x to {max(accel):.2f}x faster than Keras's "
            "own int8 path (median of per-round ratios)."
        )
    ort = [r[ORT]["kbm_speedup"] for r in by_shape.values() if ORT in r]
    if ort:
        table.notes.append(
            f"kbm W8A8 vs {ORT}: {min(ort):.2f}x to {max(ort):.2f}x "
            "(< 1: ORT faster)."
        )
    keras_ = [
        r[KERAS_INT8]["kbm_speedup"]
        for r in by_shape.values()
        if KERAS_INT8 in r
    ]
    if keras_:
        table.notes.append(
            f"kbm W8A8 vs keras int8 Dense: {min(keras_):.2f}x to "
            f"{max(keras_):.2f}x (target {TARGETS['keras']}x)."
        )


def run_weight_only(results, rows, shapes, peak, large=()):
    table = results.table(
        "weight-only",
        WO_COLUMNS,
        description=(
            "x @ W + b, x float32 [M, K]; int8 per-channel scales, int4 "
            f"group {GROUP}. Each tf.function call runs {WO_CHAIN} such "
            "ops (as a model step runs its layers in one call) on "
            f"{WO_CHAIN} different x and the same weights, and sums their "
            f"outputs; a sample times {WO_REPEAT} calls back to back; "
            f"median ms = call time / {WO_CHAIN}. speed-up = f32 "
            "time / variant time (median of per-round ratios). Targets at "
            f"M <= 8: int8 >= {TARGETS['int8_wo']}x, int4 >= "
            f"{TARGETS['int4_wo']}x."
        ),
    )
    cases = [(k, n, m) for k, n in shapes for m in rows] + list(large)
    with table:
        for k, n, m in cases:
            x, w, b = _problem(m, k, n, seed=1)
            xs = [x * (1.0 + i / 64.0) for i in range(WO_CHAIN)]
            q8, s8 = kbm.ops.quantize_kernel(w)
            q4, s4 = kbm.ops.quantize_kernel(w, bits=4, group_size=GROUP)
            p8 = kbm.ops.pack_kernel(q8)
            p4 = kbm.ops.pack_kernel(q4, bits=4)
            ops = {
                "tf.matmul f32": lambda x, w=w, b=b: tf.matmul(x, w) + b,
                "kbm int8": lambda x, p=p8, s=s8, b=b: (
                    kbm.ops.weight_only_matmul(
                        x, p, s, bias=b, use_fused_kernel=True
                    )
                ),
                "kbm int4": lambda x, p=p4, s=s4, b=b: (
                    kbm.ops.weight_only_matmul(
                        x, p, s, GROUP, 4, b, use_fused_kernel=True
                    )
                ),
            }
            # The inputs are captured, not arguments: passing 8 tensors
            # per call costs more than the call itself.
            fns = {
                name: tf.function(lambda op=op: tf.add_n([op(x) for x in xs]))
                for name, op in ops.items()
            }
            nbytes = {
                "tf.matmul f32": 4 * k * n,
                "kbm int8": k * n + 4 * n,
                "kbm int4": k * n // 2 + 4 * n * k // GROUP,
            }
            calls = {name: (lambda f=f: f()) for name, f in fns.items()}
            _harness.progress(FAMILY, f"weight-only {m}x{k}x{n}")
            measured = results.bench(
                calls, reference="tf.matmul f32", repeat=WO_REPEAT
            )
            for name, meas in measured.items():
                ms = meas.median_ms / WO_CHAIN
                table.rows.append(
                    {
                        "shape": f"{m} x {k} x {n}",
                        "variant": name,
                        "kbm": name != "tf.matmul f32",
                        "ms": ms,
                        "gbps": _harness.gbps(nbytes[name], ms),
                        "gops": 2 * m * k * n / (ms * 1e-3) / 1e9,
                        "speedup": 1.0 / meas.ratio,
                        "times_ms": meas.times_ms,
                    }
                )
    x = tf.ones([1, 768])
    empty = tf.function(lambda: x * 2.0)
    call = results.bench(
        {"call": lambda: empty()}, reference="call", repeat=WO_REPEAT
    )
    table.notes.append(
        f"One tf.function call of a single trivial op (x * 2) takes "
        f"{call['call'].median_ms:.3f} ms here: with one matmul per call, "
        "that cost would be added to every row above."
    )
    # At 8 rows the weight-only kernels do float32's multiply-adds: the
    # share of the FMA peak each target would need, from float32's GOPS.
    if peak:
        for row in table.rows:
            if row["variant"] == F32 and row["shape"].startswith("8 x "):
                need = {
                    bits: 100.0 * TARGETS[key] * row["gops"] / peak["gflops"]
                    for bits, key in (("int8", "int8_wo"), ("int4", "int4_wo"))
                }
                table.notes.append(
                    f"{row['shape']}: float32 at {row['gops']:.0f} GOPS; "
                    f"the int8 and int4 targets would need "
                    f"{need['int8']:.0f} % and {need['int4']:.0f} % of the "
                    "FMA peak (the weight-only kernels do the same float "
                    "multiply-adds)."
                )
    large_shapes = {f"{m} x {k} x {n}" for k, n, m in large}
    for name in ("kbm int8", "kbm int4"):
        for where, in_large in (("cache-resident", False), ("DRAM", True)):
            small = [
                r["speedup"]
                for r in table.rows
                if r["variant"] == name
                and int(r["shape"].split(" x ")[0]) <= 8
                and (r["shape"] in large_shapes) == in_large
            ]
            if small:
                table.notes.append(
                    f"{name} at M <= 8, {where} weights: {min(small):.2f}x "
                    f"to {max(small):.2f}x float32."
                )


def _token_ids(batch, length, seed=1):
    """Token ids [batch, length]: [CLS], random WordPiece ids, then padding
    (0) after a random length between length / 2 and length."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, length // 2), length + 1, batch)
    ids = rng.integers(1000, 30522, (batch, length)).astype("int32")
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = 101
    return tf.constant(ids)


def run_e2e(results, length, batches):
    from keras_bigmodels.demo import classifier

    table = results.table(
        "MiniLM classifier",
        E2E_COLUMNS,
        description=(
            "The demo's MiniLM-L6 classifier (BertEncoder from the packaged "
            f"checkpoint + mean pooling + 2-class head), {length} tokens per "
            "sequence, inference in a tf.function; quantized copies made by "
            "kbm.quantization.quantize(model, mode) (int4: groups of 128). "
            "throughput vs float32 = float32 time / variant time (median of "
            f"per-round ratios). Target: int8 >= {TARGETS['e2e_int8']}x at "
            "batch 32."
        ),
    )
    checkpoint = kbm.models.minilm_l6_v2_path()
    fns = {}
    for variant in E2E_VARIANTS:
        _harness.progress(FAMILY, f"MiniLM classifier: building {variant}")
        keras.utils.set_random_seed(0)
        encoder = kbm.models.BertEncoder.from_checkpoint(checkpoint)
        model = classifier(encoder, 2, length, f"minilm_{variant}")
        if variant != "float32":
            kbm.quantization.quantize(model, variant)
        fns[variant] = tf.function(lambda ids, m=model: m(ids, training=False))
    rounds = min(results.rounds, E2E_ROUNDS)
    with table:
        for batch in batches:
            ids = _token_ids(batch, length)
            calls = {name: (lambda f=f: f(ids)) for name, f in fns.items()}
            _harness.progress(FAMILY, f"MiniLM classifier, batch {batch}")
            measured = _harness.bench(
                calls, rounds, results.warmup, reference="float32"
            )
            for name, meas in measured.items():
                table.rows.append(
                    {
                        "batch": batch,
                        "variant": name,
                        "kbm": True,
                        "ms": meas.median_ms,
                        "seq_per_s": batch / (meas.median_ms * 1e-3),
                        "speedup": _harness.median_ratio(
                            measured["float32"].times_ms, meas.times_ms
                        ),
                        "times_ms": meas.times_ms,
                    }
                )
    table.notes.append(
        f"{rounds} rounds (fewer than the other tables: batch-32 calls take "
        "seconds)."
    )
    for row in table.rows:
        if row["batch"] == max(batches) and row["variant"] == "int8":
            table.notes.append(
                f"int8 at batch {row['batch']}: {row['speedup']:.2f}x the "
                f"float32 throughput (target {TARGETS['e2e_int8']}x)."
            )


def _add_arguments(parser):
    parser.epilog = __doc__.split("\n\n")[-1]
    parser.add_argument(
        "--skip",
        default="",
        help=(
            "comma-separated parts to leave out: onednn (the float32 "
            "matmul in two extra processes), ort (ONNX Runtime peer; "
            "creates build/ort-venv on first use), e2e (the MiniLM "
            "classifier)"
        ),
    )
    # Internal: the float32 matmul peer, run in a subprocess.
    parser.add_argument("--tf-matmul-worker", help=argparse.SUPPRESS)


def main(argv=None):
    args = _harness.parse_args(__doc__, argv, add_arguments=_add_arguments)
    tf.get_logger().setLevel("ERROR")
    if args.tf_matmul_worker:
        _tf_matmul_worker(json.loads(args.tf_matmul_worker))
        return
    skip = {part for part in args.skip.split(",") if part}
    if skip - set(SKIPPABLE):
        sys.exit(
            f"--skip takes {', '.join(SKIPPABLE)}. Received: {args.skip!r}"
        )
    from tensorflow.python.util import _pywrap_util_port

    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    rows = QUICK_ROWS if args.quick else ROWS
    shapes = QUICK_KN if args.quick else KN
    wo_rows = QUICK_WO_ROWS if args.quick else WO_ROWS
    length = QUICK_E2E_LENGTH if args.quick else E2E_LENGTH
    results.shapes = {
        "W8A8 rows": rows,
        "weight-only rows": wo_rows,
        "K x N": [list(s) for s in shapes],
        "MiniLM sequence length": [length],
        "MiniLM batches": E2E_BATCHES,
    }
    if skip:
        results.shapes["skipped parts"] = sorted(skip)
    _harness.progress(FAMILY, "float32 FMA peak")
    peak = fma_peak(args.quick)
    results.fma_peak = peak
    run_w8a8(results, rows, shapes, peak, skip)
    onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    results.tables[0].notes.append(
        f"TF's default oneDNN setting in this process: {onednn}."
    )
    large = (
        []
        if args.quick
        else [(k, n, m) for k, n in WO_LARGE_KN for m in WO_LARGE_ROWS]
    )
    run_weight_only(results, wo_rows, shapes, peak, large)
    if "e2e" not in skip:
        run_e2e(results, length, E2E_BATCHES)
    if peak:
        results.tables[0].notes.append(
            f"float32 FMA peak in this run: {peak['gflops']:.0f} GFLOP/s "
            f"({peak['threads']} threads, best of {peak['runs']})."
        )
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
