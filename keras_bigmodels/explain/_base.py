"""The attribution contract shared by every `kbm.explain` method.

`Method(model, ...).attribute(inputs, target=None, baselines=None, ...)`
returns a NumPy array shaped like `inputs`. The model's evaluations run in
`tf.function`, in batches of at most `batch_size` rows.
"""

import numbers

import numpy as np
import tensorflow as tf

from keras_bigmodels._validation import check_positive_int


def as_batch(inputs, name="inputs"):
    """Inputs as a float32 (or the model's integer) NumPy batch."""
    x = np.asarray(inputs)
    if x.ndim == 0:
        raise ValueError(
            f"{name} must be a batch (rank >= 1, batch first). "
            f"Received: {name}.shape={x.shape}"
        )
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
    return x


def float_inputs(x, method):
    """Gradient methods need float inputs: integer inputs (token ids) reach
    the output only through an embedding lookup, which has no gradient."""
    if x.dtype.kind != "f":
        raise ValueError(
            f"{method} differentiates the output w.r.t. the inputs, but the "
            f"inputs are {x.dtype} (e.g. token ids), which have no "
            "gradient. Use LayerIntegratedGradients on the embedding layer. "
            f"Received: inputs.dtype={x.dtype}"
        )
    return x


def check_model(model):
    if not callable(model):
        raise ValueError(
            "model must be a Keras model or a callable on a batch of inputs. "
            f"Received: {type(model).__name__}"
        )


class TargetSelector:
    """Picks one scalar per example from the model's outputs.

    `target` may be None (the model's output if it has one unit per
    example, else each example's predicted class, argmax), an int (one
    output index for every example), an array of per-example indices, or a
    callable mapping the output batch to one scalar per example.
    """

    def __init__(self, target, batch, num_outputs):
        self.callable = callable(target) and not isinstance(
            target, (np.ndarray, numbers.Integral)
        )
        self.indices = None
        if self.callable:
            self.fn = target
            return
        if target is None:
            self.indices = None if num_outputs == 1 else "argmax"
            return
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise ValueError(
                "target must be None, an int, per-example ints, or a "
                f"callable. Received: target with dtype {t.dtype}"
            )
        if t.ndim == 0:
            t = np.full((batch,), int(t))
        if t.shape != (batch,):
            raise ValueError(
                f"target must have one index per example ({batch}). "
                f"Received: target.shape={t.shape}"
            )
        if (t < 0).any() or (t >= num_outputs).any():
            raise ValueError(
                f"target index out of range for a model with {num_outputs} "
                f"outputs. Received: {t[(t < 0) | (t >= num_outputs)][0]}"
            )
        self.indices = t.astype(np.int64)

    def row_indices(self, rows):
        """The output index of each row (0 for single-output models)."""
        if self.indices is None:
            return np.zeros(len(rows), np.int64)
        return self.indices[np.asarray(rows)]


def select_outputs(outputs, indices, fn=None):
    """One scalar per row: `fn(outputs)`, or outputs[row, indices[row]]."""
    if fn is not None:
        return tf.reshape(tf.cast(fn(outputs), tf.float32), [-1])
    outputs = tf.reshape(outputs, [tf.shape(outputs)[0], -1])
    return tf.gather(outputs, indices, axis=1, batch_dims=1)


