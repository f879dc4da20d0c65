"""`kbm.distribute`: multi-worker training with Keras's `fit`.

`tf.distribute.MirroredStrategy` (one machine, several devices) needs
nothing from keras_bigmodels. For `tf.distribute.MultiWorkerMirroredStrategy`
(several processes or machines), Keras 3.15's `fit` fails with more than
one worker (keras-team/keras#20585) and its `BackupAndRestore` lets every
worker write the same files; `enable_multi_worker_keras_fit()` applies a
small fix, scoped to that strategy, on the Keras versions it was tested on
(a no-op on tf-keras, which works as it is). It is explicit, not
done at `import keras_bigmodels`: importing a layer library should not
change Keras's trainer, and the call is where a warning about an untested
Keras version reaches the people who need it.

`tf_config` and `local_workers` write the `TF_CONFIG` each worker reads.
See docs/distributed.md.
"""

from keras_bigmodels.distribute.cluster import local_workers, tf_config
from keras_bigmodels.distribute.multi_worker import (
    TESTED_KERAS_VERSIONS,
    MultiWorkerCompatWarning,
    enable_multi_worker_keras_fit,
)

__all__ = [
    "TESTED_KERAS_VERSIONS",
    "MultiWorkerCompatWarning",
    "enable_multi_worker_keras_fit",
    "local_workers",
    "tf_config",
]
