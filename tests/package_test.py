"""`import keras_bigmodels`: what it loads, and the lazy submodules."""

import json

import pytest

import keras_bigmodels as kbm
from keras_bigmodels.testing import last_json_line, run_python

HEAVY = (
    "tensorflow_datasets",
    "keras_bigmodels.datasets",
    "keras_bigmodels.distribute",
    "keras_bigmodels.models",
)


def test_heavy_submodules_load_on_first_use():
    out = run_python(
        f"""
        import json, sys
        import keras_bigmodels as kbm
        heavy = {HEAVY!r}
        before = [m for m in heavy if m in sys.modules]
        names = [kbm.models.BertEncoder.__name__,
                 kbm.datasets.__name__, kbm.distribute.__name__]
        after = [m for m in heavy if m in sys.modules]
        print(json.dumps({{"before": before, "after": after,
                          "names": names, "dir": dir(kbm)}}))
        """
    )
    result = last_json_line(out)
    assert result["before"] == [], json.dumps(result)
    assert result["after"] == list(HEAVY)
    assert result["names"][0] == "BertEncoder"
    assert {"datasets", "distribute", "models"} <= set(result["dir"])


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kbm.nope
