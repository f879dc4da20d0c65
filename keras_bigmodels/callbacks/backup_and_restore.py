"""`BackupAndRestore` whose checkpoints survive being killed mid-write.

Keras 3.15's `keras.callbacks.BackupAndRestore` writes `latest.weights.h5`
and `training_metadata.json` in place. A process killed while it saves
(SIGKILL, an out-of-memory kill, a preempted VM) leaves a half-written file;
with `double_checkpoint=True` Keras then falls back to the previous copy,
but only when loading raises `OSError`. After a restart it also records
epoch 0 in every checkpoint it writes until the first resumed epoch ends,
so a second interruption in that epoch restarts training from epoch 0.

This subclass keeps Keras's arguments, files and restore logic and changes
these things:

* every file is written under a temporary name in the backup directory and
  renamed over the old one (`os.replace`, atomic on POSIX file systems;
  with `fsync=True` the data is flushed first, for power loss rather than
  a killed process), so a kill leaves the old file or the new one;
* the epoch counter is set at each epoch's start;
* with `double_checkpoint=True`, any error loading the latest checkpoint
  (not only `OSError`) falls back to the previous one;
* under `MultiWorkerMirroredStrategy` only the chief writes.

As in Keras, a restore resumes at the start of the interrupted epoch with
the weights and optimizer state (including `optimizer.iterations`) of the
last save: batches after the save and before the kill are trained again.
For an exact mid-epoch resume, make the data a function of
`optimizer.iterations` (RELIABILITY.md's soak run does).

On tf-keras, `tf.keras.callbacks.BackupAndRestore` keeps its state in
TensorFlow checkpoints, which are written atomically already; there this
class is tf-keras's own callback, unchanged.
"""

import json
import os
import shutil

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

__all__ = ["BackupAndRestore"]


def _replace_file(write, path, fsync):
    """Calls write(tmp_path), then renames tmp_path over `path`."""
    directory, name = os.path.split(path)
    # The temporary name keeps the suffix: Keras picks the weights format
    # from the file name (".weights.h5").
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _copy_file(src, dst, fsync):
    """Copies `src` over `dst` atomically."""
    _replace_file(lambda tmp: shutil.copyfile(src, tmp), dst, fsync)


if not IS_LEGACY_KERAS:

    class BackupAndRestore(keras.callbacks.BackupAndRestore):
        """Keras's `BackupAndRestore` with atomic checkpoint writes.

        Same arguments as `keras.callbacks.BackupAndRestore`, plus `fsync`
        (default False): flush each file to disk before renaming it.
        Local file systems only (the backup directory must support
        `os.replace`).
        """

        def __init__(
            self,
            backup_dir,
            save_freq="epoch",
            double_checkpoint=False,
            delete_checkpoint=True,
            fsync=False,
        ):
            super().__init__(
                backup_dir,
                save_freq=save_freq,
                double_checkpoint=double_checkpoint,
                delete_checkpoint=delete_checkpoint,
            )
            if not isinstance(fsync, bool):
                raise ValueError(
                    f"fsync must be True or False. Received: fsync={fsync!r}"
                )
            self.fsync = fsync

        def on_epoch_begin(self, epoch, logs=None):
            self._current_epoch = epoch

        def on_train_begin(self, logs=None):
            try:
                self._load_model()
            except Exception:
                if not (
                    self.double_checkpoint
                    and os.path.exists(self._prev_weights_path)
                ):
                    raise
                # The latest checkpoint does not load: restore the previous
                # one (weights and the metadata written with them).
                for prev, latest in (
                    (self._prev_weights_path, self._weights_path),
                    (
                        self._prev_training_metadata_path,
                        self._training_metadata_path,
                    ),
                ):
                    if os.path.exists(prev):
                        _copy_file(prev, latest, self.fsync)
                    elif os.path.exists(latest):
                        os.remove(latest)
                self._load_model()

        def _save_model(self):
            # Under MultiWorkerMirroredStrategy only the chief writes (the
            # workers share the directory).
            strategy = getattr(self.model, "distribute_strategy", None)
            extended = getattr(strategy, "extended", None)
            if not getattr(extended, "should_checkpoint", True):
                return
            os.makedirs(self.backup_dir, exist_ok=True)
            if self.double_checkpoint:
                for src, dst in (
                    (self._weights_path, self._prev_weights_path),
                    (
                        self._training_metadata_path,
                        self._prev_training_metadata_path,
                    ),
                ):
                    if os.path.exists(src):
                        _copy_file(src, dst, self.fsync)
            _replace_file(
                lambda tmp: self.model.save_weights(tmp, overwrite=True),
                self._weights_path,
                self.fsync,
            )
            metadata = json.dumps(
                {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            )

            def write_metadata(tmp):
                with open(tmp, "w") as f:
                    f.write(metadata)

            _replace_file(
                write_metadata, self._training_metadata_path, self.fsync
            )

else:
    BackupAndRestore = keras.callbacks.BackupAndRestore
