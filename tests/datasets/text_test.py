"""Tests for kbm.datasets.load_text_classification."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.datasets import load_text_classification


def write_csv(path, rows, header="review,sentiment"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def test_csv_with_string_labels(tmp_path):
    rows = [f"text number {i},{'pos' if i % 3 else 'neg'}" for i in range(60)]
    write_csv(tmp_path / "d.csv", rows)
    data = load_text_classification(
        str(tmp_path / "d.csv"),
        text_column="review",
        label_column="sentiment",
        test_fraction=0.25,
    )
    assert data.label_names == ["neg", "pos"]
    assert len(data.train_texts) + len(data.test_texts) == 60
    assert len(data.test_texts) == 15
    assert set(np.unique(data.train_labels)) == {0, 1}


def test_npz(tmp_path):
    np.savez(
        tmp_path / "d.npz",
        text=np.array([f"t{i}" for i in range(20)]),
        label=np.arange(20) % 2,
    )
    data = load_text_classification(str(tmp_path / "d.npz"))
    assert data.label_names == ["0", "1"]
    assert len(data.test_texts) == 4  # 15% of 10 per class, rounded


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such data file"):
        load_text_classification(str(tmp_path / "missing.csv"))
    write_csv(tmp_path / "d.csv", ["a,1", "b,0"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['text', 'label'\]"):
        load_text_classification(str(tmp_path / "d.csv"))
    write_csv(tmp_path / "one.csv", ["a,1", "b,1"], header="text,label")
    with pytest.raises(ValueError, match="single value"):
        load_text_classification(str(tmp_path / "one.csv"))
    write_csv(tmp_path / "two.csv", ["a,1", "b,0"], header="text,label")
    with pytest.raises(ValueError, match="2 examples are too few"):
        load_text_classification(str(tmp_path / "two.csv"))
    with pytest.raises(ValueError, match="neither an existing file nor a TFDS"):
        load_text_classification("no_such_dataset_kbm_xyz")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_text_classification("kbm_rotten_tomatoes", test_fraction=1.5)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .csv or .npz"):
        load_text_classification(str(tmp_path / "d.txt"))


def test_tfds_source(tmp_path):
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="has features"):
        kbm.datasets.load_text_classification(
            "kbm_digits", data_dir=str(tmp_path)
        )
