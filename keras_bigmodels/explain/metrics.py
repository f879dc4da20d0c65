"""`kbm.explain.metrics`: how faithful and how stable attributions are.

- `completeness_delta`: `sum(attributions) - (f(x) - f(baseline))`, the
  error of a path method such as Integrated Gradients.
- `deletion_curve` / `insertion_curve`: the target as the most important
  features are removed from the input (or inserted into the baseline),
  with the area under the curve (Petsiuk et al., 2018). Faithful
  attributions give a low deletion AUC and a high insertion AUC.
- `sensitivity_max`: the largest change of the attributions under small
  input noise (Yeh et al., 2019).
- `model_randomization_check`: the sanity check of Adebayo et al. (2018):
  attributions must change when the model's weights are randomised.
"""

import collections
import weakref

import numpy as np

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.backend import keras
from keras_bigmodels.explain._base import Attribution, as_batch, baselines_like

Curve = collections.namedtuple("Curve", ["fractions", "scores", "auc"])
Curve.__doc__ = """A deletion or insertion curve.

Attributes:
    fractions: `[steps + 1]` fraction of features removed (or inserted).
    scores: `[batch, steps + 1]` the target at each fraction.
    auc: `[batch]` area under each example's curve (trapezoid rule).
"""

RandomizationResult = collections.namedtuple(
    "RandomizationResult", ["layers", "rank_correlation"]
)
RandomizationResult.__doc__ = """The model-randomisation sanity check.

Attributes:
    layers: Names of the layers randomised, cumulatively from the output
        down (cascading randomisation).
    rank_correlation: `[len(layers), batch]` Spearman correlation between
        the absolute attributions of the trained model and of the model
        with those layers randomised. Near 1 means the method ignores the
        model (it fails the check); faithful methods drop towards 0.
"""


_SCORERS = weakref.WeakKeyDictionary()


def _scorer(model):
    """An `Attribution` evaluating `model` (one per model, so its compiled
    functions are reused across calls)."""
    if isinstance(model, Attribution):
        return model
    try:
        scorer = _SCORERS.get(model)
    except TypeError:  # Not weak-referenceable.
        return Attribution(model, batch_size="auto")
    if scorer is None:
        # Through a weak proxy: the cache must not keep the model alive.
        scorer = Attribution(weakref.proxy(model), batch_size="auto")
        _SCORERS[model] = scorer
    return scorer


def _check_same_shape(attributions, x):
    a = np.asarray(attributions, np.float32)
    if a.shape != x.shape:
        raise ValueError(
            f"attributions must be shaped like the inputs {x.shape}. "
            f"Received: attributions.shape={a.shape}"
        )
    return a


def completeness_delta(
    model, inputs, attributions, baselines=None, target=None
):
    """`sum(attributions) - (f(inputs) - f(baselines))` per example.

    Args:
        model: The Keras model (or a `kbm.explain` method) explained.
        inputs: A batch.
        attributions: Attributions shaped like `inputs`.
        baselines: As passed to the method. Defaults to `None` (zeros).
        target: As passed to the method. Defaults to `None`.

    Returns:
        `[batch]` NumPy array.

    Example:

    ```python
    attr = kbm.explain.IntegratedGradients(model).attribute(x, target=3)
    delta = kbm.explain.metrics.completeness_delta(model, x, attr, target=3)
    ```
    """
    x = as_batch(inputs)
    a = _check_same_shape(attributions, x)
    b = baselines_like(baselines, x)
    scorer = _scorer(model)
    sel = scorer.selector(target, x)
    rows = np.arange(len(x))
    gap = scorer.target_values(x, rows, sel) - scorer.target_values(
        b, rows, sel
    )
    return a.reshape(len(x), -1).sum(1) - gap


