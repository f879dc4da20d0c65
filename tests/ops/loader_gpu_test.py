"""The loader on GPUs, simulated on the CPU: the GPU status, the fallback
when the library has no GPU kernels or their self-check fails (one warning
carrying the error), KERAS_BIGMODELS_REQUIRE_GPU_KERNELS, and the
self-checks themselves (run here against the CPU kernels)."""

import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels import config
from keras_bigmodels.ops import _gpu_probe, _loader
from keras_bigmodels.ops import normalization as norm_ops

GPU0 = "/job:localhost/replica:0/task:0/device:GPU:0"
CUDA_ERROR = (
    "InternalError: CUDA error: no kernel image is available for execution "
    "on the device [Op:KbmFusedLayerNorm]"
)


def _on(device):
    """A stand-in for a tensor placed on `device` (select reads .device)."""
    return types.SimpleNamespace(device=device)


@pytest.fixture
def gpu_loader(monkeypatch):
    """The loaded library, with a CUDA build record and one fake GPU."""
    kbm.ops.kernels_available()  # Loads the real library.
    info = dict(_loader._state["info"])
    info.update(
        cuda_built=True,
        cuda_reason="",
        cuda_version="13.0",
        cuda_archs=["sm_80", "sm_90", "compute_90"],
        cuda_families=list(_gpu_probe.FAMILIES),
    )
    monkeypatch.setitem(_loader._state, "info", info)
    monkeypatch.setattr(_loader, "_warned", set())
    monkeypatch.setattr(_loader, "_gpu_checks", {})
    monkeypatch.setattr(_loader, "gpu_devices", lambda: ["/device:GPU:0"])
    monkeypatch.delenv(_loader.ENV_REQUIRE_GPU, raising=False)
    return monkeypatch


def _fallback_warnings(caught):
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, config.FusedKernelFallbackWarning)
    ]


def _select_many(names, tensors):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        picked = [
            _loader.select(name, "auto", tensors)
            for _ in range(2)
            for name in names
        ]
    return picked, _fallback_warnings(caught)


def test_kernel_status_stays_a_three_field_tuple():
    status = kbm.ops.kernels_available()
    available, reason, info = status
    assert available is status.available and bool(status) == available
    assert isinstance(status.gpu, _loader.GpuKernelStatus)
    assert status._replace(reason="x").reason == "x"
    assert "gpu=" in repr(status)


def test_no_gpu_is_reported(gpu_loader):
    gpu_loader.setattr(_loader, "gpu_devices", lambda: [])
    status = kbm.ops.kernels_available()
    assert status
    assert not status.gpu
    assert status.gpu.reason == "TensorFlow sees no GPU"
    assert "cuda=13.0;archs=sm_80,sm_90,compute_90" in status.gpu.info
    # CPU inputs keep the CPU kernels, without a warning.
    picked, caught = _select_many(["layer_norm"], (_on("/CPU:0"),))
    assert caught == []


def test_library_without_cuda_falls_back_on_gpu_inputs(gpu_loader):
    _loader._state["info"].update(
        cuda_built=False, cuda_reason="no CUDA compiler (nvcc) found"
    )
    status = kbm.ops.kernels_available()
    assert status and not status.gpu
    assert "without GPU kernels (no CUDA compiler" in status.gpu.reason
    picked, caught = _select_many(["layer_norm"], (_on(GPU0),))
    assert picked == [None, None]
    assert len(caught) == 1, caught
    assert "CPU kernels only (no CUDA compiler (nvcc) found)" in caught[0]
    assert "KBM_CUDA=1" in caught[0]
    # Inputs on the CPU still use the CPU kernels.
    picked, caught = _select_many(["layer_norm"], (_on("/CPU:0"),))
    assert None not in picked and caught == []
    with pytest.raises(ValueError, match="CPU kernels only"):
        _loader.select("layer_norm", True, (_on(GPU0),))


def test_passing_self_check_uses_the_gpu_kernels(gpu_loader):
    calls = []

    def probe(family, device):
        calls.append((family, device))
        return None

    gpu_loader.setattr(_gpu_probe, "run", probe)
    picked, caught = _select_many(
        ["layer_norm", "rms_norm", "bias_gelu"], (_on(GPU0),)
    )
    assert None not in picked and caught == []
    # One check per family and device, on the canonical device name.
    assert calls == [
        ("normalization", "/device:GPU:0"),
        ("bias_activation", "/device:GPU:0"),
    ]
    # Unplaced inputs (graph tensors, optimizer variables): every GPU.
    assert _loader.select("adam_update", "auto", ()) is not None
    assert calls[-1] == ("optimizers", "/device:GPU:0")
    status = kbm.ops.kernels_available()
    assert status.gpu, status.gpu.reason
    assert status.gpu.devices["/device:GPU:0"]["attention"] is None
    assert "devices=/device:GPU:0" in status.gpu.info


