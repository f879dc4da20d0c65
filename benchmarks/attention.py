"""Benchmark: softmax attention (`kbm.ops.flash_attention`), float32, CPU.

Three sections, each a table (or three) in the report:

1. Op sweep. q, k, v of [B, T, H=12, D=64] float32 (MultiHeadAttention: x of
   [B, T, 768]), B = 1 for T in 256 ... 16384 and B = 4 for T <= 2048,
   non-causal and causal, "fwd" (returns the output) and "fwd+bwd" (one
   `tf.GradientTape` step returning the output and dq, dk, dv, with dy
   supplied through `output_gradients`). Variants, all inside
   `tf.function`, timed interleaved round-robin in one process (see
   `_harness.bench`):

   * `keras MHA (incl. projections)`: `keras.layers.MultiHeadAttention(
     num_heads=12, key_dim=64)` self-attention on x, causal through
     `use_causal_mask=True`; it includes the Q/K/V/O projections (8 * B *
     T * 768^2 more FLOP in fwd, not counted) and its fwd+bwd also returns
     the gradients of the projection weights;
   * `keras dot_product_attention`: `keras.ops.dot_product_attention(q, k,
     v, is_causal=causal)`, and the same under `jit_compile=True`
     (`dot_product_attention + XLA`);
   * `einsum`: `einsum("bqhd,bkhd->bhqk")` on the scaled q, then (causal) a
     `tf.where` with the [T, T] lower-triangular mask, `tf.nn.softmax`,
     and `einsum("bhqk,bkhd->bqhd")`: the plain TF a user would write
     (the math of `flash_attention(..., use_fused_kernel=False)` without its
     general masking); and the same under XLA (`einsum + XLA`);
   * `kbm flash`: `kbm.ops.flash_attention(q, k, v, causal=causal,
     use_fused_kernel=True)`.

   GFLOP/s counts 4 * B * H * T^2 * D for fwd and 3x that for fwd+bwd,
   also when causal (the full T^2; "useful GFLOP/s" is half of it). Before
   timing, the outputs and gradients of every variant but MHA are checked
   to agree (`_harness.check_agreement`). A stock variant is skipped, and
   its row says why, when its memory estimate (2 fwd or 4 fwd+bwd buffers
   of 4 * B * H * T^2 bytes, the most a stock variant held when it was
   measured) exceeds 14 GB or what the machine has free less 2 GB; XLA
   variants are skipped for T >= 8192 (compile time and memory of huge
   shapes); and, to keep the run near 25 minutes, MHA and
   dot_product_attention are skipped for T >= 8192 unless `--all-stock`
   (plain einsum was the fastest of the three there). Rounds: 9 after 2
   warm-ups for B * T^2 <= 1024^2, 5 after 1 up to 2048^2, else 3 after 1.
   A summary table names, per configuration, the fastest stock variant
   (MHA left out: it does more work) and kbm's speed-up against it.

2. Peak memory: one causal fwd+bwd step at B = 1, T in 1024, 4096, 8192,
   16384, for einsum, dot_product_attention and kbm flash, each in a fresh
   process: inputs created and the `tf.function` traced
   (`get_concrete_function`, no execution), the RSS high-water mark reset
   (`/proc/self/clear_refs`), RSS read, one step run, then the peak RSS
   read. The peak is VmHWM (/proc/self/status), the counter behind
   `resource.getrusage(RUSAGE_SELF).ru_maxrss`; ru_maxrss also keeps the
   high-water marks recorded when threads exit, which the reset does not
   clear, so it is used (an upper bound, noted) only where the kernel
   refuses the reset; the JSON keeps both. "extra" = peak - the RSS just
   before the step. The step time is that single (first) call's, which
   includes TensorFlow's one-time graph optimisation. Target: kbm flash at
   T = 16384 trains within 2 GB of extra memory.

3. End-to-end training step: a BERT-like encoder, 4 blocks of d_model 512,
   8 heads, FFN 2048, post-LN, GELU, no dropout, on float inputs x of
   [8, 512, 512] (no embeddings), mean pooling and a Dense(1) regression
   head, MSE loss, `keras.optimizers.AdamW`; one step (forward, gradients,
   optimizer update) inside `tf.function`. Blocks: `kbm.layers.
   TransformerEncoder`, the same block from `keras.layers.
   MultiHeadAttention` + `LayerNormalization` + `Dense`, and
   `keras_hub.layers.TransformerEncoder` when keras_hub is installed
   (it is not a dependency). Median step time over rounds interleaved in
   one process, and peak RSS of a fresh process per variant (as in 2; the
   model and the optimizer's slots are built before the baseline).
   Target (not asserted): kbm >= 1.3x faster than the Keras-layer build,
   with lower peak memory.

This family declares `ALLOCATORS = ("default",)`: `run_all.py` runs it only
under TensorFlow's default CPU allocator (attention is compute-bound, a
full run is long, and the stock-attention reference measurements used that
allocator). A watchdog thread aborts any of its processes whose RSS passes
20 GB or when the machine has less than 1.5 GB available.

Run alone with `python benchmarks/attention.py [--quick] [--out PATH]
[--max-t T] [--all-stock] [--sections sweep memory e2e]`; `--quick` uses
T = 128 and 256 at B = 1, 2 rounds, the memory table at T = 256 and the
training step at sequence length 64 (about 1 minute). A full run is
estimated at about 25 minutes on a 2-core machine (op sweep ~20, memory
~2-3, training step ~2), 35 with `--all-stock`; `--max-t 4096` cuts it to
about 15. Set `TF_CPP_MIN_LOG_LEVEL=2` when running it alone, as
`run_all.py` does, for quiet output.
"""

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import _harness
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

