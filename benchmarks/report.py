"""Renders BENCHMARKS.md from the results JSON files of the family scripts.

Reads every `benchmarks/results/*.json` (one per family and allocator
setting, written by `benchmarks/<family>.py`) and writes `BENCHMARKS.md` at
the repository root: the machine, the software, the copy bandwidth measured
in each run, the method, then one section per family with each of its
tables once per allocator setting. Nothing here is family-specific: a new
op family only adds its script (and its results), then re-renders.

`benchmarks/results/gpu_<machine>.json` files are GPU runs: the `bench.json`
that `gpu_harness/run_device.sh` writes on a GPU machine (kbm's CUDA
launchers against PyTorch's kernels, without TensorFlow). Each becomes a GPU
section at the end: device, driver, CUDA and PyTorch versions, the measured
copy bandwidth and bf16 matmul rate, and per case the times, the ratio to
PyTorch and the rate against those ceilings.

README.md may hold a block per family between the comments
`<!-- bench-summary:FAMILY:start ... -->` and
`<!-- bench-summary:FAMILY:end -->`: writing BENCHMARKS.md also rewrites
those blocks with that family's notes
(the targets and what each run reached), so README's measured figures come
from the same results and are never typed by hand.

Usage:
    python benchmarks/report.py                  # writes BENCHMARKS.md
    python benchmarks/report.py --stdout         # prints it instead
    python benchmarks/report.py --results-dir DIR --stdout
"""

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
OUTPUT = BENCH_DIR.parent / "BENCHMARKS.md"
README = BENCH_DIR.parent / "README.md"

# Families listed first, in this order; any other family follows by name.
FAMILY_ORDER = [
    "normalization",
    "bias_activation",
    "attention",
    "quantization",
]
ALLOCATOR_ORDER = ["default", "bfc"]
ALLOCATOR_LABEL = {
    "default": "default allocator (`TF_CPU_ALLOCATOR_USE_BFC` unset)",
    "bfc": "BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`)",
}


def load_results(results_dir):
    runs = []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name.startswith("gpu_"):
            continue  # GPU runs: see load_gpu_results.
        if path.name.startswith("reliability_"):
            continue  # RELIABILITY.md's figures, not benchmarks.
        run = json.loads(path.read_text())
        run["_file"] = path.name
        runs.append(run)
    return runs


def _order(items, preferred, key):
    def rank(item):
        name = key(item)
        if name in preferred:
            return (0, preferred.index(name), "")
        return (1, 0, name)

    return sorted(items, key=rank)


# ------------------------------------------------------------ formatting ----


def fmt_value(value, fmt):
    if value is None:
        return "–"
    if fmt == "text":
        return str(value)
    if fmt == "ms":
        if value >= 100:
            return f"{value:.0f}"
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if fmt == "gbps":
        return f"{value:.1f}"
    if fmt == "gflops":
        return f"{value:.0f}"
    if fmt == "gb":
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"
    if fmt == "pct":
        return f"{value:.1f} %" if abs(value) < 10 else f"{value:.0f} %"
    if fmt == "ratio":
        return f"{value:.2f}×"
    if fmt == "gpu_ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    raise ValueError(f"unknown column format {fmt!r}")


def fmt_load(load):
    return "?" if not load else f"{load[0]:.2f}"


def markdown_table(columns, rows):
    """A markdown table; group columns blank out repeats, kbm rows in bold."""
    lines = [
        "| " + " | ".join(c["header"] for c in columns) + " |",
        "|"
        + "|".join("---" if c["fmt"] == "text" else "---:" for c in columns)
        + "|",
    ]
    previous = None
    for row in rows:
        cells = []
        same_group = previous is not None
        for c in columns:
            text = fmt_value(row.get(c["key"]), c["fmt"])
            if c.get("group"):
                same_group = same_group and row.get(c["key"]) == previous.get(
                    c["key"]
                )
                if same_group:
                    text = ""
            elif row.get("kbm") and c["key"] == "variant":
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
        previous = row
    return "\n".join(lines)


