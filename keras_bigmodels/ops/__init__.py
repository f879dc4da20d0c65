"""Fused ops with pure-TensorFlow references (`kbm.ops`)."""

from keras_bigmodels.ops._loader import KernelStatus, kernels_available
from keras_bigmodels.ops.attention import (
    attention_dropout_mask,
    flash_attention,
)
from keras_bigmodels.ops.bias_activation import bias_gelu
from keras_bigmodels.ops.distillation import softmax_kl_divergence
from keras_bigmodels.ops.normalization import layer_norm, rms_norm

__all__ = [
    "KernelStatus",
    "attention_dropout_mask",
    "bias_gelu",
    "flash_attention",
    "kernels_available",
    "layer_norm",
    "rms_norm",
    "softmax_kl_divergence",
]
