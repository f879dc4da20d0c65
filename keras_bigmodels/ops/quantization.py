"""Quantized matmuls for inference: int8 W8A8 and int8/int4 weight-only.

Weights are quantized once, symmetric, and stored pre-packed in the
kernels' panel layout (`pack_kernel`, layout version `PACK_VERSION`):

- int8: `q = clip(round(w / s), -127, 127)` with one scale per output
  channel, `s[n] = max_k |w[k, n]| / 127`, or one per group of
  `group_size` rows of K (`s` of shape `[K / group_size, N]`).
- int4: the same with 7 in place of 127 (`q` in [-7, 7]), grouped along K;
  two values share a byte along K (low nibble: even k, high nibble: odd k).

The panel layout of a `[K', N]` int8 matrix (K' = K for int8, K / 2 bytes
for int4) is `[ceil(N / 8), ceil(K' / 4), 8, 4]`: element
`[nb, kb, j, i] = q[4 kb + i, 8 nb + j]`, zero padded. One 32-byte load
then holds 4 consecutive k of 8 output channels.

`quantized_matmul` (W8A8) quantizes each row of `x` on the fly (symmetric,
`s_x = max |x_row| / 127`, `q_x = clip(round(x * (127 / max |x_row|)),
-127, 127)` in float32 with round-half-to-even), accumulates `q_x @ q_w`
exactly in int32, and applies the epilogue in float32:
`act(float32(acc) * (s_x * s_w[n]) + bias[n])`. A row of `x` holding NaN or
+-Inf gives NaN in that row of the output; an all-zero row gives
`act(bias)`, and so does a row with `max |x_row| < 2**-120` (`ROW_TINY`,
where `127 / max |x_row|` would overflow float32: such a row is treated as
zeros). The weight values must lie in [-127, 127] (as `quantize_kernel`
makes them; the AVX2 kernel relies on it).

`weight_only_matmul` multiplies float activations by the dequantized
weights (`q * s`) in float32: for small batches, where reading the weights
is the cost.

Gradients: the weights (integers) and their scales get none. `x` gets the
straight-through gradient: that of `act(x @ dequantize(w) + bias)`, so a
model can train adapters or earlier layers through a quantized layer.

Kernels: fused CPU kernels for float16, bfloat16 and float32 `x` (AVX2
variants chosen at run time, plus an AVX-512 VNNI W8A8 GEMM on CPUs with
it, an x86-64-v2 + AVX baseline otherwise; the W8A8 integer sums are exact
in all of them) when the op library has them (see
`kbm.ops.kernels_available()`). There are no GPU kernels: inputs on a GPU
run the references (with one warning). Otherwise, and with
`use_fused_kernel=False`, the pure-TensorFlow references below run, which
are the exact math (dequantize, then a float matmul) and the test oracle.
The weight-only kernel may scale each group's (or channel's) sum instead
of each weight: float32 rounding differences, within `TOLERANCES`.
"""

import math

import numpy as np
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops._utils import float_tensor

# Version of the packed weight layout. Layers store it with their packed
# kernel, so a future layout can refuse (or convert) an older one.
PACK_VERSION = 1
PANEL_N = 8  # Output channels per panel.
PANEL_K = 4  # Consecutive k (bytes) per channel in one panel row.

ACTIVATIONS = (None, "linear", "relu", "gelu", "gelu_tanh")
# weight_only_matmul runs its kernel up to this many rows of x (the
# memory-bound regime it is built for); with use_fused_kernel="auto",
# larger inputs dequantize the kernel and use TensorFlow's float matmul.
WEIGHT_ONLY_MAX_ROWS = 64
# Rows of x with max |x| below this quantize to zeros (127 / max |x| would
# overflow float32).
ROW_TINY = 2.0**-120
_QMAX = {8: 127, 4: 7}

