"""Builds keras_bigmodels' fused-op library against the installed TensorFlow.

Every op family under cc/ is compiled with g++ and the flags TensorFlow
reports (`tf.sysconfig`), and linked into one library,
keras_bigmodels/_kbm_ops.so, next to a _build_info.json recording what it was
built against. The `*_simd.cc` files are compiled once per SIMD variant (see
cc/common/cpu_isa.h). Object files are kept in build/kbm-objs and rebuilt only
when a source, a header it includes, or the command changes.

When a CUDA compiler is found, the GPU kernels are built too: the
framework-free `*.cu.cc` files under cc/ with nvcc (only `-I<repo root>`, no
TensorFlow flags), and the TensorFlow glue (`*_gpu_kernels.cc`, which start
with `#if GOOGLE_CUDA`) with g++ and `-DGOOGLE_CUDA=1`. The library is not
linked with `-lcudart`: TensorFlow's framework library provides the CUDA
runtime. Without a CUDA compiler the library is CPU-only and the glue compiles
to nothing.

The library must be built against the TensorFlow minor version that will
load it (its ABI changes with every minor version). `pip install .`, `pip
install keras_bigmodels-<v>.tar.gz` and `python -m build` use pip's build
isolation, whose environment gets the TensorFlow pinned in pyproject.toml's
[build-system] requires (the same minor version as the runtime dependency),
and make a platform wheel (e.g. cp311-cp311-linux_x86_64) carrying the
library and its build record. For development, `pip install
--no-build-isolation -e .` (what `make setup` runs) compiles against the
TensorFlow already installed and skips downloading another copy. The wheel
is a plain linux_x86_64 one, not manylinux: auditwheel would vendor
libtensorflow_framework.so.2, which must be the one of the TensorFlow that
loads the library. Environment:
  KBM_BUILD_JOBS  parallel compiler processes (default 2; each needs ~0.75 GB)
  KBM_CXX         C++ compiler (default g++)
  KBM_BASE_ISA    flags of the shipped baseline
                  (default "-march=x86-64-v2 -mavx")
  KBM_CUDA        auto (default: build the GPU kernels when nvcc is found),
                  1 (required: fail without nvcc) or 0 (CPU only)
  KBM_NVCC        the nvcc to use (default: nvcc on PATH, then
                  $CUDA_HOME/bin/nvcc, then /usr/local/cuda/bin/nvcc)
  KBM_CUDA_ARCHS  comma-separated targets (default "sm_80,sm_90,compute_90":
                  cubins for sm_80 and sm_90 plus compute_90 PTX, which newer
                  GPUs compile at load time)
  KBM_SANITIZE    sanitizers for a checking build, e.g. "address,undefined":
                  -fsanitize=..., -O1 -g, CPU only, objects in
                  build/kbm-objs-<sanitizers>. Such a library never replaces
                  the shipped one: build it elsewhere with
                  `setup.py build_ext --build-lib DIR` and load it with
                  KERAS_BIGMODELS_OPS_LIBRARY (see `make asan`).
"""

import concurrent.futures
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CC_DIR = ROOT / "cc"
OBJ_DIR = ROOT / "build" / "kbm-objs"
SANITIZERS = ("address", "undefined")
LIB_NAME = "keras_bigmodels._kbm_ops"
WARNING_FLAGS = [
    "-Wall",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
    "-Wno-sign-compare",
    "-Wno-unused-function",
]


def _sanitizers():
    """The sanitizers of KBM_SANITIZE, in a fixed order ([] for none)."""
    raw = os.environ.get("KBM_SANITIZE", "").replace(" ", "")
    names = sorted({n for n in raw.split(",") if n})
    unknown = [n for n in names if n not in SANITIZERS]
    if unknown:
        raise RuntimeError(
            f"KBM_SANITIZE entries must be among {', '.join(SANITIZERS)}. "
            f"Received: KBM_SANITIZE={raw!r}"
        )
    return names


def _obj_dir(sanitizers):
    """Objects of a sanitized build live apart from the normal build's."""
    if not sanitizers:
        return OBJ_DIR
    return OBJ_DIR.with_name(f"kbm-objs-{'-'.join(sanitizers)}")


def _tf_flags():
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - build-time guard
        raise RuntimeError(
            "TensorFlow must be importable at build time: pip's build "
            "isolation installs the version pinned in pyproject.toml; with "
            "--no-build-isolation, install it first "
            f"(import failed: {e})"
        ) from e
    return tf, tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()


