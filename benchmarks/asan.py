"""Sanitizer runs: the op library built with ASan + UBSan, under the tests.

Builds the op library with AddressSanitizer and UndefinedBehaviorSanitizer
(`KBM_SANITIZE=address,undefined`, CPU only, -O1 -g; see setup.py) into
build/asan/keras_bigmodels/_kbm_ops.so -- never over the shipped library --
then runs test sets with that library loaded into Python:

* `LD_PRELOAD` of the compiler's libasan and libubsan (Python itself is not
  instrumented, and the ASan runtime must come first);
* `KERAS_BIGMODELS_OPS_LIBRARY` naming the sanitized library;
* `ASAN_OPTIONS`: leak detection off (CPython and TensorFlow keep memory
  until exit by design; leaks are checked elsewhere), stop at the first
  report, and write every report to a file per process, so reports from the
  subprocesses that some tests start are counted too;
* `UBSAN_OPTIONS`: stop at the first report, with a stack trace.

Each set runs on both Keras lines by default (`--keras-line`): Keras 3,
and tf-keras (`TF_USE_LEGACY_KERAS=1` in the test process), whose layers
call the kernels through other code paths. `--parallel N` runs N test
processes at a time (each process's CPU time is its own, from wait4).

Any sanitizer report, any failing test, or a test process that dies fails
the run. The results are written to benchmarks/results/reliability_asan.json
(one row per test set and Keras line: tests run, failed, sanitizer reports,
wall and CPU seconds), the build time in its notes.

Usage:
    python benchmarks/asan.py           # `make asan`: build + op, layer,
                                        # optimizer and distillation tests,
                                        # on Keras 3 and on tf-keras
    python benchmarks/asan.py --ci      # `make asan-ci`: the kernels' own
                                        # tests only (tests/ops/<family>_test),
                                        # on both Keras lines too
    python benchmarks/asan.py --keras-line tf-keras --sets layers
    python benchmarks/asan.py --no-build --sets ops -- -k layer_norm
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import _machine

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "asan"
LIBRARY = BUILD_DIR / "keras_bigmodels" / "_kbm_ops.so"
LOG_DIR = BUILD_DIR / "logs"
OBJ_DIR = ROOT / "build" / "kbm-objs-address-undefined"
RESULTS = ROOT / "benchmarks" / "results" / "reliability_asan.json"
CI_RESULTS = BUILD_DIR / "reliability_asan_ci.json"
SUPPRESSIONS = ROOT / "benchmarks" / "sanitizers"

# name -> pytest arguments. "ops" holds every kernel's own tests (forward,
# gradients, bad inputs at small shapes); the others drive the kernels
# through layers, optimizers and the distiller.
TEST_SETS = {
    "ops": ["tests/ops"],
    "layers": ["tests/layers"],
    "optimizers": ["tests/optimizers"],
    "distillation": ["tests/distillation"],
}
# CI: the kernels' own tests at small shapes, in one process. Left out (they
# run in `make asan`): the loader's tests, which check Python logic, and the
# runs of the baseline (AVX) SIMD variant, which each start another
# TensorFlow process; together they cost most of the time.
TEST_SETS["kernels"] = [
    *(
        f"tests/ops/{family}_test.py"
        for family in (
            "attention",
            "bias_activation",
            "distillation",
            "dropout",
            "normalization",
            "optimizers",
            "quantization",
        )
    ),
    "-k",
    "not avx_baseline",
]
FULL_SETS = ["ops", "layers", "optimizers", "distillation"]
CI_SETS = ["kernels"]
# Keras line -> (name in the results, environment of the test process).
KERAS_LINES = {
    "keras3": ("Keras 3", {}),
    "tf-keras": ("tf-keras", {"TF_USE_LEGACY_KERAS": "1"}),
}

REPORT_PATTERNS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "ERROR: LeakSanitizer",
)


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _runtime_libraries(cxx):
    """The sanitizer runtimes the library was linked against, ASan first."""
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(
            [cxx, f"-print-file-name={name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            raise SystemExit(f"{cxx} has no {name} (found {path!r})")
        libs.append(path)
    return libs


def build(jobs):
    """Builds the sanitized library; returns (seconds, CPU seconds, objs)."""
    env = {
        **os.environ,
        "KBM_SANITIZE": "address,undefined",
        "KBM_CUDA": "0",
        "KBM_BUILD_JOBS": str(jobs),
    }
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(BUILD_DIR),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    secs, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-20000:])
        raise SystemExit("the sanitizer build failed")
    compiled = proc.stdout.count("[kbm build] cc/")
    return secs, cpu, compiled


def sanitizer_env(set_dir, runtimes, line="keras3"):
    """The environment of a test process under the sanitizers."""
    asan = [
        "detect_leaks=0",
        "halt_on_error=1",
        "abort_on_error=1",
        "detect_stack_use_after_return=1",
        "check_initialization_order=1",
        "strict_init_order=1",
        f"log_path={set_dir / 'asan'}",
    ]
    ubsan = [
        "halt_on_error=1",
        "print_stacktrace=1",
        f"log_path={set_dir / 'ubsan'}",
    ]
    for name, opts in (("asan", asan), ("ubsan", ubsan)):
        supp = SUPPRESSIONS / f"{name}.supp"
        if supp.exists():
            opts.append(f"suppressions={supp}")
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.update(KERAS_LINES[line][1])
    env.update(
        LD_PRELOAD=":".join(runtimes),
        ASAN_OPTIONS=":".join(asan),
        UBSAN_OPTIONS=":".join(ubsan),
        KERAS_BIGMODELS_OPS_LIBRARY=str(LIBRARY),
        PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        ),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONFAULTHANDLER="1",
        # TensorFlow's default CPU allocator takes every tensor from malloc,
        # so each gets ASan's redzones; the pooling BFC allocator would hide
        # an overrun into a neighbouring tensor.
        TF_CPU_ALLOCATOR_USE_BFC="false",
    )
    return env


# A heap overflow in a child process, through libc's memset (intercepted by
# ASan): proves that the preload works and that a report is counted and
# fails the run, before any test set runs.
CANARY = (
    "import ctypes; libc = ctypes.CDLL(None); "
    "libc.malloc.restype = ctypes.c_void_p; p = libc.malloc(16); "
    "libc.memset(ctypes.c_void_p(p), 0, 17)"
)


def canary(runtimes):
    """Checks that a deliberate overflow is reported; returns a note."""
    set_dir = LOG_DIR / "canary"
    shutil.rmtree(set_dir, ignore_errors=True)
    set_dir.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-c", CANARY],
        env=sanitizer_env(set_dir, runtimes),
        capture_output=True,
        text=True,
    )
    texts = [p.read_text(errors="replace") for p in set_dir.iterdir()]
    reports = _count_reports(texts)
    if proc.returncode == 0 or reports != 1:
        raise SystemExit(
            "the sanitizer set-up does not catch a deliberate heap overflow "
            f"(exit {proc.returncode}, {reports} reports):\n"
            + proc.stderr[-3000:]
        )
    return (
        "Canary: a deliberate 1-byte heap overflow in a child process was "
        f"reported (exit {proc.returncode}) and counted before the tests ran."
    )


def _count_reports(texts):
    return sum(t.count(p) for t in texts for p in REPORT_PATTERNS)


def run_set(name, line, pytest_args, extra_args, runtimes):
    """Runs one test set on one Keras line under the sanitizers.

    Returns its result row.
    """
    set_dir = LOG_DIR / f"{name}-{line}"
    shutil.rmtree(set_dir, ignore_errors=True)
    set_dir.mkdir(parents=True)
    junit = set_dir / "junit.xml"
    log = set_dir / "pytest.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        *pytest_args,
        *extra_args,
    ]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=sanitizer_env(set_dir, runtimes, line),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        # wait4: this process's CPU time (and its waited-for children's),
        # also while other sets run at the same time.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - t0
    cpu = usage.ru_utime + usage.ru_stime
    report_files = sorted(
        p for p in set_dir.iterdir() if p.name.startswith(("asan.", "ubsan."))
    )
    texts = [log.read_text(errors="replace")]
    texts += [p.read_text(errors="replace") for p in report_files]
    # A report in a file is often echoed into the log by the test that ran
    # the process; count each report once, from the files when there are any.
    reports = _count_reports(texts[1:]) or _count_reports(texts[:1])
    tests = failed = skipped = 0
    if junit.exists():
        root = ET.parse(junit).getroot()
        for suite in root.iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(
                suite.get("errors", 0)
            )
            skipped += int(suite.get("skipped", 0))
    return {
        "name": name,
        "line": line,
        "args": pytest_args + extra_args,
        "rc": rc,
        "tests": tests - skipped,
        "failed": failed,
        "skipped": skipped,
        "reports": reports,
        "report_files": [str(p.relative_to(ROOT)) for p in report_files],
        "seconds": round(secs, 1),
        "cpu_seconds": round(cpu, 1),
        "log": str(log.relative_to(ROOT)),
    }


def _finished(row):
    """Prints a finished set's summary and its report files; returns it."""
    print(
        f"[asan] {row['name']} ({row['line']}): {row['tests']} tests, "
        f"{row['failed']} failed, {row['reports']} sanitizer reports, exit "
        f"{row['rc']}, {row['seconds']} s ({row['cpu_seconds']} CPU-s); log "
        f"{row['log']}",
        flush=True,
    )
    for path in row["report_files"]:
        print(f"--- {path}", flush=True)
        print((ROOT / path).read_text(errors="replace")[:6000], flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ci", action="store_true", help="only the kernels' own tests"
    )
    parser.add_argument(
        "--sets", nargs="+", choices=sorted(TEST_SETS), help="test sets"
    )
    parser.add_argument(
        "--keras-line",
        choices=["both", *KERAS_LINES],
        help="Keras line(s) of the test processes (default: both)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="test processes at a time (default 1)",
    )
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument(
        "--clean",
        action="store_true",
        help="rebuild every object (times a full build)",
    )
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("KBM_BUILD_JOBS", 2))
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"results file (default {RESULTS.relative_to(ROOT)}; with --ci "
        f"{CI_RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write the results"
    )
    parser.add_argument("pytest_args", nargs="*", help="after --")
    args = parser.parse_args(argv)
    out = args.out or (CI_RESULTS if args.ci else RESULTS)
    sets = args.sets or (CI_SETS if args.ci else FULL_SETS)
    line_arg = args.keras_line or "both"
    lines = list(KERAS_LINES) if line_arg == "both" else [line_arg]
    cxx = os.environ.get("KBM_CXX", "g++")
    runtimes = _runtime_libraries(cxx)
    notes = []
    build_cpu = 0.0
    if not args.no_build:
        if args.clean:
            shutil.rmtree(OBJ_DIR, ignore_errors=True)
        secs, build_cpu, compiled = build(args.jobs)
        notes.append(
            f"build: {compiled} objects compiled, {secs:.0f} s wall, "
            f"{build_cpu:.0f} CPU-s" + ("" if args.clean else " (incremental)")
        )
        print(f"[asan] {notes[-1]}", flush=True)
    if not LIBRARY.exists():
        raise SystemExit(f"{LIBRARY} is missing: run without --no-build")
    notes.append(canary(runtimes))
    print(f"[asan] {notes[-1]}", flush=True)
    jobs = [(name, line) for name in sets for line in lines]

    def run(job):
        name, line = job
        print(
            f"[asan] {name} ({line}): {' '.join(TEST_SETS[name])}", flush=True
        )
        return run_set(name, line, TEST_SETS[name], args.pytest_args, runtimes)

    with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as ex:
        futures = [ex.submit(run, job) for job in jobs]
        rows = []
        for future in concurrent.futures.as_completed(futures):
            rows.append(_finished(future.result()))
    # The table in a fixed order, whatever order --sets ran them in.
    rows.sort(
        key=lambda r: (list(TEST_SETS).index(r["name"]), r["line"] != "keras3")
    )
    total_cpu = build_cpu + sum(r["cpu_seconds"] for r in rows)
    described_lines = ", ".join(
        KERAS_LINES[line][0]
        + "".join(f" ({k}={v})" for k, v in KERAS_LINES[line][1].items())
        for line in lines
    )
    notes += [
        "Library: -fsanitize=address,undefined,float-cast-overflow -O1 -g "
        "-fno-omit-frame-pointer, CPU kernels only, loaded with LD_PRELOAD "
        f"of libasan and libubsan. Keras lines: {described_lines}; "
        f"{args.parallel} test process(es) at a time.",
        "ASAN_OPTIONS=detect_leaks=0 (CPython and TensorFlow keep memory "
        "until exit), halt_on_error=1, abort_on_error=1, "
        "detect_stack_use_after_return=1; UBSAN_OPTIONS=halt_on_error=1; "
        "TF_CPU_ALLOCATOR_USE_BFC=false (each tensor its own malloc block).",
        "Not checked by UBSan: null, nonnull-attribute and "
        "returns-nonnull-attribute (g++ 12 cannot compile TensorFlow's "
        "headers with them); ASan still reports a null dereference.",
        f"Total CPU time (build + tests): {total_cpu:.0f} s.",
    ]
    if (SUPPRESSIONS / "asan.supp").exists() or (
        SUPPRESSIONS / "ubsan.supp"
    ).exists():
        notes.append("Suppressions: benchmarks/sanitizers/*.supp.")
    else:
        notes.append("No suppressions.")
    result = {
        "topic": "asan",
        "title": "Sanitizer runs",
        "command": "make asan-ci" if args.ci else "make asan",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": _machine.describe(),
        "columns": [
            "test set",
            "Keras line",
            "tests run",
            "failed",
            "sanitizer reports",
            "seconds",
            "CPU seconds",
        ],
        "rows": [
            [
                " ".join(r["args"]),
                KERAS_LINES[r["line"]][0],
                r["tests"],
                r["failed"],
                r["reports"],
                r["seconds"],
                r["cpu_seconds"],
            ]
            for r in rows
        ],
        "notes": notes,
    }
    ok = all(
        r["rc"] == 0 and r["reports"] == 0 and r["failed"] == 0 for r in rows
    )
    if not args.no_write:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[asan] wrote {out}", flush=True)
    if not ok:
        print("[asan] FAILED: see the logs above", flush=True)
        return 1
    print("[asan] clean: no sanitizer reports, all tests passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