# Kernel-vs-reference tolerances per output dtype. W8A8: the integer part
# is exact, the epilogue is a few float32 roundings (GELU's erf/tanh
# polynomials add a few ulps). Weight-only: float32 sums in another order.
TOLERANCES = {
    "int8": {
        tf.float32: {"rtol": 1e-5, "atol": 1e-5},
        tf.float16: {"rtol": 2e-3, "atol": 2e-3},
        tf.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
    },
    "weight_only": {
        tf.float32: {"rtol": 2e-5, "atol": 2e-5},
        tf.float16: {"rtol": 2e-3, "atol": 2e-3},
        tf.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
    },
}


# ----------------------------------------------------------------------------
# Quantizing and packing weights (pure TensorFlow; no kernel needed).
# ----------------------------------------------------------------------------


def _check_bits(bits):
    if bits not in _QMAX or isinstance(bits, bool):
        raise ValueError(f"bits must be 8 or 4. Received: bits={bits!r}")


def _check_group_size(group_size, k, bits):
    """Validates group_size against K; returns it (None = per channel)."""
    if group_size is None:
        if bits == 4:
            raise ValueError(
                "int4 weights need a group_size (e.g. 32, 64 or 128). "
                "Received: group_size=None"
            )
        return None
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, (int, np.integer))
        or group_size <= 0
        or group_size % 2
    ):
        raise ValueError(
            "group_size must be a positive even integer or None. "
            f"Received: group_size={group_size!r}"
        )
    if k is not None and k % group_size:
        raise ValueError(
            f"group_size must divide the kernel's input size K={k}. "
            f"Received: group_size={group_size}"
        )
    return int(group_size)


