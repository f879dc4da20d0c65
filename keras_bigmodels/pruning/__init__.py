"""Pruning (`kbm.pruning`).

Structured pruning that shrinks models: `head_importance` /
`neuron_importance` score attention heads and hidden units; `prune_heads`,
`prune_neurons` and `drop_layers` return a new, physically smaller model;
`prune_and_distil` scores, prunes to a budget and recovers the accuracy by
distillation from the unpruned model.

Magnitude pruning (unstructured, block, 2:4): `prune_low_magnitude` with a
schedule (`PolynomialDecay`, `ConstantSparsity`) and the `UpdatePruningStep`
callback, then `strip_pruning`. Masks shrink and speed up nothing by
themselves: the zeros are still stored and multiplied.
"""

from keras_bigmodels.pruning.importance import (
    head_importance,
    neuron_importance,
)
from keras_bigmodels.pruning.magnitude import (
    PrunedConv2D,
    PrunedDense,
    PrunedEinsumDense,
    PrunedEmbedding,
    PrunedFusedDense,
    UpdatePruningStep,
    compute_mask,
    get_sparsity,
    prune_low_magnitude,
    strip_pruning,
    update_pruning_masks,
)
from keras_bigmodels.pruning.recipe import prune_and_distil, select_lowest
from keras_bigmodels.pruning.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
)
from keras_bigmodels.pruning.structured import (
    SkippedBlock,
    drop_layers,
    prune,
    prune_heads,
    prune_neurons,
)

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunedConv2D",
    "PrunedDense",
    "PrunedEinsumDense",
    "PrunedEmbedding",
    "PrunedFusedDense",
    "PruningSchedule",
    "SkippedBlock",
    "UpdatePruningStep",
    "compute_mask",
    "drop_layers",
    "get_sparsity",
    "head_importance",
    "neuron_importance",
    "prune",
    "prune_and_distil",
    "prune_heads",
    "prune_low_magnitude",
    "prune_neurons",
    "select_lowest",
    "strip_pruning",
    "update_pruning_masks",
]
