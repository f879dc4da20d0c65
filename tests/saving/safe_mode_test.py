"""Every registered kbm class loads from `.keras` with `safe_mode=True`.

Keras's safe mode refuses what could run code on loading (a serialized
Python lambda or function); kbm's configs hold only plain values and
registered names, so a kbm model loads without unsafe deserialisation and
gives the same outputs. The classes are enumerated from Keras's registry:
a new registered class without a case in `_cases.CASES` fails
`test_every_registered_class_has_a_case`.
"""

import json

import numpy as np
import pytest

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from tests.saving import _cases

REGISTERED = sorted(_cases.registered_classes())


def test_every_registered_class_has_a_case():
    missing = sorted(set(REGISTERED) - set(_cases.CASES))
    assert not missing, f"add a case to tests/saving/_cases.py: {missing}"
    assert len(REGISTERED) >= 25


def _no_unsafe_entries(config):
    """The config holds no serialized lambda, bytecode or pickled value."""
    text = json.dumps(config)
    for marker in ("__lambda__", "__pickle", "func_load", "marshal"):
        assert marker not in text, marker


@pytest.mark.parametrize("name", REGISTERED)
def test_loads_with_safe_mode(name, tmp_path):
    case = _cases.CASES[name]()
    cls_name = name.split(">", 1)[1]
    if case.model is None:
        config = keras.saving.serialize_keras_object(case.obj)
        _no_unsafe_entries(config)
        restored = keras.saving.deserialize_keras_object(
            json.loads(json.dumps(config)), safe_mode=True
        )
        assert type(restored) is type(case.obj)
        assert restored.get_config() == case.obj.get_config()
        return
    path = str(tmp_path / "model.keras")
    case.model.save(path)
    config = _cases.read_config(path)
    _no_unsafe_entries(config)
    assert _cases.find_configs(config, cls_name), (
        f"{cls_name} is not in the saved config"
    )
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(case.model)
    want = _cases.outputs_of(case.model, case.inputs)
    got = _cases.outputs_of(loaded, case.inputs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    optimizer = getattr(case.model, "optimizer", None)
    if optimizer is not None and not _is_distiller(case.model):
        for a, b in zip(
            loaded.optimizer.variables, case.model.optimizer.variables
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert type(loaded.optimizer) is type(case.model.optimizer)


def _is_distiller(model):
    return type(model).__name__ == "Distiller"


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="Keras 3's module allow-list")
def test_a_tampered_function_from_another_module_is_refused(tmp_path):
    # A config naming `os.system` as the activation of a kbm layer: Keras 3
    # only imports keras modules when deserializing, in safe mode or not.
    case = _cases.CASES["keras_bigmodels>FusedDense"]()
    path = str(tmp_path / "model.keras")
    case.model.save(path)
    config = _cases.read_config(path)
    layer = _cases.find_configs(config, "FusedDense")[0]
    layer["config"]["activation"] = {
        "module": "os",
        "class_name": "function",
        "config": "system",
        "registered_name": "system",
    }
    bad = str(tmp_path / "bad.keras")
    _cases.write_config(path, bad, config)
    with pytest.raises((TypeError, ValueError), match="system"):
        keras.saving.load_model(bad, safe_mode=True)
