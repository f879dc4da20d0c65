"""Runs the property-based fuzz tests per op family and records the counts.

Each family's `tests/ops/<family>_fuzz_test.py` runs in its own pytest
process with the hypothesis profile given (default "long", 100,000 examples
per test). `--examples-per-family N` splits N examples evenly among a
family's tests instead. `--seconds-per-family` bounds a family's time: its
tests share the budget and each ends (as a skip) when its share is spent,
so the recorded example count is what really ran. Examples are counted by the
tests themselves (`tests/ops/_fuzz.py`), failures by pytest (JUnit XML).
Writes benchmarks/results/reliability_fuzz.json.

    KBM_HYPOTHESIS_PROFILE=long python benchmarks/fuzz.py
    python benchmarks/fuzz.py --seconds-per-family 600 --families attention
    python benchmarks/fuzz.py --examples-per-family 100000
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import _machine

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests" / "ops"
OUTPUT = REPO_ROOT / "benchmarks" / "results" / "reliability_fuzz.json"
COLUMNS = [
    "op family",
    "tests",
    "examples",
    "seconds",
    "examples/s",
    "failures",
    "tests ended by the time budget",
    "time budget (s)",
    "finished (UTC)",
]
FAILURES = COLUMNS.index("failures")


def families():
    return sorted(
        p.name[: -len("_fuzz_test.py")]
        for p in TESTS_DIR.glob("*_fuzz_test.py")
    )


_CASE_START = re.compile(
    r"(Falsifying example|Failing test case|Failing explicit example): "
)


def falsifying(output):
    """The failing examples hypothesis printed, one compact line each."""
    found = []
    lines = [re.sub(r"^(E|\s*\|)\s?", "", x) for x in output.splitlines()]
    for i, line in enumerate(lines):
        match = _CASE_START.search(line)
        if not match:
            continue
        text, depth = line[match.end() :], 0
        for j in range(i, len(lines)):
            part = lines[j] if j > i else text
            part = re.sub(r"\s+#.*$", "", part).strip()
            text = part if j == i else text + " " + part
            depth += part.count("(") - part.count(")")
            if depth <= 0 and part.endswith(")"):
                break
        error = next(
            (
                lines[k].strip()
                for k in range(i - 1, max(-1, i - 8), -1)
                if re.search(r"\w+Error: ", lines[k])
            ),
            "",
        )
        text = re.sub(r"\s+", " ", text)[:600]
        found.append(f"{text} ({error[:240]})" if error else text)
    return found


def run_family(family, profile, seconds, examples, python):
    path = TESTS_DIR / f"{family}_fuzz_test.py"
    n_tests = len(re.findall(r"^def test_", path.read_text(), re.M))
    with tempfile.TemporaryDirectory() as tmp:
        counts_path = Path(tmp) / "counts.json"
        junit = Path(tmp) / "junit.xml"
        env = dict(
            os.environ,
            KBM_HYPOTHESIS_PROFILE=profile,
            KBM_FUZZ_COUNTS=str(counts_path),
            PYTHONPATH=os.pathsep.join(
                [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        )
        if seconds:
            env["KBM_FUZZ_TEST_SECONDS"] = str(seconds / n_tests)
        if examples:
            env["KBM_FUZZ_EXAMPLES_PER_TEST"] = str(-(-examples // n_tests))
        cmd = [
            python,
            "-m",
            "pytest",
            str(path.relative_to(REPO_ROOT)),
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
        ]
        start = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        elapsed = time.monotonic() - start
        counts = (
            json.loads(counts_path.read_text())
            if counts_path.exists()
            else {"examples": {}, "failing": {}}
        )
        failed = skipped = 0
        if junit.exists():
            for case in ET.parse(junit).getroot().iter("testcase"):
                if case.find("failure") is not None:
                    failed += 1
                elif case.find("error") is not None:
                    failed += 1
                elif case.find("skipped") is not None:
                    skipped += 1
        elif proc.returncode:
            failed = n_tests  # pytest itself failed (crash, import error)
    if proc.returncode not in (0, 1):
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    elif failed:
        print(proc.stdout[-6000:], file=sys.stderr)
    cases = falsifying(proc.stdout)
    examples = sum(counts["examples"].values())
    print(
        f"{family}: {examples} examples in {elapsed:.0f} s, "
        f"{failed} failing tests (pytest exit {proc.returncode})",
        flush=True,
    )
    finished = datetime.datetime.now(datetime.timezone.utc)
    row = [
        family,
        n_tests,
        examples,
        round(elapsed, 1),
        round(examples / elapsed, 1) if elapsed else 0.0,
        failed,
        skipped,
        seconds if seconds else "none",
        finished.isoformat(timespec="seconds"),
    ]
    return row, [f"{family}: {c}" for c in cases]


def _as_columns(row, columns):
    """A row of an earlier output (its `columns`) in today's COLUMNS."""
    by_name = dict(zip(columns, row))
    return [by_name.get(c, "") for c in COLUMNS]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--profile",
        default=os.environ.get("KBM_HYPOTHESIS_PROFILE", "long"),
    )
    parser.add_argument(
        "--seconds-per-family",
        type=float,
        default=float(os.environ.get("KBM_FUZZ_SECONDS", "0")),
        help="time budget of each family (0: none, run every example)",
    )
    parser.add_argument(
        "--examples-per-family",
        type=int,
        default=0,
        help="split this many examples among a family's tests (long "
        "profile; 0: the profile's own budget per test)",
    )
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument(
        "--jobs", type=int, default=1, help="families run at once"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other families' rows of an existing output file",
    )
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    names = args.families or families()
    started = datetime.datetime.now(datetime.timezone.utc)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(
            pool.map(
                lambda f: run_family(
                    f,
                    args.profile,
                    args.seconds_per_family,
                    args.examples_per_family,
                    sys.executable,
                ),
                names,
            )
        )
    rows = [row for row, _ in results]
    cases = [case for _, family_cases in results for case in family_cases]
    import hypothesis  # noqa: PLC0415 - only for its version

    budget = args.seconds_per_family
    per_family = args.examples_per_family
    result = {
        "topic": "fuzz",
        "title": "Property-based fuzzing",
        "command": "make fuzz",
        "date": started.isoformat(timespec="seconds"),
        "machine": _machine.describe(),
        "columns": COLUMNS,
        "rows": rows,
        "notes": [
            f"hypothesis {hypothesis.__version__}, profile "
            f"'{args.profile}' (tests/conftest.py); one pytest process "
            "per family, Keras 3 line (the ops do not depend on the "
            "Keras line)."
            + (
                f" Example budget {per_family:,} per family, split evenly "
                "among its tests (hypothesis's max_examples per test; a "
                "test whose strategies run out of distinct examples stops "
                "earlier)."
                if per_family
                else ""
            ),
            (
                f"Time budget {budget:g} s per family, shared by its tests; "
                "a test whose share ran out before its example budget ends "
                "as a skip and its examples so far are counted."
                if budget
                else "No time budget: every test ran its full example budget."
            ),
            f"This driver ran {args.jobs} family process(es) at a time "
            "(other work may share the machine: rates depend on its load); "
            "seconds: the family's pytest process from start (imports "
            "included) to end, examples/s = examples / seconds.",
            "examples: test-function calls counted by tests/ops/_fuzz.py "
            "(explicit @example regressions included); failures: tests "
            "that failed or errored (pytest JUnit XML). Each test checks "
            "no crash, kernel vs reference within the op's tolerances, "
            "non-finite outputs only where the reference has them, and "
            "errors naming the tensor for inconsistent inputs.",
            f"Started {started.isoformat(timespec='seconds')}, finished "
            f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}.",
        ],
    }
    if cases:
        result["notes"].append(
            "Failing examples (as hypothesis printed them): " + "; ".join(cases)
        )
    out = Path(args.output)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        kept = [
            _as_columns(r, previous["columns"])
            for r in previous["rows"]
            if r[0] not in names
        ]
        result["rows"] = sorted(kept + rows)
        if kept:
            result["notes"].append(
                f"Rows of {', '.join(names)} from this run; the others "
                f"({', '.join(r[0] for r in kept)}) from earlier runs "
                "(finished as their last column says; the latest of them "
                f"started {previous['date']}), each with the time budget "
                "of its row."
            )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 1 if any(r[FAILURES] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
