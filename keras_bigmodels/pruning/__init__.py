"""Pruning (`kbm.pruning`): structured pruning that shrinks models.

`head_importance` / `neuron_importance` score attention heads and hidden
units; `prune_heads`, `prune_neurons` and `drop_layers` return a new,
physically smaller model; `prune_and_distil` scores, prunes to a budget and
recovers the accuracy by distillation from the unpruned model.
"""

from keras_bigmodels.pruning.importance import (
    head_importance,
    neuron_importance,
)
from keras_bigmodels.pruning.recipe import prune_and_distil, select_lowest
from keras_bigmodels.pruning.structured import (
    SkippedBlock,
    drop_layers,
    prune,
    prune_heads,
    prune_neurons,
)

__all__ = [
    "SkippedBlock",
    "drop_layers",
    "head_importance",
    "neuron_importance",
    "prune",
    "prune_and_distil",
    "prune_heads",
    "prune_neurons",
    "select_lowest",
]
