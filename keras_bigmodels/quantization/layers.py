"""Quantized layer classes that `kbm.quantization.quantize` converts to.

Each class subclasses the Keras layer it replaces (`QuantizedDense(Dense)`
and so on), keeps its constructor arguments, and adds one config entry,
`kbm_quantization = {"mode", "group_size", "pack_version"}`. `build` creates
the integer weights in place of the float ones, so a layer rebuilt from its
config (a `.keras` load) has the quantized variables the saved ones load
into. Weights are saved as a plain ordered list of the layer's variables.

`quantize` converts a built float layer in place: the layer object keeps its
identity (its class is switched to the quantized one), its float kernel is
dropped and the integer weights are computed from it.
"""

import tensorflow as tf

from keras_bigmodels import ops
from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.ops import quantization as qops

MODES = ("int8", "int8_weight_only", "int4_weight_only")
# The scales stay float32 under a mixed precision policy.
_NO_AUTOCAST = (
    {"experimental_autocast": False} if IS_LEGACY_KERAS else {"autocast": False}
)
SPEC_KEY = "kbm_quantization"

# Keras activation names the quantized matmul epilogue computes itself.
_EPILOGUE = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_tanh"}


def check_mode(mode):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"mode must be one of {MODES}. Received: mode={mode!r}"
        )
    return mode


def check_group_size(group_size):
    if (
        isinstance(group_size, bool)
        or not isinstance(group_size, int)
        or group_size <= 0
        or group_size % 2
    ):
        raise ValueError(
            "group_size must be a positive even integer. "
            f"Received: group_size={group_size!r}"
        )
    return group_size


def make_spec(mode, group_size=None):
    """The `kbm_quantization` config entry of a quantized layer."""
    return {
        "mode": check_mode(mode),
        "group_size": group_size,
        "pack_version": qops.PACK_VERSION,
    }


def _check_spec(spec, layer_name, key=SPEC_KEY):
    """A layer's saved spec, checked (a config may have been edited)."""
    if not isinstance(spec, dict) or "mode" not in spec:
        raise ValueError(
            f"Layer {layer_name!r}: {key} must be a dict with a 'mode'. "
            f"Received: {key}={spec!r}"
        )
    mode = check_mode(spec["mode"])
    version = spec.get("pack_version", qops.PACK_VERSION)
    if version != qops.PACK_VERSION:
        raise ValueError(
            f"Layer {layer_name!r} holds packed weights of layout version "
            f"{version!r}; this keras_bigmodels reads version "
            f"{qops.PACK_VERSION}. Re-quantize the float model."
        )
    group_size = spec.get("group_size")
    if group_size is not None or _bits(mode) == 4:
        check_group_size(group_size)
    return dict(spec, pack_version=qops.PACK_VERSION)


def _bits(mode):
    return 4 if mode == "int4_weight_only" else 8


def int4_group(k, group_size, layer_name):
    """The group size an int4 layer with input size `k` uses."""
    if k % 2:
        raise ValueError(
            f"Layer {layer_name!r}: int4 weights need an even input size; "
            f"it is {k}. Exclude the layer or use an int8 mode."
        )
    if k % group_size == 0:
        return group_size
    if k < group_size:
        return k  # One group over the whole input.
    raise ValueError(
        f"Layer {layer_name!r}: group_size={group_size} does not divide its "
        f"input size {k}. Pass a group_size that divides it, or exclude the "
        "layer."
    )


def _activation_name(activation):
    if activation is None:
        return None
    try:
        name = keras.activations.serialize(activation)
    except Exception:  # An arbitrary callable.
        return "custom"
    if isinstance(name, dict):
        name = name.get("config", name.get("class_name"))
    return name if isinstance(name, str) else "custom"


def _drop_variable(layer, name):
    """`del layer.<name>` for a variable, without the `gc.collect()` that
    Keras's `Layer.__delattr__` runs after each one (about 0.6 s per layer
    in a process holding a large model: most of quantizing MiniLM)."""
    layer._untrack_variable(getattr(layer, name))
    super(keras.layers.Layer, layer).__delattr__(name)


def _with_tracking(layer, fn):
    """Runs `fn` with the layer's variable tracker unlocked (Keras 3)."""
    if IS_LEGACY_KERAS:
        # tf-keras tracks on assignment (there is no lock) and names a
        # variable after the name scope it is made in, as `build` does.
        with tf.name_scope(layer._name_scope()):
            fn()
        return
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        fn()
    finally:
        if locked:
            layer._tracker.lock()


