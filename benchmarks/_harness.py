"""Shared benchmark harness: timing, machine facts, copy bandwidth, results.

Every family script (`benchmarks/<family>.py`) uses this module to

* time its variants with `bench()`: each variant is warmed up (tracing and
  XLA compilation happen there), then all variants are called round-robin in
  one process (A, B, C, A, B, C, ...), each call timed with
  `time.perf_counter()`. TensorFlow's CPU execution is synchronous, so a
  call's time is the time to compute its outputs. A variant's number is the
  median over the rounds; a ratio between two variants is the median of the
  per-round ratios, so slow drifts of the machine cancel out. Variants
  that compute the same thing are first checked to return the same outputs;
* record the machine (`machine_info()`), the load before and after each
  table (`Table`), and the machine's copy bandwidth (`copy_bandwidth()`),
  the physical limit for memory-bound ops;
* write `benchmarks/results/<family>.<allocator>.json`, which
  `benchmarks/report.py` renders into BENCHMARKS.md.

The allocator is TensorFlow's CPU allocator, chosen per process by
`TF_CPU_ALLOCATOR_USE_BFC`: unset or false is "default" (malloc), true is
"bfc" (TensorFlow's pooling allocator). `run_all.py` runs every family once
per setting, each in a fresh process.
"""

import argparse
import ctypes
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _machine

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "kbm-bench-quick"
ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"

# Default timing protocol, and the --quick one (smoke tests only).
ROUNDS, WARMUP = 9, 2
QUICK_ROUNDS, QUICK_WARMUP = 3, 1
COPY_MB, QUICK_COPY_MB = 512, 64


# ----------------------------------------------------------------- peak ----