def _isa_variants():
    """SIMD variants: name -> compiler flags. The first is the baseline."""
    base = shlex.split(os.environ.get("KBM_BASE_ISA", "-march=x86-64-v2 -mavx"))
    if platform.machine() not in ("x86_64", "AMD64"):
        return {"avx": []}  # Generic vector code; no AVX2 variant.
    return {"avx": base, "avx2": ["-march=x86-64-v3"]}


# Extra SIMD variants of single files, built wherever the avx2 variant is
# (file name -> {variant: flags}): the quantized matmuls, dropout's Philox
# draws and flash attention (16-lane vectors) have an AVX-512 (VNNI)
# variant (cc/common/cpu_isa.h).
_AVX512VNNI = [
    "-march=x86-64-v3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vnni",
]
EXTRA_ISA_VARIANTS = {
    "quantization_simd.cc": {"avx512vnni": _AVX512VNNI},
    "dropout_simd.cc": {"avx512vnni": _AVX512VNNI},
    "attention_simd.cc": {"avx512vnni": _AVX512VNNI},
}


def _sources():
    """(plain sources, simd sources, CUDA sources) under cc/, sorted."""
    plain, simd, cuda = [], [], []
    for path in sorted(CC_DIR.rglob("*.cc")):
        if path.name.endswith(".cu.cc"):
            cuda.append(path)
        elif path.name.endswith("_simd.cc"):
            simd.append(path)
        else:
            plain.append(path)
    return plain, simd, cuda


def _is_gpu_glue(path):
    """TF GPU OpKernels: compiled with -DGOOGLE_CUDA=1 in a CUDA build."""
    return path.name.endswith("_gpu_kernels.cc")


DEFAULT_CUDA_ARCHS = "sm_80,sm_90,compute_90"


def _find_nvcc():
    explicit = os.environ.get("KBM_NVCC")
    if explicit:
        return explicit
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        return "/usr/local/cuda/bin/nvcc"
    return None


def _gencode_flags(archs):
    """nvcc -gencode flags for targets like "sm_80,sm_90,compute_90".

    A cubin and PTX of the same virtual architecture share one -gencode (one
    front-end pass), so "sm_90,compute_90" costs little more than "sm_90".
    """
    targets = [a.strip() for a in archs.replace(";", ",").split(",")]
    targets = [a for a in targets if a]
    by_virtual = {}  # "90" -> ["sm_90", "compute_90"], in order of mention
    for t in targets:
        kind, _, num = t.partition("_")
        if kind not in ("sm", "compute") or not num[:2].isdigit():
            raise ValueError(
                "KBM_CUDA_ARCHS entries must look like sm_80 or compute_90. "
                f"Received: KBM_CUDA_ARCHS={archs!r}"
            )
        by_virtual.setdefault(num, []).append(t)  # sm_90a: compute_90a
    flags = []
    for virtual, codes in by_virtual.items():
        flags.append(
            f"-gencode=arch=compute_{virtual},code=[{','.join(codes)}]"
        )
    return targets, flags