def set_plain(obj, name, value):
    """Sets a plain Python attribute, bypassing tf-keras's tracking.

    tf-keras wraps a dict assigned to a layer attribute in a tracked
    `_DictWrapper` (a checkpoint dependency); kbm's specs are plain config.
    """
    if IS_LEGACY_KERAS:
        object.__setattr__(obj, name, value)
    else:
        setattr(obj, name, value)


def float_weight(layer, name):
    """The float variable `name` ("kernel", "embeddings") of a Keras layer.

    Keras 3 layers hold it as `_<name>` behind a `<name>` property; tf-keras
    layers as the plain attribute `<name>`, which the kbm subclasses' own
    `<name>` properties hide (so it is read from the instance dict).
    """
    if IS_LEGACY_KERAS:
        return layer.__dict__[name]
    return getattr(layer, "_" + name)


def set_float_weight(layer, name, value):
    """The setter of a kbm subclass's `<name>` property (a Keras `build`)."""
    if IS_LEGACY_KERAS:
        # tf-keras's __setattr__ already tracked `value` under `name`.
        layer.__dict__[name] = value
    else:
        setattr(layer, "_" + name, value)


def _drop_float_weight(layer, name):
    """Deletes a float layer's variable `name` and stops tracking it."""
    if not IS_LEGACY_KERAS:
        _drop_variable(layer, "_" + name)
        return
    var = layer.__dict__[name]
    delattr(layer, name)
    for attr in ("_trainable_weights", "_non_trainable_weights"):
        weights = layer.__dict__.get(attr)
        if weights is not None:
            object.__setattr__(
                layer, attr, [w for w in weights if w is not var]
            )
    deps = layer.__dict__.get("_self_unconditional_checkpoint_dependencies")
    if deps is not None:
        deps[:] = [d for d in deps if d.ref is not var]
    names = layer.__dict__.get("_self_unconditional_dependency_names")
    if names is not None and names.get(name) is var:
        del names[name]


class _QuantizedMixin:
    """Shared state: the spec, variable save/load and the refusal to train."""

    def _set_spec(self, spec):
        set_plain(self, "_kbm_spec", _check_spec(spec, self.name))

    @property
    def quantization_spec(self):
        """The layer's `{"mode", "group_size", "pack_version"}`."""
        return dict(self._kbm_spec)

    def _ordered_variables(self):
        raise NotImplementedError

    def save_own_variables(self, store):
        for i, v in enumerate(self._ordered_variables()):
            store[str(i)] = v

    def load_own_variables(self, store):
        variables = self._ordered_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Quantized layer {self.name!r} expected {len(variables)} "
                f"variables ({[v.name for v in variables]}), but received "
                f"{len(store.keys())} while loading."
            )
        for i, v in enumerate(variables):
            v.assign(store[str(i)])

    def get_config(self):
        config = super().get_config()
        config.pop("quantization_config", None)
        config[SPEC_KEY] = self.quantization_spec
        return config

    @classmethod
    def _swap_in(cls, layer, weight, spec, build):
        """Turns a built float layer into `cls` in place: its float
        `weight` is dropped and `build(shape)` adds the quantized variables
        (under the layer's tracking). Returns the float weight as float32,
        for the caller to quantize into them."""
        value = tf.convert_to_tensor(float_weight(layer, weight))
        shape = tuple(value.shape)

        def swap():
            _drop_float_weight(layer, weight)
            layer.__class__ = cls
            layer._set_spec(spec)
            build(shape)

        _with_tracking(layer, swap)
        return tf.cast(value, tf.float32)

    def quantize(self, mode=None, *args, **kwargs):
        raise ValueError(
            f"Layer {self.name!r} is already quantized by keras_bigmodels "
            f"(mode {self._kbm_spec['mode']!r})."
        )

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} does not support LoRA."
        )

    def _add_int(self, name, shape, dtype="int8"):
        return self.add_weight(
            name=name,
            shape=tuple(int(d) for d in shape),
            initializer="zeros",
            dtype=dtype,
            trainable=False,
            **_NO_AUTOCAST,
        )

    def _add_scale(self, name, shape):
        return self.add_weight(
            name=name,
            shape=tuple(int(d) for d in shape),
            initializer="ones",
            dtype="float32",
            trainable=False,
            **_NO_AUTOCAST,
        )