FAMILY = "attention"
# Read by run_all.py (without importing this module).
ALLOCATORS = ("default",)

HEADS, HEAD_DIM = 12, 64
MODEL_DIM = HEADS * HEAD_DIM
LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384]
B4_MAX_LENGTH = 2048
QUICK_LENGTHS = [128, 256]
MEMORY_LENGTHS = [1024, 4096, 8192, 16384]
QUICK_MEMORY_LENGTHS = [256]
QUICK_ROUNDS, QUICK_WARMUP = 2, 1

MHA = "keras MHA (incl. projections)"
DPA = "keras dot_product_attention"
DPA_XLA = "dot_product_attention + XLA"
EINSUM = "einsum"
EINSUM_XLA = "einsum + XLA"
KBM = "kbm flash"
VARIANTS = [MHA, DPA, DPA_XLA, EINSUM, EINSUM_XLA, KBM]
XLA_VARIANTS = {DPA_XLA, EINSUM_XLA}
# Stock variants the summary picks the fastest of (MHA does more work).
ATTENTION_ONLY = [DPA, DPA_XLA, EINSUM, EINSUM_XLA]
MEMORY_VARIANTS = [EINSUM, DPA, KBM]

NO_XLA_FROM_LENGTH = 8192
# MHA and dot_product_attention: skipped from here unless --all-stock.
SLOW_STOCK_FROM_LENGTH = 8192
STOCK_BUFFERS = {"fwd": 2, "fwd+bwd": 4}
STOCK_MEMORY_LIMIT = 14e9
FREE_MEMORY_MARGIN = 2e9

TARGET_LENGTH, TARGET_EXTRA_GB = 16384, 2.0

E2E = {
    "batch": 8,
    "length": 512,
    "hidden": 512,
    "blocks": 4,
    "heads": 8,
    "intermediate": 2048,
    "epsilon": 1e-5,
}
QUICK_E2E = dict(E2E, length=64)
E2E_ROUNDS, E2E_WARMUP = 5, 2
E2E_KBM = "kbm TransformerEncoder"
E2E_KERAS = "keras layers (MHA + LayerNorm + Dense)"
E2E_HUB = "keras_hub TransformerEncoder"
E2E_VARIANTS = [E2E_KBM, E2E_KERAS, E2E_HUB]
E2E_TARGET_SPEEDUP = 1.3
KERAS_HUB_INSTALL = "pip install keras-hub==0.32.0"

WATCHDOG_RSS = 20e9
WATCHDOG_MIN_AVAILABLE = 1.5e9
WATCHDOG_EXIT = 86
CHILD_MARKER = "KBM_ATTENTION_CHILD_RESULT "
GB = 1e9

# ------------------------------------------------------------ columns ----

C = _harness.Column


def sweep_columns(causal):
    columns = [
        C("batch", "B", group=True),
        C("length", "T", group=True),
        C("pass", "pass", group=True),
        C("variant", "variant"),
        C("ms", "median ms", "ms"),
        C("gflops", "GFLOP/s", "gflops"),
    ]
    if causal:
        columns.append(C("useful_gflops", "useful GFLOP/s", "gflops"))
    return columns + [
        C("kbm_speedup", "kbm speed-up", "ratio"),
        C("note", "note"),
    ]


SUMMARY_COLUMNS = [
    C("causal", "causal", group=True),
    C("pass", "pass", group=True),
    C("batch", "B"),
    C("length", "T"),
    C("fastest", "fastest stock variant"),
    C("stock_ms", "its ms", "ms"),
    C("kbm_ms", "kbm ms", "ms"),
    C("kbm_gflops", "kbm GFLOP/s", "gflops"),
    C("kbm_speedup", "kbm speed-up", "ratio"),
    C("rounds", "rounds + warm-up"),
]

