"""`kbm.explain.NoiseTunnel` and `kbm.explain.GradientShap`."""

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import Attribution, as_batch, float_inputs

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


class NoiseTunnel:
    """Averages another method's attributions over noisy copies of the input.

    Wraps any `kbm.explain` method: `NoiseTunnel(IntegratedGradients(m))`.
    Each example gets `n_samples` copies with Gaussian noise of standard
    deviation `stdevs`; all copies go through the wrapped method in one
    batched call. `"smoothgrad"` returns the mean attribution,
    `"smoothgrad_sq"` the mean of squares, `"vargrad"` the variance.
    Targets are resolved on the clean inputs (the predicted class of the
    clean example, not of each noisy copy).

    Args:
        method: A `kbm.explain` method instance.
        nt_type: `"smoothgrad"`, `"smoothgrad_sq"` or `"vargrad"`.
            Defaults to `"smoothgrad"`.
        n_samples: Noisy copies per example. Defaults to `10`.
        stdevs: Noise standard deviation (absolute). Defaults to `0.1`.
        seed: Seed of the noise. Defaults to `0`.

    Example:

    ```python
    sg = kbm.explain.NoiseTunnel(kbm.explain.Saliency(model), n_samples=25)
    attr = sg.attribute(images, target=labels)
    ```

    Reference:
    - [Smilkov et al., 2017](https://arxiv.org/abs/1706.03825)
    - [Adebayo et al., 2018](https://arxiv.org/abs/1810.03307) (VarGrad)
    """

    def __init__(
        self, method, nt_type="smoothgrad", n_samples=10, stdevs=0.1, seed=0
    ):
        if not hasattr(method, "attribute"):
            raise ValueError(
                "method must be a kbm.explain method. "
                f"Received: {type(method).__name__}"
            )
        if nt_type not in NT_TYPES:
            raise ValueError(
                f"nt_type must be one of {NT_TYPES}. "
                f"Received: nt_type={nt_type!r}"
            )
        check_positive_int("n_samples", n_samples)
        if not stdevs >= 0:
            raise ValueError(f"stdevs must be >= 0. Received: stdevs={stdevs}")
        self.method = method
        self.nt_type = nt_type
        self.n_samples = n_samples
        self.stdevs = stdevs
        self.seed = seed

    @property
    def model(self):
        return self.method.model

    def attribute(self, inputs, target=None, baselines=None, **method_args):
        x = as_batch(inputs)
        n, k = len(x), self.n_samples
        if target is None and isinstance(self.method, Attribution):
            # The predicted class of the clean example, for every copy.
            target = self.method.selector(None, x).indices
        rng = np.random.default_rng(self.seed)
        noisy = np.repeat(x, k, axis=0) + rng.normal(
            0.0, self.stdevs, (n * k, *x.shape[1:])
        ).astype(np.float32)
        if target is not None and not callable(target):
            target = np.repeat(np.broadcast_to(np.asarray(target), (n,)), k)
        if baselines is not None:
            b = np.asarray(baselines, np.float32)
            if b.shape == x.shape:
                baselines = np.repeat(b, k, axis=0)
        out = self.method.attribute(
            noisy, target=target, baselines=baselines, **method_args
        )
        if isinstance(out, tuple):
            out = out[0]
        out = np.asarray(out).reshape(n, k, *np.asarray(out).shape[1:])
        if self.nt_type == "smoothgrad":
            return out.mean(1)
        if self.nt_type == "smoothgrad_sq":
            return (out**2).mean(1)
        return out.var(1)


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
