"""Lazy loading of the compiled op library and the kernel-or-reference choice.

The library (`keras_bigmodels/_kbm_ops.so`) is loaded on first use, never at
import. It is used only if it exists, was built for this TensorFlow version
and loads; otherwise every op runs its pure-TensorFlow reference, and the
first op that falls back warns once, saying why.

On a GPU the library's CUDA kernels are used when it was built with them
(see setup.py, KBM_CUDA). Before an op family first runs on a GPU, a tiny
self-check of that family (ops/_gpu_probe.py) runs there; if the kernels
cannot run (driver too old, no code for the GPU's architecture, a launch
error) or disagree with the references, the family keeps to its references
on that GPU, with one warning that carries the error.
`KERAS_BIGMODELS_REQUIRE_GPU_KERNELS=1` turns that fallback into an error.

`KERAS_BIGMODELS_OPS_LIBRARY=/path/to/_kbm_ops.so`, set before kbm is
imported, loads another build of the library instead (e.g. the sanitizer
build of `make asan`); its `_build_info.json` is read from the same folder
and checked the same way.
"""

import json
import os
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from keras_bigmodels import config
from keras_bigmodels.ops import _gpu_probe

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
ENV_LIBRARY = "KERAS_BIGMODELS_OPS_LIBRARY"


def _library_path():
    """The shipped library, or the one named by KERAS_BIGMODELS_OPS_LIBRARY."""
    override = os.environ.get(ENV_LIBRARY, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return _PACKAGE_DIR / "_kbm_ops.so"


LIBRARY_PATH = _library_path()
BUILD_INFO_PATH = LIBRARY_PATH.with_name("_build_info.json")
BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` (or `make build`) "
    "in the keras_bigmodels checkout"
)

CUDA_BUILD_HINT = (
    "rebuild with the CUDA kernels: `KBM_CUDA=1 pip install "
    "--no-build-isolation -e .` in the keras_bigmodels checkout (a CUDA 12.x "
    "toolkit, or nvcc 13 with an R580+ driver; KBM_CUDA_ARCHS for other GPUs)"
)
ENV_REQUIRE_GPU = "KERAS_BIGMODELS_REQUIRE_GPU_KERNELS"

_lock = threading.Lock()
_state = {"attempted": False, "lib": None, "reason": None, "info": None}
_warned = set()
# (device, family) -> None (self-check passed) or the reason it failed.
_gpu_checks = {}
_gpu_device_names = {}  # "names": the logical GPUs, listed once
_probing = threading.local()


class GpuKernelStatus(NamedTuple):
    """Whether the GPU kernels can run, and why not.

    Truthy when `available`. `info` names the CUDA build (version,
    architectures) and the GPUs checked; `devices` maps each checked GPU to
    {family: None if its self-check passed, else the reason}.
    """

    available: bool
    reason: str
    info: str
    devices: dict = {}

    def __bool__(self):
        return self.available


class _KernelStatusFields(NamedTuple):
    available: bool
    reason: str
    info: str


class KernelStatus(_KernelStatusFields):
    """Whether fused kernels can run, and why not.

    Truthy when `available` (the CPU kernels of the library). `reason` is
    empty when available; `info` describes the loaded library (SIMD variant
    in use, TensorFlow version it was built for). `gpu` is a
    `GpuKernelStatus` with the same fields for the GPU kernels.
    """

    gpu = None  # Set per instance; the class default keeps _replace working.

    def __new__(cls, available, reason, info, gpu=None):
        self = super().__new__(cls, available, reason, info)
        if gpu is None:
            gpu = GpuKernelStatus(False, "not checked", "")
        self.gpu = gpu
        return self

    def __bool__(self):
        return self.available

    def __repr__(self):
        return (
            f"KernelStatus(available={self.available!r}, "
            f"reason={self.reason!r}, info={self.info!r}, gpu={self.gpu!r})"
        )


def require_gpu_kernels():
    """True when KERAS_BIGMODELS_REQUIRE_GPU_KERNELS makes GPU fallbacks
    errors."""
    return os.environ.get(ENV_REQUIRE_GPU, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )


def _check_build_info():
    """Returns (build info dict, reason the library must not be loaded)."""
    if not LIBRARY_PATH.exists():
        return None, f"the compiled op library {LIBRARY_PATH} is missing; " + (
            BUILD_HINT
        )
    try:
        info = json.loads(BUILD_INFO_PATH.read_text())
    except (OSError, ValueError) as e:
        return None, (
            f"the op library's build record {BUILD_INFO_PATH} is missing or "
            f"unreadable ({e}); rebuild: " + BUILD_HINT
        )
    built = str(info.get("tf_version", "?"))
    running = tf.__version__
    if built.split(".")[:2] != running.split(".")[:2]:
        return info, (
            f"the op library was built for TensorFlow {built} but "
            f"TensorFlow {running} is running (the op ABI changes with every "
            "minor version); install the TensorFlow it was built for "
            f"(tensorflow=={'.'.join(built.split('.')[:2])}.*, the version "
            "keras-bigmodels pins) or rebuild it against this one: "
            + BUILD_HINT
            + " (outside a checkout: `pip install --no-build-isolation "
            "keras_bigmodels-<version>.tar.gz`)"
        )
    if info.get("cxx11_abi_flag") != tf.sysconfig.CXX11_ABI_FLAG:
        return info, (
            "the op library was built with _GLIBCXX_USE_CXX11_ABI="
            f"{info.get('cxx11_abi_flag')} but TensorFlow uses "
            f"{tf.sysconfig.CXX11_ABI_FLAG}; rebuild: " + BUILD_HINT
        )
    return info, None


def load_library():
    """Returns (library module or None, reason it is unavailable or None)."""
    if config.env_disabled():
        return None, f"disabled by {config.ENV_DISABLE}=1"
    with _lock:
        if not _state["attempted"]:
            _state["attempted"] = True
            info, reason = _check_build_info()
            lib = None
            if reason is None:
                try:
                    lib = tf.load_op_library(str(LIBRARY_PATH))
                    with tf.init_scope():
                        lib_info = lib.kbm_library_info().numpy().decode()
                    info = {**info, "library_info": lib_info}
                except Exception as e:  # noqa: BLE001 - any failure falls back
                    lib = None
                    reason = (
                        f"loading {LIBRARY_PATH} failed ({type(e).__name__}: "
                        f"{e}); rebuild: " + BUILD_HINT
                    )
            _state.update(lib=lib, reason=reason, info=info)
        return _state["lib"], _state["reason"]


def library():
    """The loaded library; for gradient functions of ops it already ran."""
    lib, reason = load_library()
    if lib is None:
        raise RuntimeError(
            f"The keras_bigmodels op library is unavailable: {reason}"
        )
    return lib


def kernels_available():
    """Reports whether the fused kernels can run in this process, and why not.

    On a machine with GPUs this runs the GPU kernels' self-checks on every
    GPU (once per process; each takes milliseconds).

    Returns:
        A `KernelStatus(available, reason, info)`, truthy when the CPU
        kernels are available. `reason` explains an unavailable library (not
        built, built for another TensorFlow, failed to load) or a switch that
        turned kernels off. `status.gpu` is a `GpuKernelStatus(available,
        reason, info, devices)` for the GPU kernels: not built with CUDA, no
        GPU visible, or the self-check errors per GPU and op family.

    Example:

    ```python
    status = kbm.ops.kernels_available()
    if not status:
        print("fused kernels off:", status.reason)
    if not status.gpu:
        print("GPU kernels off:", status.gpu.reason)
    ```
    """
    lib, reason = load_library()
    info = _state["info"] or {}
    desc = ""
    if lib is not None:
        desc = (
            f"{info.get('library_info', '')};built_for_tf="
            f"{info.get('tf_version', '?')}"
        )
        if not config.fused_kernels_enabled():
            reason = "switched off by kbm.config.fused_kernels(False)"
    available = lib is not None and reason is None
    return KernelStatus(available, reason or "", desc, _gpu_status(reason))