def fma_peak(threads, iterations=20_000_000, runs=5):
    """This machine's float32 FMA peak in GFLOP/s on `threads` threads.

    Best of `runs` runs of `_fma_peak.c` (independent FMA chains, 8- and,
    where the CPU has AVX-512F, 16-wide; the faster width counts), compiled
    once into build/bench.
    """
    out_dir = REPO_ROOT / "build" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "fma_peak"
    src = BENCH_DIR / "_fma_peak.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(
            ["gcc", "-O2", "-mavx2", "-mfma", "-pthread", str(src), "-o", exe],
            check=True,
        )
    out = subprocess.run(
        [str(exe), str(threads), str(iterations), str(runs)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.split()[0])


# --------------------------------------------------------------- timing ----


@dataclasses.dataclass
class Measurement:
    """The timings of one variant in one `bench()` call.

    Attributes:
        median_ms: Median time per call over the rounds, in ms.
        ratio: Median over rounds of time / the reference variant's time in
            the same round, or None when `bench()` had no reference.
        times_ms: The time of each round, in ms.
    """

    median_ms: float
    ratio: float | None
    times_ms: list


def bench(
    variants,
    rounds=ROUNDS,
    warmup=WARMUP,
    reference=None,
    agree=None,
    repeat=1,
):
    """Times variants interleaved round-robin in this process.

    Args:
        variants: `{name: callable}`; each callable takes no arguments, runs
            the variant once and returns its outputs (returning them keeps
            graph optimisers from pruning work).
        rounds: Number of timed rounds; each round calls every variant once,
            in order. Defaults to `9`.
        warmup: Untimed calls of each variant before the rounds (tracing,
            XLA compilation, first-touch of buffers). Defaults to `2`.
        reference: Name of the variant the ratios are taken against, or None
            for no ratios. Defaults to `None`.
        agree: Names of variants that compute the same thing; the outputs of
            their last warm-up call are checked against those of the first
            name (see `check_agreement`), so a benchmark never compares
            variants that disagree. Defaults to `None` (no check).
        repeat: Back-to-back calls per timed sample (the sample is their
            mean), for calls of well under a millisecond: a lone call after
            another variant's finds the thread pool asleep and the caches
            cold, which a model step's consecutive layers do not. Defaults
            to `1`.

    Returns:
        `{name: Measurement}`, in the order of `variants`.
    """
    for name in [reference, *(agree or [])]:
        if name is not None and name not in variants:
            raise ValueError(
                f"reference and agree must name variants. Received: {name!r}"
            )
    outputs = {}
    for i in range(warmup):
        for name, fn in variants.items():
            out = fn()
            if agree and name in agree and i == warmup - 1:
                outputs[name] = out
            del out
    if agree:
        check_agreement({name: outputs[name] for name in agree})
    del outputs
    times = {name: [] for name in variants}
    # The last output stays alive until the next call has been timed, so its
    # release is never inside a timed region and nothing can be pruned.
    last = None
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                for _ in range(repeat):
                    out = fn()
                t1 = time.perf_counter()
                last = out
                times[name].append((t1 - t0) * 1e3 / repeat)
    finally:
        del last
        if gc_was_enabled:
            gc.enable()
    return {
        name: Measurement(
            median_ms=statistics.median(ts),
            ratio=(
                None
                if reference is None
                else median_ratio(ts, times[reference])
            ),
            times_ms=ts,
        )
        for name, ts in times.items()
    }


AGREEMENT_TOLERANCE = 1e-4


def check_agreement(outputs, tolerance=AGREEMENT_TOLERANCE):
    """Checks that variants returned the same outputs, within `tolerance`.

    Args:
        outputs: `{variant name: output structure}`; each structure is
            compared, tensor by tensor, with the first variant's.
        tolerance: The largest allowed max|a - b|, relative to max|b| (or
            absolute where max|b| < 1). Float32 sums over thousands of rows
            differ by about 1e-6 relative between implementations.

    Raises:
        RuntimeError: Naming the variant and output that disagree.
    """
    import numpy as np
    import tensorflow as tf

    names = list(outputs)
    flat = {n: tf.nest.flatten(outputs[n]) for n in names}
    base = names[0]
    for name in names[1:]:
        if len(flat[name]) != len(flat[base]):
            raise RuntimeError(
                f"{name} returns {len(flat[name])} outputs, {base} returns "
                f"{len(flat[base])}"
            )
        for i, (a, b) in enumerate(zip(flat[name], flat[base])):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.shape != b.shape:
                raise RuntimeError(
                    f"output {i} of {name} has shape {a.shape}, of {base} "
                    f"{b.shape}"
                )
            err = float(np.max(np.abs(a - b), initial=0.0))
            scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
            if not err <= tolerance * scale:
                raise RuntimeError(
                    f"output {i} of {name} differs from {base}'s by {err:.3g} "
                    f"(max |{base}| = {scale:.3g}, tolerance {tolerance:g} "
                    "relative)"
                )


def median_ratio(times_ms, reference_times_ms):
    """Median of the per-round ratios time / reference time."""
    return statistics.median(
        t / r for t, r in zip(times_ms, reference_times_ms, strict=True)
    )


def gbps(nbytes, ms):
    """Effective bandwidth in GB/s (1e9 bytes) of `nbytes` moved in `ms`."""
    return nbytes / (ms * 1e-3) / 1e9


# ------------------------------------------------------- machine facts ----


def allocator_setting():
    """The allocator setting of this process: "bfc" or "default".

    "bfc" when TF_CPU_ALLOCATOR_USE_BFC is "true" or "1" (case-insensitive,
    as TensorFlow reads it), else "default".
    """
    value = os.environ.get(ALLOCATOR_ENV, "").strip().lower()
    return "bfc" if value in ("true", "1") else "default"


def _git_revision():
    """The checkout's commit and whether it has local changes (read-only)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+local changes" if dirty else "")


def machine_info():
    """The facts a reader needs to compare these numbers with theirs."""
    import numpy as np
    import tensorflow as tf

    import keras_bigmodels as kbm
    from keras_bigmodels import backend

    cpu = _machine.lscpu()
    status = kbm.ops.kernels_available()
    return {
        "cpu_model": _machine.cpu_model(),
        "cpus": int(cpu.get("CPU(s)", os.cpu_count() or 0)),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": backend.KERAS_VERSION,
        "keras_line": backend.KERAS_LINE,
        "keras_bigmodels": kbm.__version__,
        "git": _git_revision(),
        "allocator": allocator_setting(),
        ALLOCATOR_ENV: os.environ.get(ALLOCATOR_ENV),
        "kbm_kernels_available": status.available,
        "kbm_kernels_reason": status.reason,
        "kbm_kernels_info": status.info,
    }


def _cpu_ticks():
    """Aggregate /proc/stat CPU ticks: (total, nice, steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal (guest* are in user).
    return sum(ticks[:8]), ticks[1], ticks[7] if len(ticks) > 7 else 0


def loadavg():
    """The 1, 5 and 15 minute load averages from /proc/loadavg."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


# -------------------------------------------------------- copy bandwidth ----


def copy_bandwidth(mbytes=COPY_MB, runs=7):
    """Measures this machine's copy bandwidth, in this process.

    Bytes are counted as read + written (2 x the array size).

    (a) "numpy": a float32 array of `mbytes` MB copied into a preallocated
        destination (pages already touched), the two halves by two Python
        threads with `ctypes.memmove` (which releases the GIL); best of
        `runs`. This is the "measured copy bandwidth" of the % columns.
    (b) "tf": `x * 2.0` inside `tf.function` on an array of the same size,
        which allocates its output through TensorFlow's CPU allocator on
        every call (as every op does); best of `runs` after two warm-up
        calls.

    Args:
        mbytes: Array size in MB (1e6 bytes). Defaults to `512`.
        runs: Timed repetitions of each method. Defaults to `7`.

    Returns:
        A dict with `numpy_gbps`, `tf_gbps`, `mbytes`, `runs`, `method`.
    """
    import numpy as np
    import tensorflow as tf

    load_before = loadavg()
    n = mbytes * 1_000_000 // 4
    nbytes = n * 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    half = (nbytes // 2) // 64 * 64
    chunks = [(0, half), (half, nbytes - half)]
    src_ptr, dst_ptr = src.ctypes.data, dst.ctypes.data

    def copy_chunk(offset, size):
        ctypes.memmove(dst_ptr + offset, src_ptr + offset, size)

    best_numpy = float("inf")
    for _ in range(runs):
        threads = [
            threading.Thread(target=copy_chunk, args=chunk) for chunk in chunks
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best_numpy = min(best_numpy, time.perf_counter() - t0)
    if not np.array_equal(src[:: n // 997], dst[:: n // 997]):
        raise RuntimeError("copy_bandwidth: the threaded copy is wrong")
    del src, dst

    x = tf.ones([n], tf.float32)
    scale = tf.function(lambda x: x * 2.0)
    for _ in range(2):
        scale(x)
    best_tf = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        y = scale(x)
        best_tf = min(best_tf, time.perf_counter() - t0)
        del y
    del x
    return {
        "numpy_gbps": 2 * nbytes / best_numpy / 1e9,
        "tf_gbps": 2 * nbytes / best_tf / 1e9,
        "mbytes": mbytes,
        "runs": runs,
        "load_before": load_before,
        "load_after": loadavg(),
        "method": (
            "best of runs; bytes = read + written; numpy = 2 threads "
            "ctypes.memmove into a preallocated array; tf = x * 2.0 in "
            "tf.function"
        ),
    }


# -------------------------------------------------------------- results ----


@dataclasses.dataclass
class Column:
    """How report.py renders one key of a table's rows.

    `fmt` is one of "text", "ms", "gbps", "pct", "ratio", "gflops", "gb"
    (a size in GB, 1e9 bytes). A `group` column is left blank where it (and
    every group column before it) repeats the previous row, so row groups
    stand out.
    """

    key: str
    header: str
    fmt: str = "text"
    group: bool = False


class Table:
    """One results table: columns, rows, and the load while it was timed.

    Use it as a context manager around the timing loop, so that the load
    average (and the niced and steal shares of CPU ticks, i.e. competing
    low-priority jobs and the hypervisor) before and after is recorded.
    """

    def __init__(self, title, columns, description=""):
        self.title = title
        self.columns = list(columns)
        self.description = description
        self.rows = []
        self.notes = []
        self.load_before = self.load_after = None
        self.started_utc = None
        self._ticks = None
        self.cpu_shares = None

    def __enter__(self):
        self.started_utc = utc_now()
        self.load_before = loadavg()
        self._ticks = _cpu_ticks()
        return self

    def __exit__(self, *exc):
        self.load_after = loadavg()
        end = _cpu_ticks()
        if self._ticks and end and end[0] > self._ticks[0]:
            total = end[0] - self._ticks[0]
            self.cpu_shares = {
                "nice": (end[1] - self._ticks[1]) / total,
                "steal": (end[2] - self._ticks[2]) / total,
            }
        return False

    def to_json(self):
        return {
            "title": self.title,
            "description": self.description,
            "columns": [dataclasses.asdict(c) for c in self.columns],
            "rows": self.rows,
            "notes": self.notes,
            "started_utc": self.started_utc,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "cpu_shares": self.cpu_shares,
        }


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )


class Results:
    """Everything one family script measured in one process.

    Creating it records the machine and measures the copy bandwidth (both in
    this process, under this process's allocator setting).
    """

    def __init__(self, family, description, args):
        self.family = family
        self.description = description
        self.quick = args.quick
        self.rounds = args.rounds
        self.warmup = args.warmup
        self.started_utc = utc_now()
        self.machine = machine_info()
        if not self.machine["kbm_kernels_available"]:
            sys.exit(
                "keras_bigmodels fused kernels are unavailable: "
                f"{self.machine['kbm_kernels_reason']}"
            )
        print(f"[{family}/{allocator_setting()}] measuring copy bandwidth")
        self.copy = copy_bandwidth(QUICK_COPY_MB if args.quick else COPY_MB)
        self.shapes = {}
        self.tables = []

    @property
    def copy_gbps(self):
        """The copy bandwidth the "% of copy" columns divide by."""
        return self.copy["numpy_gbps"]

    def bench(self, variants, reference=None, agree=None, repeat=1):
        """`bench()` with this run's rounds and warm-up."""
        return bench(
            variants,
            rounds=self.rounds,
            warmup=self.warmup,
            reference=reference,
            agree=agree,
            repeat=repeat,
        )

    def table(self, title, columns, description=""):
        table = Table(title, columns, description)
        self.tables.append(table)
        return table

    def write(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "family": self.family,
            "description": self.description,
            "allocator": allocator_setting(),
            "quick": self.quick,
            "started_utc": self.started_utc,
            "finished_utc": utc_now(),
            "method": {"rounds": self.rounds, "warmup": self.warmup},
            "machine": self.machine,
            "copy_bandwidth": self.copy,
            "shapes": self.shapes,
            "tables": [t.to_json() for t in self.tables],
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"[{self.family}/{allocator_setting()}] wrote {path}")


def results_path(family, quick):
    """Where a family's results go unless --out says otherwise.

    Quick (smoke-test) results go to a temporary directory, so they never
    replace the real ones in benchmarks/results/.
    """
    directory = QUICK_RESULTS_DIR if quick else RESULTS_DIR
    return directory / f"{family}.{allocator_setting()}.json"


def parse_args(
    doc,
    argv=None,
    add_arguments=None,
    quick_rounds=QUICK_ROUNDS,
    quick_warmup=QUICK_WARMUP,
):
    """The command line every family script takes.

    Args:
        doc: The script's docstring (its first paragraph is the help text).
        argv: The arguments, or None for `sys.argv[1:]`.
        add_arguments: Optional callable taking the `argparse` parser, to
            add a family's own options. Defaults to `None`.
        quick_rounds, quick_warmup: The --quick protocol's defaults for
            --rounds and --warmup. Default to 3 and 1.
    """
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "small shapes and few rounds, for smoke tests; results go to "
            f"{QUICK_RESULTS_DIR} unless --out is given"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=(
            "results JSON (default: benchmarks/results/"
            "<family>.<allocator>.json)"
        ),
    )
    parser.add_argument("--rounds", type=int, help=f"default {ROUNDS}")
    parser.add_argument("--warmup", type=int, help=f"default {WARMUP}")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = quick_rounds if args.quick else ROUNDS
    if args.warmup is None:
        args.warmup = quick_warmup if args.quick else WARMUP
    if args.rounds < 1 or args.warmup < 1:
        parser.error("--rounds and --warmup must be >= 1")
    return args


# ------------------------------------------- memory-bound op tables ----

MEMORY_BOUND_COLUMNS = [
    Column("op", "op", group=True),
    Column("pass", "pass", group=True),
    Column("shape", "shape", group=True),
    Column("variant", "variant"),
    Column("ms", "median ms", "ms"),
    Column("gbps", "GB/s", "gbps"),
    Column("pct_copy", "% of copy", "pct"),
    Column("kbm_speedup", "kbm speed-up", "ratio"),
]


def memory_bound_rows(op, pass_, shape, results, kbm_name, nbytes, copy_gbps):
    """Rows for one memory-bound configuration, one per variant.

    Args:
        op, pass_, shape: What was measured ("LayerNorm", "fwd+bwd",
            [8192, 768]).
        results: `bench()`'s output, taken with `reference=kbm_name`.
        kbm_name: The name of the keras_bigmodels variant.
        nbytes: The minimal bytes one call moves.
        copy_gbps: The measured copy bandwidth.

    Returns:
        A list of row dicts with MEMORY_BOUND_COLUMNS' keys; `kbm_speedup`
        is the median per-round ratio (variant time / kbm time), None on the
        kbm row itself.
    """
    rows = []
    for name, m in results.items():
        rate = gbps(nbytes, m.median_ms)
        rows.append(
            {
                "op": op,
                "pass": pass_,
                "shape": "x".join(str(d) for d in shape),
                "variant": name,
                "kbm": name == kbm_name,
                "ms": m.median_ms,
                "gbps": rate,
                "pct_copy": 100.0 * rate / copy_gbps,
                "kbm_speedup": None if name == kbm_name else m.ratio,
                "bytes": nbytes,
                "times_ms": m.times_ms,
            }
        )
    return rows


def progress(family, message):
    print(f"[{family}/{allocator_setting()}] {message}", flush=True)
