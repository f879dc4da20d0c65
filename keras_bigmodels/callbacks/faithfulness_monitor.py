"""`kbm.callbacks.FaithfulnessMonitor`: faithfulness of explanations as
training metrics."""

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import keras
from keras_bigmodels.callbacks._common import bind_method, check_common, due
from keras_bigmodels.explain import metrics
from keras_bigmodels.explain._base import Attribution
from keras_bigmodels.explain.integrated_gradients import IntegratedGradients


class FaithfulnessMonitor(keras.callbacks.Callback):
    """Adds faithfulness metrics of explanations on fixed samples to `logs`.

    At the end of every `every_n_epochs`-th epoch (from the first) the
    method explains `samples` and the callback adds, averaged over samples:

    - `attr/deletion_auc`: area under the deletion curve (lower is better);
    - `attr/insertion_auc`: area under the insertion curve (higher is
      better);
    - `attr/completeness_delta`: mean `|sum(attr) - (f(x) - f(b))|`, for
      `IntegratedGradients` only.

    Other epochs get NaN for these keys, so every epoch's row has them.
    Put this callback before `CSVLogger`, `EarlyStopping` or
    `ModelCheckpoint` in the list so they see the values (e.g.
    `EarlyStopping(monitor="attr/deletion_auc", mode="min")`, with
    `every_n_epochs=1`). The model is only evaluated (`training=False`).

    Args:
        method: A `kbm.explain` method instance, or a class / callable that
            builds one from the model being trained.
        samples: The fixed batch to explain.
        targets: An int or one int per sample, or None for each sample's
            predicted class. Defaults to `None`.
        baselines: Values removed features take (and the attribution
            baselines of path methods). Defaults to `None` (zeros).
        every_n_epochs: Defaults to `1`.
        steps: Points on the deletion/insertion curves. Defaults to `10`.
        feature_mask: Remove whole feature groups (see
            `kbm.explain.metrics.deletion_curve`). Defaults to `None`.
        softmax: Score the deletion/insertion curves on the softmax of
            the model's outputs (for models that output logits, so the
            curves run between 0 and 1). Defaults to `False`.
        prefix: Prefix of the log keys. Defaults to `"attr/"`.
        method_args: Extra keyword arguments for `attribute`. Defaults to
            `None`.

    Example:

    ```python
    faith = kbm.callbacks.FaithfulnessMonitor(
        kbm.explain.IntegratedGradients, x_val[:16])
    model.fit(x, y, epochs=5,
              callbacks=[faith, keras.callbacks.CSVLogger("log.csv")])
    ```
    """

    def __init__(
        self,
        method,
        samples,
        targets=None,
        baselines=None,
        every_n_epochs=1,
        steps=10,
        feature_mask=None,
        softmax=False,
        prefix="attr/",
        method_args=None,
    ):
        super().__init__()
        samples, targets = check_common(
            method, samples, targets, every_n_epochs
        )
        self.method = method
        self.samples = samples
        self.targets = targets
        self.baselines = baselines
        self.every_n_epochs = every_n_epochs
        self.steps = steps
        self.feature_mask = feature_mask
        self.softmax = softmax
        self.prefix = prefix
        self._probabilities = None
        self.method_args = dict(method_args or {})
        self._bound = None

    def _keys(self, method):
        keys = ["deletion_auc", "insertion_auc"]
        if isinstance(method, IntegratedGradients):
            keys.append("completeness_delta")
        return [self.prefix + k for k in keys]

    def measure(self):
        """The metrics now, as a dict (what `on_epoch_end` adds to logs)."""
        if self._bound is None:
            self._bound = bind_method(self.method, self.model)
        method = self._bound
        targets = self.targets
        if targets is None and hasattr(method, "selector"):
            targets = method.selector(None, self.samples).indices
        args = dict(self.method_args)
        if self.baselines is not None and "baselines" not in args:
            args["baselines"] = self.baselines
        attr = method.attribute(self.samples, target=targets, **args)
        if isinstance(attr, tuple):
            attr = attr[0]
        attr = np.asarray(attr, np.float32)
        scorer = method if hasattr(method, "target_values") else self.model
        curve_scorer = self._curve_scorer(method) if self.softmax else scorer
        common = dict(baselines=self.baselines, target=targets)
        out = {
            f"{self.prefix}{name}_auc": curve(
                curve_scorer,
                self.samples,
                attr,
                steps=self.steps,
                feature_mask=self.feature_mask,
                **common,
            ).auc.mean()
            for name, curve in (
                ("deletion", metrics.deletion_curve),
                ("insertion", metrics.insertion_curve),
            )
        }
        if isinstance(method, IntegratedGradients):
            out[self.prefix + "completeness_delta"] = np.abs(
                metrics.completeness_delta(scorer, self.samples, attr, **common)
            ).mean()
        return {k: float(v) for k, v in out.items()}

    def _curve_scorer(self, method):
        if self._probabilities is None:
            base = (
                method
                if isinstance(method, Attribution)
                else Attribution(getattr(method, "model", None) or self.model)
            )

            def probabilities(x):
                return tf.nn.softmax(tf.cast(base._call(x), tf.float32))

            self._probabilities = Attribution(probabilities, batch_size="auto")
        return self._probabilities

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if due(epoch, self.every_n_epochs):
            logs.update(self.measure())
        else:
            if self._bound is None:
                self._bound = bind_method(self.method, self.model)
            logs.update({k: float("nan") for k in self._keys(self._bound)})