class Attribution:
    """Base class: holds the model and the batched-evaluation helpers.

    Args:
        model: A Keras model, or any callable on a batch of inputs
            returning a batch of outputs.
        batch_size: At most this many rows per model evaluation (bounds
            memory for methods that evaluate many perturbed inputs), or
            `"auto"`: as many rows as fit in 16 MiB of inputs (between 64
            and 65,536), which keeps calls few for small inputs.
            Defaults to `256`.
    """

    def __init__(self, model, batch_size=256):
        check_model(model)
        if batch_size != "auto":
            check_positive_int("batch_size", batch_size)
        self.model = model
        self.batch_size = batch_size
        self._forward = tf.function(
            lambda x: tf.cast(self._call(x), tf.float32),
            reduce_retracing=True,
        )
        self._grad_fns = {}

    def rows_per_call(self, example_nbytes):
        """Model rows per evaluation for examples of `example_nbytes`."""
        if self.batch_size != "auto":
            return self.batch_size
        return int(np.clip((16 << 20) // max(1, example_nbytes), 64, 65536))

    def _call(self, x):
        try:
            return self.model(x, training=False)
        except TypeError:
            return self.model(x)

    def predict(self, x):
        """Model outputs for a batch, evaluated in chunks, as NumPy."""
        x = as_batch(x)
        rows = self.rows_per_call(x[:1].nbytes)
        chunks = [
            self._forward(tf.constant(x[i : i + rows]))
            for i in range(0, len(x), rows)
        ]
        return np.concatenate([np.asarray(c) for c in chunks])

    def _grad_fn(self, selector):
        """A tf.function (x, indices) -> (target values, d target / d x)."""
        fn = selector.fn if selector.callable else None
        key = id(fn)
        if key not in self._grad_fns:

            def grad(x, indices):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    out = tf.cast(self._call(x), tf.float32)
                    value = select_outputs(out, indices, fn)
                g = tape.gradient(value, x)
                if g is None:
                    raise ValueError(
                        "The model's output does not depend on its inputs "
                        "through differentiable operations, so gradient "
                        "attributions are undefined (e.g. integer inputs "
                        "feeding an Embedding: use LayerIntegratedGradients "
                        "on the embedding layer)."
                    )
                return value, g

            self._grad_fns[key] = (fn, tf.function(grad, reduce_retracing=True))
        return self._grad_fns[key][1]

    def gradients(self, x, rows, selector):
        """(target value, gradient w.r.t. x) for rows of x, in chunks.

        `rows[i]` is the example index of `x[i]` (for per-example targets).
        """
        grad = self._grad_fn(selector)
        idx = selector.row_indices(rows)
        n = self.rows_per_call(x[:1].nbytes)
        values, grads = [], []
        for i in range(0, len(x), n):
            v, g = grad(tf.constant(x[i : i + n]), tf.constant(idx[i : i + n]))
            values.append(np.asarray(v))
            grads.append(np.asarray(g))
        return np.concatenate(values), np.concatenate(grads)

    def _cached(self, kind, selector, build):
        """A tf.function per (kind, target callable), built once."""
        fn = selector.fn if selector.callable else None
        key = (kind, id(fn))
        if key not in self._grad_fns:
            self._grad_fns[key] = (
                fn,
                tf.function(build(fn), reduce_retracing=True),
            )
        return self._grad_fns[key][1]

    def target_values(self, x, rows, selector):
        """The selected output per row of x, in chunks."""

        def build(fn):
            def values(x, indices):
                out = tf.cast(self._call(x), tf.float32)
                return select_outputs(out, indices, fn)

            return values

        values = self._cached("values", selector, build)
        idx = selector.row_indices(rows)
        n = self.rows_per_call(x[:1].nbytes)
        return np.concatenate(
            [
                np.asarray(
                    values(
                        tf.constant(x[i : i + n]), tf.constant(idx[i : i + n])
                    )
                )
                for i in range(0, len(x), n)
            ]
        )

    def masked_values(self, x, background, keep, row, selector):
        """Mean over `background` of the target on masked copies of `x`.

        For each mask `keep[j]` (bool, shaped like `x`), the rows
        `where(keep[j], x, background[b])` for every background example `b`
        are built, evaluated and averaged inside one `tf.function` call per
        chunk of at most `batch_size` model rows.

        Args:
            x: One example.
            background: `[N, ...]`.
            keep: `[n, ...]` bool.
            row: The example's index (for per-example targets).
            selector: The `TargetSelector`.

        Returns:
            `[n]` NumPy float32.
        """

        def build(fn):
            def values(x, background, keep, index):
                n, m = tf.shape(keep)[0], tf.shape(background)[0]
                rows = tf.where(keep[:, None], x[None, None], background[None])
                flat = tf.reshape(rows, tf.concat([[n * m], tf.shape(x)], 0))
                out = tf.cast(self._call(flat), tf.float32)
                v = select_outputs(out, tf.fill([n * m], index), fn)
                return tf.reduce_mean(tf.reshape(v, [n, m]), axis=1)

            return values

        values = self._cached("masked", selector, build)
        index = selector.row_indices([row])[0]
        chunk = max(1, self.rows_per_call(x.nbytes) // len(background))
        x = tf.constant(x)
        background = tf.constant(background)
        return np.concatenate(
            [
                np.asarray(
                    values(
                        x,
                        background,
                        tf.constant(keep[i : i + chunk]),
                        tf.constant(index),
                    )
                )
                for i in range(0, len(keep), chunk)
            ]
        )

    def _path_fn(self, selector):
        """A tf.function summing weighted gradients along straight paths:
        (x [B...], b [B...], alphas [K], weights [K], indices [B]) ->
        sum_k weights_k * d target / d input at b + alphas_k (x - b)."""
        fn = selector.fn if selector.callable else None
        key = ("path", id(fn))
        if key not in self._grad_fns:

            def path(x, b, alphas, weights, indices):
                k = tf.shape(alphas)[0]
                n = tf.shape(x)[0]
                shape = tf.concat([[k], tf.ones(tf.rank(x), tf.int32)], 0)
                a = tf.reshape(alphas, shape)
                points = b[None] + a * (x - b)[None]  # [K, B, ...]
                flat = tf.reshape(
                    points, tf.concat([[k * n], tf.shape(x)[1:]], 0)
                )
                with tf.GradientTape() as tape:
                    tape.watch(flat)
                    out = tf.cast(self._call(flat), tf.float32)
                    value = select_outputs(out, tf.tile(indices, [k]), fn)
                g = tape.gradient(value, flat)
                if g is None:
                    raise ValueError(
                        "The model's output does not depend on its inputs "
                        "through differentiable operations; use "
                        "LayerIntegratedGradients for integer inputs."
                    )
                g = tf.reshape(g, tf.shape(points))
                w = tf.reshape(weights, shape)
                return tf.reduce_sum(w * g, axis=0)

            self._grad_fns[key] = (fn, tf.function(path, reduce_retracing=True))
        return self._grad_fns[key][1]

    def path_gradients(self, x, b, alphas, weights, selector):
        """sum_k weights_k * grad(b + alphas_k (x - b)) per example, with
        at most `batch_size` model rows per call."""
        path = self._path_fn(selector)
        idx = selector.row_indices(np.arange(len(x)))
        total = np.zeros(x.shape, np.float32)
        rows = self.rows_per_call(x[:1].nbytes)
        for start in range(0, len(x), rows):
            xs, bs = x[start : start + rows], b[start : start + rows]
            ids = idx[start : start + rows]
            step = max(1, rows // len(xs))
            for k in range(0, len(alphas), step):
                total[start : start + rows] += np.asarray(
                    path(
                        tf.constant(xs),
                        tf.constant(bs),
                        tf.constant(alphas[k : k + step], tf.float32),
                        tf.constant(weights[k : k + step], tf.float32),
                        tf.constant(ids),
                    )
                )
        return total

    def selector(self, target, x):
        """The `TargetSelector` for `target` on the batch `x` (one forward
        pass, for the output count and the predicted classes)."""
        if callable(target) and not isinstance(
            target, (np.ndarray, numbers.Integral)
        ):
            return TargetSelector(target, len(x), 1)
        out = self.predict(x)
        units = int(np.prod(out.shape[1:])) if out.ndim > 1 else 1
        sel = TargetSelector(target, len(x), units)
        if isinstance(sel.indices, str):
            sel.indices = out.reshape(len(x), -1).argmax(-1)
        return sel

    def attribute(self, inputs, target=None, baselines=None, **kwargs):
        raise NotImplementedError


def baselines_like(baselines, x, name="baselines"):
    """Baselines broadcast to x's shape: None (zeros), a scalar, one
    example, or one per example."""
    if baselines is None:
        return np.zeros_like(x, dtype=np.float32)
    b = np.asarray(baselines, dtype=np.float32)
    if b.ndim == 0:
        return np.full(x.shape, float(b), np.float32)
    if b.shape == x.shape[1:]:
        return np.broadcast_to(b, x.shape).astype(np.float32)
    if b.shape == x.shape:
        return b
    raise ValueError(
        f"{name} must be a scalar, one example of shape {x.shape[1:]} or "
        f"one per example of shape {x.shape}. Received: {name}.shape="
        f"{b.shape}"
    )
