"""`kbm.explain`: batched attribution methods for Keras models.

Every method is an object with one method,
`attribute(inputs, target=None, baselines=None, ...)`, returning NumPy
attributions shaped like the inputs (batch first); wrappers compose:
`NoiseTunnel(IntegratedGradients(model))`. Metrics live in
`kbm.explain.metrics`, pictures in `kbm.explain.plot`.
"""

from keras_bigmodels.explain import metrics, plot
from keras_bigmodels.explain._base import Attribution
from keras_bigmodels.explain.grad_cam import GradCam, GradCamPlusPlus
from keras_bigmodels.explain.gradient_shap import GradientShap
from keras_bigmodels.explain.integrated_gradients import IntegratedGradients
from keras_bigmodels.explain.kernel_shap import KernelShap
from keras_bigmodels.explain.layer_integrated_gradients import (
    LayerIntegratedGradients,
)
from keras_bigmodels.explain.lime import Lime
from keras_bigmodels.explain.noise_tunnel import NoiseTunnel
from keras_bigmodels.explain.occlusion import Occlusion
from keras_bigmodels.explain.saliency import Saliency

__all__ = [
    "Attribution",
    "GradCam",
    "GradCamPlusPlus",
    "GradientShap",
    "IntegratedGradients",
    "KernelShap",
    "LayerIntegratedGradients",
    "Lime",
    "NoiseTunnel",
    "Occlusion",
    "Saliency",
    "metrics",
    "plot",
]
