"""The one place that decides which Keras line keras_bigmodels runs on.

Keras 3 (with its TensorFlow backend) is the default. When the environment
variable `TF_USE_LEGACY_KERAS` is set the way TensorFlow itself reads it
("1", "true" or "True"), tf-keras 2 is used instead, so `tf.keras` and
keras_bigmodels agree. Every other module imports Keras from here:

    from keras_bigmodels.backend import keras
"""

import os

import tensorflow as tf  # noqa: F401  (TensorFlow must load before Keras)

# Read exactly as tensorflow/python/util/lazy_loader.py does.
IS_LEGACY_KERAS = os.environ.get("TF_USE_LEGACY_KERAS", None) in (
    "true",
    "True",
    "1",
)

if IS_LEGACY_KERAS:
    import tf_keras as keras
else:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            "keras_bigmodels runs its kernels through TensorFlow and needs "
            "Keras's TensorFlow backend. Set KERAS_BACKEND=tensorflow. "
            f"Received: keras.backend.backend()={keras.backend.backend()!r}"
        )

KERAS_LINE = "tf-keras" if IS_LEGACY_KERAS else "keras3"
KERAS_VERSION = keras.__version__


def register_serializable(cls):
    """Registers `cls` with Keras under the package name `keras_bigmodels`."""
    return keras.saving.register_keras_serializable(package="keras_bigmodels")(
        cls
    )


def add_weight(layer, name, shape, initializer, **kwargs):
    """`layer.add_weight` that keeps the variable's dtype (no autocast).

    Keras 3 takes `autocast=False`; tf-keras has no such argument (its
    AutoCastVariable is cast on read, which the fused ops undo).
    """
    if not IS_LEGACY_KERAS:
        kwargs["autocast"] = False
    return layer.add_weight(
        name=name, shape=shape, initializer=initializer, **kwargs
    )


def output_dtype(layer, inputs):
    """The dtype a normalisation layer returns on this Keras line.

    Keras 3 layers return their compute dtype; tf-keras ones the input's.
    """
    return inputs.dtype if IS_LEGACY_KERAS else layer.compute_dtype


def get_keras_mask(x):
    """The Keras mask attached to tensor `x`, or None."""
    if IS_LEGACY_KERAS:
        return getattr(x, "_keras_mask", None)
    from keras.src.backend.common.masking import (
        get_keras_mask as _get,
    )

    return _get(x)


def set_keras_mask(x, mask):
    """Attaches `mask` to `x` (None clears it), as Keras layers do."""
    if IS_LEGACY_KERAS:
        try:
            x._keras_mask = mask
        except AttributeError:
            pass
        return
    from keras.src.backend.common.masking import (
        set_keras_mask as _set,
    )

    _set(x, mask)


def with_sublayer_dtype_policies(layer, config):
    """`config` with a `dtype` that rebuilds `layer`'s quantized sublayers.

    Keras 3's `model.quantize` quantizes leaf layers, setting each one's
    dtype policy (e.g. `"int8_from_float32"`); a composite layer that
    creates its sublayers in `build` would rebuild them as float on
    loading and fail to load their quantized variables. As keras-hub does,
    the composite saves a `DTypePolicyMap` (sublayer path -> policy, its
    own policy as the default) as its `dtype`: sublayers built with
    `dtype=self.dtype_policy` look their own path up in it. Unchanged when
    no sublayer is quantized, and on tf-keras (no quantization).
    """
    if IS_LEGACY_KERAS:
        return config
    policy_map_cls = keras.dtype_policies.DTypePolicyMap
    policy = layer.dtype_policy
    if isinstance(policy, policy_map_cls):
        policy_map = policy
    else:
        policy_map = policy_map_cls(default_policy=policy)
        for sublayer in layer._flatten_layers(include_self=False):
            if sublayer.quantization_mode is not None:
                policy_map[sublayer.path] = sublayer.dtype_policy
    if len(policy_map):
        config["dtype"] = keras.dtype_policies.serialize(policy_map)
    return config


def resolve_sublayer_dtype_policies(layer):
    """Ends `build` of a composite loaded with a `DTypePolicyMap` dtype.

    Each built sublayer (and `layer` itself) that holds the map gets its
    own policy from it, looked up by path. Keras's quantized layers read
    `self.dtype_policy.quantization_mode` when saving, which on a layer
    holding the map is the map's default (float), so without this a
    loaded quantized model would save its scales wrongly. No-op on
    tf-keras and for layers without a map.
    """
    if IS_LEGACY_KERAS:
        return
    policy_map_cls = keras.dtype_policies.DTypePolicyMap
    for sublayer in layer._flatten_layers(include_self=True):
        policy = sublayer._dtype_policy
        if isinstance(policy, policy_map_cls) and sublayer.path:
            sublayer._dtype_policy = policy[sublayer.path]
