"""Keras 3 `model.fit` under `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3.15's TensorFlow trainer fails under MultiWorkerMirroredStrategy
(MWMS) when there is more than one worker, in two places
(keras-team/keras#20585, tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the
   first batch, which it gets by an eager cross-replica
   `strategy.reduce("MEAN", batch)`. The collective strategy cannot reduce
   a `PerReplica` batch eagerly (`ValueError: Attempt to convert a value
   (PerReplica:{...}) ... to a Tensor`), and integer batches (token ids)
   cannot be averaged anyway. The batch is only used for its shapes and
   dtypes, so the fix builds from the local replica's batch.
2. `reduce_per_replica` averages the per-replica logs of each step with
   `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode, which fails
   on the scalar loss and metrics (`Invalid reduction dimension 0 for
   input with 0 dimensions`). The fix reduces with `axis=None`: the
   element-wise mean over replicas, which is what the same function
   computes for one-worker strategies (`MirroredStrategy`).

And one in `keras.callbacks.BackupAndRestore`, the callback for fault
tolerance:

3. Every worker writes the same `latest.weights.h5` at the end of each
   epoch. On one machine or a shared filesystem the second writer fails
   (`BlockingIOError: ... unable to lock file`), and the workers race to
   delete the directory at the end. The fix does what tf-keras does: only
   the chief (`strategy.extended.should_checkpoint`, worker 0) writes and
   deletes the backup; every worker restores from it, so all of them
   resume from the same epoch. Like tf-keras, this needs `backup_dir` to
   be readable by every worker (a shared filesystem or bucket).

`enable_multi_worker_keras_fit()` wraps those functions so that the fixed
code runs only when the model's strategy is a MultiWorkerMirroredStrategy
(for 2. and 3., only in multi-worker mode, where Keras's own code fails)
and Keras's original runs for every other strategy and for no strategy.
The rest of `fit` (callbacks, progress bar, `History`, `evaluate` and
`predict`) is Keras's own.

Why a patch and not a custom training loop: `fit` is the API users have,
with its callbacks (`BackupAndRestore` for fault tolerance) and logs;
the functions patched are private and may change in any Keras release, so
the patch is only applied on the Keras versions it was tested on
(`TESTED_KERAS_VERSIONS`), warns and does nothing on others, and is a
no-op on tf-keras, whose `fit` works under MWMS unmodified. The private
Keras module is imported inside the call, on Keras 3 only (the one place
besides `backend` that reaches into Keras).
"""

import functools
import importlib
import threading
import warnings

import tensorflow as tf

from keras_bigmodels import backend

# Keras releases (major.minor) whose private trainer functions the patch
# was written against and tested on.
TESTED_KERAS_VERSIONS = ("3.15",)

_TRAINER_MODULE = "keras.src.backend.tensorflow.trainer"
_MARK = "_kbm_multi_worker_patch"
_lock = threading.Lock()


class MultiWorkerCompatWarning(UserWarning):
    """Warned when the multi-worker `fit` fix cannot be applied."""


def _keras_minor(version):
    return ".".join(version.split(".")[:2])


