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
* `kbm W8A8`: `kbm.ops.quantized_matmul(x, packed, scale, b, "gelu",
  use_fused_kernel=True)`: activations quantized per row inside the kernel,
  exact int32 sums, the epilogue fused.

GOPS counts 2 * M * K * N operations (multiply-adds twice, int8 or
float); "% of FMA peak" divides by the float32 FMA peak measured in the
same process (a C loop of independent AVX2 FMAs, one thread per core,
compiled here on the fly); "kbm speed-up" is the median of the per-round
ratios (variant time / kbm time).

Table "weight-only": `x @ W + b` at rows 1, 4, 8 and 16 for the same K x N
(which fit this machine's 32 MB L3 cache in float32), and at rows 1 and 8
for K x N = 4096 x 8192 (128 MB in float32, read from DRAM):
`tf.matmul f32` (+ bias), `kbm int8` (per-channel scales) and `kbm int4`
(group 128) of `kbm.ops.weight_only_matmul`. "weight GB/s" is the packed
weight bytes (float32: 4 per weight) read per second.

Outputs are not checked for agreement (quantized and float results differ
by the quantization error); the kernels are checked against their
references in tests/ops/quantization_test.py.

Run alone with `python benchmarks/quantization.py [--quick] [--out PATH]`;
`benchmarks/run_all.py` runs it once per allocator setting.
"""

import os
import shutil
import subprocess
import tempfile

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
GROUP = 128
KBM = "kbm W8A8"
F32 = "tf.matmul f32"
F32_ACT = "tf.matmul f32 + bias + gelu"
KERAS_INT8 = "keras int8 Dense"
TARGETS = {"f32": 1.3, "keras": 4.0, "int8_wo": 2.5, "int4_wo": 3.5}

W8A8_COLUMNS = [
    _harness.Column("shape", "M x K x N", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("gops", "GOPS", "gflops"),
    _harness.Column("pct_peak", "% of FMA peak", "pct"),
    _harness.Column("kbm_speedup", "kbm speed-up", "ratio"),
]
WO_COLUMNS = [
    _harness.Column("shape", "M x K x N", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("gbps", "weight GB/s", "gbps"),
    _harness.Column("gops", "GOPS", "gflops"),
    _harness.Column("speedup", "speed-up vs f32", "ratio"),
]

FMA_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long iters;
static void* run(void* out) {
  __m256 a[10], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps((float)i);
  for (long n = 0; n < iters; ++n) {
    for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  __m256 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_storeu_ps((float*)out, s);
  return 0;
}
int main(int argc, char** argv) {
  int threads = atoi(argv[1]);
  iters = atol(argv[2]);
  pthread_t t[64];
  float out[64][8];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < threads; ++i) pthread_create(&t[i], 0, run, out[i]);
  for (int i = 0; i < threads; ++i) pthread_join(t[i], 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%f\n", threads * (double)iters * 10 * 16 / s / 1e9);
  return out[0][0] == 12345.f;
}
"""


def fma_peak(quick):
    """float32 FMA GFLOP/s: best of 3 runs of the C loop on every core."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "fma.c")
        exe = os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write(FMA_SOURCE)
        subprocess.run(
            [cc, "-O3", "-mavx2", "-mfma", src, "-o", exe, "-lpthread"],
            check=True,
        )
        threads = os.cpu_count() or 1
        iters = str(20_000_000 if quick else 100_000_000)
        runs = [
            float(
                subprocess.run(
                    [exe, str(threads), iters],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for _ in range(3)
        ]
    return {"gflops": max(runs), "runs": runs, "threads": threads}


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


def run_w8a8(results, rows, shapes, peak):
    table = results.table(
        "W8A8 + bias + GELU",
        W8A8_COLUMNS,
        description=(
            "gelu(x @ W + b), x float32 [M, K]; GOPS = 2 M K N / time; "
            "kbm speed-up = variant time / kbm time (median of per-round "
            "ratios). Targets: kbm >= "
            f"{TARGETS['f32']}x tf.matmul f32 (+ bias + gelu) and >= "
            f"{TARGETS['keras']}x keras int8 Dense."
        ),
    )
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
                calls = {name: (lambda f=f: f(x)) for name, f in fns.items()}
                _harness.progress(FAMILY, f"W8A8 {m}x{k}x{n}")
                measured = results.bench(calls, reference=KBM)
                ops = 2 * m * k * n
                for name, meas in measured.items():
                    gops = ops / (meas.median_ms * 1e-3) / 1e9
                    table.rows.append(
                        {
                            "shape": f"{m} x {k} x {n}",
                            "variant": name,
                            "kbm": name == KBM,
                            "ms": meas.median_ms,
                            "gops": gops,
                            "pct_peak": (
                                100.0 * gops / peak["gflops"] if peak else None
                            ),
                            "kbm_speedup": None if name == KBM else meas.ratio,
                            "times_ms": meas.times_ms,
                        }
                    )
    _target_notes(table)


def _target_notes(table):
    by_shape = {}
    for row in table.rows:
        by_shape.setdefault(row["shape"], {})[row["variant"]] = row
    f32 = [
        min(r[F32]["kbm_speedup"], r[F32_ACT]["kbm_speedup"])
        for r in by_shape.values()
    ]
    table.notes.append(
        f"kbm W8A8 vs the faster float32 variant: {min(f32):.2f}x to "
        f"{max(f32):.2f}x (target {TARGETS['f32']}x)."
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


def run_weight_only(results, rows, shapes, large=()):
    table = results.table(
        "weight-only",
        WO_COLUMNS,
        description=(
            "x @ W + b, x float32 [M, K]; int8 per-channel scales, int4 "
            f"group {GROUP}. speed-up = f32 time / variant time (median of "
            f"per-round ratios). Targets at M <= 8: int8 >= "
            f"{TARGETS['int8_wo']}x, int4 >= {TARGETS['int4_wo']}x."
        ),
    )
    cases = [(k, n, m) for k, n in shapes for m in rows] + list(large)
    with table:
        for k, n, m in cases:
            x, w, b = _problem(m, k, n, seed=1)
            q8, s8 = kbm.ops.quantize_kernel(w)
            q4, s4 = kbm.ops.quantize_kernel(w, bits=4, group_size=GROUP)
            p8 = kbm.ops.pack_kernel(q8)
            p4 = kbm.ops.pack_kernel(q4, bits=4)
            fns = {
                "tf.matmul f32": tf.function(
                    lambda x, w=w, b=b: tf.matmul(x, w) + b
                ),
                "kbm int8": tf.function(
                    lambda x, p=p8, s=s8, b=b: kbm.ops.weight_only_matmul(
                        x, p, s, bias=b, use_fused_kernel=True
                    )
                ),
                "kbm int4": tf.function(
                    lambda x, p=p4, s=s4, b=b: kbm.ops.weight_only_matmul(
                        x, p, s, GROUP, 4, b, use_fused_kernel=True
                    )
                ),
            }
            nbytes = {
                "tf.matmul f32": 4 * k * n,
                "kbm int8": k * n + 4 * n,
                "kbm int4": k * n // 2 + 4 * n * k // GROUP,
            }
            calls = {name: (lambda f=f: f(x)) for name, f in fns.items()}
            _harness.progress(FAMILY, f"weight-only {m}x{k}x{n}")
            measured = results.bench(calls, reference="tf.matmul f32")
            for name, meas in measured.items():
                table.rows.append(
                    {
                        "shape": f"{m} x {k} x {n}",
                        "variant": name,
                        "kbm": name != "tf.matmul f32",
                        "ms": meas.median_ms,
                        "gbps": _harness.gbps(nbytes[name], meas.median_ms),
                        "gops": 2 * m * k * n / (meas.median_ms * 1e-3) / 1e9,
                        "speedup": 1.0 / meas.ratio,
                        "times_ms": meas.times_ms,
                    }
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


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    rows = QUICK_ROWS if args.quick else ROWS
    shapes = QUICK_KN if args.quick else KN
    wo_rows = QUICK_WO_ROWS if args.quick else WO_ROWS
    results.shapes = {
        "W8A8 rows": rows,
        "weight-only rows": wo_rows,
        "K x N": [list(s) for s in shapes],
    }
    _harness.progress(FAMILY, "float32 FMA peak")
    peak = fma_peak(args.quick)
    results.fma_peak = peak
    run_w8a8(results, rows, shapes, peak)
    large = (
        []
        if args.quick
        else [(k, n, m) for k, n in WO_LARGE_KN for m in WO_LARGE_ROWS]
    )
    run_weight_only(results, wo_rows, shapes, large)
    if peak:
        results.tables[0].notes.append(
            f"float32 FMA peak in this run: {peak['gflops']:.0f} GFLOP/s "
            f"({peak['threads']} threads, best of {len(peak['runs'])})."
        )
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
