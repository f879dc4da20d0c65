"""Attention projections as plain 2-D matmuls.

Keras's attention layers project with `EinsumDense` sublayers: the query,
key and value ones compute `abc,cde->abde` and the output one
`abcd,cde->abe` (in GroupedQueryAttention's letters, `bqm,muh->bquh` and
`bquh,uhm->bqm`). TensorFlow runs each einsum as a batched matmul
(`BatchMatMulV2`), and each bias gradient as a `Sum`. Here the same math
runs on the sublayers' own variables as one `MatMul` over all positions,
for self-attention one `MatMul` against the three kernels side by side (a
`[hidden, 3 * heads * head_dim]` matrix), whose backward pass is one
matmul for the input's gradient and one for the kernels'. The variables,
their names and the saved weights are unchanged.

Only plain sublayers take this path: exactly Keras's `EinsumDense` with
one of those equations, a bias over all output axes or none, no
activation, no activity regularizer, not quantized, without Keras's LoRA
and without a `call` of its own on the instance (kbm's adapters install
one). Anything else (a subclass, a quantized or adapted layer, a custom
equation) runs through the sublayer's own call. The input is cast to the
sublayer's compute dtype, as its own call would (tf-keras casts only a
layer's first argument, so the value of a mixed-precision attention layer
arrives in float32).
"""

import tensorflow as tf

from keras_bigmodels.backend import keras

# Tests switch this off to compare with the sublayers' own calls.
ENABLED = True


def _projection_kind(equation):
    """The projection `equation` computes: "in" for `abc,cde->abde`, "out"
    for `abcd,cde->abe` (any distinct letters), else None."""
    try:
        inputs, out = equation.split("->")
        lhs, rhs = inputs.split(",")
    except (AttributeError, ValueError):
        return None
    if len(rhs) != 3 or len(lhs) not in (3, 4):
        return None
    contracted = lhs[2:]  # One axis for "in", two (heads, dim) for "out".
    if rhs[: len(contracted)] != contracted or len(set(lhs + rhs)) != 5:
        return None
    if out != lhs[:2] + rhs[len(contracted) :]:
        return None
    return "in" if len(lhs) == 3 else "out"


def _plain(dense, kind):
    equation = getattr(dense, "equation", None)
    if type(dense) is not keras.layers.EinsumDense or not dense.built:
        return False
    if _projection_kind(equation) != kind:
        return False
    out_axes = equation.split("->")[1][2:]
    activation = getattr(dense, "activation", None)
    return (
        "call" not in vars(dense)
        and getattr(dense, "bias_axes", None) in (None, out_axes)
        and activation in (None, keras.activations.linear)
        and getattr(dense, "activity_regularizer", None) is None
        and getattr(dense, "quantization_mode", None) is None
        and not getattr(dense, "lora_enabled", False)
    )


def _kernel_2d(dense, dtype):
    kernel = tf.convert_to_tensor(dense.kernel)
    return tf.cast(tf.reshape(kernel, [kernel.shape[0], -1]), dtype)


def _bias_1d(dense, dtype):
    if dense.bias is None:
        return None
    return tf.cast(tf.reshape(tf.convert_to_tensor(dense.bias), [-1]), dtype)


def input_projections(denses, inputs):
    """Projects `inputs` (`[B, T, H]`) with each of `denses`, or None.

    `denses`: the query/key/value `EinsumDense` sublayers (`abc,cde->abde`)
    applied to the same tensor. Returns their outputs (`[B, T, N, D]`
    each), computed by one matmul, or None when a sublayer is not plain or
    the input is not a rank-3 float tensor (the caller then calls the
    sublayers).
    """
    if not ENABLED or not all(_plain(d, "in") for d in denses):
        return None
    x = tf.convert_to_tensor(inputs)
    dtypes = {d.compute_dtype for d in denses}
    if x.shape.rank != 3 or not x.dtype.is_floating or len(dtypes) != 1:
        return None
    x = tf.cast(x, dtypes.pop())
    kernels = [_kernel_2d(d, x.dtype) for d in denses]
    biases = [_bias_1d(d, x.dtype) for d in denses]
    widths = [k.shape[1] for k in kernels]
    shape = tf.shape(x)
    rows = tf.reshape(x, [-1, x.shape[-1] or shape[-1]])
    kernel = kernels[0] if len(kernels) == 1 else tf.concat(kernels, axis=1)
    y = tf.matmul(rows, kernel)
    if any(b is not None for b in biases):
        bias = tf.concat(
            [
                b if b is not None else tf.zeros([w], x.dtype)
                for b, w in zip(biases, widths)
            ],
            axis=0,
        )
        y = tf.nn.bias_add(y, bias)
    parts = [y] if len(denses) == 1 else tf.split(y, widths, axis=1)
    outputs = []
    for d, part in zip(denses, parts):
        heads, dim = d.kernel.shape[1], d.kernel.shape[2]
        out = tf.reshape(part, [shape[0], shape[1], heads, dim])
        outputs.append(out)
    return outputs


def output_projection(dense, inputs):
    """`dense` (`abcd,cde->abe`) of `inputs` (`[B, T, N, D]`) as one
    matmul, or None when `dense` is not plain (see `input_projections`)."""
    if not ENABLED or not _plain(dense, "out"):
        return None
    x = tf.convert_to_tensor(inputs)
    if x.shape.rank != 4 or not x.dtype.is_floating:
        return None
    x = tf.cast(x, dense.compute_dtype)
    kernel = tf.convert_to_tensor(dense.kernel)
    width = kernel.shape[0] * kernel.shape[1]
    shape = tf.shape(x)
    y = tf.matmul(
        tf.reshape(x, [-1, width]),
        tf.cast(tf.reshape(kernel, [width, kernel.shape[2]]), x.dtype),
    )
    bias = _bias_1d(dense, x.dtype)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, [shape[0], shape[1], kernel.shape[2]])


def project(denses, query, key, value):
    """The query, key and value projections (`denses`, in that order):
    one matmul for those applied to the same tensor where the sublayers
    are plain, else each sublayer's own call."""
    if query is key and key is value:
        out = input_projections(denses, query)
        if out is not None:
            return out
    elif key is value:
        q = input_projections(denses[:1], query)
        kv = input_projections(denses[1:], key)
        if q is not None and kv is not None:
            return (*q, *kv)
    return tuple(d(t) for d, t in zip(denses, (query, key, value)))


def project_output(dense, inputs):
    """The output projection: one matmul where `dense` is plain, else its
    own call."""
    out = output_projection(dense, inputs)
    return dense(inputs) if out is None else out