def _local_batch(strategy, value):
    """The first local replica's value of a (possibly) distributed value."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _wrap_maybe_symbolic_build(original):
    @functools.wraps(original)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return original(self, iterator=iterator, data_batch=data_batch)
        # As Keras does, take the first batch of the epoch iterator; build
        # from the local replica's part instead of an eager cross-worker
        # reduce (only shapes and dtypes matter for building).
        for _, _, it in iterator:
            data_batch = backend.keras.tree.map_structure(
                functools.partial(_local_batch, strategy), next(it)
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    setattr(_maybe_symbolic_build, _MARK, original)
    return _maybe_symbolic_build


def _wrap_reduce_per_replica(original, is_multi_worker):
    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return original(values, strategy, reduction)
        # MWMS is never a TPUStrategy, so "auto" means "mean" here.
        return backend.keras.tree.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=None), values
        )

    setattr(reduce_per_replica, _MARK, original)
    return reduce_per_replica


def _skip_on_non_chief(original, is_multi_worker):
    """A `BackupAndRestore` method that only the chief runs under MWMS."""

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        strategy = self.model.distribute_strategy
        if is_multi_worker(strategy) and not (
            strategy.extended.should_checkpoint
        ):
            return None
        return original(self, *args, **kwargs)

    setattr(method, _MARK, original)
    return method


def _untested(reason):
    warnings.warn(
        "keras_bigmodels did not patch Keras for model.fit under "
        "MultiWorkerMirroredStrategy: "
        + reason
        + ". Keras 3's fit may then fail with more than one worker "
        "(keras-team/keras#20585); use tf-keras (TF_USE_LEGACY_KERAS=1) "
        "or a custom training loop, or a tested Keras version: "
        + ", ".join(f"{v}.x" for v in TESTED_KERAS_VERSIONS)
        + ".",
        MultiWorkerCompatWarning,
        stacklevel=3,
    )
    return False


def enable_multi_worker_keras_fit():
    """Makes Keras 3 `model.fit` work under MultiWorkerMirroredStrategy.

    Wraps two private functions of Keras 3's TensorFlow trainer so that
    `fit`, `evaluate` and `predict` run when the model was built under a
    `tf.distribute.MultiWorkerMirroredStrategy` with several workers
    (keras-team/keras#20585), and makes `keras.callbacks.BackupAndRestore`
    write its backup from the chief only (as tf-keras does), so that the
    workers of a cluster can share one `backup_dir`. The wrappers call
    Keras's original code for every other strategy, so models without a
    strategy or under `MirroredStrategy` run exactly Keras's code. See the
    module docstring for what is changed and why.

    Call it once per process, before `fit`, on every worker. Calling it
    again does nothing. On tf-keras (`TF_USE_LEGACY_KERAS=1`) it does
    nothing: tf-keras's `fit` works under the strategy as it is.

    On a Keras version the patch was not tested on
    (`TESTED_KERAS_VERSIONS`), or when the private functions are not where
    they were, it warns (`MultiWorkerCompatWarning`) and patches nothing.

    Returns:
        True when `fit` is expected to work under the strategy on this
        Keras line (patched now, patched before, or tf-keras); False when
        the Keras version was not tested and nothing was patched.

    Example:

    ```python
    import keras_bigmodels as kbm

    kbm.distribute.enable_multi_worker_keras_fit()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # TF_CONFIG
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=kbm.optimizers.AdamW(1e-3), loss=...)
    model.fit(dataset, epochs=10, callbacks=[
        keras.callbacks.BackupAndRestore(backup_dir)])
    ```
    """
    if backend.IS_LEGACY_KERAS:
        return True
    version = backend.KERAS_VERSION
    if _keras_minor(version) not in TESTED_KERAS_VERSIONS:
        return _untested(f"Keras {version} was not tested")
    try:
        trainer = importlib.import_module(_TRAINER_MODULE)
        cls = trainer.TensorFlowTrainer
        build = cls._maybe_symbolic_build
        reduce = trainer.reduce_per_replica
        is_multi_worker = trainer._collective_all_reduce_multi_worker
        backup = backend.keras.callbacks.BackupAndRestore
        backup_methods = {
            name: getattr(backup, name)
            for name in ("_save_model", "on_train_end")
        }
    except (ImportError, AttributeError) as e:
        return _untested(f"Keras {version} has no {e}")
    with _lock:
        if not hasattr(build, _MARK):
            cls._maybe_symbolic_build = _wrap_maybe_symbolic_build(build)
        if not hasattr(reduce, _MARK):
            trainer.reduce_per_replica = _wrap_reduce_per_replica(
                reduce, is_multi_worker
            )
        for name, method in backup_methods.items():
            if not hasattr(method, _MARK):
                setattr(
                    backup, name, _skip_on_non_chief(method, is_multi_worker)
                )
    return True
