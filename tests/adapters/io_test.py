"""kbm.adapters: saving adapters alone, and bad inputs."""

import json
import os

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels import adapters
from keras_bigmodels.backend import keras
from tests.adapters.lora_test import (
    bert,
    bert_classifier,
    bert_inputs,
    mha_model,
    perturb,
)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_save_and_load_adapters_alone(tmp_path, kind):
    model = bert()
    x = bert_inputs()
    enable = adapters.enable_lora if kind == "lora" else adapters.enable_dora
    enable(model, rank=2, alpha=4, targets=["query", "value", "token"])
    perturb(model)
    y = model(x).numpy()
    path = str(tmp_path / "task.safetensors")
    adapters.save_adapters(model, path)
    # Only adapter weights: the file is about their size, not the model's.
    adapter_bytes = 4 * sum(
        int(np.prod(v.shape)) for v in model.trainable_weights
    )
    assert os.path.getsize(path) < adapter_bytes + 4096
    tensors = kbm.models.load_safetensors(path)
    assert all(
        k.endswith(("lora_a", "lora_b", "dora_magnitude")) for k in tensors
    )
    # A fresh base model (same base weights) takes the adapter in one call.
    fresh = bert()
    np.testing.assert_allclose(
        fresh(x).numpy(), adapters_off(model, x), atol=1e-6
    )
    name = adapters.load_adapters(fresh, path)
    assert name == "default"
    np.testing.assert_allclose(fresh(x).numpy(), y, atol=1e-6)
    # Into a model that has it: values are overwritten, under a new name.
    again = bert()
    enable(again, rank=2, alpha=4, targets=["query", "value", "token"])
    adapters.load_adapters(again, path)
    np.testing.assert_allclose(again(x).numpy(), y, atol=1e-6)
    adapters.load_adapters(again, path, name="copy")
    assert adapters.adapter_names(again) == ["default", "copy"]


def adapters_off(model, x):
    adapters.set_active(model, None)
    y = model(x).numpy()
    adapters.set_active(model, "default")
    return y


def test_load_adapters_mismatch_errors(tmp_path):
    model = mha_model()
    adapters.enable_lora(model, rank=2)
    path = str(tmp_path / "a.safetensors")
    adapters.save_adapters(model, path)
    other = mha_model()
    adapters.enable_lora(other, rank=3)
    with pytest.raises(ValueError, match="rank 3"):
        adapters.load_adapters(other, path)
    with pytest.raises(ValueError, match="layers the model does not have"):
        adapters.load_adapters(bert(), path)
    bad = tmp_path / "bad.safetensors"
    header = json.dumps({"__metadata__": {"format": "other"}}).encode()
    bad.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="not a kbm adapter file"):
        adapters.load_adapters(mha_model(), str(bad))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank must be a positive integer. Received: rank=0"),
        ({"rank": -2}, "Received: rank=-2"),
        ({"rank": 1.5}, "Received: rank=1.5"),
        ({"rank": True}, "Received: rank=True"),
        ({"rank": 2, "alpha": 0}, "Received: alpha=0"),
        ({"rank": 2, "alpha": -1.0}, "Received: alpha=-1.0"),
        ({"rank": 2, "alpha": float("nan")}, "Received: alpha=nan"),
        ({"rank": 2, "alpha": "big"}, "Received: alpha='big'"),
        ({"rank": 2, "dropout": 1.0}, "Received: dropout=1.0"),
        ({"rank": 2, "name": ""}, "Received: name=''"),
        ({"rank": 2, "name": "a/b"}, "Received: name='a/b'"),
        ({"rank": 2, "targets": ["nothing_here"]}, "'nothing_here' matches"),
        ({"rank": 2, "targets": []}, "targets must be None, a non-empty"),
        ({"rank": 2, "targets": ["("]}, "invalid regular expression"),
        (
            {"rank": 2, "targets": lambda p, layer: False},
            "targets \\(a predicate\\) selects no",
        ),
        ({"rank": 2, "train_also": ["nope"]}, "train_also pattern 'nope'"),
        ({"rank": 2, "train_also": 3}, "Received: train_also=3"),
    ],
)
@pytest.mark.parametrize("enable", [adapters.enable_lora, adapters.enable_dora])
def test_bad_arguments(enable, kwargs, match):
    model = mha_model()
    with pytest.raises(ValueError, match=match):
        enable(model, **kwargs)
    assert not adapters.adapter_names(model)


