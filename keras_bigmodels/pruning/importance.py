"""Gradient-based importance of attention heads and hidden units.

Michel et al. (2019) score a head `h` by `|dL/dm_h|`, the gradient of the
loss with respect to a multiplicative mask `m_h = 1` on the head's output.
The mask scales the head's rows of the output projection's input, so the
same number is `sum(W_h * dL/dW_h)` over the output projection's kernel
rows `W_h` of that head: no hook or mask enters the model, and its normal
path is not slowed. Units of a feed-forward net are scored the same way on
the rows of the projection that reads them.
"""

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.pruning import _sites


def head_importance(model, data, loss=None, steps=None):
    """Scores every attention head of `model` by the loss's gradient.

    For each batch, `|dL/dm_h|` with `m_h` a mask of ones on head `h`'s
    output (before the output projection); the scores are summed over the
    batches (the absolute value is taken per batch, per example with batch
    size 1).

    Args:
        model: A model `kbm.pruning.prune_heads` accepts.
        data: A `tf.data.Dataset` or list of batches; a dict, array or
            tensor, or a tuple `(x, y)`, is one batch. Each batch is `x` or
            `(x, y)` / `(x, y, sample_weight)`.
        loss: With labels: a Keras loss (name, object or function of
            `(y_true, y_pred)`); `None` uses the model's compiled loss.
            Without labels, `None` scores by half the mean squared output
            (how much each head moves the output). Defaults to `None`.
        steps: Use at most this many batches. Defaults to `None` (all).

    Returns:
        `{layer name: float64 array [heads]}`, the names `prune_heads`
        takes. For grouped-query attention one score per key/value head
        (its group's query heads summed).

    Example:

    ```python
    scores = kbm.pruning.head_importance(model, dataset.take(8))
    ```

    Reference:
    - [Michel et al., 2019](https://arxiv.org/abs/1905.10650)
    """
    heads, _, _ = _sites.find_sites(model)
    return _importance(model, data, heads, "attention layers", loss, steps)


def neuron_importance(model, data, loss=None, steps=None):
    """Scores every feed-forward (or Dense) unit of `model`.

    `|dL/dm_j|` with `m_j` a mask of ones on unit `j`'s activation, summed
    over the batches as in `head_importance` (equal to
    `|sum(activation * gradient)|` per batch).

    Args:
        model: A model `kbm.pruning.prune_neurons` accepts.
        data: As in `head_importance`.
        loss: As in `head_importance`. Defaults to `None`.
        steps: Use at most this many batches. Defaults to `None` (all).

    Returns:
        `{layer name: float64 array [units]}`, the names `prune_neurons`
        takes.
    """
    _, units, _ = _sites.find_sites(model)
    return _importance(model, data, units, "prunable units", loss, steps)


def _is_batch(data):
    return isinstance(data, (dict, np.ndarray, tf.Tensor, tuple))


def batches(data, steps=None):
    """Yields `(x, y or None, sample_weight or None)` batches."""
    if data is None:
        raise ValueError("data must hold at least one batch. Received: None")
    items = [data] if _is_batch(data) else data
    count = 0
    for item in items:
        if steps is not None and count >= steps:
            break
        if isinstance(item, (tuple, list)):
            item = tuple(item) + (None, None)
            yield item[0], item[1], item[2]
        else:
            yield item, None, None
        count += 1
    if count == 0:
        raise ValueError("data must hold at least one batch; it is empty.")


def resolve_loss(model, loss):
    """A function `(y_true, y_pred) -> scalar`, or None (no labels)."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            return None
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if not callable(loss):
        raise ValueError(
            f"loss must be a Keras loss or a function. Received: {loss!r}"
        )
    return loss


def _output_energy(y_pred):
    parts = [
        tf.reduce_mean(tf.square(tf.cast(p, tf.float32)))
        for p in tf.nest.flatten(y_pred)
    ]
    return 0.5 * tf.add_n(parts)


def _importance(model, data, sites, what, loss, steps):
    if not sites:
        raise ValueError(
            f"{model.name!r} has no {what} to score (supported: "
            "kbm.models.BertEncoder, kbm.layers transformer blocks and "
            "attention layers, Keras MultiHeadAttention, Dense stacks)."
        )
    names = list(sites)
    kernels = [sites[n].row_kernel() for n in names]
    watched = [k if IS_LEGACY_KERAS else k.value for k in kernels]
    loss_fn = resolve_loss(model, loss)

    @tf.function(reduce_retracing=True)
    def step(x, y, sample_weight, with_labels):
        with tf.GradientTape() as tape:
            tape.watch(watched)
            y_pred = model(x, training=False)
            if with_labels:
                args = (y, y_pred)
                if sample_weight is not None:
                    args += (sample_weight,)
                # A loss function (not a Loss object) may return one
                # value per example: average them.
                value = tf.reduce_mean(loss_fn(*args))
            else:
                value = _output_energy(y_pred)
        grads = tape.gradient(value, watched)
        return [
            tf.abs(
                sites[n].reduce_rows(
                    tf.cast(tf.convert_to_tensor(w) * g, tf.float64)
                )
            )
            for n, w, g in zip(names, watched, grads)
        ]

    totals = [np.zeros(sites[n].count) for n in names]
    for x, y, sample_weight in batches(data, steps):
        with_labels = y is not None and loss_fn is not None
        if y is not None and loss_fn is None:
            raise ValueError(
                "The data has labels but the model has no compiled loss: "
                "pass loss=..."
            )
        scores = step(x, y, sample_weight, with_labels)
        for total, score in zip(totals, scores):
            total += score.numpy()
    return dict(zip(names, totals))
