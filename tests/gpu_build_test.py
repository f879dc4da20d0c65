"""The CUDA-enabled op library: it loads on a machine without a GPU, needs no
CUDA runtime beyond TensorFlow's, and registers a GPU kernel for every op and
dtype. Skipped when the library was built without CUDA (no nvcc)."""

import json
import subprocess
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import keras_bigmodels as kbm
from keras_bigmodels.ops import _loader

# Every op with GPU kernels, forward and gradient (float, half, bfloat16; no
# double: that stays on the CPU for gradient checks).
GPU_OPS = [
    "Kbm>FusedLayerNorm",
    "Kbm>FusedLayerNormGrad",
    "Kbm>FusedRmsNorm",
    "Kbm>FusedRmsNormGrad",
    "Kbm>BiasGelu",
    "Kbm>BiasGeluGrad",
    "Kbm>SoftmaxKLDivergence",
    "Kbm>SoftmaxKLDivergenceGrad",
    "Kbm>FlashAttention",
    "Kbm>FlashAttentionGrad",
    "Kbm>MultiApplyAdam",
    "Kbm>MultiApplyLamb",
    "Kbm>MultiApplyLion",
]
GPU_DTYPES = {"float32", "float16", "bfloat16"}


def _build_info():
    return json.loads(_loader.BUILD_INFO_PATH.read_text())


pytestmark = pytest.mark.skipif(
    not _loader.BUILD_INFO_PATH.exists() or not _build_info().get("cuda_built"),
    reason="the op library was built without CUDA kernels",
)


def test_build_record_names_the_cuda_build():
    info = _build_info()
    assert info["cuda_version"] and info["cuda_compiler"]
    assert info["cuda_archs"], info
    assert set(info["cuda_families"]) <= set(info["families"])


def test_library_loads_without_a_gpu():
    status = kbm.ops.kernels_available()
    assert status, status.reason
    if not tf.config.list_physical_devices("GPU"):
        assert not status.gpu
        assert status.gpu.reason == "TensorFlow sees no GPU"
        assert "cuda=" in status.gpu.info


def _symbols(path, which):
    out = subprocess.run(
        ["nm", "-D", which, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines()}


def test_cuda_runtime_comes_from_tensorflow():
    needed = {
        s
        for s in _symbols(_loader.LIBRARY_PATH, "--undefined-only")
        if s.startswith(("cuda", "__cuda"))
    }
    assert "__cudaRegisterFatBinary" in needed
    framework = Path(tf.sysconfig.get_lib()) / "libtensorflow_framework.so.2"
    assert needed <= _symbols(framework, "--defined-only")
    libs = subprocess.run(
        ["readelf", "-d", str(_loader.LIBRARY_PATH)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "libcudart" not in libs


def _registered(op, device):
    """dtype names of the `device` kernels registered for `op`."""
    kbm.ops.kernels_available()  # Loads the library.
    dtypes = set()
    for kernel in kernels.get_registered_kernels_for_op(op).kernel:
        if kernel.device_type != device:
            continue
        for constraint in kernel.constraint:
            if constraint.name == "T":
                dtypes.update(
                    tf.dtypes.as_dtype(t).name
                    for t in constraint.allowed_values.list.type
                )
    return dtypes


@pytest.mark.parametrize("op", GPU_OPS)
def test_gpu_kernel_registered_for_every_dtype(op):
    assert _registered(op, "CPU"), f"{op} is not an op of the library"
    gpu = _registered(op, "GPU")
    assert gpu >= GPU_DTYPES, f"{op}: GPU kernels for {sorted(gpu)}"
