"""`import keras_bigmodels`: what it loads, and the lazy submodules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_bigmodels as kbm
from keras_bigmodels.testing import last_json_line, run_python

HEAVY = (
    "tensorflow_datasets",
    "keras_bigmodels.datasets",
    "keras_bigmodels.distribute",
    "keras_bigmodels.models",
)


def test_heavy_submodules_load_on_first_use():
    out = run_python(
        f"""
        import json, sys
        import keras_bigmodels as kbm
        heavy = {HEAVY!r}
        before = [m for m in heavy if m in sys.modules]
        names = [kbm.models.BertEncoder.__name__,
                 kbm.datasets.__name__, kbm.distribute.__name__]
        after = [m for m in heavy if m in sys.modules]
        print(json.dumps({{"before": before, "after": after,
                          "names": names, "dir": dir(kbm)}}))
        """
    )
    result = last_json_line(out)
    assert result["before"] == [], json.dumps(result)
    assert result["after"] == list(HEAVY)
    assert result["names"][0] == "BertEncoder"
    assert {"datasets", "distribute", "models"} <= set(result["dir"])


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kbm.nope


# Packaging: the sdist's file list and the wheel's tag as setuptools computes
# them (no compiling; the full build and install in fresh environments is
# `make dist`).

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setup_py(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_license_is_an_spdx_expression_with_its_file():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_build_requires_the_runtime_tensorflow_pin():
    data = _pyproject()
    (runtime,) = [
        d
        for d in data["project"]["dependencies"]
        if d.startswith("tensorflow=")
    ]
    assert runtime in data["build-system"]["requires"]


def test_wheel_is_a_platform_wheel():
    out = _setup_py(
        "-c",
        "from distutils.core import run_setup\n"
        "d = run_setup('setup.py', stop_after='init')\n"
        "c = d.get_command_obj('bdist_wheel'); c.ensure_finalized()\n"
        "print('-'.join(c.get_tag()))",
    )
    py, abi, plat = out.split()[-1].split("-")
    assert py == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert abi == py
    assert plat != "any" and "manylinux" not in plat


def test_sdist_carries_the_sources_and_no_build_outputs(tmp_path):
    _setup_py("setup.py", "-q", "egg_info", "--egg-base", str(tmp_path))
    (sources,) = tmp_path.glob("*.egg-info/SOURCES.txt")
    files = set(sources.read_text().split())
    needed = {"setup.py", "pyproject.toml", "LICENSE", "README.md"}
    needed |= {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "cc").rglob("*")
        if p.suffix in (".cc", ".h", ".cuh")
    }
    needed |= {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "keras_bigmodels").rglob("*.py")
    }
    assert sorted(needed - files) == []
    outputs = [
        f
        for f in files
        if f.endswith((".so", ".o", "_build_info.json"))
        or f.split("/")[0] in ("build", "dist", "gpu_harness", "tests")
        or f.startswith(".venv")
    ]
    assert outputs == []
