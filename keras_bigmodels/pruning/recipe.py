"""Score, prune to a budget, and recover by distillation: one call."""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.pruning import importance as importance_lib
from keras_bigmodels.pruning import structured


def select_lowest(scores, fraction, min_keep=1, normalize=True):
    """Picks the lowest-scoring heads or units across layers.

    As in Michel et al. (2019), each layer's scores are divided by their L2
    norm (`normalize=True`) so that layers compare, then the lowest
    `fraction` of all heads (units) is chosen globally, keeping at least
    `min_keep` in every layer.

    Args:
        scores: `{layer name: array}`, from `head_importance` or
            `neuron_importance`.
        fraction: Share of all heads (units) to remove, in [0, 1).
        min_keep: Heads (units) every layer keeps. Defaults to `1`.
        normalize: Divide each layer's scores by their L2 norm. Defaults to
            `True`.

    Returns:
        `{layer name: [indices]}` for `prune_heads` / `prune_neurons`
        (layers losing nothing are left out).
    """
    if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1). Received: {fraction!r}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int):
        raise ValueError(f"min_keep must be an int. Received: {min_keep!r}")
    min_keep = max(min_keep, 1)
    candidates = []
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        if normalize:
            norm = np.linalg.norm(values)
            values = values / norm if norm > 0 else values
        for i, v in enumerate(values):
            candidates.append((v, name, i))
    total = len(candidates)
    budget = int(math.floor(fraction * total + 1e-9))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    removed = {name: [] for name in scores}
    sizes = {name: len(np.asarray(v)) for name, v in scores.items()}
    count = 0
    for _, name, i in candidates:
        if count >= budget:
            break
        if sizes[name] - len(removed[name]) <= min_keep:
            continue
        removed[name].append(i)
        count += 1
    return {name: sorted(idx) for name, idx in removed.items() if idx}


def prune_and_distil(
    teacher,
    data,
    target_heads_fraction=0.4,
    target_neurons_fraction=0.5,
    loss=None,
    epochs=1,
    optimizer="adam",
    distillation_losses=None,
    student_loss_weight=None,
    score_steps=None,
    fit_kwargs=None,
):
    """Prunes `teacher` to a budget and recovers it by distillation.

    1. Scores heads and feed-forward units on `data` (`head_importance`,
       `neuron_importance`).
    2. Removes the lowest `target_heads_fraction` of the heads and
       `target_neurons_fraction` of the units (`select_lowest`: per-layer
       normalised, at least one head/unit per layer).
    3. Trains the pruned student with `kbm.distillation.Distiller` from the
       unpruned teacher for `epochs` over `data`. With labels and a loss
       the student loss is mixed in (`student_loss_weight`, default 0.5)
       and the distillation loss defaults to logits KL
       (`kbm.distillation.losses.LogitsDistillation`); without labels it
       defaults to the mean squared error between the two models' outputs
       (`FeatureDistillation`).

    The teacher is not changed (its `trainable` flag is restored).

    Args:
        teacher: A model `kbm.pruning.prune` accepts.
        data: A `tf.data.Dataset` of `x` or `(x, y)` batches (or a list of
            them), used for scoring and for distillation.
        target_heads_fraction: Share of heads to remove, in [0, 1).
            Defaults to `0.4`.
        target_neurons_fraction: Share of feed-forward units to remove, in
            [0, 1). Defaults to `0.5`.
        loss: The supervised loss (a Keras loss), used for scoring and as
            the student loss; `None` uses the teacher's compiled loss, or
            none without labels. Defaults to `None`.
        epochs: Distillation epochs; `0` returns the pruned model
            untrained. Defaults to `1`.
        optimizer: The student's optimizer. Defaults to `"adam"`.
        distillation_losses: `kbm.distillation.losses` objects. Defaults
            to `None` (as described above).
        student_loss_weight: Weight of the supervised loss. Defaults to
            `None` (0.5 with labels and a loss, else 0).
        score_steps: Batches used for scoring. Defaults to `None` (all).
        fit_kwargs: More arguments to `Distiller.fit`. Defaults to `None`.

    Returns:
        `(student, report)`: the pruned, distilled model and a dict with
        the pruned `heads` and `units` and the parameter counts.

    Example:

    ```python
    student, report = kbm.pruning.prune_and_distil(
        teacher, train_ds, target_heads_fraction=0.4,
        target_neurons_fraction=0.5, epochs=2)
    ```
    """
    from keras_bigmodels.distillation import Distiller, losses

    heads = units = {}
    if target_heads_fraction > 0:
        heads = select_lowest(
            importance_lib.head_importance(teacher, data, loss, score_steps),
            target_heads_fraction,
        )
    if target_neurons_fraction > 0:
        units = select_lowest(
            importance_lib.neuron_importance(teacher, data, loss, score_steps),
            target_neurons_fraction,
        )
    student = structured.prune(teacher, heads=heads, units=units)
    report = {
        "heads": heads,
        "units": units,
        "teacher_parameters": int(teacher.count_params()),
        "student_parameters": int(student.count_params()),
    }
    if epochs <= 0:
        return student, report
    loss_fn = importance_lib.resolve_loss(teacher, loss)
    first = next(importance_lib.batches(data, 1))
    labelled = first[1] is not None and loss_fn is not None
    if distillation_losses is None:
        distillation_losses = [
            losses.LogitsDistillation()
            if labelled
            else losses.FeatureDistillation()
        ]
    if student_loss_weight is None:
        student_loss_weight = 0.5 if labelled else 0.0
    was_trainable = teacher.trainable
    try:
        distiller = Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=distillation_losses,
            student_loss_weight=student_loss_weight,
        )
        distiller.compile(
            optimizer=optimizer, loss=loss_fn if labelled else None
        )
        train = data
        if not isinstance(data, tf.data.Dataset):
            listed = list(importance_lib.batches(data))
            train = tf.data.Dataset.from_generator(
                lambda: (b[:2] if labelled else b[0] for b in listed),
                output_signature=_signature(listed[0], labelled),
            ).apply(tf.data.experimental.assert_cardinality(len(listed)))
        fit_kwargs = {"shuffle": False, "verbose": 0, **(fit_kwargs or {})}
        distiller.fit(train, epochs=epochs, **fit_kwargs)
    finally:
        teacher.trainable = was_trainable
    return student, report


def _signature(batch, labelled):
    def spec(x):
        x = tf.convert_to_tensor(x)
        return tf.TensorSpec([None, *x.shape[1:]], x.dtype)

    x_spec = tf.nest.map_structure(spec, batch[0])
    if labelled:
        return (x_spec, tf.nest.map_structure(spec, batch[1]))
    return x_spec
