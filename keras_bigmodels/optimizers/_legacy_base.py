"""Construction helpers for kbm's own optimizers on either Keras line."""

from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.optimizers import _keras_internals


def init_optimizer(optimizer, base_class, learning_rate, name, kwargs):
    """Runs the line's base Optimizer.__init__ with a learning rate.

    Keras 3 takes `learning_rate` in the base constructor; tf-keras builds it
    with `_build_learning_rate` after, and compiles update steps with XLA by
    default, which the fused kernels cannot run in (`jit_compile=False`).
    """
    if IS_LEGACY_KERAS:
        kwargs.setdefault("jit_compile", False)
        base_class.__init__(optimizer, name=name, **kwargs)
        _keras_internals.legacy_set_learning_rate(optimizer, learning_rate)
    else:
        base_class.__init__(
            optimizer, learning_rate=learning_rate, name=name, **kwargs
        )


def serialize_learning_rate(optimizer):
    if IS_LEGACY_KERAS:
        return _keras_internals.legacy_serialize_learning_rate(optimizer)
    return None  # Keras 3's base get_config already has it.