def quantize_kernel(kernel, bits=8, group_size=None):
    """Quantizes a float `[K, N]` kernel, symmetric, to int8 or int4 values.

    Args:
        kernel: Float tensor of shape `[K, N]` (a Dense kernel).
        bits: 8 or 4. Defaults to `8`.
        group_size: None for one scale per output channel (int8 only), or
            the number of consecutive rows of K sharing a scale; must be
            even and divide K. Defaults to `None`.

    Returns:
        `(kernel_q, kernel_scale)`: `kernel_q` int8 of shape `[K, N]` with
        values in [-127, 127] (int8) or [-7, 7] (int4), unpacked;
        `kernel_scale` float32 of shape `[N]` or `[K / group_size, N]`. A
        column (or group) of zeros gets scale 1.

    Example:

    ```python
    q, scale = kbm.ops.quantize_kernel(layer.kernel, bits=4, group_size=128)
    packed = kbm.ops.pack_kernel(q, bits=4)
    ```
    """
    _check_bits(bits)
    kernel = float_tensor(kernel, "kernel")
    if kernel.shape.rank != 2:
        raise ValueError(
            f"kernel must have shape [K, N]. Received: kernel.shape="
            f"{tuple(kernel.shape)}"
        )
    k, n = kernel.shape
    group_size = _check_group_size(group_size, k, bits)
    qmax = float(_QMAX[bits])
    w = tf.cast(kernel, tf.float32)
    if tf.executing_eagerly() and not bool(tf.reduce_all(tf.math.is_finite(w))):
        raise ValueError(
            "kernel holds NaN or Inf values and cannot be quantized."
        )
    if group_size is None:
        amax = tf.reduce_max(tf.abs(w), axis=0)
        scale = tf.where(amax > 0, amax / qmax, tf.ones_like(amax))
        q = tf.round(w / scale)
    else:
        wg = tf.reshape(w, [k // group_size, group_size, n])
        amax = tf.reduce_max(tf.abs(wg), axis=1)
        scale = tf.where(amax > 0, amax / qmax, tf.ones_like(amax))
        q = tf.reshape(tf.round(wg / scale[:, None, :]), [k, n])
    q = tf.cast(tf.clip_by_value(q, -qmax, qmax), tf.int8)
    return q, scale


def _dim(t, axis):
    """`t.shape[axis]` where it is static, else the `tf.shape` scalar: the
    references then trace to fewer nodes (a quantized model's stock-ops
    SavedModel holds one copy of them per layer and signature)."""
    static = t.shape[axis]
    return static if static is not None else tf.shape(t)[axis]


def _nibble_pack(q):
    """int4 values `[K, N]` (K even) -> bytes `[K / 2, N]` along K."""
    k = q.shape[0]
    if k is not None and k % 2:
        raise ValueError(
            f"int4 kernels need an even K. Received: kernel_q.shape="
            f"{tuple(q.shape)}"
        )
    pairs = tf.reshape(tf.cast(q, tf.int32), [-1, 2, _dim(q, 1)])
    low = tf.bitwise.bitwise_and(pairs[:, 0], 0xF)
    high = tf.bitwise.left_shift(tf.bitwise.bitwise_and(pairs[:, 1], 0xF), 4)
    byte = tf.bitwise.bitwise_or(low, high)
    # Back to a signed byte: 128..255 -> -128..-1.
    byte = tf.where(byte >= 128, byte - 256, byte)
    return tf.cast(byte, tf.int8)


def _nibble_unpack(b):
    """bytes `[K / 2, N]` -> int4 values `[K, N]` as int8 in [-8, 7]."""
    v = tf.bitwise.bitwise_and(tf.cast(b, tf.int32), 0xFF)
    low = tf.bitwise.bitwise_and(v, 0xF)
    high = tf.bitwise.right_shift(v, 4)
    low = tf.where(low >= 8, low - 16, low)
    high = tf.where(high >= 8, high - 16, high)
    both = tf.stack([low, high], axis=1)  # [K/2, 2, N]
    return tf.cast(tf.reshape(both, [-1, _dim(b, 1)]), tf.int8)


def pack_kernel(kernel_q, bits=8):
    """Packs quantized values `[K, N]` into the kernels' panel layout.

    Args:
        kernel_q: int8 tensor `[K, N]` from `quantize_kernel`.
        bits: 8 or 4 (int4 values are first paired into bytes along K;
            K must be even). Defaults to `8`.

    Returns:
        int8 tensor `[ceil(N / 8), ceil(K' / 4), 8, 4]`, K' = K (int8) or
        K / 2 (int4), zero padded.
    """
    _check_bits(bits)
    kernel_q = tf.convert_to_tensor(kernel_q)
    if kernel_q.dtype != tf.int8 or kernel_q.shape.rank != 2:
        raise ValueError(
            "kernel_q must be an int8 tensor of shape [K, N]. Received: "
            f"kernel_q.dtype={kernel_q.dtype.name}, "
            f"kernel_q.shape={tuple(kernel_q.shape)}"
        )
    b = _nibble_pack(kernel_q) if bits == 4 else kernel_q
    kb, n = tf.shape(b)[0], tf.shape(b)[1]
    kp = -(-kb // PANEL_K) * PANEL_K
    np_ = -(-n // PANEL_N) * PANEL_N
    b = tf.pad(b, [[0, kp - kb], [0, np_ - n]])
    b = tf.reshape(b, [kp // PANEL_K, PANEL_K, np_ // PANEL_N, PANEL_N])
    return tf.transpose(b, [2, 0, 3, 1])


def unpack_kernel(packed, k, n, bits=8):
    """Inverse of `pack_kernel`: the int8 values `[K, N]` (int4 in [-8, 7]).

    Args:
        packed: The packed int8 tensor.
        k, n: The kernel's logical shape (ints or scalar tensors).
        bits: 8 or 4. Defaults to `8`.
    """
    _check_bits(bits)
    packed = tf.convert_to_tensor(packed)
    nb, kb = _dim(packed, 0), _dim(packed, 1)
    b = tf.transpose(packed, [1, 3, 0, 2])
    b = tf.reshape(b, [kb * PANEL_K, nb * PANEL_N])
    if bits == 4:
        b = _nibble_unpack(b)
    if isinstance(k, int) and isinstance(n, int) and tuple(b.shape) == (k, n):
        return b  # Static shapes and no padding: nothing to slice off.
    return b[:k, :n]


def dequantize_kernel(packed, kernel_scale, k, bits=8):
    """The float32 kernel `[K, N]` a packed kernel stands for (`q * s`)."""
    kernel_scale = tf.cast(kernel_scale, tf.float32)
    n = _dim(kernel_scale, -1)
    q = tf.cast(unpack_kernel(packed, k, n, bits), tf.float32)
    if kernel_scale.shape.rank == 1:
        return q * kernel_scale
    groups = _dim(kernel_scale, 0)
    qg = tf.reshape(q, [groups, -1, n])
    return tf.reshape(qg * tf.expand_dims(kernel_scale, 1), [k, n])


# ----------------------------------------------------------------------------
# Checks shared by the two ops.
# ----------------------------------------------------------------------------


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {ACTIVATIONS}. "
            f"Received: activation={activation!r}"
        )
    return None if activation == "linear" else activation


def _check_output_dtype(output_dtype, x):
    if output_dtype is None:
        return x.dtype
    dtype = tf.as_dtype(output_dtype)
    if dtype not in (x.dtype, tf.float32):
        raise ValueError(
            "output_dtype must be None, float32 or the dtype of x "
            f"({x.dtype.name}). Received: output_dtype={dtype.name}"
        )
    return dtype


def _prepare(x, packed, kernel_scale, bias, bits, group_size, op):
    """Validates the inputs; returns (x, packed, scale, bias, k, n)."""
    x = float_tensor(x, "x")
    if x.dtype == tf.float64:
        raise TypeError(
            f"{op} takes float16, bfloat16 or float32 inputs. "
            "Received: x.dtype=float64"
        )
    if x.shape.rank is not None and x.shape.rank < 1:
        raise ValueError(
            f"x must have rank >= 1 (the matmul is over its last axis). "
            f"Received: x.shape={tuple(x.shape)}"
        )
    packed = tf.convert_to_tensor(packed)
    if (
        packed.dtype != tf.int8
        or packed.shape.rank != 4
        or tuple(packed.shape[2:]) != (PANEL_N, PANEL_K)
    ):
        raise ValueError(
            "kernel_q must be a packed int8 kernel of shape "
            f"[ceil(N/{PANEL_N}), ceil(K/{PANEL_K}), {PANEL_N}, {PANEL_K}] "
            "(see kbm.ops.pack_kernel). Received: "
            f"kernel_q.dtype={packed.dtype.name}, "
            f"kernel_q.shape={tuple(packed.shape)}"
        )
    scale = tf.convert_to_tensor(kernel_scale)
    if scale.dtype != tf.float32 or scale.shape.rank not in (1, 2):
        raise ValueError(
            "kernel_scale must be float32 of shape [N] or [groups, N]. "
            f"Received: kernel_scale.dtype={scale.dtype.name}, "
            f"kernel_scale.shape={tuple(scale.shape)}"
        )
    k = x.shape[-1]
    n = scale.shape[-1]
    kbytes = None if k is None else (k // 2 if bits == 4 else k)
    if bits == 4 and k is not None and k % 2:
        raise ValueError(f"int4 kernels need an even K. Received: K={k}")
    expect = (
        None if n is None else math.ceil(n / PANEL_N),
        None if kbytes is None else math.ceil(kbytes / PANEL_K),
    )
    got = tuple(packed.shape[:2])
    if any(
        e is not None and g is not None and e != g for e, g in zip(expect, got)
    ):
        raise ValueError(
            f"kernel_q's shape {tuple(packed.shape)} does not match K={k} "
            f"(the last axis of x) and N={n} (the length of kernel_scale): "
            f"expected [{expect[0]}, {expect[1]}, {PANEL_N}, {PANEL_K}]."
        )
    if scale.shape.rank == 2:
        groups = scale.shape[0]
        if group_size is not None and k is not None and groups is not None:
            if groups * group_size != k:
                raise ValueError(
                    f"kernel_scale has {groups} groups of group_size="
                    f"{group_size}, which does not cover K={k}."
                )
        elif (
            k is not None and groups is not None and (groups == 0 or k % groups)
        ):
            raise ValueError(
                f"kernel_scale's {groups} groups do not divide K={k}."
            )
    elif group_size is not None:
        raise ValueError(
            "group_size is given but kernel_scale has one scale per output "
            f"channel (shape {tuple(scale.shape)}). Received: "
            f"group_size={group_size}"
        )
    if bias is not None:
        bias = tf.convert_to_tensor(bias)
        if bias.dtype not in (tf.float32, x.dtype) or bias.shape.rank != 1:
            raise ValueError(
                "bias must be a float vector of shape [N]. Received: "
                f"bias.dtype={bias.dtype.name}, bias.shape={tuple(bias.shape)}"
            )
        if n is not None and bias.shape[0] is not None and bias.shape[0] != n:
            raise ValueError(
                f"bias must have shape [{n}] (N, the length of "
                f"kernel_scale). Received: bias.shape={tuple(bias.shape)}"
            )
        bias = tf.cast(bias, tf.float32)
    return x, packed, scale, bias, k, n


def _epilogue(y, bias, activation):
    """float32 `act(y + bias)`."""
    if bias is not None:
        y = y + bias
    if activation == "relu":
        y = tf.nn.relu(y)
    elif activation == "gelu":
        y = 0.5 * y * (1.0 + tf.math.erf(y * math.sqrt(0.5)))
    elif activation == "gelu_tanh":
        u = math.sqrt(2.0 / math.pi) * (y + 0.044715 * y * y * y)
        y = y * tf.sigmoid(2.0 * u)
    return y


def _flatten(x):
    return tf.reshape(x, [-1, _dim(x, -1)]), tf.shape(x)[:-1]


def _straight_through(forward, x, packed, scale, bias, activation, bits, k):
    """Wraps `forward(x)` with the straight-through gradient for x only."""

    @tf.custom_gradient
    def op(x):
        y = forward(x)

        def grad(dy, variables=None):
            w = dequantize_kernel(packed, scale, k, bits)
            with tf.GradientTape() as tape:
                tape.watch(x)
                x2, lead = _flatten(tf.cast(x, tf.float32))
                z = _epilogue(tf.matmul(x2, w), bias, activation)
                z = tf.reshape(z, tf.concat([lead, tf.shape(w)[-1:]], 0))
            dx = tape.gradient(z, x, output_gradients=tf.cast(dy, z.dtype))
            if variables is not None:
                return dx, [None] * len(variables)
            return dx

        return y, grad

    return op(x)


# ----------------------------------------------------------------------------
# W8A8: dynamic int8 activations x int8 weights.
# ----------------------------------------------------------------------------


def quantize_rows(x):
    """Per-row symmetric int8 quantization of `x`, as the W8A8 kernel does.

    Returns:
        `(q, scale, finite)`: int8 `q` like `x`; float32 `scale` of shape
        `x.shape[:-1]` (`max |row| / 127`); bool `finite`, False for rows
        holding NaN or Inf (their q is 0). Rows with `max |row| <
        ROW_TINY` give q = 0 and scale 0.
    """
    xf = tf.cast(x, tf.float32)
    finite_values = tf.math.is_finite(xf)
    finite = tf.reduce_all(finite_values, axis=-1)
    amax = tf.reduce_max(tf.abs(tf.where(finite_values, xf, 0.0)), -1)
    amax = tf.where(finite & (amax >= ROW_TINY), amax, 0.0)
    inv = tf.math.divide_no_nan(tf.constant(127.0), amax)
    q = tf.clip_by_value(tf.round(xf * tf.expand_dims(inv, -1)), -127.0, 127.0)
    return tf.cast(q, tf.int8), amax / 127.0, finite


def quantized_matmul(
    x,
    kernel_q,
    kernel_scale,
    bias=None,
    activation=None,
    output_dtype=None,
    use_fused_kernel="auto",
):
    """`act(x @ w + bias)` with x quantized per row and int8 weights (W8A8).

    Each row of `x` is quantized to int8 on the fly (symmetric, dynamic);
    the products are summed exactly in int32, then dequantized and passed
    through the epilogue in float32 (see the module docstring for the exact
    formulas, the NaN/Inf rule and the gradient).

    Args:
        x: float16, bfloat16 or float32 tensor `[..., K]`.
        kernel_q: The packed int8 kernel (`kbm.ops.pack_kernel` of
            `kbm.ops.quantize_kernel(w, bits=8)`).
        kernel_scale: float32 `[N]`, one scale per output channel.
        bias: float vector `[N]` or None. Defaults to `None`.
        activation: None, `"linear"`, `"relu"`, `"gelu"` (exact) or
            `"gelu_tanh"`. Defaults to `None`.
        output_dtype: None for the dtype of `x`, or float32. Defaults to
            `None`.
        use_fused_kernel: `"auto"`, `True` or `False`, as in
            `kbm.ops.layer_norm`. Defaults to `"auto"`.

    Returns:
        A tensor `[..., N]`.

    Example:

    ```python
    q, s = kbm.ops.quantize_kernel(dense.kernel)
    y = kbm.ops.quantized_matmul(x, kbm.ops.pack_kernel(q), s, dense.bias)
    ```
    """
    activation = _check_activation(activation)
    with tf.name_scope("quantized_matmul"):
        x, packed, scale, bias, k, n = _prepare(
            x, kernel_q, kernel_scale, bias, 8, None, "quantized_matmul"
        )
        if scale.shape.rank != 1:
            raise ValueError(
                "quantized_matmul takes one scale per output channel: "
                "kernel_scale must have shape [N]. Received: "
                f"kernel_scale.shape={tuple(scale.shape)}"
            )
        out_dtype = _check_output_dtype(output_dtype, x)
        lib = _loader.select("quantized_matmul", use_fused_kernel, (x,))
        k_dyn = _dim(x, -1)

        def forward(x):
            if lib is None:
                return _quantized_matmul_reference(
                    x, packed, scale, bias, activation, out_dtype
                )
            return lib.kbm_quantized_mat_mul(
                x,
                packed,
                scale,
                tf.zeros([0], tf.float32) if bias is None else bias,
                activation=activation or "linear",
                output_dtype=out_dtype,
            )

        return _straight_through(
            forward, x, packed, scale, bias, activation, 8, k_dyn
        )


def _quantized_matmul_reference(x, packed, scale, bias, activation, out_dtype):
    """W8A8 in plain TensorFlow: fallback and oracle.

    The int32 sums are exact: they are computed in float64, which holds
    every sum of K <= 2**38 / 127**2 products exactly.
    """
    # Inputs of known rank >= 2 stay as they are (matmul broadcasts a 2-D
    # kernel over leading axes); others are flattened to 2-D and back. The
    # stock-ops SavedModel of a quantized model holds this graph once per
    # layer and signature, so it is kept small: expand_dims rather than
    # [:, None] (one node instead of a strided slice and three constants).
    rank = x.shape.rank
    x2, lead = (x, None) if rank is not None and rank >= 2 else _flatten(x)
    k = _dim(x2, -1)
    n = _dim(scale, 0)
    q, sx, finite = quantize_rows(x2)
    w = tf.cast(unpack_kernel(packed, k, n, 8), tf.float64)
    acc = tf.matmul(tf.cast(q, tf.float64), w)  # Exact integers.
    y = tf.cast(acc, tf.float32) * (tf.expand_dims(sx, -1) * scale)
    y = _epilogue(y, bias, activation)
    y = tf.where(tf.expand_dims(finite, -1), y, float("nan"))
    if lead is not None:
        y = tf.reshape(y, tf.concat([lead, [n]], 0))
    return tf.cast(y, out_dtype)


# ----------------------------------------------------------------------------
# Weight-only: float activations x int8/int4 weights.
# ----------------------------------------------------------------------------


def weight_only_matmul(
    x,
    kernel_q,
    kernel_scale,
    group_size=None,
    bits=8,
    bias=None,
    activation=None,
    output_dtype=None,
    use_fused_kernel="auto",
):
    """`act(x @ dequantize(w) + bias)` with int8 or int4 weights.

    For small batches (the kernel is tuned for up to 16 rows), where the
    time goes to reading the weights: int8 reads a quarter, int4 an eighth
    of float32's bytes. The activations stay float; the sums are float32.
    With `use_fused_kernel="auto"`, an input of more than
    `WEIGHT_ONLY_MAX_ROWS` (64) rows, where the work is compute-bound,
    runs the reference instead (dequantize, then TensorFlow's float
    matmul), which is faster there; `True` always runs the kernel.

    Args:
        x: float16, bfloat16 or float32 tensor `[..., K]`.
        kernel_q: The packed kernel (`kbm.ops.pack_kernel(q, bits)`).
        kernel_scale: float32 `[N]` (per channel) or `[K / group_size, N]`.
        group_size: The rows of K per scale, or None for per-channel
            scales. Required for int4. Defaults to `None`.
        bits: 8 or 4. Defaults to `8`.
        bias: float vector `[N]` or None. Defaults to `None`.
        activation: As in `quantized_matmul`. Defaults to `None`.
        output_dtype: None for the dtype of `x`, or float32. Defaults to
            `None`.
        use_fused_kernel: `"auto"`, `True` or `False`. Defaults to `"auto"`.

    Returns:
        A tensor `[..., N]`.

    Example:

    ```python
    q, s = kbm.ops.quantize_kernel(w, bits=4, group_size=128)
    y = kbm.ops.weight_only_matmul(
        x, kbm.ops.pack_kernel(q, bits=4), s, group_size=128, bits=4)
    ```
    """
    _check_bits(bits)
    activation = _check_activation(activation)
    with tf.name_scope("weight_only_matmul"):
        x, packed, scale, bias, k, n = _prepare(
            x,
            kernel_q,
            kernel_scale,
            bias,
            bits,
            group_size,
            "weight_only_matmul",
        )
        if k is not None:
            _check_group_size(group_size, k, bits)
        elif group_size is None and bits == 4:
            _check_group_size(None, None, 4)
        if scale.shape.rank == 1 and bits == 4:
            raise ValueError(
                "int4 weights need grouped scales of shape [K / group_size, "
                f"N]. Received: kernel_scale.shape={tuple(scale.shape)}"
            )
        if scale.shape.rank == 2 and group_size is None:
            raise ValueError(
                "kernel_scale is grouped (shape "
                f"{tuple(scale.shape)}): pass its group_size."
            )
        out_dtype = _check_output_dtype(output_dtype, x)
        lib = _loader.select("weight_only_matmul", use_fused_kernel, (x,))
        k_dyn = _dim(x, -1)

        def reference(x):
            return _weight_only_matmul_reference(
                x, packed, scale, bias, activation, out_dtype, bits
            )

        def fused(x):
            return lib.kbm_weight_only_mat_mul(
                x,
                packed,
                scale,
                tf.zeros([0], tf.float32) if bias is None else bias,
                bits=bits,
                group_size=group_size or 0,
                activation=activation or "linear",
                output_dtype=out_dtype,
            )

        def forward(x):
            if lib is None:
                return reference(x)
            if use_fused_kernel is True:
                return fused(x)
            # Past WEIGHT_ONLY_MAX_ROWS rows the work is compute-bound and
            # TensorFlow's float GEMM on the dequantized kernel is faster
            # than decoding the weights in the kernel's inner loop.
            rows = tf.reduce_prod(tf.shape(x)[:-1])
            return tf.cond(
                rows <= WEIGHT_ONLY_MAX_ROWS,
                lambda: fused(x),
                lambda: reference(x),
            )

        return _straight_through(
            forward, x, packed, scale, bias, activation, bits, k_dyn
        )


def _weight_only_matmul_reference(
    x, packed, scale, bias, activation, out_dtype, bits
):
    """Dequantize, then a float32 matmul: fallback and oracle."""
    x2, lead = _flatten(tf.cast(x, tf.float32))
    k = _dim(x2, -1)
    w = dequantize_kernel(packed, scale, k, bits)
    y = _epilogue(tf.matmul(x2, w), bias, activation)
    y = tf.reshape(y, tf.concat([lead, [_dim(w, -1)]], 0))
    return tf.cast(y, out_dtype)
