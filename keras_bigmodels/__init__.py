"""keras_bigmodels: fused TensorFlow kernels and drop-in Keras layers.

import keras_bigmodels as kbm
model = keras.Sequential([..., kbm.layers.FusedDense(512, "gelu"), ...])
"""

from keras_bigmodels import (
    backend,
    callbacks,
    config,
    datasets,
    distillation,
    distribute,
    explain,
    export,
    layers,
    models,
    ops,
    optimizers,
    utils,
)

__version__ = "0.1.0"

__all__ = [
    "backend",
    "callbacks",
    "config",
    "datasets",
    "distillation",
    "distribute",
    "explain",
    "export",
    "layers",
    "models",
    "ops",
    "optimizers",
    "utils",
    "__version__",
]
