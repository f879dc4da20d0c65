"""`kbm.explain.Lime`: local linear surrogates over feature groups."""

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import Attribution, as_batch, baselines_like
from keras_bigmodels.explain._perturbation import (
    expand,
    feature_groups,
)


def weighted_ridge(z, y, weights, alpha):
    """Ridge regression with an unpenalised intercept; returns the slopes.

    `y` is `[n]` or `[n, k]` (k targets sharing the samples `z`)."""
    za = np.hstack([np.ones((len(z), 1)), z])
    penalty = alpha * np.eye(za.shape[1])
    penalty[0, 0] = 0.0
    w = weights[:, None]
    wy = weights[:, None] * y if y.ndim == 2 else weights * y
    beta = np.linalg.solve(za.T @ (w * za) + penalty, za.T @ wy)
    return beta[1:]


SAMPLING = ("count", "bernoulli")


class Lime(Attribution):
    """LIME: a weighted linear model of the target around each example.

    Samples `n_samples` binary vectors over the features (the first keeps
    every feature; the others switch off random subsets, see `sampling`),
    replaces switched-off features by the baseline, evaluates the model on
    all of them in batches, weights each sample by the exponential kernel
    of its cosine distance to the full example, and fits a ridge regression
    whose coefficients are the attributions (Ribeiro et al., 2016). The
    same samples serve every example of one `attribute` call (one solve
    for all). Deterministic under `seed`.

    Args:
        model: A Keras model or a callable on a batch.
        feature_mask: Integer group ids shaped like one example (e.g.
            superpixels), or None for one feature per element. Defaults to
            `None`.
        n_samples: Perturbed samples per example. Defaults to `1000`.
        kernel_width: Width of the kernel on cosine distance. Defaults to
            `0.25` (LIME's for images and text).
        alpha: Ridge penalty. Defaults to `1.0` (LIME's).
        sampling: `"count"` switches off a uniform number of features (1 to
            all; LIME's text explainer), `"bernoulli"` each feature with
            probability 1/2 (LIME's image explainer). Defaults to
            `"count"`.
        seed: Defaults to `0`.
        batch_size: Rows per model evaluation, or `"auto"` (inputs of up
            to 16 MiB per call). Defaults to `"auto"`.

    Example:

    ```python
    lime = kbm.explain.Lime(model, n_samples=2000)
    coefficients = lime.attribute(x_test[:5], target=0)
    ```

    Reference:
    - [Ribeiro et al., 2016](https://arxiv.org/abs/1602.04938)
    """

    def __init__(
        self,
        model,
        feature_mask=None,
        n_samples=1000,
        kernel_width=0.25,
        alpha=1.0,
        sampling="count",
        seed=0,
        batch_size="auto",
    ):
        super().__init__(model, batch_size)
        check_positive_int("n_samples", n_samples)
        if not kernel_width > 0:
            raise ValueError(
                f"kernel_width must be > 0. Received: {kernel_width}"
            )
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0. Received: alpha={alpha}")
        self.feature_mask = feature_mask
        self.n_samples = n_samples
        self.kernel_width = kernel_width
        if sampling not in SAMPLING:
            raise ValueError(
                f"sampling must be one of {SAMPLING}. "
                f"Received: sampling={sampling!r}"
            )
        self.alpha = alpha
        self.sampling = sampling
        self.seed = seed

    def samples(self, m, rng):
        """`[n_samples, m]` 0/1: the first all ones (the example itself),
        then random subsets of the features switched off."""
        n = self.n_samples
        z = np.ones((n, m), np.float32)
        if n > 1 and self.sampling == "bernoulli":
            z[1:] = rng.integers(0, 2, (n - 1, m))
        elif n > 1:
            off = rng.integers(1, m + 1, n - 1)
            ranks = rng.random((n - 1, m)).argsort(1).argsort(1)
            z[1:] = (ranks >= off[:, None]).astype(np.float32)
        return z

    def attribute(self, inputs, target=None, baselines=None, feature_mask=None):
        """Surrogate coefficients, expanded to the shape of `inputs`.

        Args:
            inputs: A batch.
            target: As in `IntegratedGradients`. Defaults to `None`.
            baselines: Values of switched-off features: None (zeros), a
                scalar, one example or one per example. Defaults to `None`.
            feature_mask: Overrides the constructor's. Defaults to `None`.
        """
        x = as_batch(inputs)
        b = baselines_like(baselines, x)
        mask = self.feature_mask if feature_mask is None else feature_mask
        groups, m = feature_groups(mask, x.shape[1:])
        sel = self.selector(target, x)
        rng = np.random.default_rng(self.seed)
        z = self.samples(m, rng)
        on = z.sum(1)
        distance = 1.0 - on / (np.sqrt(np.maximum(on, 1e-12)) * np.sqrt(m))
        weights = np.sqrt(np.exp(-(distance**2) / self.kernel_width**2))
        keep = z[:, groups].astype(bool)
        y = np.stack(
            [
                self.masked_values(x[i], b[i : i + 1], keep, i, sel)
                for i in range(len(x))
            ]
        )
        out = weighted_ridge(z, y.T, weights, self.alpha).T
        return expand(out, groups).astype(np.float32)
