"""keras_bigmodels: fused TensorFlow kernels and drop-in Keras layers.

import keras_bigmodels as kbm
model = keras.Sequential([..., kbm.layers.FusedDense(512, "gelu"), ...])

`kbm.datasets` (TensorFlow Datasets builders), `kbm.models` (BERT and its
checkpoint loader), `kbm.distribute` (multi-worker training) and
`kbm.pruning` (magnitude pruning) are imported on first use, so
`import keras_bigmodels` loads neither TensorFlow Datasets nor the model,
distribution and pruning code. Their serializable classes register
with Keras on that import: load a saved model holding `kbm.models` layers
after `import keras_bigmodels.models`.
"""

import importlib

from keras_bigmodels import (
    backend,
    callbacks,
    config,
    distillation,
    explain,
    export,
    layers,
    ops,
    optimizers,
    utils,
)

__version__ = "0.1.0"

# Submodules imported on first attribute access (PEP 562).
_LAZY_SUBMODULES = (
    "adapters",
    "datasets",
    "distribute",
    "models",
    "pruning",
    "quantization",
)

__all__ = [
    "adapters",
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
    "pruning",
    "quantization",
    "utils",
    "__version__",
]


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