def _cuda_description(info):
    archs = ",".join(info.get("cuda_archs") or [])
    return (
        f"cuda={info.get('cuda_version')};archs={archs};"
        f"families={','.join(info.get('cuda_families') or [])}"
    )


def _gpu_status(library_reason):
    """The GPU half of kernels_available()."""
    if library_reason:
        return GpuKernelStatus(False, library_reason, "")
    info = _state["info"] or {}
    if not info.get("cuda_built"):
        why = info.get("cuda_reason") or "built without CUDA"
        return GpuKernelStatus(
            False,
            f"the op library was built without GPU kernels ({why}); "
            + CUDA_BUILD_HINT,
            "",
        )
    desc = _cuda_description(info)
    devices = gpu_devices()
    if not devices:
        return GpuKernelStatus(False, "TensorFlow sees no GPU", desc)
    results = {
        d: {f: _self_check(d, f) for f in info.get("cuda_families") or []}
        for d in devices
    }
    failures = [
        f"{f} on {d}: {why}"
        for d, by_family in results.items()
        for f, why in by_family.items()
        if why
    ]
    desc += f";devices={','.join(devices)}"
    if failures:
        return GpuKernelStatus(
            False,
            "self-check failed: " + "; ".join(failures),
            desc,
            results,
        )
    return GpuKernelStatus(True, "", desc, results)


def gpu_devices():
    """The logical GPU devices TensorFlow sees (e.g. "/device:GPU:0")."""
    if "names" not in _gpu_device_names:
        # Fixed once TensorFlow's runtime is initialised: ask once.
        _gpu_device_names["names"] = [
            d.name for d in tf.config.list_logical_devices("GPU")
        ]
    return list(_gpu_device_names["names"])


def _self_check(device, family):
    """None if `family`'s kernels pass their self-check on `device`."""
    key = (device, family)
    if key not in _gpu_checks:
        _gpu_checks[key] = _run_self_check(family, device)
    return _gpu_checks[key]


def _run_self_check(family, device):
    """Runs the self-check in a thread of its own: it executes eagerly there,
    outside the caller's function trace, device scope and distribution
    strategy scope (all of which TensorFlow keeps per thread)."""
    result = {}

    def check():
        _probing.active = True
        try:
            result["why"] = _gpu_probe.run(family, device)
        except BaseException as e:  # noqa: BLE001 - reported, not raised
            result["why"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=check, name="kbm-gpu-self-check")
    thread.start()
    thread.join()
    return result.get("why", "the self-check did not finish")


def in_xla_context():
    """True while tracing a function compiled with `jit_compile=True`."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private module moved
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def _gpu_tensor_devices(tensors):
    devices = []
    for t in tensors:
        device = getattr(t, "device", "") or ""
        if "GPU" in device.upper() and device not in devices:
            devices.append(device)
    return devices


def _in_cpu_scope():
    """True inside an eager `tf.device("/CPU:...")` scope."""
    try:
        from tensorflow.python.eager import context
    except ImportError:  # pragma: no cover - private module moved
        return False
    if not tf.executing_eagerly():
        return False
    return "CPU" in (context.context().device_name or "").upper()


def _gpu_reason(op_name, tensors):
    """Why this op must not use the library's kernels on a GPU, or None."""
    if getattr(_probing, "active", False):
        return None  # The self-check itself runs the fused kernels.
    on_gpu = _gpu_tensor_devices(tensors)
    info = _state["info"] or {}
    family = _gpu_probe.family_of(op_name)
    families = info.get("cuda_families") or []
    has_gpu_kernels = info.get("cuda_built") and (
        family in families if family else bool(families)
    )
    if not has_gpu_kernels:
        # The op has CPU kernels only: TF places it on the CPU unless its
        # inputs are on a GPU.
        if not on_gpu:
            return None
        if not info.get("cuda_built"):
            why = info.get("cuda_reason") or "built without CUDA"
            return (
                f"the input is on {on_gpu[0]} and this build of the op "
                f"library has CPU kernels only ({why}); " + CUDA_BUILD_HINT
            )
        return (
            f"the input is on {on_gpu[0]} and this build of the op library "
            f"has no GPU kernels for {family or op_name}; " + CUDA_BUILD_HINT
        )
    # The op has GPU kernels: it may run on any GPU its inputs are on, or
    # (inputs without a placed device) on any visible GPU.
    if on_gpu:
        devices = on_gpu
    elif _in_cpu_scope():
        return None
    else:
        devices = gpu_devices()
    check = [family] if family else families
    for device in devices:
        for fam in check:
            why = _self_check(_canonical(device), fam)
            if why:
                return (
                    f"its GPU kernels ({fam}) failed their self-check on "
                    f"{device}: {why}; " + CUDA_BUILD_HINT
                )
    return None


