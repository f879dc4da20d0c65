"""Builds keras_bigmodels' fused-op library against the installed TensorFlow.

Every op family under cc/ is compiled with g++ and the flags TensorFlow
reports (`tf.sysconfig`), and linked into one library,
keras_bigmodels/_kbm_ops.so, next to a _build_info.json recording what it was
built against. The `*_simd.cc` files are compiled once per SIMD variant (see
cc/common/cpu_isa.h). Object files are kept in build/kbm-objs and rebuilt only
when a source, a header it includes, or the command changes.

Install with `pip install --no-build-isolation -e .`: the library must be
built against the TensorFlow that will load it, and build isolation would
download another copy. Environment:
  KBM_BUILD_JOBS  parallel compiler processes (default 2; each needs ~0.75 GB)
  KBM_CXX         C++ compiler (default g++)
  KBM_BASE_ISA    flags of the shipped baseline
                  (default "-march=x86-64-v2 -mavx")
"""

import concurrent.futures
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CC_DIR = ROOT / "cc"
OBJ_DIR = ROOT / "build" / "kbm-objs"
LIB_NAME = "keras_bigmodels._kbm_ops"
WARNING_FLAGS = [
    "-Wall",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
    "-Wno-sign-compare",
    "-Wno-unused-function",
]


def _tf_flags():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - build-time guard
        raise RuntimeError(
            "TensorFlow must be importable at build time: install it first "
            "and use `pip install --no-build-isolation -e .` "
            f"(import failed: {e})"
        ) from e
    return tf, tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()


def _isa_variants():
    """SIMD variants: name -> compiler flags. The first is the baseline."""
    base = shlex.split(os.environ.get("KBM_BASE_ISA", "-march=x86-64-v2 -mavx"))
    if platform.machine() not in ("x86_64", "AMD64"):
        return {"avx": []}  # Generic vector code; no AVX2 variant.
    return {"avx": base, "avx2": ["-march=x86-64-v3"]}


def _sources():
    """(plain sources, simd sources) under cc/, sorted."""
    plain, simd = [], []
    for path in sorted(CC_DIR.rglob("*.cc")):
        if path.name.endswith(".cu.cc"):
            continue  # GPU kernels: not built by this CPU build.
        (simd if path.name.endswith("_simd.cc") else plain).append(path)
    return plain, simd


def _needs_build(obj, cmd_hash):
    stamp = obj.with_suffix(".cmd")
    dep = obj.with_suffix(".d")
    if not (obj.exists() and stamp.exists() and dep.exists()):
        return True
    if stamp.read_text() != cmd_hash:
        return True
    obj_time = obj.stat().st_mtime
    deps = dep.read_text().replace("\\\n", " ").split(":", 1)[-1].split()
    for d in deps:
        try:
            if os.stat(d).st_mtime > obj_time:
                return True
        except FileNotFoundError:
            return True
    return False


def _compile(job):
    src, obj, cmd = job
    cmd_hash = hashlib.sha256(" ".join(cmd).encode()).hexdigest()
    if not _needs_build(obj, cmd_hash):
        return obj, False, 0.0
    obj.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    full = cmd + [
        "-MMD",
        "-MF",
        str(obj.with_suffix(".d")),
        "-c",
        str(src),
        "-o",
        str(obj),
    ]
    result = subprocess.run(full, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"compiling {src.relative_to(ROOT)} failed:\n{' '.join(full)}\n"
            f"{result.stderr}"
        )
    obj.with_suffix(".cmd").write_text(cmd_hash)
    return obj, True, time.perf_counter() - t0


# Weak (vague-linkage) symbols a SIMD object may define: the linker keeps one
# copy of each for the whole library, so any other would let code compiled
# for one instruction set run on the other's path.
ALLOWED_WEAK = {"DW.ref.__gxx_personality_v0"}


