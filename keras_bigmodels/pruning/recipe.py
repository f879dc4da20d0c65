"""Score, prune to a budget, and recover by distillation: one call."""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.pruning import _sites, structured
from keras_bigmodels.pruning import importance as importance_lib


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
    target_heads_fraction=None,
    target_neurons_fraction=None,
    loss=None,
    epochs=1,
    optimizer="adam",
    distillation_losses=None,
    student_loss_weight=None,
    score_steps=None,
    fit_kwargs=None,
    target_speedup=None,
    drop_layers=None,
):
    """Prunes `teacher` to a budget and recovers it by distillation.

    1. Scores heads and feed-forward units on `data` (`head_importance`,
       `neuron_importance`).
    2. Removes the lowest `target_heads_fraction` of the heads and
       `target_neurons_fraction` of the units (`select_lowest`: per-layer
       normalised, at least one head/unit per layer). With
       `target_speedup`, one fraction for both instead: the smallest (in
       steps of 0.01) whose estimated matmul FLOP reduction reaches it.
       `drop_layers` removes whole transformer blocks first (the fractions
       then apply to the blocks that stay).
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
            Defaults to `None` (`0.4`, or chosen by `target_speedup`).
        target_neurons_fraction: Share of feed-forward units to remove, in
            [0, 1). Defaults to `None` (`0.5`, or chosen by
            `target_speedup`).
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
        target_speedup: The wanted reduction of the model's matmul FLOPs
            (`2.0`: half of them), instead of the two fractions. It is an
            estimate, not a measured speed-up: the FLOPs of every Dense,
            EinsumDense and FusedDense kernel and of the attention scores
            and context (at the sequence length of `data`'s first batch)
            are counted before and after; embedding lookups, norms,
            softmax and the framework's per-op overhead are not, so the
            measured speed-up is smaller, the more so for small models
            and batches. Defaults to `None`.
        drop_layers: Names of transformer blocks to remove (as for
            `kbm.pruning.drop_layers`). Defaults to `None`.

    Returns:
        `(student, report)`: the pruned, distilled model and a dict with
        the pruned `heads` and `units`, the parameter counts, the
        fractions removed (`heads_fraction`, `neurons_fraction`), the
        estimated matmul FLOPs per sequence (`teacher_flops`,
        `student_flops`) and their ratio (`estimated_speedup`).

    Raises:
        ValueError: `target_speedup` together with a fraction, not above
            1, or out of reach (pruning all but one head and unit per
            layer).

    Example:

    ```python
    student, report = kbm.pruning.prune_and_distil(
        teacher, train_ds, target_heads_fraction=0.4,
        target_neurons_fraction=0.5, epochs=2)
    ```
    """
    from keras_bigmodels.distillation import Distiller, losses

    length = _sequence_length(data)
    if target_speedup is not None:
        if target_heads_fraction is not None or (
            target_neurons_fraction is not None
        ):
            raise ValueError(
                "Pass target_speedup or the fractions, not both. Received: "
                f"target_speedup={target_speedup!r}, target_heads_fraction="
                f"{target_heads_fraction!r}, target_neurons_fraction="
                f"{target_neurons_fraction!r}"
            )
        if isinstance(target_speedup, bool) or not target_speedup > 1.0:
            raise ValueError(
                "target_speedup must be a number above 1. Received: "
                f"target_speedup={target_speedup!r}"
            )
    else:
        if target_heads_fraction is None:
            target_heads_fraction = 0.4
        if target_neurons_fraction is None:
            target_neurons_fraction = 0.5
    head_scores = unit_scores = {}
    if target_speedup is not None or target_heads_fraction > 0:
        head_scores = importance_lib.head_importance(
            teacher, data, loss, score_steps
        )
    if target_speedup is not None or target_neurons_fraction > 0:
        unit_scores = importance_lib.neuron_importance(
            teacher, data, loss, score_steps
        )
    drop = list(drop_layers or [])
    head_scores = {k: v for k, v in head_scores.items() if k not in drop}
    unit_scores = {k: v for k, v in unit_scores.items() if k not in drop}
    costs = _site_flops(teacher, length)
    teacher_flops = matmul_flops(teacher, length)
    blocks = _sites.find_sites(teacher)[2]
    for name in drop:
        if name not in blocks:
            raise ValueError(
                f"Unknown layer name {name!r} in drop_layers: no "
                f"transformer block by that name. Blocks: {sorted(blocks)}"
            )
    dropped = sum(matmul_flops(blocks[name], length) for name in drop)

    def choose(heads_fraction, units_fraction):
        heads = units = {}
        if heads_fraction > 0:
            heads = select_lowest(head_scores, heads_fraction)
        if units_fraction > 0:
            units = select_lowest(unit_scores, units_fraction)
        saved = (
            dropped
            + sum(
                costs["heads"][name] * len(idx) for name, idx in heads.items()
            )
            + sum(
                costs["units"][name] * len(idx) for name, idx in units.items()
            )
        )
        return heads, units, teacher_flops - saved

    if target_speedup is None:
        heads, units, flops = choose(
            target_heads_fraction, target_neurons_fraction
        )
    else:
        for step in range(1, 100):
            fraction = step / 100
            heads, units, flops = choose(fraction, fraction)
            if teacher_flops >= target_speedup * flops:
                break
        else:
            raise ValueError(
                f"target_speedup={target_speedup!r} is out of reach: "
                "removing 99% of the heads and units (at least one of "
                "each per layer) reduces the estimated matmul FLOPs "
                f"{teacher_flops / flops:.2f}x."
            )
        target_heads_fraction = target_neurons_fraction = fraction
    student = structured.prune(teacher, heads=heads, units=units, drop=drop)
    report = {
        "heads": heads,
        "units": units,
        "dropped": drop,
        "heads_fraction": target_heads_fraction,
        "neurons_fraction": target_neurons_fraction,
        "teacher_parameters": int(teacher.count_params()),
        "student_parameters": int(student.count_params()),
        "teacher_flops": int(teacher_flops),
        "student_flops": int(flops),
        "estimated_speedup": teacher_flops / flops,
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


def _sequence_length(data):
    """The second axis of the first rank >= 2 input of the first batch."""
    x = next(importance_lib.batches(data, 1))[0]
    for tensor in tf.nest.flatten(x):
        shape = tf.convert_to_tensor(tensor).shape
        if shape.rank is not None and shape.rank >= 2:
            return int(shape[1])
    return 1


def _kernel_layers(layer):
    """The Dense, EinsumDense and FusedDense layers in `layer` (itself
    included)."""
    from keras_bigmodels.backend import keras
    from keras_bigmodels.layers.fused_dense import FusedDense

    kinds = (keras.layers.Dense, keras.layers.EinsumDense, FusedDense)
    seen, found = set(), []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, kinds) and id(sub) not in seen:
            seen.add(id(sub))
            found.append(sub)
    return found


