"""Run layers quantized by Keras 3's own `quantize("int8")` on kbm's kernel.

Keras 3.15's int8 `Dense` / `EinsumDense` quantize their inputs per row
(`AbsMaxQuantizer`: `q_x = clip(round(x * 127 / (max |x_row| + 1e-7)),
-127, 127)`), multiply int8 by int8 with TF's `BatchMatMulV3` (exact int32
sums, but 3-4x slower than the float32 matmul on x86 CPUs) and divide the
result by `input_scale * kernel_scale`, where `kernel_scale = 127 /
(max_k |w[k, n]| + 1e-7)` is the inverse of a step. `accelerate(model)`
keeps those layers, their variables and their config, and swaps only their
int8 inference path (the instance's `_int8_call`) for
`kbm.ops.quantized_matmul` on the same integer kernel, packed once into the
kernel's panel layout, with the step `1 / kernel_scale`, the bias and the
activation (ReLU, exact or tanh GELU; others run after) in the fused
epilogue.

Numerics. Both compute the integer products exactly. kbm's activation
step is `max |x_row| / 127` (without Keras's `+ 1e-7`), which gives the
same `q_x` for rows with `max |x_row|` above about 1 (where the `1e-7` is
below float32 resolution), and may move single values by one step for
rows of small magnitude; the dequantization multiplies where Keras
divides. Under a bfloat16 compute policy Keras quantizes the inputs in
bfloat16 and kbm in float32, so outputs differ by bfloat16 rounding.
tests/quantization/accelerate_test.py measures the differences.

Gradients: those of Keras's int8 path, so `fit` and `GradientTape` keep
working: the input gets `(dy * act'(pre)) @ dequantized kernel^T` and the
bias `sum(dy * act'(pre))`, `pre` being the quantized matmul plus bias
(recomputed in the backward pass), the integer kernel and its scale none.

The model stays a Keras-quantized model: `get_config`, the variables and
`.keras` files are unchanged, and a saved accelerated model loads back as
plain Keras int8 (call `accelerate` on it again). `accelerate` drops the
model's cached `fit` / `evaluate` / `predict` functions so they retrace;
`tf.function`s of your own traced before keep the path they traced.
Loading weights into an accelerated layer (`load_weights`, `load_model`'s
state) re-packs its kernel; weights assigned by hand afterwards
(`variable.assign`, `set_weights`) are not seen until `accelerate(model)`
runs again. Traced exports (`model.export`, `tf.saved_model.save`) record
kbm's custom op: export with `accelerate(model, undo=True)` first for
stock ops only.
Keras 3 only: tf-keras 2 has no `quantize` API.
"""

import re

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from keras_bigmodels.ops import quantization as qops
from keras_bigmodels.quantization.quantize import _excluder

_FUSABLE = ("relu", "gelu", "gelu_tanh")
_STATE = "_kbm_accelerate"


def accelerate(model, *, exclude=None, undo=False):
    """Runs a model's Keras-int8 layers on kbm's fused W8A8 kernel.

    For every `keras.layers.Dense` and `keras.layers.EinsumDense` (and
    subclasses such as `kbm.layers.FusedDense`) inside `model`, at any
    depth (attention projections included), that Keras 3's
    `model.quantize("int8")` or `layer.quantize("int8")` quantized with
    its default per-row input quantizer: packs the int8 kernel once into
    `kbm.ops.pack_kernel`'s layout and makes the layer's int8 call run
    `kbm.ops.quantized_matmul` (see the module docstring for the numerics,
    gradients and saving). Other layers are left as they are, with the
    reason in the returned report. Calling it again re-packs (after
    weights were changed by hand).

    Args:
        model: A built Keras 3 model or layer.
        exclude: None, an iterable of layer names, or a predicate
            `fn(layer) -> bool`; excluded layers keep Keras's path.
            Defaults to `None`.
        undo: If True, restores Keras's own int8 path on every layer
            `accelerate` switched. Defaults to `False`.

    Returns:
        A dict `{"accelerated": [layer paths], "skipped": {layer path:
        reason}}` listing every Dense / EinsumDense found (with `undo`:
        the restored layers under "accelerated"). Paths are the layers'
        `path` attributes (their names on older Keras).

    Raises:
        NotImplementedError: On tf-keras 2 (no `quantize` API there).
        ValueError: If `model` is not a built Keras layer or model, or
            `exclude` is neither names nor a callable.

    Example:

    ```python
    model.quantize("int8")                  # Keras 3's own int8 layers
    report = kbm.quantization.accelerate(model)
    print(report["accelerated"], report["skipped"])
    ```
    """
    if IS_LEGACY_KERAS:
        raise NotImplementedError(
            "kbm.quantization.accelerate needs Keras 3: it speeds up layers "
            "quantized by Keras 3's `quantize('int8')`, which tf-keras 2 "
            "does not have. On tf-keras use kbm.quantization.quantize(model, "
            "'int8')."
        )
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "accelerate expects a Keras model or layer. Received: "
            f"model={type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"accelerate expects a built model; build or call {model.name!r} "
            "and quantize it with model.quantize('int8') first."
        )
    excluded = _excluder(exclude)
    report = {"accelerated": [], "skipped": {}}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if not isinstance(
            layer, (keras.layers.Dense, keras.layers.EinsumDense)
        ):
            continue
        path = getattr(layer, "path", None) or layer.name
        if undo:
            if _STATE in layer.__dict__:
                _restore(layer)
                report["accelerated"].append(path)
            continue
        reason = "excluded" if excluded(layer) else _unsupported(layer)
        plan = None
        if reason is None:
            plan, reason = _plan(layer)
        if reason is not None:
            if _STATE in layer.__dict__:
                _restore(layer)
            report["skipped"][path] = reason
            continue
        _install(layer, plan)
        report["accelerated"].append(path)
    if report["accelerated"]:
        _reset_traced_functions(model)
    return report