MEMORY_COLUMNS = [
    C("length", "T", group=True),
    C("variant", "variant"),
    C("baseline_gb", "RSS before, GB", "gb"),
    C("peak_gb", "peak RSS, GB", "gb"),
    C("extra_gb", "extra, GB", "gb"),
    C("step_ms", "step ms (first call)", "ms"),
    C("buffer_gb", "one [B,H,T,T] fp32, GB", "gb"),
    C("note", "note"),
]

E2E_COLUMNS = [
    C("variant", "variant"),
    C("ms", "median step ms", "ms"),
    C("kbm_speedup", "kbm speed-up", "ratio"),
    C("peak_gb", "peak RSS, GB (fresh process)", "gb"),
    C("extra_gb", "extra, GB", "gb"),
    C("note", "note"),
]

# ------------------------------------------------------------- memory ----


def current_rss():
    """This process's resident set size in bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss():
    """This process's peak RSS in bytes (`ru_maxrss` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_high_water():
    """VmHWM from /proc/self/status in bytes (the peak RSS), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_available():
    """MemAvailable from /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets the RSS high-water mark (VmHWM) to the current RSS.

    `ru_maxrss` is the larger of VmHWM and the high-water marks recorded
    when threads of the process exited, which this does not clear; VmHWM
    itself is reset where the kernel allows writing
    `/proc/self/clear_refs`.

    Returns:
        Whether VmHWM now reads (about) the current RSS.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    high_water = rss_high_water()
    return high_water is not None and high_water <= current_rss() + 2**20


def start_watchdog():
    """Aborts this process before it can push the machine out of memory."""

    def watch():
        while True:
            rss, free = current_rss(), memory_available()
            if rss > WATCHDOG_RSS or (
                free is not None and free < WATCHDOG_MIN_AVAILABLE
            ):
                sys.stderr.write(
                    f"[{FAMILY}] memory watchdog: RSS {rss / GB:.1f} GB, "
                    f"available {(free or 0) / GB:.1f} GB; aborting\n"
                )
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT)
            time.sleep(0.05)

    threading.Thread(target=watch, name="memory-watchdog", daemon=True).start()


def score_bytes(batch, length):
    """Bytes of one [B, H, T, T] float32 score-sized buffer."""
    return 4 * batch * HEADS * length * length


def stock_memory_estimate(batch, length, pass_):
    return STOCK_BUFFERS[pass_] * score_bytes(batch, length)


def memory_skip_reason(batch, length, pass_):
    """Why a stock variant cannot run here for memory, or None."""
    estimate = stock_memory_estimate(batch, length, pass_)
    if estimate > STOCK_MEMORY_LIMIT:
        return f"skipped (memory: ~{estimate / GB:.0f} GB estimated)"
    free = memory_available()
    if free is not None and estimate > free - FREE_MEMORY_MARGIN:
        return (
            f"skipped (memory: ~{estimate / GB:.0f} GB estimated, "
            f"{free / GB:.1f} GB available)"
        )
    return None


# ---------------------------------------------------------- variants ----