def _curve(
    model, inputs, attributions, baselines, target, steps, insert, feature_mask
):
    x = as_batch(inputs)
    a = _check_same_shape(attributions, x)
    b = baselines_like(baselines, x)
    check_positive_int("steps", steps)
    scorer = _scorer(model)
    sel = scorer.selector(target, x)
    n = len(x)
    if feature_mask is not None:
        from keras_bigmodels.explain._perturbation import feature_groups

        groups, m = feature_groups(feature_mask, x.shape[1:])
        groups = groups.reshape(-1)
        scores = np.stack(
            [np.bincount(groups, a[i].reshape(-1), m) for i in range(n)]
        )
    else:
        groups, m = None, int(np.prod(x.shape[1:]))
        scores = a.reshape(n, -1)
    order = np.argsort(-scores, axis=1, kind="stable")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * m).astype(int)
    rows = np.empty((n, steps + 1) + x.shape[1:], np.float32)
    for i in range(n):
        start, end = (b[i], x[i]) if insert else (x[i], b[i])
        for j, c in enumerate(counts):
            chosen = np.zeros(m, bool)
            chosen[order[i, :c]] = True
            if groups is not None:
                chosen = chosen[groups]
            chosen = chosen.reshape(x.shape[1:])
            rows[i, j] = np.where(chosen, end, start)
    values = scorer.target_values(
        rows.reshape((-1,) + x.shape[1:]),
        np.repeat(np.arange(n), steps + 1),
        sel,
    ).reshape(n, steps + 1)
    auc = ((values[:, 1:] + values[:, :-1]) * np.diff(fractions) / 2).sum(1)
    return Curve(fractions, values, auc)


def deletion_curve(
    model,
    inputs,
    attributions,
    baselines=None,
    target=None,
    steps=20,
    feature_mask=None,
):
    """The target as the highest-attributed features are replaced by the
    baseline, in `steps` equal steps (all evaluated in batches).

    Args:
        model: The Keras model (or a `kbm.explain` method) explained.
        inputs: A batch.
        attributions: Attributions shaped like `inputs`.
        baselines: Replacement values. Defaults to `None` (zeros).
        target: As passed to the method. Defaults to `None`.
        steps: Points on the curve after the start. Defaults to `20`.
        feature_mask: Integer group ids shaped like one example: rank and
            remove whole groups (attributions summed per group). Defaults
            to `None` (each element).

    Returns:
        A `Curve(fractions, scores, auc)`; lower AUC is more faithful.

    Example:

    ```python
    curve = kbm.explain.metrics.deletion_curve(model, x, attr, target=y)
    print(curve.auc.mean())
    ```

    Reference:
    - [Petsiuk et al., 2018](https://arxiv.org/abs/1806.07421)
    """
    return _curve(
        model,
        inputs,
        attributions,
        baselines,
        target,
        steps,
        False,
        feature_mask,
    )


def insertion_curve(
    model,
    inputs,
    attributions,
    baselines=None,
    target=None,
    steps=20,
    feature_mask=None,
):
    """The target as the highest-attributed features are inserted into the
    baseline. Arguments as in `deletion_curve`; higher AUC is more faithful.

    Reference:
    - [Petsiuk et al., 2018](https://arxiv.org/abs/1806.07421)
    """
    return _curve(
        model,
        inputs,
        attributions,
        baselines,
        target,
        steps,
        True,
        feature_mask,
    )


