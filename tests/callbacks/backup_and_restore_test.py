"""kbm.callbacks.BackupAndRestore: atomic checkpoints, the epoch counter
after a restore, and the fallback to the previous checkpoint."""

import json
import os
import shutil

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

pytestmark = pytest.mark.skipif(
    IS_LEGACY_KERAS,
    reason="tf-keras: kbm.callbacks.BackupAndRestore is tf-keras's own",
)


class _Interrupt(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    """Raises at the start of `epoch`, or after batch `batch` of it."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if epoch == self.epoch and self.batch is None:
            raise _Interrupt()

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise _Interrupt()


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), kbm.layers.FusedDense(3), keras.layers.Dense(1)]
    )
    model.compile(optimizer=kbm.optimizers.AdamW(1e-2), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)), rng.normal(size=(16, 1))


def _fit(model, callbacks, epochs=4):
    x, y = _data()
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(tmp_path):
    reference = _model()
    _fit(reference, [])
    backup = str(tmp_path / "backup")
    model = _model()
    with pytest.raises(_Interrupt):
        _fit(model, [kbm.callbacks.BackupAndRestore(backup), _InterruptAt(2)])
    model = _model()
    _fit(model, [kbm.callbacks.BackupAndRestore(backup)])
    for a, b in zip(reference.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not os.path.exists(backup)  # delete_checkpoint=True


def test_epoch_recorded_in_the_first_resumed_epoch(tmp_path):
    # Keras 3.15 records epoch 0 here until the resumed epoch ends, so a
    # second interruption would restart training from the first epoch.
    backup = str(tmp_path / "backup")

    def callback():
        return kbm.callbacks.BackupAndRestore(
            backup, save_freq=1, delete_checkpoint=False
        )

    with pytest.raises(_Interrupt):
        _fit(_model(), [callback(), _InterruptAt(2, batch=1)])
    with pytest.raises(_Interrupt):
        _fit(_model(), [callback(), _InterruptAt(2, batch=2)])
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": 2, "batch": 2}


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    backup = str(tmp_path / "backup")
    cbk = kbm.callbacks.BackupAndRestore(
        backup, save_freq=1, delete_checkpoint=False
    )
    model = _model()
    with pytest.raises(_Interrupt):
        _fit(model, [cbk, _InterruptAt(1, batch=0)])
    latest = os.path.join(backup, "latest.weights.h5")
    saved = model.get_weights()
    before = open(latest, "rb").read()

    def half_written(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(before[: len(before) // 2])
        raise _Interrupt()  # the process dies mid-write

    monkeypatch.setattr(model, "save_weights", half_written)
    with pytest.raises(_Interrupt):
        cbk._save_model()
    assert open(latest, "rb").read() == before
    assert sorted(os.listdir(backup)) == [
        "latest.weights.h5",
        "training_metadata.json",
    ]
    restored = _model()
    restored.load_weights(latest)
    for a, b in zip(saved, restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(
    tmp_path,
):
    backup = str(tmp_path / "backup")

    def callback():
        return kbm.callbacks.BackupAndRestore(
            backup, double_checkpoint=True, delete_checkpoint=False
        )

    model = _model()
    with pytest.raises(_Interrupt):
        _fit(model, [callback(), _InterruptAt(3)])
    # Keras picks the format from the name: load a copy named .weights.h5.
    copy = str(tmp_path / "previous.weights.h5")
    shutil.copyfile(os.path.join(backup, "latest.weights.h5.bkp"), copy)
    previous = _model()
    previous.load_weights(copy)
    with open(os.path.join(backup, "latest.weights.h5"), "wb") as f:
        f.write(b"not an HDF5 file")
    resumed = _model()
    cbk = callback()
    cbk.set_model(resumed)
    cbk.on_train_begin()
    for a, b in zip(previous.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed._initial_epoch == 2  # the previous checkpoint's epoch


def test_bad_fsync(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        kbm.callbacks.BackupAndRestore(str(tmp_path), fsync="yes")
