"""Common loader of the harness library for the ops_<family>.py bindings.

Loads gpu_harness/build/libkbm_gpu.so (built by gpu_harness/build.sh; the
environment variable KBM_GPU_LIB names another file) with ctypes and offers
the helpers every family binding uses: dtype codes, the current stream,
pointers, return-code checks, CUDA-event timing and NaN-filled outputs.
"""

import ctypes
import os
import statistics

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LIB = os.path.join(_HERE, "build", "libkbm_gpu.so")

# torch dtype -> kbm::gpu::DType code (cc/common/gpu/gpu_types.h).
DTYPE = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
}

_lib = None


def lib_path():
    """The path of the harness library (KBM_GPU_LIB overrides)."""
    return os.environ.get("KBM_GPU_LIB") or DEFAULT_LIB


def lib():
    """The harness library as a ctypes.CDLL, loaded once."""
    global _lib
    if _lib is None:
        path = lib_path()
        if not os.path.exists(path):
            raise OSError(
                f"{path} does not exist: build it with gpu_harness/build.sh"
            )
        handle = ctypes.CDLL(path)
        handle.kbm_error_string.argtypes = [ctypes.c_int]
        handle.kbm_error_string.restype = ctypes.c_char_p
        handle.kbm_multiprocessor_count.argtypes = []
        handle.kbm_multiprocessor_count.restype = ctypes.c_int
        _lib = handle
    return _lib


def error_string(rc):
    """The text of a launcher return code (CUDA's error string if < 1000)."""
    text = lib().kbm_error_string(int(rc))
    return text.decode("utf-8", "replace") if text else f"error {rc}"


def check(rc, what):
    """Raises RuntimeError(f"{what}: <error text>") when rc is not 0."""
    if rc != 0:
        raise RuntimeError(f"{what}: {error_string(rc)} (code {rc})")


def stream():
    """The current CUDA stream of torch as an integer handle."""
    return torch.cuda.current_stream().cuda_stream


def ptr(t):
    """The device pointer of tensor `t` (None for None)."""
    return None if t is None else t.data_ptr()


def nan_like(t):
    """A CUDA tensor shaped and typed like `t`, filled with NaN."""
    return torch.full_like(t, float("nan"), device="cuda")


def nan_empty(shape, dtype):
    """A CUDA tensor of `shape` and `dtype` filled with NaN."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device="cuda")


def time_ms(fn, warmup=5, iters=20):
    """Median milliseconds of `fn()` on the current stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
