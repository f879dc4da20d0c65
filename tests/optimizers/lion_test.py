"""kbm.optimizers.Lion: Keras's Lion, fused."""

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import assert_close, optimizer_trajectory

SHAPES = [(6, 5), (5,), (2, 3, 4)]


def keras_lion(keras, **kwargs):
    if IS_LEGACY_KERAS:
        kwargs.setdefault("jit_compile", False)
    return keras.optimizers.Lion(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, weight_decay=0.1),
        dict(learning_rate=0.01, global_clipnorm=1.0),
    ],
)
def test_same_trajectory_as_keras(keras, kwargs):
    ours, opt = optimizer_trajectory(kbm.optimizers.Lion(**kwargs), SHAPES, 6)
    ref, ref_opt = optimizer_trajectory(keras_lion(keras, **kwargs), SHAPES, 6)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)
    ref_m = getattr(ref_opt, "_momentums", None) or ref_opt.momentums
    for a, b in zip(
        opt._momentums if not IS_LEGACY_KERAS else opt.momentums, ref_m
    ):
        assert_close(np.asarray(a), np.asarray(b), 1e-6, 1e-6)


def test_fused_and_reference_paths_agree():
    fused, _ = optimizer_trajectory(kbm.optimizers.Lion(0.01), SHAPES, 5)
    with kbm.config.fused_kernels(False):
        ref, _ = optimizer_trajectory(kbm.optimizers.Lion(0.01), SHAPES, 5)
    for a, b in zip(fused, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_bad_hyperparameters():
    # Keras's own check and message (tf-keras words it differently).
    with pytest.raises(ValueError, match="beta_1`?=2"):
        kbm.optimizers.Lion(beta_1=2)
    with pytest.raises(ValueError, match="beta_1`?=0"):
        kbm.optimizers.Lion(beta_1=0.0)