def _kernel_size(layer):
    return int(np.prod(layer.kernel.shape))


def _attention_flops(attention, length):
    """Matmul FLOPs per sequence of an attention layer: its projections
    and the scores and context (`2 * 2 * length**2 * head_dim` a query
    head)."""
    projections = sum(_kernel_size(d) for d in _kernel_layers(attention))
    if _sites.is_gqa(attention):
        query_heads = attention.num_query_heads
    else:
        query_heads = attention._num_heads
    head_dim = structured._head_dim(attention)
    return 2 * length * projections + 4 * length**2 * head_dim * query_heads


def matmul_flops(model, length):
    """Estimated matmul FLOPs of `model` on one sequence of `length`
    tokens: `2 * length * kernel size` for every Dense, EinsumDense and
    FusedDense (each counted per token) plus the attention scores and
    context of every attention layer. Embedding lookups, norms, softmax
    and elementwise ops are left out."""
    total, attention_ids = 0, set()
    for sub in model._flatten_layers(include_self=True, recursive=True):
        if _sites.is_attention(sub) and id(sub) not in attention_ids:
            attention_ids.add(id(sub))
            total += _attention_flops(sub, length)
    in_attention = {
        id(d)
        for sub in model._flatten_layers(include_self=True, recursive=True)
        if id(sub) in attention_ids
        for d in _kernel_layers(sub)
    }
    total += sum(
        2 * length * _kernel_size(d)
        for d in _kernel_layers(model)
        if id(d) not in in_attention
    )
    return total


def _site_flops(model, length):
    """FLOPs per sequence saved by removing one head (one unit) of each
    site: `{"heads": {name: flops}, "units": {name: flops}}`."""
    heads, units, _ = _sites.find_sites(model)
    costs = {"heads": {}, "units": {}}
    for name, site in heads.items():
        costs["heads"][name] = (
            _attention_flops(site.attention, length) / site.count
        )
    for name, site in units.items():
        owner = site.owner
        if isinstance(owner, _sites.BLOCKS):
            kernels = [owner._ffn_intermediate, owner._ffn_output]
        else:
            kernels = [owner, *site.readers]
        costs["units"][name] = (
            2 * length * sum(_kernel_size(k) for k in kernels) / site.count
        )
    return costs


def _signature(batch, labelled):
    def spec(x):
        x = tf.convert_to_tensor(x)
        return tf.TensorSpec([None, *x.shape[1:]], x.dtype)

    x_spec = tf.nest.map_structure(spec, batch[0])
    if labelled:
        return (x_spec, tf.nest.map_structure(spec, batch[1]))
    return x_spec
