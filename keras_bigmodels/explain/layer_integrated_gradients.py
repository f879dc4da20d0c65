"""`kbm.explain.LayerIntegratedGradients`: attributions to a layer's output
(token attribution through an embedding layer)."""

import contextlib

import numpy as np
import tensorflow as tf

from keras_bigmodels.explain._base import (
    Attribution,
    as_batch,
    select_outputs,
)
from keras_bigmodels.explain.integrated_gradients import integration_points


class LayerIntegratedGradients(Attribution):
    """Integrated Gradients on the output of an intermediate layer.

    The layer's outputs for the inputs, `L(x)`, and for the baselines,
    `L(b)`, are computed; the model is then run with the layer's output
    replaced by points `L(b) + a (L(x) - L(b))` on the straight path between
    them (all points of a chunk in one batched `tf.function` call), and the
    attribution is `(L(x) - L(b)) * integral grad`. Everything else in the
    model sees the real inputs, so padding masks computed from token ids
    still apply. This is how token attributions of a text transformer are
    computed: attribute to the embedding layer and sum over the embedding
    axis (`reduce="sum"`, the default), giving one score per token.

    The layer must be called once per forward pass (not shared).

    Args:
        model: A Keras model.
        layer: The layer (or its name), e.g. the token embedding.
        batch_size: Model rows per evaluation. Defaults to `256`.

    Example:

    ```python
    lig = kbm.explain.LayerIntegratedGradients(classifier, "token_embedding")
    scores = lig.attribute(token_ids, target=1, baselines=pad_ids)
    # scores: [batch, sequence], one score per token
    ```

    Reference:
    - [Sundararajan et al., 2017](https://arxiv.org/abs/1703.01365)
    - [Mudrakarta et al., 2018](https://arxiv.org/abs/1805.05492)
    """

    def __init__(self, model, layer, batch_size=256):
        super().__init__(model, batch_size)
        if isinstance(layer, str):
            finder = getattr(model, "get_layer", None)
            try:
                if finder is None:
                    raise ValueError
                layer = finder(layer)
            except ValueError:
                names = [x.name for x in getattr(model, "layers", [])]
                raise ValueError(
                    f"The model has no layer named {layer!r} (its layers: "
                    f"{names})"
                ) from None
        if not hasattr(layer, "call"):
            raise ValueError(
                "layer must be a Keras layer or a layer name. "
                f"Received: {type(layer).__name__}"
            )
        self.layer = layer
        self._mode = None  # None: plain; "capture" or "inject".
        self._captured = []
        self._injected = None
        self._fns = {}

    @contextlib.contextmanager
    def _patched(self):
        """Routes the layer's `call` through `_call_layer` for the duration."""
        layer = self.layer
        original = layer.call

        def call(*args, **kwargs):
            return self._call_layer(original, *args, **kwargs)

        object.__setattr__(layer, "call", call)
        try:
            yield
        finally:
            object.__delattr__(layer, "call")

    def _call_layer(self, original, *args, **kwargs):
        if self._mode == "inject":
            return tf.cast(self._injected, self._out_dtype)
        out = original(*args, **kwargs)
        if self._mode == "capture":
            if not tf.is_tensor(out):
                raise ValueError(
                    f"LayerIntegratedGradients needs a layer with one tensor "
                    f"output; {self.layer.name!r} returned "
                    f"{type(out).__name__}"
                )
            self._captured.append(out)
        return out

    def _capture_fn(self):
        if "capture" not in self._fns:

            def capture(x):
                self._mode, self._captured = "capture", []
                try:
                    self._call(x)
                finally:
                    self._mode = None
                if len(self._captured) != 1:
                    raise ValueError(
                        f"Layer {self.layer.name!r} was called "
                        f"{len(self._captured)} times in one forward pass; "
                        "LayerIntegratedGradients needs it called exactly "
                        "once."
                    )
                out = self._captured[0]
                self._out_dtype = out.dtype
                return tf.cast(out, tf.float32)

            self._fns["capture"] = tf.function(capture, reduce_retracing=True)
        return self._fns["capture"]

    def layer_outputs(self, x):
        """The layer's outputs for a batch, in chunks, as NumPy float32."""
        x = as_batch(x)
        fn = self._capture_fn()
        n = self.rows_per_call(x[:1].nbytes)
        with self._patched():
            return np.concatenate(
                [
                    np.asarray(fn(tf.constant(x[i : i + n])))
                    for i in range(0, len(x), n)
                ]
            )

    def _path_fn(self, selector):
        fn = selector.fn if selector.callable else None
        key = ("layer_path", id(fn))
        if key not in self._fns:

            def path(x, lx, lb, alphas, weights, indices):
                k = tf.shape(alphas)[0]
                n = tf.shape(lx)[0]
                shape = tf.concat([[k], tf.ones(tf.rank(lx), tf.int32)], 0)
                a = tf.reshape(alphas, shape)
                points = lb[None] + a * (lx - lb)[None]  # [K, B, ...]
                flat = tf.reshape(
                    points, tf.concat([[k * n], tf.shape(lx)[1:]], 0)
                )
                tiled = tf.tile(
                    x, tf.concat([[k], tf.ones(tf.rank(x) - 1, tf.int32)], 0)
                )
                with tf.GradientTape() as tape:
                    tape.watch(flat)
                    self._mode, self._injected = "inject", flat
                    try:
                        out = tf.cast(self._call(tiled), tf.float32)
                    finally:
                        self._mode, self._injected = None, None
                    value = select_outputs(out, tf.tile(indices, [k]), fn)
                g = tape.gradient(value, flat)
                if g is None:
                    raise ValueError(
                        f"The model's output does not depend on the output "
                        f"of layer {self.layer.name!r}."
                    )
                g = tf.reshape(g, tf.shape(points))
                return tf.reduce_sum(tf.reshape(weights, shape) * g, axis=0)

            self._fns[key] = (fn, tf.function(path, reduce_retracing=True))
        return self._fns[key][1]

    def attribute(
        self,
        inputs,
        target=None,
        baselines=None,
        n_steps=50,
        method="gausslegendre",
        reduce="sum",
        return_convergence_delta=False,
    ):
        """Attributions to the layer's output.

        Args:
            inputs: A batch of model inputs (e.g. token ids).
            target: As in `IntegratedGradients`. Defaults to `None`.
            baselines: Model inputs whose layer output is the path's start:
                None (zeros, e.g. the padding id 0), a scalar, one example
                or one per example. Defaults to `None`.
            n_steps: Integration points. Defaults to `50`.
            method: As in `IntegratedGradients`. Defaults to
                `"gausslegendre"`.
            reduce: `"sum"` sums the layer axes beyond the inputs' rank
                (the embedding axis), so the result is shaped like the
                inputs; `None` returns the layer's output shape. Defaults
                to `"sum"`.
            return_convergence_delta: Also return, per example,
                `sum(attr) - (F(L(x)) - F(L(b)))`, where `F` is the model
                with the layer's output replaced (and masks still computed
                from `inputs`). Defaults to `False`.
        """
        if reduce not in ("sum", None):
            raise ValueError(
                f"reduce must be 'sum' or None. Received: reduce={reduce!r}"
            )
        x = as_batch(inputs)
        if baselines is None:
            b = np.zeros_like(x)
        else:
            b = np.asarray(baselines).astype(x.dtype)
            if b.ndim == 0 or b.shape == x.shape[1:]:
                b = np.broadcast_to(b, x.shape).copy()
            if b.shape != x.shape:
                raise ValueError(
                    f"baselines must be a scalar, one example of shape "
                    f"{x.shape[1:]} or one per example of shape {x.shape}. "
                    f"Received: baselines.shape={b.shape}"
                )
        alphas, weights = integration_points(method, n_steps)
        sel = self.selector(target, x)
        lx, lb = self.layer_outputs(x), self.layer_outputs(b)
        if lx.shape != lb.shape:
            raise ValueError(
                f"The layer's outputs for inputs {lx.shape} and baselines "
                f"{lb.shape} differ in shape"
            )
        path = self._path_fn(sel)
        idx = sel.row_indices(np.arange(len(x)))
        integral = np.zeros(lx.shape, np.float32)
        chunk = self.rows_per_call(lx[:1].nbytes)
        with self._patched():
            for s in range(0, len(x), chunk):
                rows = slice(s, s + chunk)
                n = len(x[rows])
                step = max(1, chunk // n)
                for k in range(0, len(alphas), step):
                    integral[rows] += np.asarray(
                        path(
                            tf.constant(x[rows]),
                            tf.constant(lx[rows]),
                            tf.constant(lb[rows]),
                            tf.constant(alphas[k : k + step], tf.float32),
                            tf.constant(weights[k : k + step], tf.float32),
                            tf.constant(idx[rows]),
                        )
                    )
        attributions = (lx - lb) * integral
        if reduce == "sum" and attributions.ndim > x.ndim:
            attributions = attributions.sum(
                axis=tuple(range(x.ndim, attributions.ndim))
            )
        if not return_convergence_delta:
            return attributions
        with self._patched():
            gap = self._injected_values(x, lx, sel) - self._injected_values(
                x, lb, sel
            )
        delta = attributions.reshape(len(x), -1).sum(1) - gap
        return attributions, delta

    def _injected_values(self, x, layer_out, selector):
        """The target with the layer's output replaced by `layer_out` (the
        rest of the model, e.g. masks, sees `x`)."""
        fn = selector.fn if selector.callable else None
        key = ("values", id(fn))
        if key not in self._fns:

            def values(x, lo, indices):
                self._mode, self._injected = "inject", lo
                try:
                    out = tf.cast(self._call(x), tf.float32)
                finally:
                    self._mode, self._injected = None, None
                return select_outputs(out, indices, fn)

            self._fns[key] = (fn, tf.function(values, reduce_retracing=True))
        values = self._fns[key][1]
        idx = selector.row_indices(np.arange(len(x)))
        n = self.rows_per_call(layer_out[:1].nbytes)
        return np.concatenate(
            [
                np.asarray(
                    values(
                        tf.constant(x[i : i + n]),
                        tf.constant(layer_out[i : i + n]),
                        tf.constant(idx[i : i + n]),
                    )
                )
                for i in range(0, len(x), n)
            ]
        )
