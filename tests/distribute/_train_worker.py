"""One training process for the distribute tests (run as a script).

    python _train_worker.py CONFIG_JSON

CONFIG_JSON holds:
- `mode`: "multi" (MultiWorkerMirroredStrategy from `TF_CONFIG`),
  "mirrored" (MirroredStrategy over 2 logical CPUs) or "single" (plain
  `fit` in this process, the reference);
- `epochs`, `batch_size` (global), `examples`;
- `backup_dir` (optional): a `keras.callbacks.BackupAndRestore` directory;
- `crash` (optional): `{"worker": i, "epoch": e, "batch": b}` makes worker
  i exit with code 17 at the start of that batch;
- `enable_fix` (optional, default true): whether to call
  `kbm.distribute.enable_multi_worker_keras_fit()`;
- `attribution_dir` (optional): adds a `kbm.callbacks.AttributionMonitor`
  (LayerIntegratedGradients on the embedding) saving files there (on
  worker 0 only under "multi": Keras 3's file-writing callbacks are not
  multi-worker aware);
- `out`: where to write the result (JSON): the final weights, the epochs
  this launch ran, the loss history and the worker index.

Seeds, data order (no shuffle) and op determinism are fixed, so every
launch of the same config trains the same trajectory.
"""

import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

CRASH_EXIT_CODE = 17
SEQUENCE_LENGTH = 12
VOCABULARY = 40


def make_data(n):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCABULARY, size=(n, SEQUENCE_LENGTH), dtype="int32")
    # Class: whether small token ids outnumber large ones.
    labels = (ids < VOCABULARY // 2).sum(axis=1) > SEQUENCE_LENGTH // 2
    return ids, labels.astype("int32")


def make_dataset(n, batch_size):
    ids, labels = make_data(n)
    ds = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(batch_size)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    options.deterministic = True
    return ds.with_options(options)


def make_model(kbm, keras):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    h = kbm.layers.TokenAndPositionEmbedding(
        VOCABULARY, SEQUENCE_LENGTH, 16, name="embedding"
    )(inputs)
    h = kbm.layers.TransformerEncoder(32, num_heads=2, name="encoder")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=kbm.optimizers.AdamW(3e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(config_path):
    with open(config_path) as f:
        config = json.load(f)
    if config["mode"] == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()

    import keras_bigmodels as kbm
    from keras_bigmodels.backend import keras

    start = time.perf_counter()
    index = 0
    if config["mode"] == "multi":
        if config.get("enable_fix", True):
            if not kbm.distribute.enable_multi_worker_keras_fit():
                raise RuntimeError("the multi-worker fit fix was not applied")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        index = strategy.cluster_resolver.task_id
        with strategy.scope():
            model = make_model(kbm, keras)
    elif config["mode"] == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = make_model(kbm, keras)
    else:
        model = make_model(kbm, keras)

    epochs_run = []
    crash = config.get("crash")

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            epochs_run.append(epoch)
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if (
                crash
                and crash["worker"] == index
                and crash["epoch"] == self.epoch
                and crash["batch"] == batch
            ):
                print(
                    f"worker {index}: exiting at epoch {self.epoch} "
                    f"batch {batch}",
                    flush=True,
                )
                os._exit(CRASH_EXIT_CODE)

    callbacks = [Record()]
    if config.get("attribution_dir") and index == 0:
        callbacks.append(
            kbm.callbacks.AttributionMonitor(
                lambda m: kbm.explain.LayerIntegratedGradients(m, "embedding"),
                make_data(2)[0],
                targets=1,
                save_dir=config["attribution_dir"],
                method_args={"n_steps": 8},
            )
        )
    if config.get("backup_dir"):
        callbacks.append(keras.callbacks.BackupAndRestore(config["backup_dir"]))
    fit_start = time.perf_counter()
    dataset = make_dataset(config["examples"], config["batch_size"])
    history = model.fit(
        dataset,
        epochs=config["epochs"],
        validation_data=dataset.take(2),
        callbacks=callbacks,
        shuffle=False,
        verbose=2,
    )
    fit_s = time.perf_counter() - fit_start
    result = {
        "index": index,
        "epochs_run": epochs_run,
        "loss": history.history["loss"],
        "val_loss": history.history["val_loss"],
        "weights": [w.tolist() for w in model.get_weights()],
        "evaluate": model.evaluate(dataset, verbose=0, return_dict=True),
        "predict": model.predict(dataset, verbose=0).tolist(),
        "fit_s": fit_s,
        "total_s": time.perf_counter() - start,
    }
    with open(config["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