def einsum_attention(q, k, v, causal):
    """Plain softmax attention in TF ops: einsum, softmax, einsum."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    scores = tf.einsum("bqhd,bkhd->bhqk", q, k)
    if causal:
        length = tf.shape(q)[1]
        positions = tf.range(length)
        visible = positions[:, None] >= positions[None, :]
        scores = tf.where(visible, scores, tf.constant(-1e30, scores.dtype))
    probs = tf.nn.softmax(scores, axis=-1)
    return tf.einsum("bhqk,bkhd->bqhd", probs, v)


def dpa_attention(q, k, v, causal):
    return keras.ops.dot_product_attention(q, k, v, is_causal=causal)


def kbm_attention(q, k, v, causal):
    return kbm.ops.flash_attention(
        q, k, v, causal=causal, use_fused_kernel=True
    )


ATTEND = {
    DPA: (dpa_attention, False),
    DPA_XLA: (dpa_attention, True),
    EINSUM: (einsum_attention, False),
    EINSUM_XLA: (einsum_attention, True),
    KBM: (kbm_attention, False),
}


def qkv_step(attend, causal, pass_, jit_compile):
    """A tf.function: fwd(q, k, v) -> o, or fwd+bwd(q, k, v, dy)."""
    if pass_ == "fwd":

        def forward(q, k, v):
            return attend(q, k, v, causal)

        return tf.function(forward, jit_compile=jit_compile)

    def step(q, k, v, dy):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            o = attend(q, k, v, causal)
        dq, dk, dv = tape.gradient(o, [q, k, v], output_gradients=dy)
        return o, dq, dk, dv

    return tf.function(step, jit_compile=jit_compile)


def mha_step(layer, causal, pass_):
    """A tf.function: fwd(x) -> y, or fwd+bwd(x, dy) -> y, dx, dweights."""

    def forward(x):
        return layer(x, x, use_causal_mask=causal)

    if pass_ == "fwd":
        return tf.function(forward)

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = forward(x)
        dx, *dweights = tape.gradient(
            y, [x, *layer.trainable_variables], output_gradients=dy
        )
        return y, dx, *dweights

    return tf.function(step)


def make_mha():
    layer = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    x = tf.zeros([1, 8, MODEL_DIM])
    layer(x, x)  # builds the weights once; every step reuses them
    return layer


def qkv_inputs(batch, length):
    shape = [batch, length, HEADS, HEAD_DIM]
    return [
        tf.random.stateless_normal(shape, seed=[i, length]) for i in range(1, 5)
    ]


def core_flops(batch, length, pass_):
    """4 B H T^2 D for fwd, 3x for fwd+bwd (the full T^2, also causal)."""
    fwd = 4 * batch * HEADS * length * length * HEAD_DIM
    return fwd if pass_ == "fwd" else 3 * fwd


def protocol(batch, length, args):
    """(rounds, warm-up) for one configuration."""
    work = batch * length * length
    if args.quick or work <= 1024**2:
        return args.rounds, args.warmup
    if work <= 2048**2:
        return min(args.rounds, 5), min(args.warmup, 1)
    return min(args.rounds, 3), min(args.warmup, 1)


# ------------------------------------------------------------- sweep ----


def skip_reason(name, batch, length, pass_, args):
    if name == KBM:
        return None
    if name in XLA_VARIANTS and length >= NO_XLA_FROM_LENGTH:
        return f"skipped (no XLA at T ≥ {NO_XLA_FROM_LENGTH})"
    reason = memory_skip_reason(batch, length, pass_)
    if reason:
        return reason
    if (
        name in (MHA, DPA)
        and length >= SLOW_STOCK_FROM_LENGTH
        and not args.all_stock
    ):
        return "skipped (time; --all-stock runs it)"
    return None


def run_config(tables, summary, mha, batch, length, inputs, args):
    """Times one (B, T) for both masks and both passes."""
    q, k, v, dy = inputs["qkv"]
    x, dx = inputs["x"]
    rounds, warmup = protocol(batch, length, args)
    for causal in (False, True):
        table = tables[causal]
        for pass_ in ("fwd", "fwd+bwd"):
            _harness.progress(
                FAMILY,
                f"{'causal' if causal else 'non-causal'} {pass_} B={batch} "
                f"T={length} ({rounds} rounds after {warmup} warm-up)",
            )
            calls, notes = {}, {}
            for name in VARIANTS:
                reason = skip_reason(name, batch, length, pass_, args)
                if reason:
                    notes[name] = reason
                elif name == MHA:
                    fn = mha_step(mha, causal, pass_)
                    calls[name] = (
                        (lambda fn=fn: fn(x))
                        if pass_ == "fwd"
                        else (lambda fn=fn: fn(x, dx))
                    )
                else:
                    attend, jit = ATTEND[name]
                    fn = qkv_step(attend, causal, pass_, jit)
                    calls[name] = (
                        (lambda fn=fn: fn(q, k, v))
                        if pass_ == "fwd"
                        else (lambda fn=fn: fn(q, k, v, dy))
                    )
            agree = [KBM] + [n for n in calls if n not in (MHA, KBM)]
            measured = _harness.bench(
                calls,
                rounds=rounds,
                warmup=warmup,
                reference=KBM,
                agree=agree if len(agree) > 1 else None,
            )
            flops = core_flops(batch, length, pass_)
            for name in VARIANTS:
                m = measured.get(name)
                rate = None if m is None else flops / (m.median_ms * 1e6)
                row = {
                    "batch": batch,
                    "length": length,
                    "pass": pass_,
                    "variant": name,
                    "kbm": name == KBM,
                    "ms": None if m is None else m.median_ms,
                    "gflops": rate,
                    "kbm_speedup": (
                        None if m is None or name == KBM else m.ratio
                    ),
                    "note": notes.get(name, ""),
                    "flops": flops,
                    "times_ms": None if m is None else m.times_ms,
                }
                if causal:
                    row["useful_gflops"] = None if rate is None else rate / 2
                table.rows.append(row)
            summary.rows.append(
                summary_row(causal, pass_, batch, length, measured, flops)
                | {"rounds": f"{rounds} + {warmup}"}
            )
            del calls, measured
            gc.collect()


def summary_row(causal, pass_, batch, length, measured, flops):
    kbm_m = measured[KBM]
    stock = [n for n in ATTENTION_ONLY if n in measured]
    row = {
        "causal": "yes" if causal else "no",
        "pass": pass_,
        "batch": batch,
        "length": length,
        "kbm_ms": kbm_m.median_ms,
        "kbm_gflops": flops / (kbm_m.median_ms * 1e6),
        "kbm": False,
    }
    if not stock:
        return row | {
            "fastest": "none runs (memory)",
            "stock_ms": None,
            "kbm_speedup": None,
        }
    fastest = min(stock, key=lambda n: measured[n].median_ms)
    return row | {
        "fastest": fastest,
        "stock_ms": measured[fastest].median_ms,
        "kbm_speedup": measured[fastest].ratio,
    }


def run_sweep(results, lengths, args):
    configs = [(1, t) for t in lengths]
    if not args.quick:
        configs += [(4, t) for t in lengths if t <= B4_MAX_LENGTH]
    results.shapes["q, k, v"] = [[b, t, HEADS, HEAD_DIM] for b, t in configs]
    common = (
        "q, k, v of [B, T, 12, 64] float32; MHA on x of [B, T, 768]. "
        "GFLOP/s counts 4·B·H·T²·D for fwd and 3× that for fwd+bwd. "
        "keras MHA includes the Q/K/V/O projections (8·B·T·768² more FLOP "
        "in fwd, not counted, so its GFLOP/s understates it) and its "
        "fwd+bwd also returns the projection-weight gradients. Stock "
        "variants are skipped where their memory estimate (2 fwd or 4 "
        "fwd+bwd buffers of 4·B·H·T² bytes) exceeds 14 GB, XLA variants "
        f"for T ≥ {NO_XLA_FROM_LENGTH}"
        + (
            ""
            if args.all_stock
            else (
                ", and MHA and dot_product_attention for T ≥ "
                f"{SLOW_STOCK_FROM_LENGTH} (time; `--all-stock` runs them)"
            )
        )
        + ". Rounds per configuration are in the summary table. This "
        "family runs under the default allocator only (its script "
        'declares `ALLOCATORS = ("default",)`).'
    )
    tables = {
        False: results.table(
            "Attention op, non-causal", sweep_columns(False), common
        ),
        True: results.table(
            "Attention op, causal",
            sweep_columns(True),
            common + " Causal GFLOP/s still counts the full T² (the kernel "
            'skips the masked half); "useful GFLOP/s" counts the half that '
            "is computed.",
        ),
    }
    summary = results.table(
        "kbm vs the fastest stock variant",
        SUMMARY_COLUMNS,
        "Per configuration: the fastest of dot_product_attention, einsum "
        "and their XLA versions (MHA left out: it does more work), and "
        "kbm flash's speed-up against it (median of per-round ratios). "
        "kbm GFLOP/s counts the full T² also when causal.",
    )
    mha = make_mha()
    t0 = time.perf_counter()
    with tables[False], tables[True], summary:
        for batch, length in configs:
            inputs = {
                "qkv": qkv_inputs(batch, length),
                "x": [
                    tf.random.stateless_normal(
                        [batch, length, MODEL_DIM], seed=[i, length]
                    )
                    for i in (5, 6)
                ],
            }
            run_config(tables, summary, mha, batch, length, inputs, args)
            del inputs
            gc.collect()
    summary.notes.append(
        f"Wall time of the op sweep: {time.perf_counter() - t0:.0f} s."
    )


# -------------------------------------------------------- fresh process ----


def measure_one_step(call):
    """Runs `call` once; RSS before, peak RSS after, and its time."""
    gc.collect()
    reset = reset_peak_rss()
    maxrss_before = peak_rss()
    baseline = current_rss()
    t0 = time.perf_counter()
    out = call()
    step_s = time.perf_counter() - t0
    high_water, maxrss = rss_high_water(), peak_rss()
    del out
    # Without a reset, ru_maxrss may still hold a peak from before the step
    # (TensorFlow's start-up): an upper bound.
    peak = high_water if reset else maxrss
    return {
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "extra_bytes": peak - baseline,
        "peak_reset": reset,
        "vm_hwm_bytes": high_water,
        "ru_maxrss_bytes": maxrss,
        "ru_maxrss_before_bytes": maxrss_before,
        "step_ms": step_s * 1e3,
    }


def run_child(spec):
    """Runs one measurement in a fresh process: (result dict, error)."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += ["--child", json.dumps(spec)]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :]), None
    if done.returncode == WATCHDOG_EXIT:
        return None, "aborted by the memory watchdog"
    tail = [line for line in done.stderr.splitlines() if line.strip()]
    sys.stderr.write("\n".join(tail[-20:]) + "\n")
    last = tail[-1][:120] if tail else ""
    return None, f"failed (exit {done.returncode}): {last}"