def test_default_targets_need_attention():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    with pytest.raises(ValueError, match="Received: targets=None"):
        adapters.enable_lora(model, rank=2)


def test_state_errors():
    model = mha_model()
    with pytest.raises(ValueError, match="no merged adapter"):
        adapters.unmerge(model)
    with pytest.raises(ValueError, match="No adapter is active"):
        adapters.merge(model)
    adapters.enable_lora(model, rank=2)
    with pytest.raises(ValueError, match="already has an adapter named"):
        adapters.enable_lora(model, rank=2)
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        adapters.set_active(model, "x")
    with pytest.raises(ValueError, match="no adapter named 'x'"):
        adapters.merge(model, name="x")
    adapters.merge(model)
    with pytest.raises(ValueError, match="already has a merged adapter"):
        adapters.merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        adapters.set_active(model, None)
    with pytest.raises(ValueError, match="unmerge"):
        adapters.enable_lora(model, rank=2, name="other")


def test_unbuilt_layer_is_refused():
    layer = keras.layers.MultiHeadAttention(2, 4, name="mha")
    model = keras.Sequential([keras.layers.Dense(4, name="query")])
    with pytest.raises(ValueError, match="not built"):
        adapters.enable_lora(model, rank=2)
    del layer


def test_lazy_submodule():
    assert "adapters" in kbm.__all__
    assert kbm.adapters.enable_lora is adapters.enable_lora


def test_trainable_fraction():
    model = bert_classifier()
    adapters.enable_lora(model, rank=2, train_also=None)
    trainable, total = adapters.trainable_fraction(model)
    assert trainable == 2 * 2 * 2 * (16 + 16)
    assert total > trainable


@pytest.mark.parametrize("merged", [False, True])
def test_keras_file_round_trip_unmerged(tmp_path, merged):
    model = bert_classifier()
    x = bert_inputs()
    y_base = model(x).numpy()
    adapters.enable_lora(model, rank=2, name="a")
    perturb(model, seed=1)
    y_a = model(x).numpy()
    adapters.enable_dora(model, rank=2, name="b", targets=["value"])
    perturb(model, seed=2)
    adapters.set_active(model, "a")
    if merged:
        adapters.merge(model)
    path = str(tmp_path / "adapted.keras")
    adapters.save_model(model, path)
    # Plain Keras reads the base model.
    plain = keras.models.load_model(path)
    np.testing.assert_allclose(plain(x).numpy(), y_base, atol=1e-6)
    assert not adapters.adapter_names(plain)
    loaded = adapters.load_model(path)
    assert adapters.adapter_names(loaded) == ["a", "b"]
    assert adapters.active_adapter(loaded) == "a"
    np.testing.assert_allclose(loaded(x).numpy(), y_a, atol=1e-5)
    if merged:
        adapters.unmerge(loaded)
    for name in ("a", "b", None):
        adapters.set_active(loaded, name)
        if merged:
            adapters.unmerge(model)
            merged = False
        adapters.set_active(model, name)
        np.testing.assert_allclose(
            loaded(x).numpy(), model(x).numpy(), atol=1e-6
        )
    with pytest.raises(ValueError, match="holds no kbm adapters"):
        plain.save(str(tmp_path / "plain.keras"))
        adapters.load_model(str(tmp_path / "plain.keras"))
    with pytest.raises(ValueError, match="Received: path="):
        adapters.save_model(model, str(tmp_path / "x.h5"))
