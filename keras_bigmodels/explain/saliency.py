"""`kbm.explain.Saliency`: the gradient of the target w.r.t. the inputs."""

import numpy as np

from keras_bigmodels.explain._base import Attribution, as_batch, float_inputs


class Saliency(Attribution):
    """The gradient of the target w.r.t. the inputs (Simonyan et al., 2014).

    Args:
        model: A Keras model or a callable on a batch.
        abs: Return absolute gradients. Defaults to `True`.
        batch_size: Rows per model evaluation. Defaults to `256`.

    Example:

    ```python
    sal = kbm.explain.Saliency(model).attribute(x, target=3)
    ```

    Reference:
    - [Simonyan et al., 2014](https://arxiv.org/abs/1312.6034)
    """

    def __init__(self, model, abs=True, batch_size=256):  # noqa: A002
        super().__init__(model, batch_size)
        self.abs = abs

    def attribute(self, inputs, target=None, baselines=None):
        """Gradients shaped like `inputs` (`baselines` is unused)."""
        x = float_inputs(as_batch(inputs), "Saliency")
        sel = self.selector(target, x)
        _, grads = self.gradients(x, np.arange(len(x)), sel)
        return np.abs(grads) if self.abs else grads
