"""Checks built keras_bigmodels distributions in fresh virtual environments.

    python tools/check_dist.py dist/               # the wheel and the sdist
    python tools/check_dist.py --skip-sdist dist/  # the wheel only

First the archives themselves: the wheel has a platform tag (not
py3-none-any) and carries the op library, its build record and the license;
the sdist carries setup.py, pyproject.toml, cc/ and the license, and no
compiled objects. Then each is installed with `pip install <file>` into a new
`python -m venv` (the sdist with pip's default build isolation, so the op
library is compiled there; KBM_CUDA and the other KBM_* build variables pass
through) and, from a folder outside the checkout:

- `kbm.ops.kernels_available()` is true and the library is the installed one;
- a tiny model of fused layers trains one epoch with the fused kernels (a
  fallback to a reference is an error), on Keras 3 and on tf-keras;
- a build record naming another TensorFlow minor version is refused with a
  reason that says so.

Timings (wall and CPU, this process's children) print per step; the last
line is a JSON summary. Exits non-zero when a check fails.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

# Runs inside the fresh environment: `python -c CHECK mode`.
CHECK = r"""
import json, os, sys, tempfile, warnings
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras_bigmodels as kbm
from keras_bigmodels.backend import KERAS_LINE, keras
from keras_bigmodels.ops import _loader

mode = sys.argv[1]
out = {"mode": mode, "keras_line": KERAS_LINE,
       "library": str(_loader.LIBRARY_PATH)}
if mode == "other_tf_minor":
    info = json.loads(_loader.BUILD_INFO_PATH.read_text())
    major, minor = info["tf_version"].split(".")[:2]
    info["tf_version"] = f"{major}.{int(minor) + 1}.0"
    record = Path(tempfile.mkdtemp()) / "_build_info.json"
    record.write_text(json.dumps(info))
    _loader.BUILD_INFO_PATH = record
    status = kbm.ops.kernels_available()
    out.update(available=bool(status), reason=status.reason)
    try:
        kbm.ops.layer_norm(np.ones((2, 4), "float32"), np.ones(4, "float32"),
                           np.zeros(4, "float32"), use_fused_kernel=True)
        out["forced_error"] = None
    except ValueError as e:
        out["forced_error"] = str(e)