def child_main(spec):
    start_watchdog()
    tf.get_logger().setLevel("ERROR")
    if spec["kind"] == "op":
        batch, length = spec["batch"], spec["length"]
        q, k, v, dy = qkv_inputs(batch, length)
        attend, jit = ATTEND[spec["variant"]]
        fn = qkv_step(attend, spec["causal"], "fwd+bwd", jit)
        fn.get_concrete_function(q, k, v, dy)
        result = measure_one_step(lambda: fn(q, k, v, dy))
    elif spec["kind"] == "e2e":
        keras.utils.set_random_seed(0)
        model, optimizer = build_e2e(spec["variant"], spec["config"])
        x, y = e2e_inputs(spec["config"])
        step = make_train_step(model, optimizer)
        step.get_concrete_function(x, y)
        result = measure_one_step(lambda: step(x, y))
    else:
        raise ValueError(f"unknown child kind {spec['kind']!r}")
    print(CHILD_MARKER + json.dumps(result), flush=True)


def memory_row(result, error):
    if error:
        return {"note": error}
    note = (
        ""
        if result["peak_reset"]
        else "VmHWM not resettable: ru_maxrss, an upper bound"
    )
    return {
        "child": result,
        "baseline_gb": result["baseline_bytes"] / GB,
        "peak_gb": result["peak_bytes"] / GB,
        "extra_gb": result["extra_bytes"] / GB,
        "step_ms": result["step_ms"],
        "note": note,
    }


