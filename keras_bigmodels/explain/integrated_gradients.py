"""`kbm.explain.IntegratedGradients` and its integration rules."""

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import (
    Attribution,
    as_batch,
    baselines_like,
    float_inputs,
)

METHODS = (
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "gausslegendre",
)


def integration_points(method, n_steps):
    """(alphas, weights) on [0, 1] for the path integral."""
    check_positive_int("n_steps", n_steps)
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n_steps)
        return (nodes + 1) / 2, w / 2
    if method == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError(
                "riemann_trapezoid needs n_steps >= 2. "
                f"Received: n_steps={n_steps}"
            )
        alphas = np.linspace(0.0, 1.0, n_steps)
        w = np.full(n_steps, 1.0 / (n_steps - 1))
        w[[0, -1]] /= 2
        return alphas, w
    step = 1.0 / n_steps
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in offsets:
        raise ValueError(
            f"method must be one of {METHODS}. Received: method={method!r}"
        )
    return (np.arange(n_steps) + offsets[method]) * step, np.full(n_steps, step)


class IntegratedGradients(Attribution):
    """Integrated Gradients (Sundararajan et al., 2017).

    `(x - b) * integral_0^1 grad f(b + a (x - b)) da`, with the integral
    approximated by a Riemann sum or Gauss-Legendre quadrature. Every
    interpolated point of a chunk of examples is evaluated in one batched,
    `tf.function`-compiled forward and backward pass. The attributions of
    an example sum to `f(x) - f(b)` up to the approximation error
    (`return_convergence_delta=True` returns that error).

    Args:
        model: A Keras model or a callable on a batch.
        batch_size: Model rows per evaluation. Defaults to `256`.

    Example:

    ```python
    ig = kbm.explain.IntegratedGradients(model)
    attr, delta = ig.attribute(x, target=7, n_steps=64,
                               return_convergence_delta=True)
    ```

    Reference:
    - [Sundararajan et al., 2017](https://arxiv.org/abs/1703.01365)
    """

    def attribute(
        self,
        inputs,
        target=None,
        baselines=None,
        n_steps=50,
        method="gausslegendre",
        return_convergence_delta=False,
    ):
        """Attributions shaped like `inputs`.

        Args:
            inputs: A batch.
            target: Output to explain: None (the predicted class, or the
                only output), an int, one int per example, or a callable on
                the outputs. Defaults to `None`.
            baselines: None (zeros), a scalar, one example, or one per
                example. Defaults to `None`.
            n_steps: Integration points. Defaults to `50`.
            method: One of "riemann_trapezoid", "riemann_left",
                "riemann_right", "riemann_middle", "gausslegendre".
                Defaults to `"gausslegendre"`.
            return_convergence_delta: Also return, per example,
                `sum(attributions) - (f(x) - f(b))`. Defaults to `False`.
        """
        x = float_inputs(as_batch(inputs), "IntegratedGradients")
        b = baselines_like(baselines, x)
        alphas, weights = integration_points(method, n_steps)
        sel = self.selector(target, x)
        integral = self.path_gradients(x, b, alphas, weights, sel)
        attributions = (x - b) * integral
        if not return_convergence_delta:
            return attributions
        rows = np.arange(len(x))
        gap = self.target_values(x, rows, sel) - self.target_values(
            b, rows, sel
        )
        delta = attributions.reshape(len(x), -1).sum(1) - gap
        return attributions, delta
