"""kbm.layers.TransformerDecoder: causal self-attention and cross-attention."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.testing import (
    assert_close,
    random_tensor,
    run_layer_test,
)


@pytest.mark.parametrize("norm_first", [False, True])
def test_self_attention_is_causal(norm_first):
    x = random_tensor((2, 8, 32), tf.float32, 0)
    block = kbm.layers.TransformerDecoder(64, 4, norm_first=norm_first)
    y = np.asarray(block(x))
    changed = tf.concat([x[:, :5], x[:, 5:] + 1.0], axis=1)
    y2 = np.asarray(block(changed))
    assert_close(y2[:, :5], y[:, :5], 1e-5, 1e-5)
    assert not np.allclose(y2[:, 5:], y[:, 5:])


def test_cross_attention_and_encoder_padding():
    x = random_tensor((2, 6, 32), tf.float32, 1)
    enc = random_tensor((2, 9, 32), tf.float32, 2)
    block = kbm.layers.TransformerDecoder(64, 4, num_key_value_heads=2)
    mask = np.ones((2, 9), bool)
    mask[1, 5:] = False
    y = np.asarray(block(x, enc, encoder_padding_mask=mask))
    # Changing masked encoder positions changes nothing.
    enc2 = tf.concat([enc[:, :5], enc[:, 5:] * 3.0], axis=1)
    y2 = np.asarray(block(x, enc2, encoder_padding_mask=mask))
    assert_close(y2[1], y[1], 1e-5, 1e-5)
    assert not np.allclose(y2[0], y[0])
    with kbm.config.fused_kernels(False):
        reference = block(x, enc, encoder_padding_mask=mask)
    assert_close(y, reference, 1e-4, 1e-4)


def test_config_round_trip(keras):
    block = kbm.layers.TransformerDecoder(
        64, 4, activation="gelu_tanh", norm="rms"
    )
    clone = kbm.layers.TransformerDecoder.from_config(block.get_config())
    assert clone.get_config() == block.get_config()


@pytest.mark.parametrize(
    "input_shape",
    [(16, 7, 16), ((16, 5, 16), (16, 7, 16))],
    ids=["decoder_only", "cross_attention"],
)
def test_layer_contract(tmp_path, input_shape):
    run_layer_test(
        kbm.layers.TransformerDecoder,
        {"intermediate_dim": 32, "num_heads": 2, "norm": "rms"},
        input_shape,
        expected_output_shape=(16, 7, 16)
        if len(input_shape) == 3
        else (16, 5, 16),
        expected_num_non_trainable_weights=0,
        supports_masking=True,
        rtol=1e-4,
        atol=1e-4,
        tmp_dir=tmp_path,
    )


def test_contract_with_cross_attention(keras, tmp_path):
    dec_in = keras.Input((5, 16))
    enc_in = keras.Input((7, 16))
    h = kbm.layers.TransformerDecoder(32, 2)(dec_in, enc_in)
    model = keras.Model([dec_in, enc_in], keras.layers.Dense(1)(h))
    x = random_tensor((8, 5, 16), tf.float32, 4).numpy()
    e = random_tensor((8, 7, 16), tf.float32, 5).numpy()
    y = model([x, e])
    assert y.shape == (8, 5, 1)
    with kbm.config.fused_kernels(False):
        assert_close(model([x, e]), y, 1e-4, 1e-4)