def _cuda_config():
    """The CUDA part of the build, or None (with the reason) for CPU only.

    Returns (config or None, reason).
    """
    mode = os.environ.get("KBM_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(
            f"KBM_CUDA must be auto, 0 or 1. Received: KBM_CUDA={mode!r}"
        )
    if mode == "0":
        return None, "disabled by KBM_CUDA=0"
    nvcc = _find_nvcc()
    version = None
    if nvcc:
        try:
            out = subprocess.run(
                [nvcc, "--version"], capture_output=True, text=True, check=True
            ).stdout
            match = re.search(r"release ([0-9]+\.[0-9]+)", out)
            version = match.group(1) if match else "unknown"
        except (OSError, subprocess.CalledProcessError) as e:
            if mode == "1":
                raise RuntimeError(f"KBM_CUDA=1 but {nvcc} failed: {e}") from e
            return None, f"{nvcc} --version failed: {e}"
    elif mode == "1":
        raise RuntimeError(
            "KBM_CUDA=1 but no CUDA compiler was found: put nvcc on PATH or "
            "name it with KBM_NVCC=/path/to/nvcc"
        )
    else:
        return None, "no CUDA compiler (nvcc) found"
    archs, gencode = _gencode_flags(
        os.environ.get("KBM_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
    )
    return {
        "nvcc": nvcc,
        "version": version,
        "archs": archs,
        "gencode": gencode,
    }, ""


def _driver_warning(cuda_version):
    """A warning when nvcc is newer than the local driver can run."""
    try:
        major = int(cuda_version.split(".")[0])
    except ValueError:
        return None
    if major < 13 or not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.split()
    try:
        driver = int(out[0].split(".")[0])
    except (IndexError, ValueError):
        return None
    if driver >= 580:
        return None
    return (
        f"[kbm build] WARNING: nvcc {cuda_version} code needs an NVIDIA "
        f"driver >= 580, this machine has {out[0]}: the GPU kernels will not "
        "load here (kbm falls back to its references). Build with a CUDA "
        "12.x toolkit (KBM_NVCC=/usr/local/cuda-12.x/bin/nvcc) instead."
    )


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
    src, obj, cmd, obj_dir = job
    cmd_hash = hashlib.sha256(" ".join(cmd).encode()).hexdigest()
    if not _needs_build(obj, cmd_hash):
        return obj, False, 0.0, obj_dir
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
    return obj, True, time.perf_counter() - t0, obj_dir


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


def _check_cuda_symbols(lib_path, tf_lib_dir):
    """Fails if the library needs a cuda* symbol TF's framework lacks."""

    def symbols(path, which):
        out = subprocess.run(
            ["nm", "-D", which, str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {line.split()[-1].split("@")[0] for line in out.splitlines()}

    needed = {
        s
        for s in symbols(lib_path, "--undefined-only")
        if s.startswith(("cuda", "__cuda"))
    }
    framework = Path(tf_lib_dir) / "libtensorflow_framework.so.2"
    missing = needed - symbols(framework, "--defined-only")
    if missing:
        raise RuntimeError(
            f"{Path(lib_path).name} needs CUDA runtime symbols that "
            f"{framework.name} does not export: {sorted(missing)}"
        )
    return sorted(needed)


def _run_jobs(jobs, n_workers):
    objs = []
    with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
        for obj, built, secs, obj_dir in pool.map(_compile, jobs):
            objs.append(obj)
            if built:
                print(
                    f"[kbm build] {obj.relative_to(obj_dir)} ({secs:.1f} s)",
                    flush=True,
                )
    return objs


def build_library(out_path):
    """Compiles cc/ incrementally and links `out_path`. Returns build info."""
    tf, cflags, lflags = _tf_flags()
    cxx = os.environ.get("KBM_CXX", "g++")
    variants = _isa_variants()
    base_isa = next(iter(variants.values()))
    sanitizers = _sanitizers()
    obj_dir = _obj_dir(sanitizers)
    if sanitizers:
        # The sanitizers instrument host code only: a CPU-only build.
        cuda, cuda_reason = None, "disabled in a sanitizer build"
        opt = ["-O1", "-g", "-fno-omit-frame-pointer"]
        san_flags = [f"-fsanitize={','.join(sanitizers)}"]
        if "undefined" in sanitizers:
            san_flags += [
                # Not in "undefined" by default: NaN/Inf to integer casts.
                "-fsanitize=float-cast-overflow",
                # g++ 12 rejects TensorFlow's headers (absl's raw_hash_set
                # compares function pointers in a constexpr) with these
                # checks on; a null dereference is still caught by ASan.
                "-fno-sanitize=null,nonnull-attribute,"
                "returns-nonnull-attribute",
            ]
    else:
        cuda, cuda_reason = _cuda_config()
        opt, san_flags = ["-O3"], []
    defines = ["-DNDEBUG"]
    if "avx2" in variants:
        defines.append("-DKBM_HAVE_AVX2_VARIANT=1")
    common = [
        cxx,
        "-std=c++17",
        "-fPIC",
        *opt,
        *san_flags,
        "-fvisibility=hidden",
        f"-I{ROOT}",
        *cflags,
        *WARNING_FLAGS,
        *defines,
    ]
    plain, simd, cuda_sources = _sources()
    jobs = []
    for src in plain:
        rel = src.relative_to(ROOT).with_suffix("")
        flags = common + base_isa
        if cuda and _is_gpu_glue(src):
            flags = flags + ["-DGOOGLE_CUDA=1"]
        jobs.append((src, obj_dir / f"{rel}.o", flags, obj_dir))
    checked = []  # Non-baseline SIMD objects: no shareable weak symbols.
    for name, flags in variants.items():
        for src in simd:
            rel = src.relative_to(ROOT).with_suffix("")
            obj = obj_dir / f"{rel}.{name}.o"
            cmd = common + flags + [f"-DKBM_ISA={name}"]
            jobs.append((src, obj, cmd, obj_dir))
            if flags is not base_isa:
                checked.append(obj)
    for src in simd:
        if "avx2" not in variants:
            break
        for name, flags in EXTRA_ISA_VARIANTS.get(src.name, {}).items():
            rel = src.relative_to(ROOT).with_suffix("")
            obj = obj_dir / f"{rel}.{name}.o"
            cmd = common + flags + [f"-DKBM_ISA={name}"]
            jobs.append((src, obj, cmd, obj_dir))
            checked.append(obj)
    n_jobs = max(1, int(os.environ.get("KBM_BUILD_JOBS", "2")))
    objs = []
    if cuda:
        warning = _driver_warning(cuda["version"])
        if warning:
            print(warning, flush=True)
        # One nvcc compiles its virtual architectures in parallel
        # (--threads); together they stay within KBM_BUILD_JOBS processes.
        threads = max(1, min(n_jobs, len(cuda["gencode"])))
        nvcc_cmd = [
            cuda["nvcc"],
            "-std=c++17",
            "-O3",
            "-x",
            "cu",
            f"-I{ROOT}",
            "-Xcompiler",
            "-fPIC,-fvisibility=hidden",
            "--expt-relaxed-constexpr",
            "-DNDEBUG",
            f"--threads={threads}",
            *cuda["gencode"],
        ]
        cuda_jobs = [
            (
                src,
                obj_dir / f"{src.relative_to(ROOT).with_suffix('')}.o",
                nvcc_cmd,
                obj_dir,
            )
            for src in cuda_sources
        ]
        t0 = time.perf_counter()
        objs += _run_jobs(cuda_jobs, max(1, n_jobs // threads))
        print(
            f"[kbm build] CUDA kernels: {len(cuda_jobs)} files, "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    objs += _run_jobs(jobs, n_jobs)
    for obj in checked:
        _check_no_weak_symbols(obj)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    link = [
        cxx,
        "-shared",
        "-fPIC",
        *san_flags,
        *map(str, objs),
        "-o",
        str(out_path),
        *lflags,
    ]  # TF's link flags must come after the objects; no -lcudart (TF's).
    subprocess.run(link, check=True)
    if cuda:
        _check_cuda_symbols(out_path, tf.sysconfig.get_lib())
    families = sorted(
        p.name for p in CC_DIR.iterdir() if p.is_dir() and p.name != "common"
    )
    gpu_families = sorted(
        {
            p.relative_to(CC_DIR).parts[0]
            for p in cuda_sources
            if p.relative_to(CC_DIR).parts[0] != "common"
        }
    )
    tf_build = tf.sysconfig.get_build_info()
    info = {
        "tf_version": tf.__version__,
        "tf_git_version": tf.version.GIT_VERSION,
        "cxx11_abi_flag": tf.sysconfig.CXX11_ABI_FLAG,
        "compiler": subprocess.run(
            [cxx, "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "isa_variants": {k: " ".join(v) for k, v in variants.items()},
        "extra_isa_variants": {
            f: {k: " ".join(v) for k, v in e.items()}
            for f, e in EXTRA_ISA_VARIANTS.items()
            if "avx2" in variants
        },
        "families": families,
        "python": sys.version.split()[0],
        "cuda_built": bool(cuda),
        "cuda_reason": cuda_reason,
        "cuda_compiler": cuda["nvcc"] if cuda else None,
        "cuda_version": cuda["version"] if cuda else None,
        "cuda_archs": cuda["archs"] if cuda else [],
        "cuda_families": gpu_families if cuda else [],
        "tf_cuda_version": tf_build.get("cuda_version"),
        "sanitizers": sanitizers,
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

    def run(self):
        if self.inplace and _sanitizers():
            raise RuntimeError(
                "a sanitizer build (KBM_SANITIZE) must not replace the "
                "shipped library: build it with `setup.py build_ext "
                "--build-lib DIR` instead of --inplace"
            )
        super().run()

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
