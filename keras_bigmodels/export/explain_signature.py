"""`kbm.export.ExplainSignature`: attributions computed inside a SavedModel.

The signature's function is plain TensorFlow traced at export time: the
integration points and weights are constants taken from
`kbm.explain.integrated_gradients.integration_points`, the path points of
all steps go through the model as one batch and one gradient, so a model
server (or any TensorFlow) computes the attributions without Python,
NumPy or keras_bigmodels.
"""

import contextlib

import numpy as np
import tensorflow as tf

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.explain._base import select_outputs
from keras_bigmodels.explain.integrated_gradients import (
    IntegratedGradients,
    integration_points,
)
from keras_bigmodels.explain.layer_integrated_gradients import (
    LayerIntegratedGradients,
)
from keras_bigmodels.explain.saliency import Saliency
from keras_bigmodels.export.signatures import Endpoint

ALGORITHMS = (IntegratedGradients, Saliency, LayerIntegratedGradients)
TARGET = "target"


class ExplainSignature:
    """An export signature returning attributions for a batch of inputs.

    Pass it to `kbm.export.export_saved_model(..., signatures={name: ...})`.
    The signature takes the same named inputs as `serving_default`, plus
    (with `target_input=True`) an int32 input `target` of shape `[batch]`:
    the output index to explain per example, or `-1` for the predicted
    class (the argmax of the output; index 0 for a one-unit output). TF
    Serving requires every input of a signature in each request, so send
    `-1` where you would leave `target` out, or export with
    `target_input=False` for a signature that always explains the
    predicted class.

    Outputs:
    - `attributions` (float32): shaped like the attributed input for
      `IntegratedGradients` and `Saliency`; for `LayerIntegratedGradients`
      the layer's output summed over the axes beyond the attributed
      input's rank (one score per token for an embedding layer).
    - `target` (int32, `[batch]`): the output index explained.
    - `convergence_delta` (float32, `[batch]`, not for `Saliency`):
      `sum(attributions) - (f(x) - f(baseline))`, the integration error.

    The values equal `algorithm(model).attribute(x, target=..., baselines=
    baseline, n_steps=n_steps, method=method)` (`kbm.explain`) computed
    with the same model. The model must have one output. All `n_steps`
    path points of the batch are one model call (`n_steps * batch` rows):
    size server batches with that in mind.

    Integer inputs (token ids) have no gradient: `IntegratedGradients` and
    `Saliency` refuse them; use `LayerIntegratedGradients` with the
    embedding layer, which interpolates the layer's output between the
    baseline's and the input's while every other layer (padding masks
    included) sees the real inputs.

    Args:
        algorithm: `kbm.explain.IntegratedGradients`, `kbm.explain.Saliency`
            or `kbm.explain.LayerIntegratedGradients` (the class).
        n_steps: Integration points. Defaults to `50`.
        method: The integration rule, as in `IntegratedGradients`:
            "gausslegendre", "riemann_trapezoid", "riemann_left",
            "riemann_right" or "riemann_middle". Defaults to
            `"gausslegendre"`.
        baseline: The path's start: a scalar or one example (shaped like
            the attributed input without its batch axis); for
            `LayerIntegratedGradients` the token ids whose layer output
            starts the path (0, the padding id, by default). Defaults to
            `0.0`.
        layer: For `LayerIntegratedGradients` only: the layer (or its
            name) to attribute to. Defaults to `None`.
        input_name: The model input to attribute to (IntegratedGradients,
            Saliency) or to replace by the baseline
            (LayerIntegratedGradients). Defaults to `None`: the only input,
            else the only floating input (IG, Saliency) or the first
            integer input (LayerIntegratedGradients).
        target_input: Add the `target` input. Defaults to `True`.
        abs: Saliency only: absolute gradients. Defaults to `True`.

    Example:

    ```python
    kbm.export.export_saved_model(model, "serving/1", signatures={
        "explain": kbm.export.ExplainSignature(
            kbm.explain.IntegratedGradients, n_steps=32, baseline=0.0),
        "saliency": kbm.export.ExplainSignature(kbm.explain.Saliency),
    })
    ```

    Reference:
    - [Sundararajan et al., 2017](https://arxiv.org/abs/1703.01365)
    """

    def __init__(
        self,
        algorithm,
        n_steps=50,
        method="gausslegendre",
        baseline=0.0,
        layer=None,
        input_name=None,
        target_input=True,
        abs=True,  # noqa: A002 - the name kbm.explain.Saliency uses
    ):
        if algorithm not in ALGORITHMS:
            names = ", ".join(f"kbm.explain.{a.__name__}" for a in ALGORITHMS)
            raise ValueError(
                f"algorithm must be one of {names} (the class). Received: "
                f"algorithm={algorithm!r}"
            )
        check_positive_int("n_steps", n_steps)
        if algorithm is not Saliency:
            integration_points(method, n_steps)  # Validates the pair.
        is_layer = algorithm is LayerIntegratedGradients
        if is_layer and layer is None:
            raise ValueError(
                "LayerIntegratedGradients needs the layer to attribute to: "
                "ExplainSignature(kbm.explain.LayerIntegratedGradients, "
                "layer='token_embedding'). Received: layer=None"
            )
        if not is_layer and layer is not None:
            raise ValueError(
                f"layer is for LayerIntegratedGradients only. Received: "
                f"algorithm={algorithm.__name__}, layer={layer!r}"
            )
        baseline = np.asarray(baseline)
        if baseline.dtype.kind not in "biuf":
            raise ValueError(
                "baseline must be a number or an array of numbers. Received: "
                f"baseline with dtype {baseline.dtype}"
            )
        self.algorithm = algorithm
        self.n_steps = n_steps
        self.method = method
        self.baseline = baseline
        self.layer = layer
        self.input_name = input_name
        self.target_input = bool(target_input)
        self.abs = bool(abs)

    def __repr__(self):
        return (
            f"ExplainSignature({self.algorithm.__name__}, "
            f"n_steps={self.n_steps}, method={self.method!r})"
        )

    # ------------------------------------------------------------- tracing

    def build(self, interface):
        """Traces this signature for a model.

        Args:
            interface: The model's `ModelInterface` (export/signatures.py).

        Returns:
            An `Endpoint`: a function of one named input per model input
            (plus `target`) returning the dict of outputs, and its input
            signature.
        """
        if len(interface.output_names) != 1:
            raise ValueError(
                "ExplainSignature needs a model with one output. Received a "
                f"model with outputs {interface.output_names}"
            )
        names = list(interface.input_names)
        specs = list(interface.input_specs)
        if self.target_input and TARGET in names:
            raise ValueError(
                f"The model has an input named {TARGET!r}, which clashes "
                "with the explain signature's target input; export with "
                "target_input=False or rename the model input."
            )
        name = self._attributed_input(names, specs)
        spec = specs[names.index(name)]
        self._check_baseline(spec)
        tap = None
        if self.algorithm is LayerIntegratedGradients:
            tap = _LayerTap(_find_layer(interface.model, self.layer))
        if self.target_input:
            specs.append(tf.TensorSpec([None], tf.int32, name=TARGET))

        def forward(feeds):
            (out,) = interface.call(feeds).values()
            return tf.cast(out, tf.float32)

        def explain(*tensors):
            feeds = dict(zip(names, tensors))
            target = tensors[len(names)] if self.target_input else None
            if tap is not None:
                return self._layer_gradients(forward, feeds, name, target, tap)
            if self.algorithm is Saliency:
                return self._saliency(forward, feeds, name, target)
            return self._integrated_gradients(forward, feeds, name, target)

        with tap.patched() if tap else contextlib.nullcontext():
            traced = tf.function(
                explain, input_signature=specs, autograph=False
            ).get_concrete_function()
        # The writer traces the endpoint again while saving: it replays the
        # graph traced here instead of re-running the Python (which needs
        # the layer patched).
        return Endpoint(lambda *tensors: traced(*tensors), specs)

    def _attributed_input(self, names, specs):
        dtypes = dict(zip(names, (s.dtype for s in specs)))
        if self.input_name is not None:
            if self.input_name not in dtypes:
                raise ValueError(
                    f"The model has no input named {self.input_name!r} (its "
                    f"inputs: {names}). Received: "
                    f"input_name={self.input_name!r}"
                )
            name = self.input_name
        elif len(names) == 1:
            name = names[0]
        elif self.algorithm is LayerIntegratedGradients:
            ints = [n for n in names if dtypes[n].is_integer]
            name = ints[0] if ints else names[0]
        else:
            floats = [n for n in names if dtypes[n].is_floating]
            if len(floats) != 1:
                raise ValueError(
                    f"The model has inputs {names}; pass input_name= to say "
                    "which one to attribute to."
                )
            name = floats[0]
        if self.algorithm is not LayerIntegratedGradients and (
            not dtypes[name].is_floating
        ):
            raise ValueError(
                f"{self.algorithm.__name__} differentiates the output "
                f"w.r.t. input {name!r}, which is {dtypes[name].name} (e.g. "
                "token ids) and has no gradient. Use ExplainSignature("
                "kbm.explain.LayerIntegratedGradients, layer=<the embedding "
                "layer>) to attribute to the embedding's output."
            )
        return name

    def _check_baseline(self, spec):
        example = tuple(spec.shape[1:])
        if self.baseline.ndim and self.baseline.shape != example:
            raise ValueError(
                f"baseline must be a scalar or one example of shape "
                f"{example}. Received: baseline.shape={self.baseline.shape}"
            )

    def _baseline_like(self, x):
        value = tf.constant(self.baseline)
        return tf.broadcast_to(tf.cast(value, x.dtype), tf.shape(x))

    # --------------------------------------------------- graph computation

    def _path_integral(self, start, end, value_of):
        """sum_k w_k * d value / d point at start + a_k (end - start).

        `value_of(points, k)` maps the `k * batch` stacked points (step
        major) to one scalar per row; the gradient is one batched call.
        """
        alphas, weights = integration_points(self.method, self.n_steps)
        k = len(alphas)
        n = tf.shape(start)[0]
        shape = tf.concat([[k], tf.ones(tf.rank(start), tf.int32)], 0)
        a = tf.reshape(tf.constant(alphas, tf.float32), shape)
        points = start[None] + a * (end - start)[None]  # [K, B, ...]
        flat = tf.reshape(points, tf.concat([[k * n], tf.shape(start)[1:]], 0))
        with tf.GradientTape() as tape:
            tape.watch(flat)
            value = value_of(flat, k)
        grads = tape.gradient(value, flat)
        if grads is None:
            raise ValueError(
                "The model's output does not depend on the attributed "
                "input (or layer output) through differentiable operations."
            )
        grads = tf.reshape(grads, tf.shape(points))
        w = tf.reshape(tf.constant(weights, tf.float32), shape)
        return tf.reduce_sum(w * grads, axis=0)

    def _integrated_gradients(self, forward, feeds, name, target):
        x = tf.cast(feeds[name], tf.float32)
        b = self._baseline_like(x)
        out = forward(feeds)
        index = _targets(out, target)

        def value_of(points, k):
            tiled = {n: _tile(t, k) for n, t in feeds.items()}
            tiled[name] = points
            return select_outputs(forward(tiled), tf.tile(index, [k]))

        attributions = (x - b) * self._path_integral(b, x, value_of)
        gap = select_outputs(out, index) - select_outputs(
            forward({**feeds, name: b}), index
        )
        return _explained(attributions, index, gap)

    def _saliency(self, forward, feeds, name, target):
        x = tf.cast(feeds[name], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = forward({**feeds, name: x})
            index = _targets(tf.stop_gradient(out), target)
            value = select_outputs(out, index)
        grads = tape.gradient(value, x)
        if grads is None:
            raise ValueError(
                f"The model's output does not depend on input {name!r} "
                "through differentiable operations."
            )
        return {
            "attributions": tf.abs(grads) if self.abs else grads,
            "target": index,
        }

    def _layer_gradients(self, forward, feeds, name, target, tap):
        ids = feeds[name]
        lx, out = tap.capture(lambda: forward(feeds))
        lb, _ = tap.capture(
            lambda: forward({**feeds, name: self._baseline_like(ids)})
        )
        index = _targets(out, target)

        def value_of(points, k):
            tiled = {n: _tile(t, k) for n, t in feeds.items()}
            values = tap.inject(points, lambda: forward(tiled))
            return select_outputs(values, tf.tile(index, [k]))

        attributions = (lx - lb) * self._path_integral(lb, lx, value_of)
        gap = select_outputs(out, index) - select_outputs(
            tap.inject(lb, lambda: forward(feeds)), index
        )
        result = _explained(attributions, index, gap)
        extra = tf.range(tf.rank(ids), tf.rank(attributions))
        result["attributions"] = tf.reduce_sum(attributions, axis=extra)
        return result


def _tile(t, k):
    """`t` repeated `k` times along the batch axis (step major)."""
    return tf.tile(t, tf.concat([[k], tf.ones(tf.rank(t) - 1, tf.int32)], 0))


def _targets(outputs, target):
    """The output index to explain per example: `target` where it is >= 0,
    else the predicted class (argmax; 0 for a one-unit output)."""
    flat = tf.reshape(outputs, [tf.shape(outputs)[0], -1])
    predicted = tf.argmax(flat, axis=-1, output_type=tf.int32)
    if target is None:
        return predicted
    checks = [
        tf.debugging.assert_equal(
            tf.shape(target)[0],
            tf.shape(flat)[0],
            message="target must hold one index per example",
        ),
        tf.debugging.assert_less(
            target,
            tf.shape(flat)[1],
            message="target index out of range for the model's outputs",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.where(target < 0, predicted, target)


def _explained(attributions, index, gap):
    n = tf.shape(attributions)[0]
    total = tf.reduce_sum(tf.reshape(attributions, [n, -1]), axis=1)
    return {
        "attributions": attributions,
        "target": index,
        "convergence_delta": total - gap,
    }


def _find_layer(model, layer):
    if not isinstance(layer, str):
        if not hasattr(layer, "call"):
            raise ValueError(
                "layer must be a Keras layer or a layer name. Received: "
                f"{type(layer).__name__}"
            )
        return layer
    try:
        return model.get_layer(layer)
    except ValueError:
        names = [x.name for x in model.layers]
        raise ValueError(
            f"The model has no layer named {layer!r} (its layers: {names})"
        ) from None


class _LayerTap:
    """Captures or replaces one layer's output while a function traces.

    While `patched()` is active the layer's `call` runs through the tap:
    in "capture" mode its output is recorded, in "inject" mode it returns
    the injected tensor instead (the rest of the model, masks included,
    still sees the real inputs). The patch only matters during tracing:
    the traced graph holds the result.
    """

    def __init__(self, layer):
        self.layer = layer
        self._mode = None
        self._captured = []
        self._injected = None
        self._dtype = tf.float32

    @contextlib.contextmanager
    def patched(self):
        original = self.layer.call

        def call(*args, **kwargs):
            if self._mode == "inject":
                # A new tensor: tf-keras keeps a `_keras_mask` already set
                # on a layer's output, and the injected tensor may be an
                # earlier output carrying the baseline's mask.
                return tf.identity(tf.cast(self._injected, self._dtype))
            out = original(*args, **kwargs)
            if self._mode == "capture":
                self._captured.append(out)
            return out

        object.__setattr__(self.layer, "call", call)
        try:
            yield
        finally:
            object.__delattr__(self.layer, "call")

    def capture(self, run):
        """(the layer's output as float32, run()'s result)."""
        self._mode, self._captured = "capture", []
        try:
            result = run()
        finally:
            self._mode = None
        if len(self._captured) != 1 or not tf.is_tensor(self._captured[0]):
            raise ValueError(
                f"Layer {self.layer.name!r} must be called exactly once per "
                "forward pass and return one tensor to be attributed to; "
                f"it was called {len(self._captured)} times."
            )
        out = self._captured[0]
        self._dtype = out.dtype
        return tf.cast(out, tf.float32), result

    def inject(self, value, run):
        """run()'s result with the layer's output replaced by `value`."""
        self._mode, self._injected = "inject", value
        try:
            return run()
        finally:
            self._mode, self._injected = None, None
