"""The frozen base of an adapter on a `kbm.quantization` layer (QLoRA).

A quantized layer (`QuantizedDense`, `QuantizedEinsumDense`,
`QuantizedEmbedding`) holds a packed int8/int4 kernel and its scales
instead of a float kernel. An adapter on it runs the base through the
layer's own quantized op (whose straight-through gradient carries the
gradient to the input, so adapters in earlier layers train) and adds its
low-rank update in float32. Merging dequantizes, adds the update and
requantizes with the layer's mode and group size; the packed values it
replaces are kept to restore bit for bit.
"""

import numpy as np
import tensorflow as tf

from keras_bigmodels.adapters._targets import DENSE, EMBEDDING, layer_kind


def is_quantized(layer):
    """True for a `kbm.quantization` quantized layer (integer weights)."""
    return getattr(layer, "_kbm_spec", None) is not None and hasattr(
        layer, "_ordered_variables"
    )


def is_fake_quantized(layer):
    """True for a `kbm.quantization` QAT layer (fake-quantized kernel)."""
    return getattr(layer, "_kbm_qat", None) is not None


def kernel_shape(layer):
    """The float kernel's shape (in the layer's own, unquantized layout)."""
    kind = layer_kind(layer)
    if kind == EMBEDDING:
        return (int(layer.input_dim), int(layer.output_dim))
    if kind == DENSE:
        return (int(layer._kbm_k), int(layer._kbm_n))
    return tuple(int(d) for d in layer._kbm_plan["kernel_shape"])


def dequantized_kernel(layer):
    """The float32 kernel (table) the integer weights stand for."""
    if layer_kind(layer) == EMBEDDING:
        return tf.convert_to_tensor(layer.embeddings)
    return tf.convert_to_tensor(layer.kernel)


def project(layer, x):
    """`x` times the quantized kernel (no bias, no activation), float32.

    Runs the layer's quantized op (`kbm.ops.quantized_matmul` or
    `weight_only_matmul`); a non-contraction einsum runs on the
    dequantized kernel, as the layer itself does.
    """
    if layer_kind(layer) == DENSE:
        y = layer._matmul(x)
    else:
        plan = layer._kbm_plan
        if plan["matmul"]:
            y = layer._plan_matmul(x, plan)
        else:
            y = tf.einsum(
                layer.equation,
                tf.cast(x, tf.float32),
                tf.convert_to_tensor(layer.kernel),
            )
    return tf.cast(y, tf.float32)


_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "gelu": lambda z: tf.nn.gelu(z, approximate=False),
    "gelu_tanh": lambda z: tf.nn.gelu(z, approximate=True),
}


def epilogue(layer, z):
    """Bias and activation after the projection, as the layer applies them."""
    bias = getattr(layer, "bias", None)
    if bias is not None:
        z = z + tf.cast(bias, z.dtype)
    if layer_kind(layer) == DENSE:
        fused, after = layer._epilogue_activation()
        if fused is not None:
            z = _ACTIVATIONS[fused](z)
        z = tf.cast(z, layer.compute_dtype)
        return after(z) if after is not None else z
    z = tf.cast(z, layer.compute_dtype)
    if layer.activation is not None:
        z = layer.activation(z)
    return z


def rows(layer, ids):
    """The dequantized embedding rows of `ids`, float32."""
    q = tf.gather(layer.embeddings_q, ids)
    scale = tf.gather(layer.embeddings_scale, ids)
    return tf.cast(layer._dequantize_rows(q, scale), tf.float32)


def packed_values(layer):
    """Copies of the integer kernel and its scales (not the bias)."""
    return [np.array(v.numpy(), copy=True) for v in _packed(layer)]


def restore(layer, values):
    for var, value in zip(_packed(layer), values):
        var.assign(value)


def _packed(layer):
    return layer._ordered_variables()[:2]


def requantize(layer, kernel):
    """Writes float `kernel` (the layer's layout) as its integer weights.

    Uses the layer's own mode and group size.

    Returns:
        `(max |kernel - dequantized|, the rounding bound)`: the bound is
        half the largest new scale (symmetric round-to-nearest never errs
        by more).
    """
    kernel = tf.cast(kernel, tf.float32)
    if layer_kind(layer) == EMBEDDING:
        layer._assign_from_float(kernel)
    elif layer_kind(layer) == DENSE:
        layer._assign_from_float(kernel)
    else:
        layer._assign_from_float(layer._kernel_to_2d(kernel))
    error = tf.reduce_max(tf.abs(kernel - dequantized_kernel(layer)))
    bound = 0.5 * tf.reduce_max(tf.convert_to_tensor(_packed(layer)[1]))
    return float(error), float(bound)


def requantized_values(layer, kernel):
    """The integer weights `requantize` would write, without keeping them."""
    before = packed_values(layer)
    try:
        requantize(layer, kernel)
        return packed_values(layer)
    finally:
        restore(layer, before)


def output_scale_shape(layer, view):
    """How a per-output-column factor `[fan_out]` broadcasts on the output
    of an EinsumDense (DoRA's column scale), as (permutation, shape)."""
    equation = layer.equation.replace(" ", "")
    lhs, out = equation.split("->")
    ker = lhs.split(",")[1]
    if "..." in out and not out.startswith("..."):
        raise ValueError(
            f"Layer {layer.name!r}: DoRA on a quantized EinsumDense needs "
            "the output ellipsis first. Received: "
            f"equation={layer.equation!r}"
        )
    out = out.replace("...", "")
    free = [ker[i] for i in view.out_axes]
    in_out_order = [c for c in out if c in free]
    perm = [free.index(c) for c in in_out_order]
    shape = [view.out_shape[free.index(c)] if c in free else 1 for c in out]
    return perm, shape
