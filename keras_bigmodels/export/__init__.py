"""Serving export (`kbm.export`)."""

from keras_bigmodels.export.saved_model import (
    export_saved_model,
    find_fused_ops,
)

__all__ = ["export_saved_model", "find_fused_ops"]
