"""Keras's `Dropout` whose training-time mask comes from `kbm.ops.dropout`.

Used inside kbm's blocks (TransformerEncoder/Decoder, BertEncoder): the
same layer and config as Keras's, but in training with fused kernels
available the mask is drawn by the vectorised Philox kernel and the
gradient regenerates it, instead of TensorFlow's random-uniform, compare
and select ops (and a stored mask). The seed comes from the layer's Keras
random generator, as for kbm's attention dropout, so `seed=` and
`keras.utils.set_random_seed` make runs reproducible. A `noise_shape`,
kernels switched off or missing, a GPU (the dropout kernel is CPU only),
or an XLA-compiled function: Keras's own dropout, without a warning.
"""

from keras_bigmodels import config
from keras_bigmodels.backend import keras
from keras_bigmodels.layers._attention_core import draw_dropout_seed
from keras_bigmodels.ops import _loader
from keras_bigmodels.ops.bias_activation import dropout


def _kernel_applies():
    if config.env_disabled() or not config.fused_kernels_enabled():
        return False
    if _loader.in_xla_context() or _loader.gpu_devices():
        return False
    return _loader.load_library()[0] is not None


class FusedDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` with kbm's dropout kernel in training."""

    def call(self, inputs, training=False):
        if (
            training
            and 0 < self.rate < 1
            and self.noise_shape is None
            and getattr(inputs, "dtype", None) is not None
            and inputs.dtype.is_floating
            and _kernel_applies()
        ):
            seed = draw_dropout_seed(self)
            return dropout(
                inputs, float(self.rate), seed, use_fused_kernel=True
            )
        return super().call(inputs, training=training)
