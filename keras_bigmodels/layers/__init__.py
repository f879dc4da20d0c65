"""Drop-in Keras layers backed by fused kernels (`kbm.layers`)."""

from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.layers.layer_normalization import LayerNormalization
from keras_bigmodels.layers.rms_normalization import RMSNormalization

__all__ = ["FusedDense", "LayerNormalization", "RMSNormalization"]
