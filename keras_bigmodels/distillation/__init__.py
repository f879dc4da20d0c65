"""Knowledge distillation (`kbm.distillation`)."""

from keras_bigmodels.distillation import losses
from keras_bigmodels.distillation.cache import (
    cache_teacher_outputs,
    with_example_index,
)
from keras_bigmodels.distillation.distiller import Distiller
from keras_bigmodels.distillation.students import student_from_teacher

__all__ = [
    "Distiller",
    "cache_teacher_outputs",
    "losses",
    "student_from_teacher",
    "with_example_index",
]
