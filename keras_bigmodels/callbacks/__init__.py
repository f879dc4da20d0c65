"""`kbm.callbacks`: Keras callbacks.

`AttributionMonitor` and `FaithfulnessMonitor` are thin callbacks over
`kbm.explain`: they compute at epoch ends only, call the model with
`training=False`, and never change training state. `BackupAndRestore` is
Keras's fault-tolerance callback with checkpoints that survive a kill
during a save.
"""

from keras_bigmodels.callbacks.attribution_monitor import AttributionMonitor
from keras_bigmodels.callbacks.backup_and_restore import BackupAndRestore
from keras_bigmodels.callbacks.faithfulness_monitor import FaithfulnessMonitor

__all__ = ["AttributionMonitor", "BackupAndRestore", "FaithfulnessMonitor"]
