"""`kbm.pruning`: magnitude pruning (unstructured, block, 2:4)."""

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
from keras_bigmodels.pruning.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
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
    "UpdatePruningStep",
    "compute_mask",
    "get_sparsity",
    "prune_low_magnitude",
    "strip_pruning",
    "update_pruning_masks",
]
