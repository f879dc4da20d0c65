"""Post-training weight quantization for Keras models (`kbm.quantization`).

`kbm.quantization.quantize(model, mode)` converts a built model's Dense,
FusedDense, EinsumDense, Embedding and Conv2D layers, at any depth, to int8
or int4 weights, in place (modes `"int8"`, `"int8_weight_only"`,
`"int4_weight_only"`; see `quantize`).

Design. As Keras 3's own `layer.quantize(mode)`, the quantization is a
property of each layer, recorded in its config; unlike it, the quantized
layers are kbm classes, so they run kbm's quantized ops and survive a
`.keras` round trip:

- Every converted layer keeps its identity, and its class is switched to a
  registered subclass of its own (`QuantizedDense(keras.layers.Dense)`,
  `QuantizedEinsumDense`, `QuantizedEmbedding`, `QuantizedConv2D`). The
  float kernel is dropped; the layer then holds the integer kernel (for
  matmuls in the packed panel layout of `kbm.ops.pack_kernel`), its float32
  scales and the unchanged bias. Its config gains `kbm_quantization =
  {"mode", "group_size", "pack_version"}` (`pack_version` is
  `kbm.ops.quantization.PACK_VERSION`; a layer saved with another layout
  refuses to load rather than compute garbage), so a layer rebuilt from its
  config builds the integer variables the saved ones load into.
  Because objects stay the same, functional, Sequential and subclassed
  models (e.g. `kbm.models.BertEncoder`) are all quantized in place.
- Container layers (attention, transformer blocks, embeddings that wrap an
  `Embedding`) rebuild float sublayers from their own configs. The model
  therefore records which nested layers are quantized (its class is
  switched to a registered `Quantized<Model class>` subclass whose config
  adds `kbm_quantized_layers = {path: spec}`, path = child indices), and its
  `from_config` converts those sublayers back before the weights load.
- Calls go through `kbm.ops.quantized_matmul` / `weight_only_matmul`: the
  fused kernels when the op library has them, else the pure-TensorFlow
  references. `kbm.export.export_saved_model(..., stock_ops=True)` traces
  the references, so the SavedModel holds int8 weights and stock ops only.

Load a saved quantized model after `import keras_bigmodels.quantization`
(`keras_bigmodels` imports this package on first use of
`kbm.quantization`), as `kbm.models` layers need `keras_bigmodels.models`.
Subclassed models other than `BertEncoder` need
`quantized_model_class(MyModel)` called before loading.

Quantization-aware training: `quantize_aware(model, mode)` switches the same
layers to fake-quantized subclasses (`QATDense`, ...; straight-through
gradients), `fit` trains them, and `convert(model)` quantizes the result
(see `keras_bigmodels.quantization.qat`).

Models quantized by Keras 3's own `model.quantize("int8")` keep their
layers: `accelerate(model)` only swaps those layers' int8 matmul for kbm's
fused kernel (see `keras_bigmodels.quantization.accelerate`).

Both Keras lines: on tf-keras 2 the same classes subclass tf-keras's layers
(whose float variables are plain attributes: conversion untracks them by
hand), and models save to `.keras`, h5 and SavedModel.
"""

from keras_bigmodels.quantization.accelerate import accelerate
from keras_bigmodels.quantization.layers import (
    MODES,
    QuantizedConv2D,
    QuantizedDense,
    QuantizedEinsumDense,
    QuantizedEmbedding,
)
from keras_bigmodels.quantization.qat import (
    QATConv2D,
    QATDense,
    QATEinsumDense,
    QATEmbedding,
    QATFusedDense,
    convert,
    quantize_aware,
)
from keras_bigmodels.quantization.quantize import (
    quantize,
    quantized_model_class,
)


def _register_models():
    from keras_bigmodels.models import BertEncoder

    quantized_model_class(BertEncoder)


_register_models()

__all__ = [
    "MODES",
    "QATConv2D",
    "QATDense",
    "QATEinsumDense",
    "QATEmbedding",
    "QATFusedDense",
    "QuantizedConv2D",
    "QuantizedDense",
    "QuantizedEinsumDense",
    "QuantizedEmbedding",
    "accelerate",
    "convert",
    "quantize",
    "quantize_aware",
    "quantized_model_class",
]
