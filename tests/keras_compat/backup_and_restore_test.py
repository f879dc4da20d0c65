"""Keras's `callbacks.backup_and_restore_test` with kbm's BackupAndRestore."""

import keras_bigmodels as kbm
from tests.keras_compat import _harness

KERAS_MODULE = "keras.src.callbacks.backup_and_restore_test"
SUBSTITUTIONS = {"callbacks.BackupAndRestore": kbm.callbacks.BackupAndRestore}

globals().update(_harness.load(KERAS_MODULE, SUBSTITUTIONS))
