"""`kbm.callbacks`: thin Keras callbacks over `kbm.explain`.

They compute at epoch ends only, call the model with `training=False`, and
never change training state.
"""

from keras_bigmodels.callbacks.attribution_monitor import AttributionMonitor
from keras_bigmodels.callbacks.faithfulness_monitor import FaithfulnessMonitor

__all__ = ["AttributionMonitor", "FaithfulnessMonitor"]