else:
    status = kbm.ops.kernels_available()
    out.update(available=bool(status), reason=status.reason,
               info=status.info, gpu_reason=status.gpu.reason,
               build_info=json.loads(_loader.BUILD_INFO_PATH.read_text()))
    if status:
        warnings.simplefilter("error", kbm.config.FusedKernelFallbackWarning)
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 16))
        h = kbm.layers.FusedDense(32, activation="gelu")(inputs)
        h = kbm.layers.LayerNormalization()(h)
        h = kbm.layers.MultiHeadAttention(
            num_heads=2, key_dim=16, flash_attention=True)(h, h)
        h = keras.layers.GlobalAveragePooling1D()(h)
        model = keras.Model(inputs, keras.layers.Dense(3)(h))
        model.compile(
            optimizer=kbm.optimizers.AdamW(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8, 16)).astype("float32")
        y = rng.integers(0, 3, size=(64,))
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        out["loss"] = float(history.history["loss"][-1])
print(json.dumps(out))
"""


class Failure(Exception):
    pass


def _cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and child-process CPU seconds of each step."""

    def __init__(self):
        self.steps = {}

    def run(self, name, cmd, **kwargs):
        wall, cpu = time.perf_counter(), _cpu()
        shown = " ".join("<check>" if c == CHECK else str(c) for c in cmd)
        print(f"[check_dist] {name}: {shown}", flush=True)
        result = subprocess.run(
            list(map(str, cmd)), capture_output=True, text=True, **kwargs
        )
        self.steps[name] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(_cpu() - cpu, 1),
        }
        print(f"[check_dist]   {self.steps[name]}", flush=True)
        if result.returncode != 0:
            raise Failure(
                f"{name} failed (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result.stdout


def check_wheel_archive(path, python_tag):
    """The wheel's tag and contents; returns its build record."""
    name, version, py, abi, plat = path.name[: -len(".whl")].split("-")
    if plat == "any" or not plat.startswith("linux"):
        raise Failure(f"{path.name}: not a platform wheel (tag {plat})")
    if py != python_tag:
        raise Failure(
            f"{path.name}: built for {py}, checking with {python_tag}"
        )
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        dist_info = f"{name}-{version}.dist-info"
        needed = {
            "keras_bigmodels/_kbm_ops.so",
            "keras_bigmodels/_build_info.json",
            "keras_bigmodels/__init__.py",
            f"{dist_info}/licenses/LICENSE",
        }
        if needed - names:
            raise Failure(f"{path.name} lacks {sorted(needed - names)}")
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        info = json.loads(zf.read("keras_bigmodels/_build_info.json"))
    if "License-Expression: Apache-2.0" not in metadata:
        raise Failure(f"{path.name}: no License-Expression: Apache-2.0")
    return info


def library_needs(path):
    """The newest glibc and libstdc++ symbol versions the wheel's library
    needs (a plain linux_x86_64 wheel runs where both are at least these)."""
    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory() as tmp:
        lib = zf.extract("keras_bigmodels/_kbm_ops.so", tmp)
        try:
            symbols = subprocess.run(
                ["objdump", "-T", lib], capture_output=True, text=True
            ).stdout
        except FileNotFoundError:
            return None
    needs = {}
    for prefix in ("GLIBC", "GLIBCXX"):
        found = re.findall(rf"\b{prefix}_([0-9.]+)", symbols)
        if found:
            newest = max(found, key=lambda v: tuple(map(int, v.split("."))))
            needs[prefix] = newest
    return needs


def check_sdist_archive(path):
    with tarfile.open(path) as tf:
        names = [n.split("/", 1)[1] for n in tf.getnames() if "/" in n]
    needed = {"setup.py", "pyproject.toml", "LICENSE", "PKG-INFO"}
    if needed - set(names):
        raise Failure(f"{path.name} lacks {sorted(needed - set(names))}")
    if not any(re.match(r"cc/.*_ops\.cc$", n) for n in names):
        raise Failure(f"{path.name} has no cc/ op sources")
    bad = [
        n
        for n in names
        if n.endswith((".so", ".o"))
        or n.startswith(("build/", "gpu_harness/", ".venv"))
        or n.endswith("_build_info.json")
    ]
    if bad:
        raise Failure(f"{path.name} carries build outputs: {bad[:10]}")
    return len(names)


def check_installed(timer, label, dist, python, workdir, modes, env):
    """Installs `dist` into a new venv and runs CHECK there per mode."""
    venv = workdir / f"venv-{label}"
    timer.run(f"{label}: venv", [python, "-m", "venv", venv])
    # A copy under a fresh path: pip must build this sdist, never take a
    # wheel cached from an earlier file of the same name.
    local = workdir / label / dist.name
    local.parent.mkdir()
    shutil.copy2(dist, local)
    vpy = venv / "bin" / "python"
    timer.run(
        f"{label}: pip install",
        [vpy, "-m", "pip", "install", "--quiet", local],
        env=env,
        cwd=workdir,
    )
    results = {}
    site = str(venv)
    for mode in modes:
        run_env = dict(env)
        if mode == "tf-keras":
            run_env["TF_USE_LEGACY_KERAS"] = "1"
        out = timer.run(
            f"{label}: check {mode}",
            [vpy, "-c", CHECK, mode],
            env=run_env,
            cwd=workdir,
        )
        result = json.loads(out.strip().splitlines()[-1])
        results[mode] = result
        if not result["library"].startswith(site):
            raise Failure(f"{label}: loaded {result['library']}, not {site}")
        if mode == "other_tf_minor":
            reason = result["reason"]
            if result["available"] or "built for TensorFlow" not in reason:
                raise Failure(f"{label}: other TF minor accepted: {result}")
            if "built for TensorFlow" not in (result["forced_error"] or ""):
                raise Failure(f"{label}: forced kernel did not raise: {result}")
        elif not result["available"] or "loss" not in result:
            raise Failure(f"{label}: kernels unavailable: {result['reason']}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist_dir", type=Path)
    parser.add_argument("--skip-sdist", action="store_true")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the venvs (default: this one)",
    )
    parser.add_argument(
        "--expect-cuda",
        choices=("any", "yes", "no"),
        default="any",
        help="whether the wheel must carry the CUDA kernels",
    )
    parser.add_argument(
        "--keep", type=Path, help="build the venvs here and keep them"
    )
    args = parser.parse_args()

    wheels = sorted(args.dist_dir.glob("keras_bigmodels-*.whl"))
    sdists = sorted(args.dist_dir.glob("keras_bigmodels-*.tar.gz"))
    if len(wheels) != 1 or (len(sdists) != 1 and not args.skip_sdist):
        raise SystemExit(
            f"expected one wheel and one sdist in {args.dist_dir}, found "
            f"{[p.name for p in wheels + sdists]}"
        )
    python_tag = subprocess.run(
        [
            args.python,
            "-c",
            "import sys; print('cp%d%d' % sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.pop("KERAS_BIGMODELS_DISABLE_FUSED", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    timer = Timer()
    summary = {"wheel": wheels[0].name}
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="kbm-check-dist-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), _cpu()
    try:
        info = check_wheel_archive(wheels[0], python_tag)
        summary["wheel_build_info"] = {
            k: info.get(k)
            for k in ("tf_version", "families", "cuda_built", "cuda_archs")
        }
        summary["wheel_library_needs"] = library_needs(wheels[0])
        if args.expect_cuda != "any" and info.get("cuda_built") != (
            args.expect_cuda == "yes"
        ):
            raise Failure(f"wheel cuda_built={info.get('cuda_built')}")
        if not args.skip_sdist:
            summary["sdist"] = sdists[0].name
            summary["sdist_files"] = check_sdist_archive(sdists[0])
        summary["wheel_checks"] = check_installed(
            timer,
            "wheel",
            wheels[0],
            args.python,
            workdir,
            ("keras3", "tf-keras", "other_tf_minor"),
            env,
        )
        if not args.skip_sdist:
            summary["sdist_checks"] = check_installed(
                timer,
                "sdist",
                sdists[0],
                args.python,
                workdir,
                ("keras3",),
                env,
            )
        summary["ok"] = True
    except Failure as e:
        print(f"[check_dist] FAILED: {e}", file=sys.stderr)
        summary["ok"] = False
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["steps"] = timer.steps
    summary["total"] = {
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(_cpu() - cpu, 1),
    }
    for key in ("wheel_checks", "sdist_checks"):
        for result in summary.get(key, {}).values():
            result.pop("build_info", None)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