def test_failing_self_check_falls_back_with_one_warning(gpu_loader):
    calls = []

    def probe(family, device):
        calls.append(family)
        return CUDA_ERROR if family == "normalization" else None

    gpu_loader.setattr(_gpu_probe, "run", probe)
    picked, caught = _select_many(["layer_norm", "rms_norm"], (_on(GPU0),))
    assert picked == [None] * 4
    assert len(caught) == 1, caught
    assert "failed their self-check on" in caught[0]
    assert "no kernel image is available" in caught[0]
    assert "KBM_CUDA=1" in caught[0]
    assert calls == ["normalization"]
    # Other families are unaffected.
    assert _loader.select("bias_gelu", "auto", (_on(GPU0),)) is not None
    with pytest.raises(ValueError, match="no kernel image"):
        _loader.select("rms_norm", True, (_on(GPU0),))
    status = kbm.ops.kernels_available()
    assert status and not status.gpu
    assert "normalization on /device:GPU:0" in status.gpu.reason
    assert "no kernel image" in status.gpu.reason


def test_require_gpu_kernels_turns_the_fallback_into_an_error(gpu_loader):
    gpu_loader.setattr(_gpu_probe, "run", lambda family, device: CUDA_ERROR)
    gpu_loader.setenv(_loader.ENV_REQUIRE_GPU, "1")
    with pytest.raises(RuntimeError, match="REQUIRE_GPU_KERNELS=1 but"):
        _loader.select("layer_norm", "auto", (_on(GPU0),))
    # Reasons that are not about the GPU kernels still fall back.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert (
            _loader.select("layer_norm", "auto", (), unsupported="dtype x")
            is None
        )


def test_require_gpu_kernels_without_cuda_build(gpu_loader):
    _loader._state["info"].update(cuda_built=False)
    gpu_loader.setenv(_loader.ENV_REQUIRE_GPU, "1")
    with pytest.raises(RuntimeError, match="CPU kernels only"):
        _loader.select("bias_gelu", "auto", (_on(GPU0),))


def test_self_checks_pass_against_the_cpu_kernels():
    for family in _gpu_probe.FAMILIES:
        assert _gpu_probe.run(family, "/CPU:0") is None, family


def test_self_check_runs_outside_traces_and_strategy_scopes(monkeypatch):
    monkeypatch.setattr(_loader, "_gpu_checks", {})
    strategy = tf.distribute.MirroredStrategy(["/CPU:0"])
    results = []

    @tf.function
    def traced():
        results.append(_loader._self_check("/CPU:0", "optimizers"))
        results.append(_loader._self_check("/CPU:0", "normalization"))
        return tf.constant(0)

    with strategy.scope():
        traced()
    assert results == [None, None]


def test_self_check_reports_a_mismatch_and_an_error(monkeypatch):
    real = norm_ops.layer_norm

    def off_by_a_little(x, g=None, b=None, epsilon=1e-3, **kw):
        y = real(x, g, b, epsilon, **kw)
        return y + 1e-2 if kw.get("use_fused_kernel") is True else y

    monkeypatch.setattr(norm_ops, "layer_norm", off_by_a_little)
    why = _gpu_probe.run("normalization", "/CPU:0")
    assert why.startswith("layer_norm output: max |error| 0.01"), why

    def cuda_error(*args, use_fused_kernel="auto", **kw):
        if use_fused_kernel is True:
            raise tf.errors.InternalError(None, None, CUDA_ERROR)
        return real(*args, use_fused_kernel=use_fused_kernel, **kw)

    monkeypatch.setattr(norm_ops, "layer_norm", cuda_error)
    why = _gpu_probe.run("normalization", "/CPU:0")
    assert why.startswith("InternalError: ") and "no kernel image" in why


def test_family_of_names():
    assert _gpu_probe.family_of("layer_norm") == "normalization"
    assert _gpu_probe.family_of("RMSNormalization") == "normalization"
    assert _gpu_probe.family_of("bias_gelu") == "bias_activation"
    assert _gpu_probe.family_of("softmax_kl_divergence") == "distillation"
    assert _gpu_probe.family_of("flash_attention") == "attention"
    assert _gpu_probe.family_of("MultiHeadAttention") == "attention"
    assert _gpu_probe.family_of("lamb_update") == "optimizers"
    assert _gpu_probe.family_of("AdamW") == "optimizers"
    assert _gpu_probe.family_of("something") is None


def test_probe_outputs_match(monkeypatch):
    # The probe's comparison itself.
    assert _gpu_probe._compare("x", np.ones(3), np.ones(3)) is None
    assert "non-finite" in _gpu_probe._compare(
        "x", np.array([np.nan]), np.ones(1)
    )
    assert "shape" in _gpu_probe._compare("x", np.ones(2), np.ones(3))
