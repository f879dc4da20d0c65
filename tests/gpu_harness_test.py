"""The TF-free GPU harness cannot rot between GPU runs: its shims compile,
every shim entry point has a ctypes binding, and its scripts parse. (The
harness's own tests need PyTorch: `make gpu-harness-check`.)"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "gpu_harness"
SHIMS = sorted((HARNESS / "shim").glob("*.cc"))
ENTRY = re.compile(
    r"^(?:int|size_t|const char\s*\*|void|int64_t)\s+(kbm_\w+)\s*\(", re.M
)


@pytest.mark.skipif(not shutil.which("g++"), reason="no g++")
@pytest.mark.parametrize("shim", SHIMS, ids=lambda p: p.name)
def test_shim_compiles(shim):
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror",
         f"-I{ROOT}", str(shim)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_shim_entry_point_is_bound():
    python = "\n".join(p.read_text() for p in HARNESS.glob("*.py"))
    entries = [e for shim in SHIMS for e in ENTRY.findall(shim.read_text())]
    assert "kbm_error_string" in entries
    unbound = [e for e in entries if e not in python]
    assert unbound == [], unbound


@pytest.mark.parametrize("script", ["build.sh", "run_device.sh"])
def test_scripts_parse(script):
    result = subprocess.run(
        ["bash", "-n", str(HARNESS / script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
