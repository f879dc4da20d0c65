"""Students initialised from their teacher's weights."""

import numpy as np

from keras_bigmodels.distillation.losses import uniform_layer_map

_EMBEDDING_PARTS = (
    "token_embedding",
    "position_embedding",
    "segment_embedding",
    "embeddings_norm",
)


def _copy_weights(source, target):
    """Copies each of `source`'s weights into `target`'s, cut to the
    leading slice of every axis where the target is smaller."""
    values = []
    for s, t in zip(source.get_weights(), target.get_weights()):
        if any(a < b for a, b in zip(s.shape, t.shape)) or s.ndim != t.ndim:
            raise ValueError(
                f"Cannot initialise {target.name!r} from {source.name!r}: "
                f"a weight of shape {t.shape} is larger than the teacher's "
                f"{s.shape}"
            )
        values.append(np.asarray(s)[tuple(slice(0, n) for n in t.shape)])
    target.set_weights(values)


def student_from_teacher(
    teacher,
    num_layers=None,
    layer_map=None,
    hidden_dim=None,
    num_heads=None,
    intermediate_dim=None,
    name=None,
):
    """A smaller `kbm.models.BertEncoder` initialised from a teacher's.

    The student copies the teacher's embeddings and, for its block `i`,
    the teacher's block `layer_map[i]` (DistilBERT's and TinyBERT's
    initialisation). With a narrower `hidden_dim`, fewer `num_heads` or a
    smaller `intermediate_dim`, every weight is the leading slice of the
    teacher's (its first features, heads and units): not the teacher's
    function, but a start nearer it than a random one. Keep
    `hidden_dim / num_heads` equal to the teacher's head size to keep the
    heads whole.

    Args:
        teacher: A `kbm.models.BertEncoder`.
        num_layers: Student blocks. Defaults to `len(layer_map)`, or half
            the teacher's blocks.
        layer_map: List of teacher block indices, one per student block.
            Defaults to the uniform map (student block `i` from teacher
            block `(i + 1) * (T // S) - 1`, e.g. blocks 2 and 5 of 6).
        hidden_dim, num_heads, intermediate_dim: Narrower sizes. Default
            to the teacher's.
        name: The student's name. Defaults to `"student_" + teacher.name`.

    Returns:
        A new `kbm.models.BertEncoder`.

    Example:

    ```python
    teacher = kbm.models.BertEncoder.from_checkpoint(path)
    student = kbm.distillation.student_from_teacher(teacher, num_layers=2)
    ```
    """
    from keras_bigmodels.models import BertEncoder

    if not isinstance(teacher, BertEncoder):
        raise ValueError(
            "teacher must be a kbm.models.BertEncoder. "
            f"Received: {type(teacher).__name__}"
        )
    blocks = teacher.num_layers
    if layer_map is not None:
        layer_map = [int(i) for i in layer_map]
        if num_layers is None:
            num_layers = len(layer_map)
    if num_layers is None:
        num_layers = max(1, blocks // 2)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise ValueError(
            f"num_layers must be a positive int. Received: {num_layers!r}"
        )
    if not 0 < num_layers <= blocks:
        raise ValueError(
            f"num_layers must be in [1, {blocks}] (the teacher's blocks). "
            f"Received: num_layers={num_layers}"
        )
    if layer_map is None:
        layer_map = list(
            uniform_layer_map(range(num_layers), range(blocks)).values()
        )
    if len(layer_map) != num_layers or not all(
        0 <= i < blocks for i in layer_map
    ):
        raise ValueError(
            f"layer_map needs {num_layers} teacher block indices in "
            f"[0, {blocks}). Received: layer_map={layer_map}"
        )
    config = {
        k: v
        for k, v in teacher.get_config().items()
        if k not in ("name", "trainable", "dtype")
    }
    sizes = {
        "num_layers": num_layers,
        "hidden_dim": hidden_dim or teacher.hidden_dim,
        "num_heads": num_heads or teacher.num_heads,
        "intermediate_dim": intermediate_dim or teacher.intermediate_dim,
    }
    for key in ("hidden_dim", "num_heads", "intermediate_dim"):
        if sizes[key] > getattr(teacher, key):
            raise ValueError(
                f"{key} must be at most the teacher's "
                f"({getattr(teacher, key)}). Received: {key}={sizes[key]}"
            )
    student = BertEncoder(
        **{**config, **sizes},
        dtype=teacher._dtype_arg,
        name=name or f"student_{teacher.name}",
    )
    for part in _EMBEDDING_PARTS:
        _copy_weights(getattr(teacher, part), getattr(student, part))
    for s, t in enumerate(layer_map):
        _copy_weights(
            teacher.transformer_layers[t], student.transformer_layers[s]
        )
    return student
