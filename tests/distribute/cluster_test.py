"""Tests for kbm.distribute.tf_config and kbm.distribute.local_workers."""

import json

import pytest

import keras_bigmodels as kbm


def test_tf_config():
    workers = ["10.0.0.1:2222", "10.0.0.2:2222"]
    config = json.loads(kbm.distribute.tf_config(workers, 1))
    assert config == {
        "cluster": {"worker": workers},
        "task": {"type": "worker", "index": 1},
    }


@pytest.mark.parametrize(
    "workers,index,match",
    [
        ([], 0, "workers must be"),
        (["localhost"], 0, "workers must be"),
        (["a:1", "b:2"], 2, r"index must be in \[0, 2\)"),
        (["a:1"], "0", "index must be an int"),
    ],
)
def test_tf_config_bad_arguments(workers, index, match):
    with pytest.raises(ValueError, match=match):
        kbm.distribute.tf_config(workers, index)


def test_local_workers():
    workers = kbm.distribute.local_workers(3)
    ports = [int(w.split(":")[1]) for w in workers]
    assert all(w.startswith("127.0.0.1:") for w in workers)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)
    with pytest.raises(ValueError, match="num_workers must be"):
        kbm.distribute.local_workers(0)