def _check_no_weak_symbols(obj):
    """Fails if a non-baseline SIMD object defines shareable weak symbols."""
    result = subprocess.run(
        ["nm", "--defined-only", "-P", str(obj)],
        capture_output=True,
        text=True,
        check=True,
    )
    weak = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("W", "V", "u"):
            if parts[0] not in ALLOWED_WEAK:
                weak.append(parts[0])
    if weak:
        demangled = subprocess.run(
            ["c++filt"], input="\n".join(weak), capture_output=True, text=True
        ).stdout
        raise RuntimeError(
            f"{obj.name} defines weak symbols that the linker could share "
            "with the baseline build of the same code (use internal-linkage "
            "helpers instead of standard-library templates in *_simd.cc "
            f"code):\n{demangled}"
        )


def build_library(out_path):
    """Compiles cc/ incrementally and links `out_path`. Returns build info."""
    tf, cflags, lflags = _tf_flags()
    cxx = os.environ.get("KBM_CXX", "g++")
    variants = _isa_variants()
    base_isa = next(iter(variants.values()))
    defines = ["-DNDEBUG"]
    if "avx2" in variants:
        defines.append("-DKBM_HAVE_AVX2_VARIANT=1")
    common = [
        cxx,
        "-std=c++17",
        "-fPIC",
        "-O3",
        "-fvisibility=hidden",
        f"-I{ROOT}",
        *cflags,
        *WARNING_FLAGS,
        *defines,
    ]
    plain, simd = _sources()
    jobs = []
    for src in plain:
        rel = src.relative_to(ROOT).with_suffix("")
        jobs.append((src, OBJ_DIR / f"{rel}.o", common + base_isa))
    checked = []  # Non-baseline SIMD objects: no shareable weak symbols.
    for name, flags in variants.items():
        for src in simd:
            rel = src.relative_to(ROOT).with_suffix("")
            obj = OBJ_DIR / f"{rel}.{name}.o"
            jobs.append((src, obj, common + flags + [f"-DKBM_ISA={name}"]))
            if flags is not base_isa:
                checked.append(obj)
    n_jobs = max(1, int(os.environ.get("KBM_BUILD_JOBS", "2")))
    objs = []
    with concurrent.futures.ThreadPoolExecutor(n_jobs) as pool:
        for obj, built, secs in pool.map(_compile, jobs):
            objs.append(obj)
            if built:
                print(
                    f"[kbm build] {obj.relative_to(OBJ_DIR)} ({secs:.1f} s)",
                    flush=True,
                )
    for obj in checked:
        _check_no_weak_symbols(obj)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    link = [
        cxx,
        "-shared",
        "-fPIC",
        *map(str, objs),
        "-o",
        str(out_path),
        *lflags,
    ]  # TF's link flags must come after the objects.
    subprocess.run(link, check=True)
    families = sorted(
        p.name for p in CC_DIR.iterdir() if p.is_dir() and p.name != "common"
    )
    info = {
        "tf_version": tf.__version__,
        "tf_git_version": tf.version.GIT_VERSION,
        "cxx11_abi_flag": tf.sysconfig.CXX11_ABI_FLAG,
        "compiler": subprocess.run(
            [cxx, "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "isa_variants": {k: " ".join(v) for k, v in variants.items()},
        "families": families,
        "python": sys.version.split()[0],
    }
    out_path.with_name("_build_info.json").write_text(
        json.dumps(info, indent=2) + "\n"
    )
    return info


class BuildOps(build_ext):
    """Builds the op library with g++ instead of distutils' compiler."""

    def get_ext_filename(self, ext_name):
        # A plain `_kbm_ops.so`: it is loaded by tf.load_op_library, not
        # imported as a Python module.
        return os.path.join(*ext_name.split(".")) + ".so"

    def build_extension(self, ext):
        build_library(self.get_ext_fullpath(ext.name))

    def copy_extensions_to_source(self):
        # In-place and editable builds: setuptools copies the library into
        # the source tree; its build-info file must travel with it.
        super().copy_extensions_to_source()
        for ext in self.extensions:
            rel = Path(self.get_ext_filename(ext.name)).parent
            info = Path(self.build_lib) / rel / "_build_info.json"
            (ROOT / rel / info.name).write_text(info.read_text())


setup(
    ext_modules=[Extension(LIB_NAME, sources=[])],
    cmdclass={"build_ext": BuildOps},
)
