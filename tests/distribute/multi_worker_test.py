"""Tests for kbm.distribute.enable_multi_worker_keras_fit.

The cluster tests start 2 worker processes on 127.0.0.1 with `TF_CONFIG`
(`_train_worker.py`: a TokenAndPositionEmbedding + TransformerEncoder
classifier trained by `fit` with kbm AdamW, fixed seeds, no shuffle, op
determinism, 1 intra-op and 1 inter-op thread) next to a single-process
reference on the same global batch. They run on both Keras lines; tf-keras
needs no fix (the call is a no-op there).
"""

import os
import time
import types

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels import backend
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.distribute import multi_worker
from keras_bigmodels.testing import assert_close
from tests.distribute._cluster import (
    CRASH_EXIT_CODE,
    LAUNCH_TIMEOUT_S,
    TRAINING,
    assert_same_weights,
    expect_success,
    finish,
    launch,
    logs,
    max_difference,
)

keras3_only = pytest.mark.skipif(
    IS_LEGACY_KERAS, reason="the fix patches Keras 3 only"
)


def test_two_workers_fit_like_one_process(tmp_path, reference):
    workers = launch(tmp_path, "worker", TRAINING)
    w0, w1 = expect_success(workers)
    reference = reference()

    assert w0["index"] == 0 and w1["index"] == 1
    # Gradients were all-reduced: the replicas are bit for bit the same.
    for a, b in zip(w0["weights"], w1["weights"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # And equal to one process on the same global batch.
    assert_same_weights(w0["weights"], reference["weights"], "weight")
    np.testing.assert_allclose(w0["loss"], reference["loss"], rtol=1e-4)
    assert w0["epochs_run"] == w1["epochs_run"] == [0, 1, 2, 3]
    # Validation in fit, evaluate and predict (gathered in order) too.
    for w in (w0, w1):
        for key in ("val_loss", "predict"):
            assert_close(
                np.array(w[key]), np.array(reference[key]), 1e-4, 1e-5, key
            )
        assert w["evaluate"] == pytest.approx(reference["evaluate"], 1e-4)
    # fit's progress lines, from Keras's own callbacks.
    assert "Epoch 4/4" in workers[1].log.read_text()
    print(
        "max |multi-worker - single| =",
        max_difference(w0["weights"], reference["weights"]),
        "worker fit/total s:",
        round(w0["fit_s"], 1),
        round(w0["total_s"], 1),
    )


def test_worker_failure_resumes_from_backup(tmp_path, reference):
    backup_dir = str(tmp_path / "backup")
    config = {**TRAINING, "backup_dir": backup_dir}

    # Launch 1: worker 1 dies in epoch 2 (0-based), after epochs 0 and 1
    # were backed up and one batch of epoch 2 was trained.
    crash = {"worker": 1, "epoch": 2, "batch": 1}
    first = launch(tmp_path, "first", {**config, "crash": crash})
    try:
        code = first[1].wait(time.time() + LAUNCH_TIMEOUT_S)
        assert code == CRASH_EXIT_CODE, f"exit code {code}\n{logs(first)}"
    finally:
        # The survivor waits in the next collective (it fails once the dead
        # task misses its heartbeats, ~10 s here): stop it now. It wrote
        # its epoch-1 backup before the step worker 1 finished in epoch 2.
        for p in first:
            p.kill()
    assert os.listdir(backup_dir), logs(first)

    # Launch 2: a new cluster, the same BackupAndRestore directory.
    w0, w1 = expect_success(launch(tmp_path, "second", config))
    reference = reference()

    # Resumed after the last backup (epoch 2), not from scratch.
    assert w0["epochs_run"] == w1["epochs_run"] == [2, 3]
    assert len(w0["loss"]) == 2
    for a, b in zip(w0["weights"], w1["weights"]):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # The same final weights as uninterrupted training.
    assert_same_weights(w0["weights"], reference["weights"], "weight")
    np.testing.assert_allclose(w0["loss"], reference["loss"][2:], rtol=1e-4)
    print(
        "max |resumed - single| =",
        max_difference(w0["weights"], reference["weights"]),
    )


@keras3_only
def test_keras3_fit_fails_without_the_fix(tmp_path):
    # keras-team/keras#20585. If this starts to fail, Keras fixed the bug:
    # drop the patch for that version.
    workers = launch(tmp_path, "nofix", {**TRAINING, "enable_fix": False})
    codes = finish(workers)
    assert all(c not in (0, None) for c in codes), logs(workers)
    assert "PerReplica" in workers[0].log.read_text(), logs(workers)


# -- The patch itself, in this process ------------------------------------


@pytest.fixture
def restore_keras(monkeypatch):
    """Undoes `enable_multi_worker_keras_fit` after the test."""
    if IS_LEGACY_KERAS:
        return None
    from keras.src.backend.tensorflow import trainer

    backup = backend.keras.callbacks.BackupAndRestore
    cls = trainer.TensorFlowTrainer
    monkeypatch.setattr(cls, "_maybe_symbolic_build", cls._maybe_symbolic_build)
    monkeypatch.setattr(
        trainer, "reduce_per_replica", trainer.reduce_per_replica
    )
    for name in ("_save_model", "on_train_end"):
        monkeypatch.setattr(backup, name, getattr(backup, name))
    return trainer


def _patched(fn):
    return getattr(fn, multi_worker._MARK, None)


def test_enable_is_idempotent(restore_keras):
    assert kbm.distribute.enable_multi_worker_keras_fit() is True
    if IS_LEGACY_KERAS:
        return  # test_no_op_on_tf_keras
    trainer = restore_keras
    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce = trainer.reduce_per_replica
    save = backend.keras.callbacks.BackupAndRestore._save_model
    assert _patched(build) and _patched(reduce) and _patched(save)
    assert kbm.distribute.enable_multi_worker_keras_fit() is True
    # Not wrapped twice.
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert trainer.reduce_per_replica is reduce
    assert not _patched(_patched(reduce))
    assert backend.keras.callbacks.BackupAndRestore._save_model is save


@pytest.mark.skipif(not IS_LEGACY_KERAS, reason="tf-keras only")
def test_no_op_on_tf_keras():
    backup = backend.keras.callbacks.BackupAndRestore
    before = dict(vars(backup))
    assert kbm.distribute.enable_multi_worker_keras_fit() is True
    assert dict(vars(backup)) == before


@keras3_only
def test_untested_keras_version_warns_and_patches_nothing(
    restore_keras, monkeypatch
):
    trainer = restore_keras
    before = trainer.reduce_per_replica
    monkeypatch.setattr(backend, "KERAS_VERSION", "3.99.0")
    with pytest.warns(
        kbm.distribute.MultiWorkerCompatWarning, match="3.99.0 was not tested"
    ):
        assert kbm.distribute.enable_multi_worker_keras_fit() is False
    assert trainer.reduce_per_replica is before


class FakeStrategy:
    """Records `reduce` calls; `extended.should_checkpoint` as given."""

    def __init__(self, chief=True):
        self.calls = []
        self.extended = types.SimpleNamespace(should_checkpoint=chief)

    def reduce(self, op, value, axis):
        self.calls.append((op, axis))
        return value


@keras3_only
def test_reduce_delegates_except_multi_worker_mean():
    calls = []

    def original(values, strategy, reduction):
        calls.append(reduction)
        return values

    fake = FakeStrategy()
    reduce = multi_worker._wrap_reduce_per_replica(
        original, is_multi_worker=lambda s: s is fake
    )
    values = {"loss": tf.constant(1.0), "v": tf.constant([1.0, 2.0])}
    reduce(values, tf.distribute.get_strategy(), "auto")
    reduce(values, fake, "concat")
    reduce(values, fake, "sum")
    assert calls == ["auto", "concat", "sum"] and not fake.calls
    # Multi-worker mean: element-wise over replicas (axis=None), scalars
    # included.
    assert reduce(values, fake, "auto") is not None
    assert fake.calls == [("MEAN", None)] * 2 and len(calls) == 3


@keras3_only
def test_symbolic_build_delegates_without_multi_worker_strategy():
    calls = []

    def original(self, iterator=None, data_batch=None):
        calls.append((iterator, data_batch))

    build = multi_worker._wrap_maybe_symbolic_build(original)
    for strategy in (None, tf.distribute.get_strategy()):
        model = types.SimpleNamespace(_distribute_strategy=strategy)
        build(model, iterator="it")
        build(model, data_batch="batch")
    assert calls == [("it", None), (None, "batch")] * 2


@pytest.mark.parametrize(
    "multi,chief,runs",
    [(False, False, True), (True, True, True), (True, False, False)],
)
def test_backup_writes_on_the_chief_only(multi, chief, runs):
    ran = []
    fake = FakeStrategy(chief=chief)
    method = multi_worker._skip_on_non_chief(
        lambda self: ran.append(True), is_multi_worker=lambda s: multi
    )
    callback = types.SimpleNamespace(
        model=types.SimpleNamespace(distribute_strategy=fake)
    )
    method(callback)
    assert bool(ran) == runs
