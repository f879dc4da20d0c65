"""The lazy loader, the fallback and its single warning, and the switches."""

import json
import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels import config
from keras_bigmodels.ops import _loader
from keras_bigmodels.testing import kbm_ops_in, last_json_line, run_python


def test_kernels_available_here():
    status = kbm.ops.kernels_available()
    assert status, status.reason
    assert status.reason == ""
    assert "active_isa=" in status.info and "built_for_tf=" in status.info


@pytest.fixture
def fresh_loader(monkeypatch):
    """A loader that has not tried to load yet; restored afterwards."""
    saved = dict(_loader._state)
    monkeypatch.setattr(_loader, "_warned", set())
    _loader._state.update(attempted=False, lib=None, reason=None, info=None)
    yield monkeypatch
    _loader._state.update(saved)


def _three_ops():
    x = tf.ones((2, 4))
    return [
        kbm.ops.layer_norm(x, None, None),
        kbm.ops.rms_norm(x, None),
        kbm.ops.bias_gelu(x),
    ]


def test_missing_library_falls_back_with_one_warning(fresh_loader, tmp_path):
    fresh_loader.setattr(_loader, "LIBRARY_PATH", tmp_path / "absent.so")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _three_ops()
        second = _three_ops()
    fallback = [
        w
        for w in caught
        if issubclass(w.category, config.FusedKernelFallbackWarning)
    ]
    assert len(fallback) == 1, [str(w.message) for w in fallback]
    assert "absent.so is missing" in str(fallback[0].message)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    status = kbm.ops.kernels_available()
    assert not status and "missing" in status.reason
    with pytest.raises(
        ValueError, match="use_fused_kernel=True but .*layer_norm.*missing"
    ):
        kbm.ops.layer_norm(tf.ones((2, 4)), None, None, use_fused_kernel=True)


def test_library_for_another_tensorflow_is_not_loaded(fresh_loader, tmp_path):
    info = json.loads(_loader.BUILD_INFO_PATH.read_text())
    info["tf_version"] = "2.20.0"
    fake = tmp_path / "_build_info.json"
    fake.write_text(json.dumps(info))
    fresh_loader.setattr(_loader, "BUILD_INFO_PATH", fake)
    status = kbm.ops.kernels_available()
    assert not status
    assert "built for TensorFlow 2.20.0" in status.reason
    assert f"TensorFlow {tf.__version__} is running" in status.reason
    with pytest.warns(config.FusedKernelFallbackWarning, match="2.20.0"):
        kbm.ops.layer_norm(tf.ones((2, 4)), None, None)


def test_use_fused_kernel_false_and_bad_values():
    x = tf.ones((3, 8))
    ref = tf.function(lambda x: kbm.ops.bias_gelu(x, use_fused_kernel=False))
    assert kbm_ops_in(ref.get_concrete_function(x)) == []
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="use_fused_kernel must be"):
            kbm.ops.bias_gelu(x, use_fused_kernel=bad)


def test_xla_function_uses_the_reference(monkeypatch):
    monkeypatch.setattr(_loader, "_warned", set())
    x = tf.random.normal((4, 16))
    g = tf.random.normal((16,))

    @tf.function(jit_compile=True)
    def f(x):
        return kbm.ops.layer_norm(x, g, g), kbm.ops.bias_gelu(x, g)

    with pytest.warns(config.FusedKernelFallbackWarning, match="XLA"):
        y, z = f(x)
    assert kbm_ops_in(f.get_concrete_function(x)) == []
    np.testing.assert_allclose(
        y.numpy(), kbm.ops.layer_norm(x, g, g).numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        z.numpy(), kbm.ops.bias_gelu(x, g).numpy(), rtol=1e-5, atol=1e-5
    )


def test_environment_variable_disables_loading():
    out = run_python(
        """
        import json, warnings
        warnings.simplefilter("error")
        import tensorflow as tf
        import keras_bigmodels as kbm
        from keras_bigmodels.ops import _loader
        y = kbm.ops.layer_norm(tf.ones((2, 3)), None, None)
        status = kbm.ops.kernels_available()
        print(json.dumps({"attempted": _loader._state["attempted"],
                          "available": status.available,
                          "reason": status.reason,
                          "y": y.numpy().tolist()}))
        """,
        env={"KERAS_BIGMODELS_DISABLE_FUSED": "1"},
    )
    result = last_json_line(out)
    assert result["attempted"] is False
    assert result["available"] is False
    assert result["reason"] == "disabled by KERAS_BIGMODELS_DISABLE_FUSED=1"
    np.testing.assert_allclose(result["y"], np.zeros((2, 3)), atol=1e-6)


def test_library_path_from_environment(tmp_path):
    # Another build of the library (e.g. `make asan`'s) is named by an
    # environment variable; its build record is read from its own folder.
    other = tmp_path / "other" / "_kbm_ops.so"
    out = last_json_line(
        run_python(
            """
            import json, warnings
            import tensorflow as tf
            import keras_bigmodels as kbm
            from keras_bigmodels.ops import _loader
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                kbm.ops.layer_norm(tf.ones((2, 4)), None, None)
            print(json.dumps({
                "library": str(_loader.LIBRARY_PATH),
                "info": str(_loader.BUILD_INFO_PATH),
                "reason": kbm.ops.kernels_available().reason,
                "warnings": [str(w.message) for w in caught],
            }))
            """,
            env={_loader.ENV_LIBRARY: str(other)},
        )
    )
    assert out["library"] == str(other)
    assert out["info"] == str(other.with_name("_build_info.json"))
    assert f"{other} is missing" in out["reason"]
    assert any(f"{other} is missing" in w for w in out["warnings"])


def test_library_from_environment_is_loaded_and_checked(tmp_path):
    # A copy of the shipped library in another folder loads through the
    # variable, and its build record there is checked like the shipped one.
    other = tmp_path / "_kbm_ops.so"
    other.write_bytes(_loader.LIBRARY_PATH.read_bytes())
    info = json.loads(_loader.BUILD_INFO_PATH.read_text())
    code = """
        import json
        import keras_bigmodels as kbm
        status = kbm.ops.kernels_available()
        print(json.dumps({"ok": bool(status), "reason": status.reason}))
        """
    env = {_loader.ENV_LIBRARY: str(other)}
    out = last_json_line(run_python(code, env=env))
    assert "build record" in out["reason"] and not out["ok"]
    other.with_name("_build_info.json").write_text(json.dumps(info))
    out = last_json_line(run_python(code, env=env))
    assert out == {"ok": True, "reason": ""}
    info["tf_version"] = "2.20.0"
    other.with_name("_build_info.json").write_text(json.dumps(info))
    out = last_json_line(run_python(code, env=env))
    assert not out["ok"] and "built for TensorFlow 2.20.0" in out["reason"]
