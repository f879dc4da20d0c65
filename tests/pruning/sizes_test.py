"""The per-layer sizes pruned models need: block head_dim, BertEncoder's
per-layer head counts and feed-forward widths."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.models import BertEncoder


def test_block_head_dim():
    block = kbm.layers.TransformerEncoder(16, 3, head_dim=5)
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype("float32")
    assert tuple(block(x).shape) == (2, 4, 8)
    attention = block._self_attention
    assert tuple(attention._query_dense.kernel.shape) == (8, 3, 5)
    config = block.get_config()
    assert config["head_dim"] == 5
    clone = kbm.layers.TransformerEncoder.from_config(config)
    clone(x)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(x), block(x), rtol=1e-6, atol=1e-6)
    # Unset, the config is as before.
    assert "head_dim" not in kbm.layers.TransformerEncoder(16, 2).get_config()
    with pytest.raises(ValueError, match="head_dim=0"):
        kbm.layers.TransformerEncoder(16, 2, head_dim=0)
    with pytest.raises(ValueError, match="head_dim=2.5"):
        kbm.layers.TransformerDecoder(16, 2, head_dim=2.5)


def small_bert(**kwargs):
    return BertEncoder(
        vocabulary_size=20,
        num_layers=2,
        num_heads=4,
        hidden_dim=8,
        intermediate_dim=12,
        max_sequence_length=6,
        **kwargs,
    )


def test_bert_per_layer_sizes():
    model = small_bert(
        layer_num_heads=[1, 3], layer_intermediate_dims=[5, 7], head_dim=2
    )
    first, second = model.transformer_layers
    assert (first.num_heads, second.num_heads) == (1, 3)
    assert (first.intermediate_dim, second.intermediate_dim) == (5, 7)
    assert tuple(second._self_attention._key_dense.kernel.shape) == (8, 3, 2)
    config = model.get_config()
    again = BertEncoder.from_config(config)
    assert again.get_config() == config
    # The defaults write nothing new into the config.
    config = small_bert().get_config()
    for key in ("layer_num_heads", "layer_intermediate_dims", "head_dim"):
        assert key not in config


def test_bert_per_layer_sizes_default_head_dim():
    # Without head_dim, per-layer heads keep hidden_dim // num_heads.
    model = small_bert(layer_num_heads=[2, 4])
    kernel = model.transformer_layers[0]._self_attention._query_dense.kernel
    assert tuple(kernel.shape) == (8, 2, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_num_heads": [4]}, "one entry per layer"),
        ({"layer_num_heads": [4, 0]}, "layer_num_heads=0"),
        ({"layer_intermediate_dims": [3, 4, 5]}, "one entry per layer"),
        ({"head_dim": -1}, "head_dim=-1"),
    ],
)
def test_bert_per_layer_sizes_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_bert(**kwargs)


def test_lazy_submodule():
    assert "pruning" in kbm.__all__
    assert kbm.pruning.prune_heads.__module__ == (
        "keras_bigmodels.pruning.structured"
    )
    assert isinstance(kbm.pruning.SkippedBlock(), keras.layers.Layer)
