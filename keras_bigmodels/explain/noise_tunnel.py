"""`kbm.explain.NoiseTunnel`: SmoothGrad, SmoothGrad-squared, VarGrad."""

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import Attribution, as_batch

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
