"""The Keras line follows TensorFlow's own TF_USE_LEGACY_KERAS switch."""

import os

from keras_bigmodels import backend


def test_backend_follows_tensorflow_switch():
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("1", "true", "True")
    assert backend.IS_LEGACY_KERAS == legacy
    assert backend.keras.__name__ == ("tf_keras" if legacy else "keras")


def test_sublayer_dtype_policies_only_when_quantized():
    import keras_bigmodels as kbm

    block = kbm.layers.TransformerEncoder(16, 2)
    block.build((None, 4, 8))
    config = block.get_config()
    # A float block's config is what it always was.
    assert backend.with_sublayer_dtype_policies(block, dict(config)) == config
    if backend.IS_LEGACY_KERAS:
        return
    block._ffn_output.quantize("int8")
    dtype = block.get_config()["dtype"]
    assert dtype["class_name"] == "DTypePolicyMap"
    policies = backend.keras.dtype_policies.deserialize(dtype)
    assert policies[block._ffn_output.path].name == "int8_from_float32"
    assert policies[block._ffn_intermediate.path].name == "float32"
