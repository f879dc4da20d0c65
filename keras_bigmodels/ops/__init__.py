"""Fused ops with pure-TensorFlow references (`kbm.ops`)."""

from keras_bigmodels.ops._loader import KernelStatus, kernels_available
from keras_bigmodels.ops.attention import (
    attention_dropout_mask,
    flash_attention,
)
from keras_bigmodels.ops.bias_activation import bias_gelu, dropout
from keras_bigmodels.ops.distillation import softmax_kl_divergence
from keras_bigmodels.ops.normalization import layer_norm, rms_norm
from keras_bigmodels.ops.quantization import (
    dequantize_kernel,
    pack_kernel,
    quantize_kernel,
    quantized_matmul,
    unpack_kernel,
    weight_only_matmul,
)

__all__ = [
    "KernelStatus",
    "attention_dropout_mask",
    "bias_gelu",
    "flash_attention",
    "kernels_available",
    "dequantize_kernel",
    "dropout",
    "layer_norm",
    "pack_kernel",
    "quantize_kernel",
    "quantized_matmul",
    "rms_norm",
    "softmax_kl_divergence",
    "unpack_kernel",
    "weight_only_matmul",
]