# ------------------------------------------------------------ memory ----


def run_memory(results, lengths):
    results.shapes["memory table q, k, v"] = [
        [1, t, HEADS, HEAD_DIM] for t in lengths
    ]
    table = results.table(
        "Peak memory: one causal fwd+bwd step, B = 1",
        MEMORY_COLUMNS,
        "Each cell is a fresh process: inputs created and the tf.function "
        "traced (no execution), the RSS high-water mark reset "
        "(`/proc/self/clear_refs`), RSS read, ONE step run, then the peak "
        "RSS read: VmHWM from /proc/self/status, the counter behind "
        "`getrusage(RUSAGE_SELF).ru_maxrss` (ru_maxrss also keeps the "
        "high-water marks recorded when threads exit, which the reset does "
        "not clear; it is the fallback, an upper bound and noted, where the "
        "kernel refuses the reset). "
        "extra = peak - RSS before the step; GB = 1e9 bytes. The step "
        "time is that first "
        "call's (it includes TensorFlow's one-time graph optimisation). "
        "q, k, v of [1, T, 12, 64] float32; stock variants are skipped "
        "where 4 score-sized buffers would exceed 14 GB.",
    )
    with table:
        for length in lengths:
            for name in MEMORY_VARIANTS:
                row = {
                    "length": length,
                    "variant": name,
                    "kbm": name == KBM,
                    "buffer_gb": score_bytes(1, length) / GB,
                }
                reason = (
                    None
                    if name == KBM
                    else memory_skip_reason(1, length, "fwd+bwd")
                )
                if reason:
                    table.rows.append(row | {"note": reason})
                    continue
                _harness.progress(
                    FAMILY, f"peak memory {name} T={length} (fresh process)"
                )
                spec = {
                    "kind": "op",
                    "variant": name,
                    "batch": 1,
                    "length": length,
                    "causal": True,
                }
                row |= memory_row(*run_child(spec))
                table.rows.append(row)
    target = next(
        (
            r
            for r in table.rows
            if r["variant"] == KBM and r["length"] == TARGET_LENGTH
        ),
        None,
    )
    if target is not None and target.get("extra_gb") is not None:
        met = "met" if target["extra_gb"] <= TARGET_EXTRA_GB else "NOT met"
        table.notes.append(
            f"Target: kbm flash at T = {TARGET_LENGTH} (B = 1, 12 heads, "
            f"D = 64, causal, fwd+bwd) within {TARGET_EXTRA_GB:.0f} GB of "
            f"extra memory: {target['extra_gb']:.2f} GB, {met}."
        )


# --------------------------------------------------------------- e2e ----


class KerasEncoderBlock(keras.layers.Layer):
    """A post-LN encoder block from stock Keras layers (BERT's layout).

    x = LN(x + MHA(x, x)); x = LN(x + Dense(Dense_gelu(x))).
    """

    def __init__(self, hidden, intermediate, heads, epsilon, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=heads, key_dim=hidden // heads
        )
        self.attention_norm = keras.layers.LayerNormalization(epsilon=epsilon)
        self.ffn_in = keras.layers.Dense(intermediate, activation="gelu")
        self.ffn_out = keras.layers.Dense(hidden)
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=epsilon)

    def call(self, x, training=None):
        x = self.attention_norm(x + self.attention(x, x, training=training))
        return self.ffn_norm(x + self.ffn_out(self.ffn_in(x)))


