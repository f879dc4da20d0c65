"""Fused multi-tensor optimizer updates: kernel vs reference, errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops import optimizers as optimizer_ops
from keras_bigmodels.ops.optimizers import TOLERANCES
from keras_bigmodels.testing import assert_close

SIZES = [(1,), (7,), (127,), (3, 43), (32768 + 5,), (100003,)]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def state(shapes, dtype, n_slots, seed):
    rng = np.random.default_rng(seed)

    def var(s, scale=1.0, positive=False):
        x = rng.standard_normal(s) * scale
        return tf.Variable(np.abs(x) if positive else x, dtype=dtype)

    variables = [var(s) for s in shapes]
    slots = [
        [var(s, 0.1, positive=(k == 1)) for s in shapes] for k in range(n_slots)
    ]
    grads = [tf.constant(rng.standard_normal(s), dtype) for s in shapes]
    return variables, slots, grads


def run(update, dtype, n_slots, kwargs, fused, shapes=SIZES, steps=3):
    variables, slots, grads = state(shapes, dtype, n_slots, seed=0)
    decays = [0.01 * (i % 2) for i in range(len(shapes))]
    for _ in range(steps):
        update(
            variables,
            *slots,
            grads,
            decays=decays,
            use_fused_kernel=fused,
            **kwargs,
        )
    return [v.numpy() for v in variables] + [
        s.numpy() for group in slots for s in group
    ]


ADAM = dict(
    one_minus_beta_1=0.1,
    one_minus_beta_2=0.001,
    coef_adaptive=0.01,
    bias_2=1.0,
    coef_sgd=0.0,
    epsilon=1e-7,
)
RADAM_SGD = dict(
    one_minus_beta_1=0.1,
    one_minus_beta_2=0.001,
    coef_adaptive=0.0,
    bias_2=0.3,
    coef_sgd=0.05,
    epsilon=1e-7,
)
LAMB = dict(
    learning_rate=0.01,
    one_minus_beta_1=0.1,
    one_minus_beta_2=0.001,
    bias_1=0.1,
    bias_2=0.001,
    epsilon=1e-6,
)
LION = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.99)

CASES = [
    ("adam", optimizer_ops.adam_update, 2, ADAM),
    ("radam_sgd", optimizer_ops.adam_update, 2, RADAM_SGD),
    ("lamb", optimizer_ops.lamb_update, 2, LAMB),
    ("lion", optimizer_ops.lion_update, 1, LION),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize(
    "name,update,n_slots,kwargs", CASES, ids=[c[0] for c in CASES]
)
def test_kernel_vs_reference(dtype, name, update, n_slots, kwargs):
    fused = run(update, dtype, n_slots, kwargs, True)
    ref = run(update, dtype, n_slots, kwargs, False)
    tol = TOLERANCES[dtype]
    if name == "lion" and dtype in (tf.float16, tf.bfloat16):
        # sign() of a value rounding to 0 can differ by one step of lr.
        tol = {"rtol": tol["rtol"], "atol": 0.02 + tol["atol"]}
    for a, b in zip(fused, ref):
        assert_close(a, b, what=name, **tol)


def test_many_small_variables_in_one_call():
    shapes = [(3,)] * 60 + [(5, 5)] * 40
    fused = run(optimizer_ops.adam_update, tf.float32, 2, ADAM, True, shapes)
    ref = run(optimizer_ops.adam_update, tf.float32, 2, ADAM, False, shapes)
    for a, b in zip(fused, ref):
        assert_close(a, b, **TOLERANCES[tf.float32])


def test_mixed_dtypes_are_grouped():
    variables, (m, v), grads = state([(4,), (5,)], tf.float32, 2, 1)
    v64, (m64, vv64), g64 = state([(3,)], tf.float64, 2, 2)
    optimizer_ops.adam_update(
        variables + v64,
        m + m64,
        v + vv64,
        grads + g64,
        decays=[0.0] * 3,
        use_fused_kernel=True,
        **ADAM,
    )
    assert variables[0].dtype == tf.float32 and v64[0].dtype == tf.float64


def test_update_is_in_place_but_earlier_reads_keep_their_value():
    variables, (m, v), grads = state([(6,)], tf.float32, 2, 3)

    @tf.function
    def step():
        before = variables[0].read_value()
        with tf.control_dependencies([before]):
            optimizer_ops.adam_update(
                variables,
                m,
                v,
                grads,
                decays=[0.0],
                use_fused_kernel=True,
                **ADAM,
            )
        return before

    start = variables[0].numpy().copy()
    before = step()
    np.testing.assert_array_equal(before.numpy(), start)
    assert not np.allclose(variables[0].numpy(), start)


def test_kernel_rejects_bad_inputs():
    lib = _loader.library()
    variables, (m, v), grads = state([(4,), (5,)], tf.float32, 2, 4)
    scalars = dict(
        one_minus_beta_1=0.1,
        one_minus_beta_2=0.001,
        coef_adaptive=0.01,
        bias_2=1.0,
        coef_sgd=0.0,
        epsilon=1e-7,
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"grads\[1\] must have the shape of its "
        r"variable \[5\], got \[4\]",
    ):
        lib.kbm_multi_apply_adam(
            [x.handle for x in variables],
            [x.handle for x in m],
            [x.handle for x in v],
            [grads[0], grads[0]],
            **scalars,
            decay=tf.zeros(2),
        )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"ms\[0\] must have the shape of vars\[0\]",
    ):
        lib.kbm_multi_apply_adam(
            [x.handle for x in variables],
            [m[1].handle, m[0].handle],
            [x.handle for x in v],
            grads,
            **scalars,
            decay=tf.zeros(2),
        )
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError),
        match=r"decay must have shape \[2\]|Shape",
    ):
        lib.kbm_multi_apply_adam(
            [x.handle for x in variables],
            [x.handle for x in m],
            [x.handle for x in v],
            grads,
            **scalars,
            decay=tf.zeros(3),
        )
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError),
        match=r"epsilon must be a scalar, got shape \[2\]|Shape",
    ):
        lib.kbm_multi_apply_adam(
            [x.handle for x in variables],
            [x.handle for x in m],
            [x.handle for x in v],
            grads,
            **{**scalars, "epsilon": tf.constant([1e-7, 1e-7])},
            decay=tf.zeros(2),
        )


# A raw kernel called with a wrong dtype fails in TensorFlow's dispatcher
# (its message names an input position, which kbm cannot change); the
# public functions check dtypes and list lengths first and name the tensor,
# on both paths.
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "target,dtype,match",
    [
        ("grads", tf.float16, r"gradients\[1\] must have the dtype of "),
        ("m", tf.float64, r"momentums\[1\] must have the dtype of "),
        ("v", tf.bfloat16, r"velocities\[1\] must have the dtype of "),
    ],
)
def test_public_update_names_a_wrong_dtype(fused, target, dtype, match):
    variables, (m, v), grads = state([(4,), (5,)], tf.float32, 2, 5)
    lists = {"m": m, "v": v, "grads": grads}
    x = lists[target][1]
    lists[target][1] = (
        tf.Variable(tf.cast(x, dtype))
        if isinstance(x, tf.Variable)
        else tf.cast(x, dtype)
    )
    start = [x.numpy().copy() for x in variables]
    with pytest.raises(TypeError, match=match + r".*float32.*Received"):
        optimizer_ops.adam_update(
            variables,
            m,
            v,
            grads,
            decays=[0.0, 0.0],
            use_fused_kernel=fused,
            **ADAM,
        )
    for a, b in zip(variables, start):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize("fused", [True, False])
def test_public_update_names_a_short_list(fused):
    variables, (m,), grads = state([(4,), (5,)], tf.float32, 1, 6)
    with pytest.raises(ValueError, match=r"momentums must have one entry"):
        optimizer_ops.lion_update(
            variables,
            m[:1],
            grads,
            learning_rate=0.1,
            beta_1=0.9,
            beta_2=0.99,
            decays=[0.0, 0.0],
            use_fused_kernel=fused,
        )
