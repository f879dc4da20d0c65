"""Runs every benchmark family under both allocators, then renders the report.

Each family script (`benchmarks/<family>.py`: every script here except the
harness, this driver and report.py) runs in a fresh subprocess once per
TensorFlow CPU allocator setting:

* default: `TF_CPU_ALLOCATOR_USE_BFC` unset (TensorFlow's malloc allocator);
* bfc: `TF_CPU_ALLOCATOR_USE_BFC=true` (TensorFlow's pooling allocator).

A family script can restrict this with a module-level tuple, e.g.
`ALLOCATORS = ("default",)` (read from its source with `ast`, without
importing it): it then runs only under those settings.

The runs are strictly sequential (never two at once: each already keeps all
cores busy). Each writes `benchmarks/results/<family>.<allocator>.json`;
then `report.py` renders BENCHMARKS.md at the repository root from all the
results there.

With `--quick` (small shapes, 3 rounds; a smoke test that takes about a
minute), the results go to a temporary directory that is deleted afterwards,
and the report is printed to stdout: quick results never replace real ones
and never reach BENCHMARKS.md.

Usage:
    python benchmarks/run_all.py                      # everything (make bench)
    python benchmarks/run_all.py --only normalization bias_activation
    python benchmarks/run_all.py --quick
"""

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report

BENCH_DIR = Path(__file__).resolve().parent
# Scripts in benchmarks/ that are not benchmark families: the report
# generators and the reliability checks and experiments (run by their own
# make targets: asan, fuzz, reliability-safe, soak, distill-experiment).
NOT_FAMILIES = {
    "report",
    "run_all",
    "reliability",
    "reliability_safe",
    "soak",
    "asan",
    "fuzz",
    "distillation_experiment",
}
ALLOCATORS = {"default": None, "bfc": "true"}
ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def discover_families():
    """Family scripts in benchmarks/, in the report's order."""
    names = [
        p.stem
        for p in BENCH_DIR.glob("*.py")
        if not p.stem.startswith("_") and p.stem not in NOT_FAMILIES
    ]
    preferred = [f for f in report.FAMILY_ORDER if f in names]
    return preferred + sorted(set(names) - set(preferred))


def family_allocators(family):
    """The allocator settings a family runs under, in ALLOCATORS' order.

    A family script may declare a module-level `ALLOCATORS = (...)`, a
    literal tuple or list of names from ALLOCATORS; without one it runs
    under all of them.
    """
    path = BENCH_DIR / f"{family}.py"
    for node in ast.parse(path.read_text(), str(path)).body:
        if not isinstance(node, ast.Assign):
            continue
        if not any(
            isinstance(t, ast.Name) and t.id == "ALLOCATORS"
            for t in node.targets
        ):
            continue
        declared = ast.literal_eval(node.value)
        if isinstance(declared, str) or not set(declared) <= set(ALLOCATORS):
            raise SystemExit(
                f"{path.name}: ALLOCATORS must be a tuple of names from "
                f"{list(ALLOCATORS)}. Received: {declared!r}"
            )
        return [a for a in ALLOCATORS if a in declared]
    return list(ALLOCATORS)


def run_family(family, allocator, results_dir, quick):
    """Runs one family script in a fresh process under one allocator."""
    env = dict(os.environ)
    env.pop(ALLOCATOR_ENV, None)
    if ALLOCATORS[allocator] is not None:
        env[ALLOCATOR_ENV] = ALLOCATORS[allocator]
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = results_dir / f"{family}.{allocator}.json"
    cmd = [sys.executable, str(BENCH_DIR / f"{family}.py"), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    print(f"== {family}, {allocator} allocator", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"{family} ({allocator} allocator) failed with exit status "
            f"{done.returncode}; the report was not rendered"
        )
    print(f"== {family}, {allocator} allocator: {elapsed:.0f} s", flush=True)
    return elapsed


def run(families, allocators, results_dir, quick):
    results_dir.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for family in families:
        declared = family_allocators(family)
        for allocator in allocators:
            if allocator not in declared:
                print(
                    f"== {family}, {allocator} allocator: skipped (the "
                    f"family declares ALLOCATORS = {tuple(declared)})",
                    flush=True,
                )
                continue
            total += run_family(family, allocator, results_dir, quick)
    print(f"== all runs: {total:.0f} s", flush=True)


def main(argv=None):
    families = discover_families()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=families,
        metavar="FAMILY",
        help=f"run only these families (of: {', '.join(families)})",
    )
    parser.add_argument(
        "--allocator",
        nargs="+",
        choices=list(ALLOCATORS),
        default=list(ALLOCATORS),
        help=(
            "run only under these allocator settings (default: both, or "
            "those a family declares in its ALLOCATORS)"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: small shapes, 3 rounds, report to stdout only",
    )
    args = parser.parse_args(argv)
    selected = [f for f in families if f in (args.only or families)]
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="kbm-bench-quick-") as tmp:
            run(selected, args.allocator, Path(tmp), quick=True)
            print()
            sys.stdout.write(report.render(tmp))
    else:
        run(selected, args.allocator, report.RESULTS_DIR, quick=False)
        report.main([])


if __name__ == "__main__":
    main()
