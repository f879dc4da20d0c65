"""The attention projections as 2-D matmuls (layers/_projections.py)."""

import collections

import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.layers import _projections
from keras_bigmodels.testing import assert_close, random_tensor


def matmul_ops(layer, *inputs):
    """The MatMul ops in `layer(*inputs)`'s graph, beyond those it has with
    the 2-D projections switched off (the attention's own)."""

    # One placeholder per distinct input, so that self-attention stays
    # self-attention in the graph.
    distinct = list({id(t): t for t in inputs}.values())
    where = [next(i for i, d in enumerate(distinct) if d is t) for t in inputs]

    def count():
        fn = tf.function(
            lambda *t: layer(*(t[i] for i in where))
        ).get_concrete_function(
            *(tf.TensorSpec(t.shape, t.dtype) for t in distinct)
        )
        return collections.Counter(op.type for op in fn.graph.get_operations())[
            "MatMul"
        ]

    fast = count()
    _projections.ENABLED = False
    try:
        return fast - count()
    finally:
        _projections.ENABLED = True


def twins(keras, **kwargs):
    ref = keras.layers.MultiHeadAttention(
        bias_initializer="random_normal", **kwargs
    )
    ours = kbm.layers.MultiHeadAttention(**kwargs)
    return ref, ours


def outputs_and_gradients(layer, inputs):
    inputs = [tf.convert_to_tensor(t) for t in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(*inputs)
        loss = tf.reduce_sum(y * tf.cos(y))
    return y, tape.gradient(loss, [*inputs, *layer.trainable_weights])


@pytest.mark.parametrize("kind", ["self", "cross", "three"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_same_as_keras_values_and_gradients(keras, kind, use_bias):
    x = random_tensor((2, 7, 24), tf.float32, 0)
    y = random_tensor((2, 5, 24), tf.float32, 1)
    z = random_tensor((2, 5, 24), tf.float32, 2)
    inputs = {"self": (x, x), "cross": (x, y), "three": (x, y, z)}[kind]
    ref, ours = twins(
        keras, num_heads=3, key_dim=8, value_dim=6, use_bias=use_bias
    )
    ref(*inputs)
    ours(*inputs)
    ours.set_weights(ref.get_weights())
    # Self-attention: one matmul for Q/K/V and one for the output; cross
    # attention: one for Q, one for K/V; three tensors: the einsums, and
    # one matmul for the output.
    expected = {"self": 2, "cross": 3, "three": 1}[kind]
    assert matmul_ops(ours, *inputs) == expected
    y_ref, g_ref = outputs_and_gradients(ref, inputs)
    y_ours, g_ours = outputs_and_gradients(ours, inputs)
    assert_close(y_ours, y_ref, 1e-5, 1e-5)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, 1e-4, 1e-4, what="gradient")


def fast_and_slow(layer, *inputs, **kwargs):
    """`layer`'s outputs with the 2-D projections and with the sublayers'
    own calls."""
    fast = layer(*inputs, **kwargs)
    _projections.ENABLED = False
    try:
        slow = layer(*inputs, **kwargs)
    finally:
        _projections.ENABLED = True
    return fast, slow


def test_masks_are_untouched(keras):
    x = random_tensor((2, 9, 16), tf.float32, 3)
    mask = tf.constant([[True] * 9, [True] * 5 + [False] * 4])
    layer = kbm.layers.MultiHeadAttention(2, 8)
    fast, slow = fast_and_slow(layer, x, x, attention_mask=mask[:, None, :])
    assert_close(fast, slow, 1e-6, 1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(keras, policy):
    layer = kbm.layers.MultiHeadAttention(2, 8, dtype=policy)
    # Inside a mixed-precision model the blocks pass compute-dtype tensors
    # (a float32 input would be cast once per argument: two tensors).
    x = random_tensor((2, 6, 16), layer.compute_dtype, 4)
    fast, slow = fast_and_slow(layer, x, x)
    assert fast.dtype == layer.compute_dtype
    assert matmul_ops(layer, x, x) == 2
    tol = 1e-2 if policy == "mixed_float16" else 5e-2
    assert_close(fast, slow, tol, tol)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="LoRA and quantize: Keras 3")
@pytest.mark.parametrize("change", ["lora", "int8"])
def test_adapted_or_quantized_sublayers_keep_their_own_call(keras, change):
    x = random_tensor((2, 6, 16), tf.float32, 5)
    layer = kbm.layers.MultiHeadAttention(2, 8)
    layer(x, x)
    for sub in (layer._query_dense, layer._value_dense):
        if change == "lora":
            sub.enable_lora(2)
            sub.lora_kernel_b.assign(tf.fill(sub.lora_kernel_b.shape, 0.1))
        else:
            sub.quantize("int8")
    assert matmul_ops(layer, x, x) == 1  # The output projection.
    fast, slow = fast_and_slow(layer, x, x)
    assert_close(fast, slow, 1e-6, 1e-6)


def test_helpers_decline_what_they_do_not_cover(keras):
    dense = keras.layers.EinsumDense(
        "abc,cde->abde", (None, 2, 4), bias_axes="de"
    )
    dense.build((None, None, 8))
    assert _projections.input_projections([dense], tf.ones((3, 8))) is None
    assert (
        _projections.input_projections([dense], tf.ones((1, 3, 8), tf.int32))
        is None
    )
    other = keras.layers.EinsumDense(
        "abc,cde->abde", (None, 2, 4), bias_axes="e"
    )
    other.build((None, None, 8))
    assert _projections.input_projections([other], tf.ones((1, 3, 8))) is None
    out = keras.layers.EinsumDense("abcd,cde->abe", (None, 8), bias_axes="e")
    out.build((None, None, 2, 4))
    assert _projections.output_projection(dense, tf.ones((1, 3, 2, 4))) is None
    got = _projections.output_projection(out, tf.ones((1, 3, 2, 4)))
    assert_close(got, out(tf.ones((1, 3, 2, 4))), 1e-6, 1e-6)
    (got,) = _projections.input_projections([dense], tf.ones((1, 3, 8)))
    assert_close(got, dense(tf.ones((1, 3, 8))), 1e-6, 1e-6)


def test_grouped_query_attention_takes_the_same_path(keras):
    x = random_tensor((2, 6, 16), tf.float32, 6)
    layer = kbm.layers.GroupedQueryAttention(8, 4, 2)
    fast, slow = fast_and_slow(layer, x, x)
    assert matmul_ops(layer, x, x) == 2
    assert_close(fast, slow, 1e-6, 1e-6)


@pytest.mark.parametrize(
    "equation,kind",
    [
        ("abc,cde->abde", "in"),
        ("bqm,muh->bquh", "in"),
        ("abcd,cde->abe", "out"),
        ("bquh,uhm->bqm", "out"),
        ("abc,cd->abd", None),
        ("abc,cde->abed", None),
        ("abc,dce->abde", None),
        ("aac,cde->aade", None),
        ("abcd,cde->abce", None),
        ("not an equation", None),
    ],
)
def test_equations(equation, kind):
    assert _projections._projection_kind(equation) == kind


def test_a_call_installed_on_the_instance_is_kept(keras):
    """kbm's adapters give an adapted sublayer its own `call`: it must run."""
    x = random_tensor((2, 6, 16), tf.float32, 7)
    layer = kbm.layers.MultiHeadAttention(2, 8)
    layer(x, x)
    dense = layer._value_dense
    plain_call = dense.call
    object.__setattr__(dense, "call", lambda t, *a, **k: 2.0 * plain_call(t))
    try:
        doubled = layer(x, x)
    finally:
        dense.__dict__.pop("call")
    assert matmul_ops(layer, x, x) == 2  # Back on the fused path.
    _projections.ENABLED = False
    try:
        object.__setattr__(
            dense, "call", lambda t, *a, **k: 2.0 * plain_call(t)
        )
        expected = layer(x, x)
        dense.__dict__.pop("call")
    finally:
        _projections.ENABLED = True
    assert_close(doubled, expected, 1e-6, 1e-6)


def test_mixed_precision_value_in_float32(keras):
    """tf-keras casts only the first argument: the value may arrive in
    float32 to a float16 layer; the projections cast it as EinsumDense
    would."""
    layer = kbm.layers.MultiHeadAttention(2, 8, dtype="mixed_float16")
    q = random_tensor((2, 5, 16), tf.float16, 8)
    v = random_tensor((2, 7, 16), tf.float32, 9)
    fast, slow = fast_and_slow(layer, q, v)
    assert fast.dtype == tf.float16
    assert_close(fast, slow, 1e-2, 1e-2)