def _canonical(device):
    """ "/job:localhost/replica:0/task:0/device:GPU:0" -> "/device:GPU:0"."""
    spec = tf.DeviceSpec.from_string(device)
    return f"/device:{spec.device_type}:{spec.device_index or 0}"


def warn_once(key, message):
    """Warns `message` once per process for `key`."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, config.FusedKernelFallbackWarning, stacklevel=4)


def select(op_name, use_fused_kernel, tensors=(), unsupported=None):
    """Picks the kernel library for one op call, or None for the reference.

    Args:
        op_name: The public op's name, for messages (e.g. "layer_norm").
        use_fused_kernel: "auto", True or False, as passed by the caller.
        tensors: The op's tensor inputs, to check their device.
        unsupported: A reason this call's inputs have no kernel (dtype,
            shape), or None.

    Returns:
        The loaded library module, or None to use the reference.

    Raises:
        ValueError: `use_fused_kernel` is not "auto"/True/False, or it is True
            and the kernel cannot be used (the message lists why).
    """
    if not (isinstance(use_fused_kernel, bool) or use_fused_kernel == "auto"):
        raise ValueError(
            "use_fused_kernel must be 'auto', True or False. "
            f"Received: use_fused_kernel={use_fused_kernel!r}"
        )
    if use_fused_kernel is False:
        return None
    reasons = []
    if config.env_disabled():
        reasons.append(f"disabled by {config.ENV_DISABLE}=1")
    elif not config.fused_kernels_enabled():
        reasons.append("switched off by kbm.config.fused_kernels(False)")
    switched_off = bool(reasons)
    lib = None
    if not switched_off:
        lib, why = load_library()
        if lib is None:
            reasons.append(why)
    library_missing = not switched_off and lib is None
    if in_xla_context():
        reasons.append(
            "it is traced inside an XLA-compiled function (jit_compile=True) "
            "and custom ops have no XLA kernel"
        )
    if unsupported:
        reasons.append(unsupported)
    gpu_reason = None
    if lib is not None and not reasons:
        gpu_reason = _gpu_reason(op_name, tensors)
        if gpu_reason:
            reasons.append(gpu_reason)
    elif library_missing and require_gpu_kernels() and gpu_devices():
        gpu_reason = reasons[0]
    if not reasons:
        return lib
    if gpu_reason and require_gpu_kernels():
        raise RuntimeError(
            f"{ENV_REQUIRE_GPU}=1 but {op_name} cannot use the kbm GPU "
            f"kernels: {gpu_reason}"
        )
    if use_fused_kernel is True:
        raise ValueError(
            f"use_fused_kernel=True but the fused kernel of {op_name} cannot "
            f"be used: {'; '.join(reasons)}."
        )
    if not switched_off:  # The user's own switch needs no warning.
        # A missing library is one warning for all ops, a failed GPU
        # self-check one per family and GPU; anything specific to this op
        # and input is one warning per op and reason.
        if library_missing:
            key = reasons[0]
        elif gpu_reason:
            key = ("gpu", gpu_reason)
        else:
            key = (op_name, *reasons)
        warn_once(
            key,
            f"keras_bigmodels: {op_name} runs its pure-TensorFlow reference "
            f"instead of the fused kernel because {'; '.join(reasons)}.",
        )
    return None
