"""Safe loading and serving inputs: runs the checks, writes their figures.

Runs the safe-loading tests on both Keras lines (Keras 3, then tf-keras
with TF_USE_LEGACY_KERAS=1), reads pytest's JUnit XML, and writes
benchmarks/results/reliability_safe.json: one row per check and Keras
line with the number of cases and how many passed. Nothing is typed by
hand; rerun to regenerate:

    python benchmarks/reliability_safe.py
"""

import collections
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import _machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "results", "reliability_safe.json")

# Test file -> (check, what one case is).
CHECKS = {
    "tests/saving/safe_mode_test.py": (
        "registered kbm classes saved to .keras and loaded with "
        "safe_mode=True, same outputs",
        "class",
    ),
    "tests/saving/tampered_config_test.py": (
        "tampered config.json (unknown class, wrong type, negative/zero "
        "size, shape mismatch, missing key): ValueError/TypeError naming "
        "the field",
        "edit",
    ),
    "tests/export/serving_inputs_test.py": (
        "SavedModel serving_default called with wrong dtype, rank, shape, "
        "batch, missing/unknown input (stock_ops=True and False)",
        "call",
    ),
    "tests/distillation/cache_test.py": (
        "teacher cache files: foreign, truncated, flipped bytes, wrong "
        "version/header, pickle-bearing .npy/.npz refused",
        "file",
    ),
}
LINES = {"keras3": {}, "tf-keras": {"TF_USE_LEGACY_KERAS": "1"}}


def _run(line, env_extra):
    """Runs the check files on one Keras line; {file: Counter}."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("TF_USE_LEGACY_KERAS", None)
        env.update(env_extra)
        start = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
                *CHECKS,
            ],
            cwd=ROOT,
            env=env,
            check=False,
        )
        seconds = time.time() - start
        counts = collections.defaultdict(collections.Counter)
        for case in ET.parse(xml).getroot().iter("testcase"):
            # "tests.saving.safe_mode_test" (a function), or with a
            # trailing class name.
            classname = case.get("classname", "")
            candidates = [classname, classname.rsplit(".", 1)[0]]
            path = next(
                (
                    p
                    for p in (c.replace(".", "/") + ".py" for c in candidates)
                    if p in CHECKS
                ),
                None,
            )
            if path is None:
                continue
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            counts[path][outcome] += 1
    return counts, seconds


def main():
    rows, notes, failed = [], [], 0
    for line, env in LINES.items():
        counts, seconds = _run(line, env)
        notes.append(f"{line}: the four test files ran in {seconds:.0f} s")
        for path, (check, unit) in CHECKS.items():
            c = counts.get(path, collections.Counter())
            total = sum(c.values())
            result = f"{c['passed']} passed"
            if c["failed"]:
                result += f", {c['failed']} failed"
            if c["skipped"]:
                result += f", {c['skipped']} skipped"
            failed += c["failed"] + (total == 0)
            rows.append([f"{check} [{line}]", total, result])
    notes += [
        "Cases are pytest test cases; one case is one class, one config "
        "edit, one signature call or one cache file scenario (plus a few "
        "coverage checks that every registered class has cases).",
        "Skipped on tf-keras: Keras 3's module allow-list test (tf-keras "
        "imports any module a config names; its safe_mode only refuses "
        "lambdas).",
        "Unknown class in a tf-keras functional model fails with tf-keras's "
        "own TypeError, which does not name the class; a list as "
        "config.json loads as that list on tf-keras (no model, no code).",
        "A wrong dtype fed to the loaded signature is refused by TensorFlow "
        "before the graph runs, naming the input's position (sorted-name "
        "order) and the dtype expected; rank, shape and batch errors name "
        "the input (check_input_<name>).",
    ]
    result = {
        "topic": "safe",
        "title": "Safe loading and serving inputs",
        "command": "python benchmarks/reliability_safe.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": _machine.describe()
        + f", Python {platform.python_version()}",
        "columns": ["check", "cases", "result"],
        "rows": rows,
        "notes": notes,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}: {len(rows)} rows, {failed} failed cases")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