def _reset_traced_functions(model):
    """Drops the model's cached fit/evaluate/predict functions, which were
    traced with the layers' previous path."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def _unsupported(layer):
    """The reason `layer` keeps its own path, or None."""
    if getattr(layer, "kbm_quantization", None) is not None or (
        type(layer).__name__.startswith(("Quantized", "QAT"))
        and type(layer).__module__.startswith("keras_bigmodels")
    ):
        return "quantized by kbm.quantization (already runs kbm's kernels)"
    mode = layer.quantization_mode
    if mode is None:
        return "not quantized (float kernel; use model.quantize('int8'))"
    if mode != "int8":
        return (
            f"quantization mode {mode!r}: kbm's W8A8 kernel takes int8 "
            "weights with int8 per-row inputs; Keras's own path kept"
        )
    if getattr(layer, "lora_enabled", False):
        return "LoRA enabled: Keras's own int8 + LoRA path kept"
    quantizer = getattr(layer, "inputs_quantizer", None)
    if quantizer is None:
        return (
            "int8 weight-only (no input quantizer): kbm's W8A8 kernel "
            "quantizes inputs; use kbm.quantization.quantize(model, "
            "'int8_weight_only')"
        )
    if (
        type(quantizer).__name__ != "AbsMaxQuantizer"
        or tuple(quantizer.value_range) != (-127, 127)
        or float(quantizer.epsilon) > 1e-6
    ):
        return (
            "custom input quantizer: kbm's kernel quantizes inputs per row "
            "with abs-max over [-127, 127]"
        )
    if layer.compute_dtype not in ("float32", "float16", "bfloat16"):
        return f"compute dtype {layer.compute_dtype}"
    return None


def _plan(layer):
    """(plan, None) describing the matmul, or (None, reason)."""
    kernel = np.asarray(keras.ops.convert_to_numpy(layer._kernel))
    if isinstance(layer, keras.layers.EinsumDense):
        spec, reason = _einsum_spec(layer.equation)
        if reason is not None:
            return None, reason
        r_ax, f_ax, ker = spec
        divisor = keras.ops.convert_to_numpy(
            layer._adjust_scale_for_dequant(
                keras.ops.convert_to_tensor(layer.kernel_scale)
            )
        )
        divisor = np.broadcast_to(divisor, kernel.shape)
        perm = [ker.index(c) for c in r_ax + f_ax]
        f_shape = [kernel.shape[ker.index(c)] for c in f_ax]
        k = int(np.prod([kernel.shape[ker.index(c)] for c in r_ax]))
        kernel = np.transpose(kernel, perm).reshape(k, -1)
        divisor = np.transpose(divisor, perm).reshape(k, -1)
    else:
        if kernel.ndim != 2:
            return None, f"kernel of rank {kernel.ndim}"
        divisor = np.broadcast_to(
            keras.ops.convert_to_numpy(layer.kernel_scale), kernel.shape
        )
        r_ax, f_shape = [None], [kernel.shape[1]]
    if not np.all(divisor == divisor[:1]):
        return None, "kernel scales vary along the summed axes"
    divisor = divisor[0].astype(np.float32)
    if not np.all(np.isfinite(divisor) & (divisor > 0)):
        return None, "kernel_scale holds zeros, negatives or non-finite values"
    if np.any(kernel == -128):
        return None, "kernel holds -128 (kbm's kernel takes [-127, 127])"
    activation = _fused_activation(layer)
    return {
        "packed": qops.pack_kernel(tf.constant(kernel, tf.int8)),
        "scale": tf.constant(1.0 / divisor, tf.float32),
        "k": kernel.shape[0],
        "f_shape": f_shape,
        "summed_rank": len(r_ax),
        "activation": activation,
    }, None


def _einsum_spec(equation):
    """Splits an EinsumDense equation into summed, kernel-only and batch
    axes, or gives the reason it is not a plain matmul."""
    match = re.fullmatch(
        r"(\.\.\.)?([a-zA-Z]*),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]*)",
        equation.replace(" ", ""),
    )
    reason = f"equation {equation!r} is not a matmul over trailing axes"
    if match is None or bool(match.group(1)) != bool(match.group(4)):
        return None, reason
    inp, ker, out = match.group(2), match.group(3), match.group(5)
    r_ax = [c for c in inp if c in ker and c not in out]
    f_ax = [c for c in out if c in ker and c not in inp]
    b_ax = [c for c in inp if c in out and c not in ker]
    if (
        sorted(ker) != sorted(r_ax + f_ax)
        or inp != "".join(b_ax + r_ax)
        or out != "".join(b_ax + f_ax)
        or not r_ax
    ):
        return None, reason
    return (r_ax, f_ax, ker), None


def _fused_activation(layer):
    """The kbm epilogue name for the layer's activation, None for identity,
    or the Keras callable to apply after the matmul."""
    fused = getattr(layer, "_fused_activation", None)
    if fused in _FUSABLE:
        return fused
    act = layer.activation
    if act is None or act is keras.activations.linear:
        return None
    if act is keras.activations.relu:
        return "relu"
    if act is keras.activations.gelu:
        return "gelu"
    return act


def _install(layer, plan):
    state = layer.__dict__.get(_STATE)
    if state is None:
        state = {
            "supports_jit": layer.supports_jit,
            "load_own_variables": layer.load_own_variables,
        }
        layer.__dict__[_STATE] = state

        def _int8_call(inputs, training=None):
            return _accelerated_call(layer, inputs, training)

        def load_own_variables(store):
            state["load_own_variables"](store)
            _repack(layer)

        layer.__dict__["_int8_call"] = _int8_call
        layer.__dict__["load_own_variables"] = load_own_variables
    state["plan"] = plan
    # Custom ops have no XLA kernel: keep Keras's jit_compile="auto" off.
    layer.supports_jit = False


def _repack(layer):
    if _STATE not in layer.__dict__:
        return
    plan, reason = _plan(layer)
    if reason is not None:
        _restore(layer)
    else:
        layer.__dict__[_STATE]["plan"] = plan


def _restore(layer):
    state = layer.__dict__.pop(_STATE)
    layer.__dict__.pop("_int8_call", None)
    layer.__dict__.pop("load_own_variables", None)
    layer.supports_jit = state["supports_jit"]


def _accelerated_call(layer, inputs, training=None):
    plan = layer.__dict__[_STATE]["plan"]
    if not isinstance(inputs, tf.Tensor) and not isinstance(
        inputs, (np.ndarray, tf.Variable)
    ):
        # Sparse or ragged inputs: Keras's own path.
        return type(layer)._int8_call(layer, inputs, training)
    x = tf.cast(inputs, layer.compute_dtype)
    k = plan["k"]
    f_shape = plan["f_shape"]
    n = int(np.prod(f_shape))
    summed = plan["summed_rank"]
    lead = tf.shape(x)[: x.shape.rank - summed]
    lead_static = x.shape[: x.shape.rank - summed]
    x2 = tf.reshape(x, [-1, k])
    bias = None
    bias_after = None
    if layer.bias is not None:
        b = tf.convert_to_tensor(layer.bias)
        if b.shape.rank <= len(f_shape):
            bias = tf.reshape(
                tf.broadcast_to(tf.cast(b, tf.float32), f_shape), [n]
            )
        else:
            bias_after = b
    activation = plan["activation"]
    fused = activation if isinstance(activation, str) else None
    if bias is None:
        bias = tf.zeros([n], tf.float32)
    y = _ste_quantized_matmul(x2, bias, plan["packed"], plan["scale"], fused)
    y = tf.reshape(y, tf.concat([lead, f_shape], 0))
    y.set_shape(lead_static.concatenate(f_shape))
    if bias_after is not None:
        y = y + tf.cast(bias_after, y.dtype)
    if activation is not None and not isinstance(activation, str):
        y = activation(y)
    return y


_ACTIVATIONS = {
    None: lambda z: z,
    "relu": tf.nn.relu,
    "gelu": lambda z: tf.nn.gelu(z, approximate=False),
    "gelu_tanh": lambda z: tf.nn.gelu(z, approximate=True),
}


def _ste_quantized_matmul(x, bias, packed, scale, activation):
    """`quantized_matmul` with straight-through gradients for x and bias."""

    @tf.custom_gradient
    def op(x, bias):
        y = qops.quantized_matmul(x, packed, scale, bias, activation)

        def grad(dy):
            g = tf.cast(dy, tf.float32)
            if activation is not None:
                # As Keras: the activation's derivative at the quantized
                # pre-activation (recomputed: one more int8 matmul).
                pre = qops.quantized_matmul(
                    x, packed, scale, bias, output_dtype=tf.float32
                )
                with tf.GradientTape() as tape:
                    tape.watch(pre)
                    z = _ACTIVATIONS[activation](pre)
                g = tape.gradient(z, pre, output_gradients=g)
            w = qops.dequantize_kernel(packed, scale, tf.shape(x)[-1])
            dx = tf.matmul(g, w, transpose_b=True)
            return tf.cast(dx, x.dtype), tf.reduce_sum(g, axis=0)

        return y, grad

    return op(x, bias)
