"""`kbm.explain.KernelShap`: Shapley values by weighted linear regression."""

import itertools
import math

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import Attribution, as_batch
from keras_bigmodels.explain._perturbation import (
    expand,
    feature_groups,
)


def shapley_kernel_weight(m, size):
    """Lundberg and Lee's kernel weight of a coalition of `size` of `m`."""
    return (m - 1) / (math.comb(m, size) * size * (m - size))


def constrained_wls(z, y, weights, total):
    """Least squares `y ~ z @ phi` (weighted) with `sum(phi) = total`.

    `y` is `[n]` or `[n, k]` (k examples sharing the coalitions `z`), and
    `total` a scalar or `[k]`. Eliminates the last feature:
    `phi_M = total - sum(phi_<M)`. Returns `[m]` or `[m, k]`.
    """
    y = np.asarray(y, np.float64)
    total = np.asarray(total, np.float64)
    m = z.shape[1]
    if m == 1:
        return np.broadcast_to(total, (1,) + total.shape).copy()
    a = z[:, :-1] - z[:, -1:]
    t = y - (z[:, -1:] * total if y.ndim == 2 else z[:, -1] * total)
    w = weights[:, None] if y.ndim == 2 else weights
    gram = a.T @ (a * weights[:, None])
    rhs = a.T @ (t * w)
    try:
        # The normal equations: m - 1 unknowns, cheap for any sample count.
        phi = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:  # Too few distinct coalitions.
        sw = np.sqrt(weights)
        lhs = a * sw[:, None]
        phi, *_ = np.linalg.lstsq(
            lhs, t * (sw[:, None] if y.ndim == 2 else sw), rcond=None
        )
    return np.concatenate([phi, (total - phi.sum(0))[None]], axis=0)


class KernelShap(Attribution):
    """Kernel SHAP: Shapley values of features (or groups of features).

    A coalition `z` of features is evaluated by taking those features from
    the example and the rest from each background example, averaging the
    model's output over the background. Shapley values are the solution of
    a weighted linear regression of those values on `z` with the Shapley
    kernel weights, constrained to sum to `f(x) - E[f(background)]`
    (Lundberg and Lee, 2017). With at most `max_exact_features` features
    every coalition is enumerated and the result is the exact Shapley value;
    with more, `n_samples` coalitions are sampled in proportion to the
    kernel (coalition sizes first, each subset with its complement); the
    same coalitions serve every example of one `attribute` call, so one
    least-squares solve covers them all. Deterministic under `seed`. The
    model is evaluated on all coalitions and background rows in batches of
    `batch_size` rows.

    Args:
        model: A Keras model or a callable on a batch.
        background: Background examples `[N, ...]` (keep N small, e.g. 10
            k-means centres), or None to pass them as `baselines`.
            Defaults to `None`.
        feature_mask: Integer group ids shaped like one example (e.g.
            superpixels), or None for one feature per element. Defaults to
            `None`.
        n_samples: Coalitions to sample above `max_exact_features`; `"auto"`
            is `2 * M + 2048`. Defaults to `"auto"`.
        max_exact_features: Enumerate all coalitions up to this many
            features. Defaults to `12`.
        seed: Defaults to `0`.
        batch_size: Rows per model evaluation, or `"auto"` (inputs of up
            to 16 MiB per call). Defaults to `"auto"`.

    Example:

    ```python
    ks = kbm.explain.KernelShap(model, background=x_train[:10])
    shap_values = ks.attribute(x_test[:5], target=1)
    ```

    Reference:
    - [Lundberg and Lee, 2017](https://arxiv.org/abs/1705.07874)
    """

    def __init__(
        self,
        model,
        background=None,
        feature_mask=None,
        n_samples="auto",
        max_exact_features=12,
        seed=0,
        batch_size="auto",
    ):
        super().__init__(model, batch_size)
        if n_samples != "auto":
            check_positive_int("n_samples", n_samples)
        self.background = (
            None if background is None else as_batch(background, "background")
        )
        self.feature_mask = feature_mask
        self.n_samples = n_samples
        self.max_exact_features = max_exact_features
        self.seed = seed

    def coalitions(self, m, rng, n_samples=None):
        """(coalitions [n, m] of 0/1, regression weights [n])."""
        if m <= self.max_exact_features:
            rows = np.array(
                [
                    c
                    for c in itertools.product((0, 1), repeat=m)
                    if 0 < sum(c) < m
                ],
                dtype=np.float32,
            ).reshape(-1, m)
            weights = np.array(
                [shapley_kernel_weight(m, int(r.sum())) for r in rows]
            )
            return rows, weights
        n = n_samples or self.n_samples
        n = 2 * m + 2048 if n == "auto" else n
        sizes = np.arange(1, m)
        p = 1.0 / (sizes * (m - sizes))
        p /= p.sum()
        half = (n + 1) // 2
        chosen = rng.choice(sizes, size=half, p=p)
        # A uniformly random subset of each size: the `size` smallest of
        # `m` uniform keys.
        ranks = rng.random((half, m)).argsort(1).argsort(1)
        first = (ranks < chosen[:, None]).astype(np.float32)
        rows = np.empty((2 * half, m), np.float32)
        rows[0::2], rows[1::2] = first, 1 - first  # Paired with complements.
        return rows[:n], np.ones(n)

    def attribute(
        self,
        inputs,
        target=None,
        baselines=None,
        feature_mask=None,
        n_samples=None,
    ):
        """Shapley values shaped like `inputs`.

        Args:
            inputs: A batch.
            target: As in `IntegratedGradients`. Defaults to `None`.
            baselines: The background set `[N, ...]` (or one example),
                overriding the constructor's. Defaults to `None`.
            feature_mask: Overrides the constructor's. Defaults to `None`.
            n_samples: Overrides the constructor's. Defaults to `None`.
        """
        x = as_batch(inputs)
        bg = (
            self.background
            if baselines is None
            else as_batch(baselines, "baselines")
        )
        if bg is None:
            raise ValueError(
                "KernelShap needs a background set: pass background= to the "
                "constructor or baselines= to attribute()"
            )
        if bg.shape == x.shape[1:]:
            bg = bg[None]
        if bg.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"baselines must be shaped like the inputs' examples "
                f"{x.shape[1:]}. Received: {bg.shape[1:]}"
            )
        mask = self.feature_mask if feature_mask is None else feature_mask
        groups, m = feature_groups(mask, x.shape[1:])
        sel = self.selector(target, x)
        rng = np.random.default_rng(self.seed)
        z, weights = self.coalitions(m, rng, n_samples)
        base_values = (
            self.target_values(
                np.repeat(bg, len(x), axis=0),
                np.tile(np.arange(len(x)), len(bg)),
                sel,
            )
            .reshape(len(bg), len(x))
            .mean(0)
        )
        full_values = self.target_values(x, np.arange(len(x)), sel)
        keep = z[:, groups].astype(bool)  # [n, *example_shape]
        values = np.stack(
            [self.masked_values(x[i], bg, keep, i, sel) for i in range(len(x))]
        )
        phis = constrained_wls(
            z,
            (values - base_values[:, None]).T,
            weights,
            full_values - base_values,
        ).T
        self.expected_value = base_values
        return expand(phis, groups).astype(np.float32)