def _distinct(runs, get):
    values = []
    for run in runs:
        value = get(run)
        if value is not None and value not in values:
            values.append(value)
    return "; ".join(str(v) for v in values) if values else "?"


def _shapes(shapes):
    if isinstance(shapes, dict):
        return "; ".join(f"{k} {_shapes(v)}" for k, v in shapes.items())
    if shapes and isinstance(shapes[0], list):
        return ", ".join(_shapes(s) for s in shapes)
    return "[" + ", ".join(str(d) for d in shapes) + "]"


# ----------------------------------------------------------------- render ----


def render_header(runs):
    def m(key):
        return _distinct(runs, lambda r: r["machine"].get(key))

    rounds = _distinct(runs, lambda r: r["method"]["rounds"])
    warmup = _distinct(runs, lambda r: r["method"]["warmup"])
    started = min(r["started_utc"] for r in runs)
    finished = max(r["finished_utc"] for r in runs)
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python benchmarks/run_all.py` from "
        "benchmarks/results/*.json. Do not edit by hand. -->",
        "",
        "This file is generated by `python benchmarks/run_all.py` (`make "
        "bench`) from `benchmarks/results/*.json`; it is never edited by "
        "hand. To change it, change the scripts in `benchmarks/` and "
        "re-run them.",
        "",
    ]
    if any(r.get("quick") for r in runs):
        out += [
            "> **QUICK SMOKE-TEST RESULTS** (`--quick`: small shapes, few "
            "rounds). Not measurements to quote.",
            "",
        ]
    out += [
        "## Machine and method",
        "",
        f"- **Machine:** {m('cpu_model')}, {m('cpus')} CPUs "
        f"({m('threads_per_core')} thread(s) per core, hypervisor "
        f"{m('hypervisor')}).",
        f"- **Software:** Python {m('python')}, TensorFlow {m('tensorflow')}, "
        f"Keras {m('keras')} ({m('keras_line')}), NumPy {m('numpy')}, "
        f"keras_bigmodels {m('keras_bigmodels')} (git {m('git')}); "
        f"fused kernels: `{m('kbm_kernels_info')}`.",
        f"- **When:** {started} to {finished}.",
        f"- **Timing:** every variant is warmed up ({warmup} call(s), which "
        "cover `tf.function` tracing and XLA compilation), then all "
        "variants of a configuration are called round-robin in the same "
        f"process (A, B, C, A, B, C, ...) for {rounds} rounds, each call "
        "timed with `time.perf_counter()` (TensorFlow's CPU execution is "
        "synchronous; every call returns its outputs, so nothing is "
        "pruned). Times are the **median** over the rounds. Ratios "
        "(speed-ups, epilogue cost) are the **median of the per-round "
        "ratios** between variants timed in the same rounds. Before "
        "timing, the variants that compute the same thing are checked to "
        "return the same outputs (y and every gradient, max difference "
        "<= 1e-4 relative).",
        '- **Reading the tables:** "kbm speed-up" is a stock variant\'s '
        "time divided by the keras_bigmodels variant's (above 1: kbm is "
        "faster); the keras_bigmodels rows are in bold.",
        '- **Placement:** everything runs inside `tf.function`; "XLA" '
        'means `tf.function(jit_compile=True)`. "fwd+bwd" is one '
        "`tf.GradientTape` step that returns y and the gradients w.r.t. "
        "the input and the parameters, with dy supplied through "
        "`output_gradients`.",
        "- **Load:** each table gives `/proc/loadavg` (1-minute) before → "
        "after its rounds, and the share of CPU ticks spent in niced "
        "processes and in steal while it ran. The benchmark itself keeps "
        "both cores busy, so a load of about 2 means the machine was ours.",
        "- **Allocator:** each family runs twice, in separate processes "
        "(unless its section says it runs under one setting only): "
        "with TensorFlow's default CPU allocator (malloc; large buffers "
        "are returned to the OS and page-faulted in again on every call) "
        "and with `TF_CPU_ALLOCATOR_USE_BFC=true` (TensorFlow's pooling "
        "allocator). Compare variants only within one table: the fused "
        "kernels allocate through the same allocator as the stock ops.",
        "- **Bytes:** effective GB/s counts the minimal bytes an op must "
        'move; "% of copy" divides it by the copy bandwidth measured in '
        "the same process (below, numpy column).",
        "",
        "### Copy bandwidth",
        "",
        "Measured at the start of each run, in its own process. Bytes = "
        "read + written; best of several runs. *numpy*: a float32 array "
        "copied into a preallocated destination, the two halves by two "
        'Python threads with `ctypes.memmove` (this is the "measured copy '
        'bandwidth" of the % columns). *TF*: `x * 2.0` in `tf.function` '
        "on the same size, which allocates its output on every call.",
        "",
        "| run | allocator | array | numpy copy, 2 threads | TF `x * 2.0` "
        "| load |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        copy = run["copy_bandwidth"]
        out.append(
            f"| {run['family']} | {run['allocator']} | {copy['mbytes']} MB "
            f"| {copy['numpy_gbps']:.1f} GB/s | {copy['tf_gbps']:.1f} GB/s "
            f"| {fmt_load(copy.get('load_before'))} → "
            f"{fmt_load(copy.get('load_after'))} |"
        )
    out.append("")
    return out


def _table_caption(run, table):
    shares = table.get("cpu_shares") or {}
    parts = [
        f"load {fmt_load(table.get('load_before'))} → "
        f"{fmt_load(table.get('load_after'))}",
    ]
    if shares:
        parts.append(f"niced {shares['nice']:.2f}, steal {shares['steal']:.2f}")
    parts.append(f"copy {run['copy_bandwidth']['numpy_gbps']:.1f} GB/s")
    parts.append(f"started {table.get('started_utc', '?')}")
    label = ALLOCATOR_LABEL.get(run["allocator"], run["allocator"])
    return f"**{label}** — {'; '.join(parts)}"


def render_family(family, runs):
    runs = _order(runs, ALLOCATOR_ORDER, key=lambda r: r["allocator"])
    first = runs[0]
    out = [f"## {family}", ""]
    if first.get("description"):
        out += [first["description"].strip(), ""]
    out += [
        f"Script: `benchmarks/{family}.py`. Shapes: "
        f"{_shapes(first.get('shapes', {}))}. "
        f"{first['method']['rounds']} rounds after "
        f"{first['method']['warmup']} warm-up call(s) per variant.",
        "",
    ]
    titles = []
    for run in runs:
        for table in run["tables"]:
            if table["title"] not in titles:
                titles.append(table["title"])
    for title in titles:
        out += [f"### {title}", ""]
        described = False
        for run in runs:
            table = next(
                (t for t in run["tables"] if t["title"] == title), None
            )
            if table is None:
                continue
            if not described and table.get("description"):
                out += [table["description"], ""]
                described = True
            out += [
                _table_caption(run, table),
                "",
                markdown_table(table["columns"], table["rows"]),
                "",
            ]
            for note in table.get("notes", []):
                out += [f"- {note}"]
            if table.get("notes"):
                out.append("")
    return out


def load_gpu_results(results_dir):
    runs = []
    for path in sorted(Path(results_dir).glob("gpu_*.json")):
        run = json.loads(path.read_text())
        run["_file"] = path.name
        runs.append(run)
    return runs


# -------------------------------------------------------------------- GPU ----

GPU_COLUMNS = [
    {"key": "family", "header": "family", "fmt": "text", "group": True},
    {"key": "op", "header": "op", "fmt": "text"},
    {"key": "case", "header": "case", "fmt": "text"},
    {"key": "dtype", "header": "dtype", "fmt": "text"},
    {"key": "shape", "header": "shape", "fmt": "text"},
    {"key": "kbm_ms", "header": "kbm ms", "fmt": "gpu_ms"},
    {"key": "torch_ms", "header": "PyTorch ms", "fmt": "gpu_ms"},
    {"key": "torch_impl", "header": "PyTorch kernel", "fmt": "text"},
    {"key": "speedup", "header": "PyTorch / kbm", "fmt": "ratio"},
    {"key": "rate", "header": "kbm rate", "fmt": "text"},
    {"key": "pct", "header": "% of ceiling", "fmt": "pct"},
]


def _gpu_shape(shape):
    if not shape:
        return None
    return shape if isinstance(shape, str) else _shapes(shape)


def gpu_rows(run):
    """Table rows of a GPU run: derived columns from each case."""
    ceilings = run.get("ceilings") or {}
    copy, matmul = ceilings.get("copy_tbps"), ceilings.get("bf16_tflops")
    rows = []
    for case in run.get("cases", []):
        ms, torch_ms = case.get("kbm_ms"), case.get("torch_ms")
        row = {
            "family": case.get("family"),
            "op": case.get("op"),
            "case": case.get("case"),
            "dtype": case.get("dtype"),
            "shape": _gpu_shape(case.get("shape")),
            "kbm_ms": ms,
            "torch_ms": torch_ms,
            "torch_impl": case.get("torch_impl"),
            "speedup": torch_ms / ms if ms and torch_ms else None,
            "rate": None,
            "pct": None,
        }
        if ms and case.get("bytes"):
            tbps = case["bytes"] / ms / 1e9
            row["rate"] = f"{tbps:.2f} TB/s"
            row["pct"] = 100 * tbps / copy if copy else None
        elif ms and case.get("flops"):
            tflops = case["flops"] / ms / 1e9
            row["rate"] = f"{tflops:.0f} TFLOP/s"
            row["pct"] = 100 * tflops / matmul if matmul else None
        rows.append(row)
    return rows


def render_gpu(run):
    """The GPU section of one run of gpu_harness/bench.py."""
    dev = run.get("device") or {}
    ceil = run.get("ceilings") or {}
    name = dev.get("name") or dev.get("smi_name") or "unknown GPU"
    out = [f"## GPU: {name}", ""]
    if run.get("quick"):
        out += [
            "> **QUICK SMOKE-TEST RESULTS** (`--quick`). Not measurements "
            "to quote.",
            "",
        ]
    out += [
        f"Measured by `gpu_harness/run_device.sh` (`gpu_harness/bench.py`, "
        f"file `benchmarks/results/{run.get('_file', '?')}`) on "
        f"{run.get('date', '?')}: kbm's CUDA launchers, built with nvcc "
        f"{dev.get('nvcc', '?')} and called through the TensorFlow-free "
        "harness, against PyTorch's own kernels in the same process.",
        "",
        f"- **Device:** {name} (compute capability "
        f"{dev.get('capability', '?')}, {dev.get('multiprocessors', '?')} "
        f"SMs, {dev.get('memory_gib', '?')} GiB), driver "
        f"{dev.get('driver', '?')}, max SM clock "
        f"{dev.get('max_sm_clock', '?')}, power limit "
        f"{dev.get('power_limit', '?')}.",
        f"- **Software:** CUDA {dev.get('torch_cuda', '?')} (PyTorch's), "
        f"nvcc {dev.get('nvcc', '?')}, PyTorch {dev.get('torch', '?')}, "
        f"Python {dev.get('python', '?')}.",
    ]
    if ceil.get("copy_tbps"):
        out.append(
            f"- **Ceilings, measured in the same run:** device-to-device "
            f"copy {ceil['copy_tbps']:.2f} TB/s (bytes read + written, "
            f"{ceil['copy_bytes'] / 2**30:.0f} GiB moved), bf16 matmul "
            f"{ceil['bf16_tflops']:.0f} TFLOP/s "
            f"({'×'.join(map(str, ceil.get('matmul_shape', [])))})."
        )
    elif ceil.get("error"):
        out.append("- **Ceilings:** not measured (error).")
    out += [
        "- **Timing:** CUDA events around each call after warm-up; the "
        "median of the timed calls. *PyTorch / kbm* is PyTorch's time "
        "divided by kbm's (above 1: kbm is faster). *kbm rate* counts the "
        "minimal bytes an op must move (TB/s) or its FLOPs (TFLOP/s); "
        "*% of ceiling* divides it by the copy bandwidth or the bf16 "
        "matmul rate above.",
        "",
    ]
    failed = {
        f: e
        for f, e in (run.get("families") or {}).items()
        if e.get("status") != "ok"
    }
    rows = gpu_rows(run)
    if rows:
        out += [markdown_table(GPU_COLUMNS, rows), ""]
    for family, entry in failed.items():
        error = (entry.get("error") or "").strip().splitlines()
        last = error[-1] if error else entry.get("status", "?")
        out.append(
            f"- **{family}**: {entry.get('status', '?')}, "
            f"{entry.get('cases', 0)} case(s) measured (`{last}`)."
        )
    if failed:
        out.append("")
    return out


def render(results_dir=RESULTS_DIR):
    """The whole of BENCHMARKS.md, from the results in `results_dir`."""
    runs = load_results(results_dir)
    gpu_runs = load_gpu_results(results_dir)
    if not runs:
        raise SystemExit(f"no results (*.json) in {results_dir}")
    runs = _order(
        runs,
        FAMILY_ORDER,
        key=lambda r: r["family"],
    )
    families = {}
    for run in runs:
        families.setdefault(run["family"], []).append(run)
    header_runs = [
        r
        for runs_ in families.values()
        for r in _order(runs_, ALLOCATOR_ORDER, key=lambda r: r["allocator"])
    ]
    out = render_header(header_runs)
    for family, family_runs in families.items():
        out += render_family(family, family_runs)
    for run in gpu_runs:
        out += render_gpu(run)
    return "\n".join(out).rstrip() + "\n"


def render_summary(family, runs):
    """README's block for `family`: per table of its default-allocator
    run, the notes (targets and the ratios reached), and when it ran."""
    run = _order(runs, ALLOCATOR_ORDER, key=lambda r: r["allocator"])[0]
    rows = [
        {"table": table["title"], "note": note}
        for table in run["tables"]
        for note in table.get("notes", [])
    ]
    columns = [
        {"header": "table", "key": "table", "fmt": "text", "group": True},
        {"header": "result", "key": "note", "fmt": "text"},
    ]
    out = [
        f"Measured by `benchmarks/{family}.py` on {run['machine']['cpu_model']}"
        f" x {run['machine']['cpus']}, {run.get('started_utc', '?')}, "
        f"load {fmt_load(run['tables'][0].get('load_before'))} "
        f"(all figures, shapes and peers: the `{family}` section of "
        "[BENCHMARKS.md](BENCHMARKS.md)):",
        "",
        markdown_table(columns, rows),
    ]
    return "\n".join(out)


def update_readme(results_dir=RESULTS_DIR, readme=README):
    """Rewrites README's `bench-summary` blocks; returns their families."""
    if not readme.exists():
        return []
    text = readme.read_text()
    families = {}
    for run in load_results(results_dir):
        families.setdefault(run["family"], []).append(run)
    done = []
    for family, runs in families.items():
        start = f"<!-- bench-summary:{family}:start"
        end = f"<!-- bench-summary:{family}:end -->"
        if start not in text:
            continue
        head = text.index(start)
        head = text.index("-->", head) + len("-->")
        tail = text.index(end, head)
        text = (
            text[:head]
            + "\n"
            + render_summary(family, runs)
            + "\n"
            + text[tail:]
        )
        done.append(family)
    readme.write_text(text)
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the results JSON files are (default: benchmarks/results)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=OUTPUT,
        help="the markdown file to write (default: BENCHMARKS.md)",
    )
    parser.add_argument(
        "--stdout",
        action="store_true",
        help="print the report instead of writing it",
    )
    args = parser.parse_args(argv)
    text = render(args.results_dir)
    quick = any(
        r.get("quick")
        for r in load_results(args.results_dir)
        + load_gpu_results(args.results_dir)
    )
    if quick and not args.stdout and args.output.resolve() == OUTPUT:
        parser.error(
            "these are --quick results; they never go into BENCHMARKS.md "
            "(use --stdout, or --output elsewhere)"
        )
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}")
        if args.output.resolve() == OUTPUT:
            for family in update_readme(args.results_dir):
                print(f"wrote README.md's {family} summary")


if __name__ == "__main__":
    main()
