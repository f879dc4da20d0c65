"""Shared argument handling of the explanation callbacks."""

import numbers

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import as_batch


def bind_method(method, model):
    """A method instance: `method` itself, or `method(model)` when it is a
    class or factory (so it can be bound to the model `fit` trains)."""
    if hasattr(method, "attribute") and not isinstance(method, type):
        return method
    if callable(method):
        bound = method(model)
        if not hasattr(bound, "attribute"):
            raise ValueError(
                "method(model) must return a kbm.explain method. "
                f"Received: {type(bound).__name__}"
            )
        return bound
    raise ValueError(
        "method must be a kbm.explain method instance, or a class or "
        "callable building one from the model. "
        f"Received: {type(method).__name__}"
    )


def check_common(method, samples, targets, every_n_epochs):
    if not (hasattr(method, "attribute") or callable(method)):
        raise ValueError(
            "method must be a kbm.explain method instance, or a class or "
            "callable building one from the model. "
            f"Received: {type(method).__name__}"
        )
    samples = as_batch(samples, "samples")
    check_positive_int("every_n_epochs", every_n_epochs)
    if targets is not None and not callable(targets):
        t = np.asarray(targets)
        if t.ndim == 0 and isinstance(targets, numbers.Integral):
            t = np.full(len(samples), int(targets))
        if t.shape != (len(samples),) or t.dtype.kind not in "iu":
            raise ValueError(
                f"targets must be an int or one int per sample "
                f"({len(samples)}). Received: {targets!r}"
            )
        targets = t
    return samples, targets


def due(epoch, every_n_epochs):
    """Epochs 0, n, 2n, ... (Keras epochs count from 0)."""
    return epoch % every_n_epochs == 0