class EncoderRegressor(keras.Model):
    """Encoder blocks, mean pooling over the sequence and a Dense(1) head."""

    def __init__(self, blocks, **kwargs):
        super().__init__(**kwargs)
        self.blocks = blocks
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head = keras.layers.Dense(1)

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(self.pool(x))


def e2e_unavailable():
    """{variant: why it cannot run} for the variants that cannot."""
    reasons = {}
    if getattr(kbm.layers, "TransformerEncoder", None) is None:
        reasons[E2E_KBM] = (
            "not available (no kbm.layers.TransformerEncoder in this build)"
        )
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        reasons[E2E_HUB] = (
            f"not installed (not a dependency; `{KERAS_HUB_INSTALL}` keeps "
            "the pinned TensorFlow/Keras)"
        )
    return reasons


def build_e2e(variant, cfg):
    """The model and its AdamW optimizer, both built."""
    n, hidden, heads = cfg["blocks"], cfg["hidden"], cfg["heads"]
    inter, eps = cfg["intermediate"], cfg["epsilon"]
    if variant == E2E_KBM:
        blocks = [
            kbm.layers.TransformerEncoder(
                intermediate_dim=inter,
                num_heads=heads,
                dropout=0.0,
                activation="gelu",
                norm="layer",
                norm_first=False,
                layer_norm_epsilon=eps,
            )
            for _ in range(n)
        ]
    elif variant == E2E_KERAS:
        blocks = [
            KerasEncoderBlock(hidden, inter, heads, eps) for _ in range(n)
        ]
    elif variant == E2E_HUB:
        import keras_hub

        blocks = [
            keras_hub.layers.TransformerEncoder(
                intermediate_dim=inter,
                num_heads=heads,
                dropout=0.0,
                activation="gelu",
                layer_norm_epsilon=eps,
                normalize_first=False,
            )
            for _ in range(n)
        ]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    model = EncoderRegressor(blocks)
    model(tf.zeros([1, 8, hidden]))  # builds the weights
    optimizer = keras.optimizers.AdamW()
    optimizer.build(model.trainable_variables)
    return model, optimizer


def e2e_inputs(cfg):
    shape = [cfg["batch"], cfg["length"], cfg["hidden"]]
    x = tf.random.stateless_normal(shape, seed=[7, 8])
    y = tf.random.stateless_normal([cfg["batch"], 1], seed=[9, 10])
    return x, y


