"""`kbm.explain.GradientShap`: expected gradients over a background set."""

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import Attribution, as_batch, float_inputs


class GradientShap(Attribution):
    """Expected gradients: SHAP values from gradients and a background set.

    For each example, `n_samples` draws of a background example `b` and a
    point `b + a (x - b)` with `a ~ U(0, 1)` (plus optional Gaussian noise);
    the attribution is the mean of `grad(point) * (x - b)` (Erion et al.,
    2021; Lundberg and Lee's GradientExplainer). All draws are evaluated in
    batches. Deterministic under `seed`.

    Args:
        model: A Keras model or a callable on a batch.
        background: Background examples `[N, ...]`, or None to pass them as
            `baselines` to `attribute`. Defaults to `None`.
        n_samples: Draws per example. Defaults to `50`.
        stdevs: Noise added to the sampled points. Defaults to `0.0`.
        seed: Defaults to `0`.
        batch_size: Rows per model evaluation. Defaults to `256`.

    Example:

    ```python
    gs = kbm.explain.GradientShap(model, background=x_train[:100])
    attr = gs.attribute(x_test[:10])
    ```

    Reference:
    - [Lundberg and Lee, 2017](https://arxiv.org/abs/1705.07874)
    - [Erion et al., 2021](https://arxiv.org/abs/1906.10670)
    """

    def __init__(
        self,
        model,
        background=None,
        n_samples=50,
        stdevs=0.0,
        seed=0,
        batch_size=256,
    ):
        super().__init__(model, batch_size)
        check_positive_int("n_samples", n_samples)
        self.background = (
            None if background is None else as_batch(background, "background")
        )
        self.n_samples = n_samples
        self.stdevs = stdevs
        self.seed = seed

    def attribute(self, inputs, target=None, baselines=None):
        """Attributions shaped like `inputs`; `baselines` overrides the
        background set."""
        x = float_inputs(as_batch(inputs), "GradientShap")
        bg = (
            self.background
            if baselines is None
            else as_batch(baselines, "baselines")
        )
        if bg is None:
            raise ValueError(
                "GradientShap needs a background set: pass background= to "
                "the constructor or baselines= to attribute()"
            )
        if bg.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"The background examples must be shaped like the inputs "
                f"{x.shape[1:]}. Received: {bg.shape[1:]}"
            )
        sel = self.selector(target, x)
        rng = np.random.default_rng(self.seed)
        n, k = len(x), self.n_samples
        picks = bg[rng.integers(0, len(bg), n * k)]
        alphas = rng.uniform(0.0, 1.0, n * k).astype(np.float32)
        xr = np.repeat(x, k, axis=0)
        shape = (-1,) + (1,) * (x.ndim - 1)
        points = picks + alphas.reshape(shape) * (xr - picks)
        if self.stdevs:
            points = points + rng.normal(0.0, self.stdevs, points.shape)
        points = points.astype(np.float32)
        _, grads = self.gradients(points, np.repeat(np.arange(n), k), sel)
        return (grads * (xr - picks)).reshape(n, k, *x.shape[1:]).mean(1)
