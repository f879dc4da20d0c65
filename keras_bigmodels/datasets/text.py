"""Text classification data from a TFDS name, a CSV file or a `.npz` file."""

import collections
import csv
import os

import numpy as np

from keras_bigmodels.datasets.builders import split_indices

TextData = collections.namedtuple(
    "TextData",
    ["train_texts", "train_labels", "test_texts", "test_labels", "label_names"],
)
TextData.__doc__ = """Texts (lists of str) and integer labels (NumPy arrays)
of a train and a test split, and the label names (index = label)."""


def _from_arrays(texts, labels, test_fraction, source):
    texts = [str(t) for t in texts]
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"{source}: {len(texts)} texts but {len(labels)} labels"
        )
    if len(texts) < 2:
        raise ValueError(
            f"{source}: needs at least 2 examples, got {len(texts)}"
        )
    if labels.dtype.kind in "iu":
        names = [str(v) for v in range(int(labels.max()) + 1)]
        y = labels.astype(np.int64)
    else:
        names = sorted({str(v) for v in labels})
        index = {n: i for i, n in enumerate(names)}
        y = np.array([index[str(v)] for v in labels], np.int64)
    if len(set(y.tolist())) < 2:
        raise ValueError(
            f"{source}: the labels take a single value ({names[y[0]]!r}); "
            "classification needs at least two"
        )
    train, test = split_indices(y, test_fraction)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"{source}: {len(texts)} examples are too few to hold out "
            f"test_fraction={test_fraction} of each class and train on the "
            "rest; give more examples"
        )
    return TextData(
        [texts[i] for i in train],
        y[train],
        [texts[i] for i in test],
        y[test],
        names,
    )


def _from_csv(path, text_column, label_column, test_fraction):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (text_column, label_column) if c not in columns]
        if missing:
            raise ValueError(
                f"{path} has no column(s) {missing}; its columns are "
                f"{columns}. Pass text_column= / label_column="
            )
        rows = list(reader)
    return _from_arrays(
        [r[text_column] for r in rows],
        [r[label_column] for r in rows],
        test_fraction,
        path,
    )


def _from_npz(path, text_column, label_column, test_fraction):
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in (text_column, label_column) if k not in data]
        if missing:
            raise ValueError(
                f"{path} has no array(s) {missing}; it holds "
                f"{sorted(data.keys())}. Pass text_column= / label_column="
            )
        return _from_arrays(
            data[text_column].tolist(),
            data[label_column],
            test_fraction,
            path,
        )


def _from_tfds(name, text_column, label_column, test_fraction, data_dir):
    import tensorflow_datasets as tfds

    import keras_bigmodels.datasets  # noqa: F401  (registers kbm_* sets)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names.
        raise ValueError(
            f"{name!r} is neither an existing file nor a TFDS data set "
            f"({type(e).__name__}: {e})"
        ) from None
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise RuntimeError(
            f"Could not prepare the TFDS data set {name!r}: {e}. Sets that "
            "download their data fail on an offline machine; the kbm_* "
            "sets read data installed with their packages."
        ) from e
    features = builder.info.features
    if text_column not in features or label_column not in features:
        raise ValueError(
            f"TFDS data set {name!r} has features {list(features)}, not "
            f"{text_column!r} and {label_column!r}. Pass text_column= / "
            "label_column="
        )
    splits = list(builder.info.splits)

    def read(split):
        texts, labels = [], []
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            texts.append(ex[text_column].decode("utf-8"))
            labels.append(int(ex[label_column]))
        return texts, np.array(labels, np.int64)

    label_feature = features[label_column]
    names = list(getattr(label_feature, "names", []) or [])
    if "train" in splits and "test" in splits:
        tr, ytr = read("train")
        te, yte = read("test")
        names = names or [
            str(i) for i in range(int(max(ytr.max(), yte.max())) + 1)
        ]
        return TextData(tr, ytr, te, yte, names)
    texts, labels = read(splits[0])
    data = _from_arrays(texts, labels, test_fraction, name)
    return data._replace(label_names=names or data.label_names)


def load_text_classification(
    source="kbm_rotten_tomatoes",
    text_column="text",
    label_column="label",
    test_fraction=0.15,
    data_dir=None,
):
    """Loads text classification data from a TFDS name, a CSV or a `.npz`.

    Args:
        source: A TFDS data set name (e.g. `"kbm_rotten_tomatoes"`, which
            works offline), a `.csv` file with a header row, or a `.npz`
            file with a string array and a label array. Defaults to
            `"kbm_rotten_tomatoes"`.
        text_column: The text column / feature / array. Defaults to
            `"text"`.
        label_column: The label column / feature / array: integers, or
            strings mapped to integers in sorted order. Defaults to
            `"label"`.
        test_fraction: For sources without a test split: the fraction held
            out by a fixed stratified split. Defaults to `0.15`.
        data_dir: TFDS data directory. Defaults to TFDS's default.

    Returns:
        A `TextData(train_texts, train_labels, test_texts, test_labels,
        label_names)`.

    Raises:
        FileNotFoundError: a path-like source (ending in .csv or .npz) that
            does not exist.
        ValueError: missing columns, unknown TFDS names, unusable labels.

    Example:

    ```python
    data = kbm.datasets.load_text_classification("reviews.csv",
                                                 text_column="review")
    ```
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1). Received: {test_fraction}"
        )
    source = os.fspath(source)
    lower = source.lower()
    if lower.endswith((".csv", ".npz")):
        if not os.path.exists(source):
            raise FileNotFoundError(f"No such data file: {source}")
        loader = _from_csv if lower.endswith(".csv") else _from_npz
        return loader(source, text_column, label_column, test_fraction)
    if os.path.exists(source):
        raise ValueError(
            f"{source} exists but is not a .csv or .npz file; those are the "
            "file formats supported (or give a TFDS data set name)"
        )
    return _from_tfds(
        source, text_column, label_column, test_fraction, data_dir
    )