# ----------------------------------------------------------------------------
# Matmul layers (Dense, EinsumDense): packed [K, N] kernels.
# ----------------------------------------------------------------------------


class _MatmulMixin(_QuantizedMixin):
    """A `[K, N]` kernel packed for the kbm quantized matmul ops."""

    def _build_packed(self, k, n):
        mode = self._kbm_spec["mode"]
        bits = _bits(mode)
        if bits == 4:
            group = int4_group(k, self._kbm_spec["group_size"], self.name)
            self._kbm_spec["group_size"] = group
            scale_shape = (k // group, n)
            kbytes = k // 2
        else:
            self._kbm_spec["group_size"] = None
            scale_shape = (n,)
            kbytes = k
        self._kbm_k, self._kbm_n = int(k), int(n)
        packed_shape = (
            -(-n // qops.PANEL_N),
            -(-kbytes // qops.PANEL_K),
            qops.PANEL_N,
            qops.PANEL_K,
        )
        self.kernel_q = self._add_int("kernel_q", packed_shape)
        self.kernel_scale = self._add_scale("kernel_scale", scale_shape)

    def _assign_from_float(self, kernel_2d):
        bits = _bits(self._kbm_spec["mode"])
        q, scale = ops.quantize_kernel(
            kernel_2d, bits=bits, group_size=self._kbm_spec["group_size"]
        )
        self.kernel_q.assign(ops.pack_kernel(q, bits=bits))
        self.kernel_scale.assign(scale)

    def _dequantized_2d(self):
        return ops.dequantize_kernel(
            self.kernel_q,
            self.kernel_scale,
            self._kbm_k,
            bits=_bits(self._kbm_spec["mode"]),
        )

    def _matmul(self, x, bias=None, activation=None):
        """`act(x @ W + bias)` over the last axis of x (float32 bias)."""
        mode = self._kbm_spec["mode"]
        if mode == "int8":
            return ops.quantized_matmul(
                x,
                self.kernel_q,
                self.kernel_scale,
                bias=bias,
                activation=activation,
            )
        return ops.weight_only_matmul(
            x,
            self.kernel_q,
            self.kernel_scale,
            group_size=self._kbm_spec["group_size"],
            bits=_bits(mode),
            bias=bias,
            activation=activation,
        )


@register_serializable
class QuantizedDense(_MatmulMixin, keras.layers.Dense):
    """`Dense` (or `kbm.layers.FusedDense`) with int8/int4 weights.

    Modes: `"int8"` runs `kbm.ops.quantized_matmul` (dynamic per-row int8
    activations, exact int32 sums); `"int8_weight_only"` and
    `"int4_weight_only"` run `kbm.ops.weight_only_matmul`. Bias and a
    ReLU/GELU activation run in the op's fused epilogue; any other
    activation is applied after it. Built by `kbm.quantization.quantize`;
    inference only (the input gets a straight-through gradient, the
    integer weights none).
    """

    def __init__(self, units, activation=None, kbm_quantization=None, **kw):
        kw.pop("quantization_config", None)
        if activation == "gelu_tanh":
            self._kbm_act_name = "gelu_tanh"
            activation = _gelu_tanh
        else:
            self._kbm_act_name = None
        super().__init__(units, activation=activation, **kw)
        self._set_spec(kbm_quantization or make_spec("int8"))
        self.supports_jit = False

    def build(self, input_shape):
        self._build_packed(input_shape[-1], self.units)
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_shape[-1]}
        )
        self.built = True

    def _ordered_variables(self):
        out = [self.kernel_q, self.kernel_scale]
        return out + ([self.bias] if self.use_bias else [])

    @property
    def kernel(self):
        """The float kernel the integer weights stand for (dequantized)."""
        return self._dequantized_2d()

    def _epilogue_activation(self):
        name = self._kbm_act_name or _activation_name(self.activation)
        if name in (None, "linear"):
            return None, None
        if name in _EPILOGUE:
            return _EPILOGUE[name], None
        return None, self.activation

    def call(self, inputs, training=None):
        fused, after = self._epilogue_activation()
        bias = self.bias if self.use_bias else None
        y = self._matmul(inputs, bias=bias, activation=fused)
        y = tf.cast(y, self.compute_dtype)
        return after(y) if after is not None else y

    def get_config(self):
        config = super().get_config()
        if self._kbm_act_name:
            config["activation"] = self._kbm_act_name
        return config

    @classmethod
    def convert(cls, layer, spec):
        """Converts a built float Dense/FusedDense in place."""
        fused = getattr(layer, "_fused_activation", None)

        def build(shape):
            layer._kbm_act_name = "gelu_tanh" if fused == "gelu_tanh" else None
            layer._build_packed(*shape)

        kernel = cls._swap_in(layer, "kernel", spec, build)
        layer._assign_from_float(kernel)  # Looked up once it is a `cls`.
        layer.supports_jit = False
        return layer


def _gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


def _analyze_einsum_string(*args):
    if IS_LEGACY_KERAS:
        from tf_keras.src.layers.core import einsum_dense
    else:
        from keras.src.layers.core import einsum_dense
    return einsum_dense._analyze_einsum_string(*args)


def parse_einsum(equation):
    """Splits `"in,kernel->out"`; returns a matmul plan or None.

    The plan (dict) describes `out = transpose(reshape(x_t @ W))` where x is
    transposed to [batch letters..., contracted letters...] and the kernel
    to [contracted..., free...]; None when the equation is not such a
    contraction (a letter shared by input, kernel and output, ellipses).
    """
    if "..." in equation or "," not in equation or "->" not in equation:
        return None
    lhs, out = equation.replace(" ", "").split("->")
    inp, ker = lhs.split(",")
    if any(len(set(s)) != len(s) for s in (inp, ker, out)):
        return None
    contracted = [c for c in ker if c in inp and c not in out]
    free = [c for c in ker if c not in inp and c in out]
    batch = [c for c in inp if c not in ker and c in out]
    if (
        not contracted
        or len(contracted) + len(free) != len(ker)
        or len(contracted) + len(batch) != len(inp)
        or len(batch) + len(free) != len(out)
    ):
        return None
    return {
        "input": inp,
        "kernel": ker,
        "output": out,
        "contracted": "".join(contracted),
        "free": "".join(free),
        "batch": "".join(batch),
    }


@register_serializable
class QuantizedEinsumDense(_MatmulMixin, keras.layers.EinsumDense):
    """`EinsumDense` with int8/int4 weights (the attention projections).

    When the equation is one contraction (`"abc,cde->abde"`,
    `"abcd,cde->abe"`, ...), the input and kernel are reshaped to one
    matmul over the contracted axes and run through the same kbm ops as
    `QuantizedDense`; otherwise the kernel is dequantized and the layer's
    own einsum runs (weight-only arithmetic, in every mode).
    """

    def __init__(self, equation, output_shape, kbm_quantization=None, **kw):
        kw.pop("quantization_config", None)
        super().__init__(equation, output_shape, **kw)
        self._set_spec(kbm_quantization or make_spec("int8"))
        self.supports_jit = False

    def _plan_from(self, kernel_shape):
        plan = parse_einsum(self.equation)
        sizes = dict(
            zip(self.equation.split(",")[1].split("->")[0], kernel_shape)
        )
        if plan is None:
            # Generic: flatten the kernel as stored, [prod(:-1), last].
            ker = self.equation.split(",")[1].split("->")[0]
            plan = {"contracted": ker[:-1], "free": ker[-1:], "matmul": False}
        else:
            plan["matmul"] = True
        plan["sizes"] = {c: int(s) for c, s in sizes.items()}
        plan["kernel_shape"] = tuple(int(s) for s in kernel_shape)
        k = 1
        for c in plan["contracted"]:
            k *= plan["sizes"][c]
        n = 1
        for c in plan["free"]:
            n *= plan["sizes"][c]
        return plan, k, n

    def build(self, input_shape):
        shape_data = _analyze_einsum_string(
            self.equation,
            self.bias_axes,
            input_shape,
            self.partial_output_shape,
        )
        kernel_shape, bias_shape = shape_data[0], shape_data[1]
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))
        self._setup_quantized(kernel_shape)
        if bias_shape is not None:
            self.bias = self.add_weight(
                name="bias",
                shape=bias_shape,
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.built = True

    def _setup_quantized(self, kernel_shape):
        plan, k, n = self._plan_from(kernel_shape)
        set_plain(self, "_kbm_plan", plan)
        self._build_packed(k, n)

    def _ordered_variables(self):
        out = [self.kernel_q, self.kernel_scale]
        return out + ([self.bias] if self.bias is not None else [])

    def _kernel_to_2d(self, kernel):
        plan = self._kbm_plan
        ker = self.equation.split(",")[1].split("->")[0]
        order = plan["contracted"] + plan["free"]
        perm = [ker.index(c) for c in order]
        k = self._kbm_k
        return tf.reshape(tf.transpose(kernel, perm), [k, -1])

    @property
    def kernel(self):
        """The float kernel (dequantized), in the equation's layout."""
        plan = self._kbm_plan
        ker = self.equation.split(",")[1].split("->")[0]
        order = plan["contracted"] + plan["free"]
        w = tf.reshape(
            self._dequantized_2d(), [plan["sizes"][c] for c in order]
        )
        perm = [order.index(c) for c in ker]
        return tf.transpose(w, perm)

    def call(self, inputs, training=None):
        plan = self._kbm_plan
        if not plan["matmul"]:
            x = tf.cast(inputs, tf.float32)
            y = tf.einsum(self.equation, x, self.kernel)
            if self.bias is not None:
                y = y + tf.cast(self.bias, tf.float32)
        else:
            y = self._plan_matmul(inputs, plan)
            if self.bias is not None:
                y = y + tf.cast(self.bias, y.dtype)
        y = tf.cast(y, self.compute_dtype)
        if self.activation is not None:
            y = self.activation(y)
        return y

    def _plan_matmul(self, inputs, plan):
        inp, out = plan["input"], plan["output"]
        order = plan["batch"] + plan["contracted"]
        x = inputs
        if order != inp:
            x = tf.transpose(x, [inp.index(c) for c in order])
        nb = len(plan["batch"])
        lead = tf.shape(x)[:nb]
        x2 = tf.reshape(x, tf.concat([lead, [self._kbm_k]], 0))
        y = self._matmul(x2)
        free_dims = [plan["sizes"][c] for c in plan["free"]]
        y = tf.reshape(y, tf.concat([lead, free_dims], 0))
        produced = plan["batch"] + plan["free"]
        if produced != out:
            y = tf.transpose(y, [produced.index(c) for c in out])
        return y

    @classmethod
    def convert(cls, layer, spec):
        kernel = cls._swap_in(
            layer, "kernel", spec, lambda shape: layer._setup_quantized(shape)
        )
        layer._assign_from_float(layer._kernel_to_2d(kernel))
        layer.supports_jit = False
        return layer


# ----------------------------------------------------------------------------
# Embedding: int8/int4 rows, one scale per row (int8) or per group (int4).
# ----------------------------------------------------------------------------


@register_serializable
class QuantizedEmbedding(_QuantizedMixin, keras.layers.Embedding):
    """`Embedding` whose table is stored as int8 (or int4) rows.

    A lookup gathers the integer rows and their scales and dequantizes only
    those (stock TensorFlow ops). `"int8"` and `"int8_weight_only"` store
    int8 rows with one scale per row; `"int4_weight_only"` stores two values
    per byte with one scale per `group_size` values of a row.
    """

    def __init__(self, input_dim, output_dim, kbm_quantization=None, **kwargs):
        kwargs.pop("quantization_config", None)
        super().__init__(input_dim, output_dim, **kwargs)
        self._set_spec(kbm_quantization or make_spec("int8_weight_only"))

    def build(self, input_shape=None):
        self._build_table()
        self.built = True

    def _build_table(self):
        v, d = self.input_dim, self.output_dim
        if _bits(self._kbm_spec["mode"]) == 4:
            group = int4_group(d, self._kbm_spec["group_size"], self.name)
            self._kbm_spec["group_size"] = group
            self.embeddings_q = self._add_int("embeddings_q", (v, d // 2))
            self.embeddings_scale = self._add_scale(
                "embeddings_scale", (v, d // group)
            )
        else:
            self._kbm_spec["group_size"] = None
            self.embeddings_q = self._add_int("embeddings_q", (v, d))
            self.embeddings_scale = self._add_scale("embeddings_scale", (v,))

    def _ordered_variables(self):
        return [self.embeddings_q, self.embeddings_scale]

    def _assign_from_float(self, table):
        bits = _bits(self._kbm_spec["mode"])
        q, scale = ops.quantize_kernel(
            tf.transpose(table),
            bits=bits,
            group_size=self._kbm_spec["group_size"],
        )  # q [D, V]; scale [V] or [D / g, V].
        if bits == 4:
            q = qops._nibble_pack(q)  # [D / 2, V]
        self.embeddings_q.assign(tf.transpose(q))
        self.embeddings_scale.assign(tf.transpose(scale))

    def _dequantize_rows(self, q, scale):
        """int rows `[..., D']` and their scales -> float32 `[..., D]`."""
        if _bits(self._kbm_spec["mode"]) == 8:
            return tf.cast(q, tf.float32) * tf.expand_dims(scale, -1)
        lead = tf.shape(q)[:-1]
        flat = tf.reshape(q, [-1, self.output_dim // 2])
        vals = tf.transpose(qops._nibble_unpack(tf.transpose(flat)))
        groups = scale.shape[-1]
        vals = tf.reshape(
            tf.cast(vals, tf.float32), [-1, groups, self.output_dim // groups]
        )
        s = tf.reshape(scale, [-1, groups, 1])
        out = tf.reshape(vals * s, [-1, self.output_dim])
        return tf.reshape(out, tf.concat([lead, [self.output_dim]], 0))

    @property
    def embeddings(self):
        """The float table (dequantized)."""
        return self._dequantize_rows(
            tf.convert_to_tensor(self.embeddings_q),
            tf.convert_to_tensor(self.embeddings_scale),
        )

    def call(self, inputs):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        q = tf.gather(self.embeddings_q, inputs)
        scale = tf.gather(self.embeddings_scale, inputs)
        return tf.cast(self._dequantize_rows(q, scale), self.compute_dtype)

    @classmethod
    def convert(cls, layer, spec):
        table = cls._swap_in(
            layer, "embeddings", spec, lambda shape: layer._build_table()
        )
        layer._assign_from_float(table)
        return layer


# ----------------------------------------------------------------------------
# Conv2D: weight-only int8, one scale per output channel.
# ----------------------------------------------------------------------------


@register_serializable
class QuantizedConv2D(_QuantizedMixin, keras.layers.Conv2D):
    """`Conv2D` with an int8 kernel (one scale per output channel).

    Weight-only in every mode: the kernel is dequantized (stock ops) and the
    float convolution runs, so the gain is the 4x smaller kernel on disk and
    in memory. (An im2col + int8 GEMM path is not implemented.)
    """

    def __init__(self, filters, kernel_size, kbm_quantization=None, **kwargs):
        kwargs.pop("quantization_config", None)
        super().__init__(filters, kernel_size, **kwargs)
        self._set_spec(kbm_quantization or make_spec("int8_weight_only"))

    def build(self, input_shape):
        axis = -1 if self.data_format == "channels_last" else 1
        cin = input_shape[axis]
        self._build_kernel(
            tuple(self.kernel_size) + (cin // self.groups, self.filters)
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(
            min_ndim=self.rank + 2, axes={axis: cin}
        )
        self.built = True

    def _build_kernel(self, shape):
        self._kbm_spec["group_size"] = None
        self.kernel_q = self._add_int("kernel_q", shape)
        self.kernel_scale = self._add_scale("kernel_scale", shape[-1:])

    def _ordered_variables(self):
        out = [self.kernel_q, self.kernel_scale]
        return out + ([self.bias] if self.use_bias else [])

    @property
    def kernel(self):
        return tf.cast(self.kernel_q, tf.float32) * self.kernel_scale

    def call(self, inputs):
        kernel = tf.cast(self.kernel, self.compute_dtype)
        outputs = self.convolution_op(inputs, kernel)
        if self.use_bias:
            if self.data_format == "channels_last":
                shape = (1,) * (self.rank + 1) + (self.filters,)
            else:
                shape = (1, self.filters) + (1,) * self.rank
            outputs = outputs + tf.cast(
                tf.reshape(self.bias, shape), outputs.dtype
            )
        if self.activation is not None:
            return self.activation(outputs)
        return outputs

    @classmethod
    def convert(cls, layer, spec):
        kernel = cls._swap_in(
            layer,
            "kernel",
            dict(spec, mode="int8_weight_only"),
            lambda shape: layer._build_kernel(shape),
        )
        shape = tuple(kernel.shape)
        amax = tf.reduce_max(tf.abs(tf.reshape(kernel, [-1, shape[-1]])), 0)
        scale = tf.where(amax > 0, amax / 127.0, tf.ones_like(amax))
        q = tf.clip_by_value(tf.round(kernel / scale), -127.0, 127.0)
        layer.kernel_q.assign(tf.cast(q, tf.int8))
        layer.kernel_scale.assign(scale)
        return layer
