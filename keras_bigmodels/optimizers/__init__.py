"""Optimizers with fused multi-tensor update kernels (`kbm.optimizers`)."""

from keras_bigmodels.optimizers import schedules
from keras_bigmodels.optimizers.adamw import AdamW
from keras_bigmodels.optimizers.lamb import Lamb
from keras_bigmodels.optimizers.lion import Lion
from keras_bigmodels.optimizers.lookahead import Lookahead
from keras_bigmodels.optimizers.radam import RAdam

__all__ = ["AdamW", "Lamb", "Lion", "Lookahead", "RAdam", "schedules"]