def sensitivity_max(
    method,
    inputs,
    target=None,
    n_perturb=10,
    radius=0.02,
    seed=0,
    **method_args,
):
    """Max over `n_perturb` uniform perturbations of size `radius` of
    `||attr(x + e) - attr(x)|| / ||attr(x)||` per example.

    Args:
        method: A `kbm.explain` method instance.
        inputs: A batch.
        target: Defaults to `None` (the clean example's predicted class,
            used for every perturbed copy).
        n_perturb: Perturbations per example. Defaults to `10`.
        radius: Half-width of the uniform noise. Defaults to `0.02`.
        seed: Defaults to `0`.
        **method_args: Passed to `method.attribute`.

    Returns:
        `[batch]` NumPy array (0 means perfectly stable).

    Reference:
    - [Yeh et al., 2019](https://arxiv.org/abs/1901.09392)
    """
    x = as_batch(inputs)
    check_positive_int("n_perturb", n_perturb)
    if target is None and isinstance(method, Attribution):
        target = method.selector(None, x).indices
    base = np.asarray(method.attribute(x, target=target, **method_args))
    n = len(x)
    rng = np.random.default_rng(seed)
    noisy = np.repeat(x, n_perturb, axis=0) + rng.uniform(
        -radius, radius, (n * n_perturb,) + x.shape[1:]
    ).astype(np.float32)
    t = target
    if t is not None and not callable(t):
        t = np.repeat(np.broadcast_to(np.asarray(t), (n,)), n_perturb)
    out = np.asarray(method.attribute(noisy, target=t, **method_args))
    diff = out.reshape(n, n_perturb, -1) - base.reshape(n, 1, -1)
    norm = np.linalg.norm(base.reshape(n, -1), axis=1)
    return (
        np.linalg.norm(diff, axis=2).max(1) / np.maximum(norm, 1e-12)
    ).astype(np.float32)


def _ranks(a):
    r = np.empty_like(a, dtype=np.float64)
    order = np.argsort(a, axis=1, kind="stable")
    np.put_along_axis(
        r,
        order,
        np.arange(a.shape[1], dtype=np.float64)[None].repeat(len(a), 0),
        axis=1,
    )
    return r


def spearman(a, b):
    """Per-row Spearman rank correlation of two `[batch, ...]` arrays."""
    ra = _ranks(np.asarray(a).reshape(len(a), -1))
    rb = _ranks(np.asarray(b).reshape(len(b), -1))
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return (ra * rb).sum(1) / np.maximum(den, 1e-12)


def model_randomization_check(
    method_fn, model, inputs, target=None, seed=0, **method_args
):
    """Cascading model-parameter randomisation (Adebayo et al., 2018).

    Clones the model, then, from the output layer down, re-draws each
    weighted layer's weights (normal with each weight's own standard
    deviation, keeping its mean) and compares the method's attributions
    with those of the trained model. The original model is not touched.

    Args:
        method_fn: Callable building the method for a model, e.g.
            `kbm.explain.IntegratedGradients` or
            `lambda m: kbm.explain.GradCam(m, "conv")`.
        model: A functional or Sequential Keras model.
        inputs: A batch.
        target: Defaults to `None` (the trained model's predicted class,
            kept for every randomised model).
        seed: Defaults to `0`.
        **method_args: Passed to `attribute`.

    Returns:
        A `RandomizationResult(layers, rank_correlation)`.

    Example:

    ```python
    check = kbm.explain.metrics.model_randomization_check(
        kbm.explain.IntegratedGradients, model, x[:8])
    print(dict(zip(check.layers, check.rank_correlation.mean(1))))
    ```

    Reference:
    - [Adebayo et al., 2018](https://arxiv.org/abs/1810.03292)
    """
    x = as_batch(inputs)
    method = method_fn(model)
    if target is None and isinstance(method, Attribution):
        target = method.selector(None, x).indices
    base = np.abs(np.asarray(method.attribute(x, target=target, **method_args)))
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    names, corr = [], []
    for layer in reversed(clone.layers):
        weights = layer.get_weights()
        if not weights:
            continue
        layer.set_weights(
            [
                (
                    w.mean() + (w.std() or 0.05) * rng.standard_normal(w.shape)
                ).astype(w.dtype)
                for w in weights
            ]
        )
        attr = np.abs(
            np.asarray(
                method_fn(clone).attribute(x, target=target, **method_args)
            )
        )
        names.append(layer.name)
        corr.append(spearman(base, attr))
    return RandomizationResult(names, np.array(corr))
