"""kbm.config: the process-wide switch and its scoped form."""

import warnings

import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import kbm_ops_in


def test_context_manager_and_global_switch():
    x = tf.ones((3, 8))
    fused = tf.function(lambda x: kbm.ops.layer_norm(x, None, None))
    assert kbm_ops_in(fused.get_concrete_function(x)) == ["Kbm>FusedLayerNorm"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A switch-off is silent.
        with kbm.config.fused_kernels(False):
            assert not kbm.config.fused_kernels_enabled()
            assert not kbm.ops.kernels_available()
            off = tf.function(lambda x: kbm.ops.layer_norm(x, None, None))
            assert kbm_ops_in(off.get_concrete_function(x)) == []
            with pytest.raises(
                ValueError,
                match="switched off by "
                r"kbm.config.fused_kernels\(False\)",
            ):
                kbm.ops.rms_norm(x, None, use_fused_kernel=True)
        assert kbm.config.fused_kernels_enabled()
        kbm.config.fused_kernels(False)
        try:
            assert not kbm.config.fused_kernels_enabled()
        finally:
            kbm.config.fused_kernels(True)
    assert kbm.config.fused_kernels_enabled()
    with pytest.raises(TypeError, match="Received: enabled='no'"):
        kbm.config.fused_kernels("no")
