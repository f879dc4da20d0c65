"""Serving export (`kbm.export`).

`export_saved_model` writes a SavedModel with named `serving_default`
inputs and outputs, optional in-graph attribution signatures
(`ExplainSignature`), and only stock TensorFlow ops by default; the
`keras-bigmodels-saved-model-cli` command (`keras_bigmodels.export.cli`)
runs `saved_model_cli` with the op library loaded. See docs/serving.md.
"""

from keras_bigmodels.export.explain_signature import ExplainSignature
from keras_bigmodels.export.saved_model import (
    export_saved_model,
    find_fused_ops,
)

__all__ = ["ExplainSignature", "export_saved_model", "find_fused_ops"]