def make_train_step(model, optimizer):
    """One training step in tf.function: forward, MSE, grads, AdamW."""

    def step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = keras.ops.mean(keras.ops.square(pred - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(step)


def run_e2e(results, cfg, args):
    results.shapes["e2e x"] = [[cfg["batch"], cfg["length"], cfg["hidden"]]]
    unavailable = e2e_unavailable()
    available = [v for v in E2E_VARIANTS if v not in unavailable]
    rounds = min(args.rounds, E2E_ROUNDS)
    warmup = min(args.warmup, E2E_WARMUP)
    table = results.table(
        "End-to-end training step: 4-block BERT-like encoder",
        E2E_COLUMNS,
        f"{cfg['blocks']} post-LN encoder blocks (d_model {cfg['hidden']}, "
        f"{cfg['heads']} heads, FFN {cfg['intermediate']}, GELU, dropout "
        f"0, LayerNorm epsilon {cfg['epsilon']:g}) on float inputs "
        f"[{cfg['batch']}, {cfg['length']}, {cfg['hidden']}], mean pooling, "
        "Dense(1), MSE; one step = forward, gradients and a "
        "`keras.optimizers.AdamW` update inside `tf.function`. Variants "
        "are initialised independently (outputs not compared). Median "
        f"over {rounds} interleaved rounds after {warmup} warm-up call(s); "
        "peak RSS from one step in a fresh process per variant (model and "
        "optimizer slots built before the baseline; extra = peak - RSS "
        "before the step). keras_hub's block gets activation='gelu' and "
        "epsilon 1e-5 to match.",
    )
    with table:
        keras.utils.set_random_seed(0)
        calls = {}
        if available:
            x, y = e2e_inputs(cfg)
        for variant in available:
            model, optimizer = build_e2e(variant, cfg)
            step = make_train_step(model, optimizer)
            calls[variant] = lambda step=step: step(x, y)
        measured = {}
        if calls:
            _harness.progress(
                FAMILY,
                f"e2e training step, {len(calls)} variant(s), seq "
                f"{cfg['length']} ({rounds} rounds after {warmup} warm-up)",
            )
            measured = _harness.bench(
                calls,
                rounds=rounds,
                warmup=warmup,
                reference=E2E_KBM if E2E_KBM in calls else None,
            )
        del calls
        gc.collect()
        for variant in E2E_VARIANTS:
            row = {"variant": variant, "kbm": variant == E2E_KBM}
            if variant in unavailable:
                table.rows.append(row | {"note": unavailable[variant]})
                continue
            m = measured[variant]
            row |= {
                "ms": m.median_ms,
                "kbm_speedup": None if variant == E2E_KBM else m.ratio,
                "times_ms": m.times_ms,
            }
            _harness.progress(FAMILY, f"e2e peak memory {variant}")
            spec = {"kind": "e2e", "variant": variant, "config": cfg}
            mem = memory_row(*run_child(spec))
            row |= {
                k: mem[k]
                for k in ("peak_gb", "extra_gb", "note", "child")
                if k in mem
            }
            table.rows.append(row)
    by_name = {r["variant"]: r for r in table.rows}
    kbm_row, keras_row = by_name[E2E_KBM], by_name[E2E_KERAS]
    if kbm_row.get("ms") is None:
        table.notes.append(
            "kbm TransformerEncoder: not available in this build, so the "
            "target could not be checked."
        )
    elif keras_row.get("kbm_speedup") is not None:
        speedup = keras_row["kbm_speedup"]
        lower = (
            kbm_row.get("peak_gb") is not None
            and keras_row.get("peak_gb") is not None
            and kbm_row["peak_gb"] < keras_row["peak_gb"]
        )
        met = speedup >= E2E_TARGET_SPEEDUP and lower
        table.notes.append(
            f"Target (not asserted): kbm ≥ {E2E_TARGET_SPEEDUP}× faster than "
            "the Keras-layer build with lower peak memory: "
            f"{speedup:.2f}×, peak {'lower' if lower else 'not lower'}; "
            f"{'met' if met else 'NOT met'}."
        )


# -------------------------------------------------------------- main ----


def add_arguments(parser):
    parser.add_argument(
        "--max-t",
        type=int,
        default=LENGTHS[-1],
        help=(
            "largest sequence length T in the op sweep and the memory "
            f"table (default {LENGTHS[-1]})"
        ),
    )
    parser.add_argument(
        "--all-stock",
        action="store_true",
        help=(
            "also time keras MHA and dot_product_attention for T >= "
            f"{SLOW_STOCK_FROM_LENGTH} (about 9 more minutes)"
        ),
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["sweep", "memory", "e2e"],
        default=["sweep", "memory", "e2e"],
        help="which sections to run (default: all three)",
    )
    # Internal: one fresh-process memory measurement (a JSON spec).
    parser.add_argument("--child", help=argparse.SUPPRESS)


def main(argv=None):
    args = _harness.parse_args(
        __doc__,
        argv,
        add_arguments=add_arguments,
        quick_rounds=QUICK_ROUNDS,
        quick_warmup=QUICK_WARMUP,
    )
    if args.child:
        child_main(json.loads(args.child))
        return
    start_watchdog()
    # Every configuration traces fresh tf.functions by design; TF's
    # "excessive retracing" notices would only be noise.
    tf.get_logger().setLevel("ERROR")
    lengths = [
        t for t in (QUICK_LENGTHS if args.quick else LENGTHS) if t <= args.max_t
    ]
    memory_lengths = [
        t
        for t in (QUICK_MEMORY_LENGTHS if args.quick else MEMORY_LENGTHS)
        if t <= args.max_t
    ]
    if not lengths:
        sys.exit(f"--max-t {args.max_t} leaves no sequence length to run")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    if not args.quick:
        # Per configuration (see protocol()); each table says which.
        results.rounds = (
            f"{args.rounds}, {min(args.rounds, 5)} or {min(args.rounds, 3)} "
            "(by B·T²; see each table)"
        )
        results.warmup = f"{args.warmup} or {min(args.warmup, 1)}"
    t0 = time.perf_counter()
    timings = {}
    if "sweep" in args.sections:
        run_sweep(results, lengths, args)
        timings["sweep"] = time.perf_counter() - t0
    if "memory" in args.sections and memory_lengths:
        t1 = time.perf_counter()
        run_memory(results, memory_lengths)
        timings["memory"] = time.perf_counter() - t1
    if "e2e" in args.sections:
        t1 = time.perf_counter()
        run_e2e(results, QUICK_E2E if args.quick else E2E, args)
        timings["e2e"] = time.perf_counter() - t1
    results.write(args.out or _harness.results_path(FAMILY, args.quick))
    _harness.progress(
        FAMILY,
        "wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {time.perf_counter() - t0:.0f} s",
    )


if __name__ == "__main__":
    main()
