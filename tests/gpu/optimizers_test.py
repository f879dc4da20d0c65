"""The optimizer ops' GPU kernels (float16, bfloat16, float32 variables on
a GPU) against the reference updates; skipped where TensorFlow sees no
GPU."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops import optimizers as optimizer_ops
from keras_bigmodels.ops.optimizers import TOLERANCES
from keras_bigmodels.testing import assert_close

pytestmark = pytest.mark.skipif(
    not tf.config.list_physical_devices("GPU"), reason="needs a GPU"
)

# Odd sizes, one above a kernel chunk (16384 elements), one empty-ish (1).
SHAPES = [(1,), (3,), (4095,), (4097,), (3, 43), ((1 << 20) + 3,)]
MANY = [(1,), (3,), (4095,), (4097,), (127,)] * 200  # 1,000 variables
DTYPES = [tf.float16, tf.bfloat16, tf.float32]

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


def run(update, dtype, n_slots, kwargs, fused, shapes, steps=3):
    rng = np.random.default_rng(0)
    with tf.device("/GPU:0"):

        def var(s, scale=1.0, positive=False):
            x = rng.standard_normal(s) * scale
            return tf.Variable(np.abs(x) if positive else x, dtype=dtype)

        variables = [var(s) for s in shapes]
        slots = [
            [var(s, 0.1, positive=(k == 1)) for s in shapes]
            for k in range(n_slots)
        ]
        grads = [tf.constant(rng.standard_normal(s), dtype) for s in shapes]
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


@pytest.mark.parametrize("shapes", [SHAPES, MANY], ids=["odd", "many"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize(
    "name,update,n_slots,kwargs", CASES, ids=[c[0] for c in CASES]
)
def test_gpu_kernel_vs_reference(dtype, name, update, n_slots, kwargs, shapes):
    fused = run(update, dtype, n_slots, kwargs, True, shapes)
    ref = run(update, dtype, n_slots, kwargs, False, shapes)
    tol = TOLERANCES[dtype]
    if name == "lion" and dtype in (tf.float16, tf.bfloat16):
        # sign() of a value rounding to 0 can differ by one step of lr.
        tol = {"rtol": tol["rtol"], "atol": 0.02 + tol["atol"]}
    for a, b in zip(fused, ref):
        assert_close(a, b, what=name, **tol)


def test_gpu_update_keeps_earlier_reads():
    with tf.device("/GPU:0"):
        p = tf.Variable(tf.ones([1000]))
        m = tf.Variable(tf.zeros([1000]))
        v = tf.Variable(tf.zeros([1000]))
        g = tf.ones([1000])

        @tf.function
        def step():
            before = p.read_value()
            with tf.control_dependencies([before]):
                optimizer_ops.adam_update(
                    [p],
                    [m],
                    [v],
                    [g],
                    decays=[0.0],
                    use_fused_kernel=True,
                    **ADAM,
                )
            return before

        before = step()
    np.testing.assert_array_equal(before.numpy(), np.ones(1000, np.float32))
    assert not np.allclose(p.numpy(), 1.0)


def test_gpu_kernel_rejects_bad_inputs():
    lib = _loader.library()
    with tf.device("/GPU:0"):
        p = [tf.Variable(tf.zeros([4])), tf.Variable(tf.zeros([5]))]
        m = [tf.Variable(tf.zeros([4])), tf.Variable(tf.zeros([5]))]
        v = [tf.Variable(tf.zeros([4])), tf.Variable(tf.zeros([5]))]
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"grads\[1\] must have the shape of its variable",
        ):
            lib.kbm_multi_apply_adam(
                [x.handle for x in p],
                [x.handle for x in m],
                [x.handle for x in v],
                [tf.zeros([4]), tf.zeros([4])],
                **ADAM,
                decay=tf.zeros(2),
            )
