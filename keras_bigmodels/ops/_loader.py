"""Lazy loading of the compiled op library and the kernel-or-reference choice.

The library (`keras_bigmodels/_kbm_ops.so`) is loaded on first use, never at
import. It is used only if it exists, was built for this TensorFlow version
and loads; otherwise every op runs its pure-TensorFlow reference, and the
first op that falls back warns once, saying why.
"""

import json
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

from keras_bigmodels import config

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
LIBRARY_PATH = _PACKAGE_DIR / "_kbm_ops.so"
BUILD_INFO_PATH = _PACKAGE_DIR / "_build_info.json"
BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` (or `make build`) "
    "in the keras_bigmodels checkout"
)

_lock = threading.Lock()
_state = {"attempted": False, "lib": None, "reason": None, "info": None}
_warned = set()


class KernelStatus(NamedTuple):
    """Whether fused kernels can run, and why not.

    Truthy when `available`. `reason` is empty when available; `info`
    describes the loaded library (SIMD variant in use, TensorFlow version it
    was built for).
    """

    available: bool
    reason: str
    info: str

    def __bool__(self):
        return self.available


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
            "minor version); rebuild: " + BUILD_HINT
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

    Returns:
        A `KernelStatus(available, reason, info)`, truthy when available.
        `reason` explains an unavailable library (not built, built for another
        TensorFlow, failed to load) or a switch that turned kernels off.

    Example:

    ```python
    status = kbm.ops.kernels_available()
    if not status:
        print("fused kernels off:", status.reason)
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
    return KernelStatus(lib is not None and reason is None, reason or "", desc)


def in_xla_context():
    """True while tracing a function compiled with `jit_compile=True`."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private module moved
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def _device_reason(tensors):
    for t in tensors:
        device = (getattr(t, "device", "") or "").upper()
        if "GPU" in device:
            return (
                f"the input is on {t.device} and this build of the op "
                "library has CPU kernels only"
            )
    return None


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
    device = _device_reason(tensors)
    if device:
        reasons.append(device)
    if not reasons:
        return lib
    if use_fused_kernel is True:
        raise ValueError(
            f"use_fused_kernel=True but the fused kernel of {op_name} cannot "
            f"be used: {'; '.join(reasons)}."
        )
    if not switched_off:  # The user's own switch needs no warning.
        # A missing library is one warning for all ops; anything specific to
        # this op and input is one warning per op and reason.
        key = reasons[0] if library_missing else (op_name, *reasons)
        warn_once(
            key,
            f"keras_bigmodels: {op_name} runs its pure-TensorFlow reference "
            f"instead of the fused kernel because {'; '.join(reasons)}.",
        )
    return None
