"""kbm.optimizers.AdamW: Keras's AdamW, fused."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import (
    assert_close,
    kbm_ops_in,
    optimizer_trajectory,
)

SHAPES = [(5, 7), (7,), (3, 4, 2)]


def keras_adamw(keras, **kwargs):
    if IS_LEGACY_KERAS:
        kwargs.setdefault("jit_compile", False)
    return keras.optimizers.AdamW(**kwargs)


def slots(opt):
    return [np.asarray(v) for v in opt._momentums + opt._velocities]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.01),
        dict(
            learning_rate=0.01,
            weight_decay=0.1,
            beta_1=0.8,
            beta_2=0.95,
            epsilon=1e-6,
        ),
        dict(learning_rate=0.01, clipnorm=0.5),
        dict(learning_rate=0.01, global_clipnorm=0.5),
        dict(learning_rate=0.01, clipvalue=0.2),
        dict(learning_rate=0.01, use_ema=True, ema_momentum=0.9),
    ],
)
def test_same_trajectory_as_keras(keras, kwargs):
    ours, ours_opt = optimizer_trajectory(
        kbm.optimizers.AdamW(**kwargs), SHAPES, steps=6
    )
    ref, ref_opt = optimizer_trajectory(
        keras_adamw(keras, **kwargs), SHAPES, steps=6
    )
    for a, b in zip(ours + slots(ours_opt), ref + slots(ref_opt)):
        assert_close(a, b, 1e-6, 1e-6)


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="Keras 3 options")
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gradient_accumulation_steps=2),
        dict(loss_scale_factor=4.0),
        dict(learning_rate=0.05, weight_decay=0.2),
    ],
)
def test_same_trajectory_as_keras3_options(keras, kwargs):
    ours, _ = optimizer_trajectory(kbm.optimizers.AdamW(**kwargs), SHAPES, 6)
    ref, _ = optimizer_trajectory(keras.optimizers.AdamW(**kwargs), SHAPES, 6)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_exclude_from_weight_decay(keras):
    def run(make):
        opt = make(learning_rate=0.01, weight_decay=0.5)
        opt.exclude_from_weight_decay(var_names=["w1"])
        return optimizer_trajectory(opt, SHAPES, 3)[0]

    ours = run(kbm.optimizers.AdamW)
    ref = run(lambda **k: keras_adamw(keras, **k))
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_learning_rate_schedule(keras):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.5)
    ours, _ = optimizer_trajectory(
        kbm.optimizers.AdamW(learning_rate=schedule), SHAPES, 5
    )
    ref, _ = optimizer_trajectory(
        keras_adamw(keras, learning_rate=schedule), SHAPES, 5
    )
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_fused_and_reference_paths_agree():
    fused, _ = optimizer_trajectory(
        kbm.optimizers.AdamW(learning_rate=0.02, weight_decay=0.1), SHAPES, 5
    )
    with kbm.config.fused_kernels(False):
        ref, _ = optimizer_trajectory(
            kbm.optimizers.AdamW(learning_rate=0.02, weight_decay=0.1),
            SHAPES,
            5,
        )
    for a, b in zip(fused, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_one_multi_tensor_op_per_step(keras):
    variables = [tf.Variable(tf.ones(s)) for s in SHAPES]
    opt = kbm.optimizers.AdamW(0.01)
    opt.build(variables)

    @tf.function
    def step(grads):
        opt.apply_gradients(zip(grads, variables))

    fn = step.get_concrete_function([tf.ones(s) for s in SHAPES])
    graph = fn.graph.as_graph_def()
    ops = [n.op for n in graph.node]
    for f in graph.library.function:
        ops += [n.op for n in f.node_def]
    assert ops.count("Kbm>MultiApplyAdam") == 1
    assert "ResourceApplyAdam" not in ops
    assert kbm_ops_in(fn) == ["Kbm>MultiApplyAdam"]


def test_amsgrad_uses_keras_update(keras):
    with pytest.warns(kbm.config.FusedKernelFallbackWarning, match="amsgrad"):
        ours, _ = optimizer_trajectory(
            kbm.optimizers.AdamW(0.01, amsgrad=True), SHAPES, 3
        )
    ref, _ = optimizer_trajectory(
        keras_adamw(keras, learning_rate=0.01, amsgrad=True), SHAPES, 3
    )
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-6, 1e-6)


def test_sparse_gradients_dense_and_lazy():
    rows = [1, 3]
    dense, _ = optimizer_trajectory(
        kbm.optimizers.AdamW(0.01), [(5, 4)], 3, sparse_rows=rows
    )
    with kbm.config.fused_kernels(False):  # Keras's own update.
        dense_ref, _ = optimizer_trajectory(
            kbm.optimizers.AdamW(0.01), [(5, 4)], 3, sparse_rows=rows
        )
    assert_close(dense[0], dense_ref[0], 1e-6, 1e-6)
    start, _ = optimizer_trajectory(kbm.optimizers.AdamW(0.01), [(5, 4)], 0)
    lazy, opt = optimizer_trajectory(
        kbm.optimizers.AdamW(0.01, weight_decay=0.5, lazy_sparse_updates=True),
        [(5, 4)],
        3,
        sparse_rows=rows,
    )
    untouched = [0, 2, 4]
    np.testing.assert_array_equal(lazy[0][untouched], start[0][untouched])
    np.testing.assert_array_equal(np.asarray(opt._momentums[0])[untouched], 0.0)
    assert not np.allclose(lazy[0][rows], start[0][rows])
    # Dense semantics move every row (momentum and weight decay).
    assert not np.allclose(dense[0][untouched], start[0][untouched])


def test_duplicate_sparse_indices_are_summed_first():
    # The gradient of a row gathered twice is the sum of both parts; the
    # kernel sees that sum (Keras 3 squares each duplicate separately).
    var = tf.Variable(tf.ones((3, 2)))
    part = tf.constant([[1.0, 2.0], [3.0, -1.0]])
    sparse = tf.IndexedSlices(part, tf.constant([1, 1]), tf.constant([3, 2]))
    opt = kbm.optimizers.AdamW(0.1, weight_decay=0.0)
    opt.apply_gradients([(sparse, var)])
    twin = tf.Variable(tf.ones((3, 2)))
    opt2 = kbm.optimizers.AdamW(0.1, weight_decay=0.0)
    opt2.apply_gradients([(tf.convert_to_tensor(sparse), twin)])
    assert_close(var.numpy(), twin.numpy(), 0, 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(beta_1=1.0), "beta_1=1.0"),
        (dict(beta_2=-0.1), "beta_2=-0.1"),
        (dict(epsilon=-1e-7), "epsilon=-1e-07"),
        (dict(weight_decay=-0.1), "weight_decay=-0.1"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kbm.optimizers.AdamW(**kwargs)


def test_config_round_trip(keras):
    opt = kbm.optimizers.AdamW(
        3e-4, weight_decay=0.01, beta_2=0.98, lazy_sparse_updates=True
    )
    config = opt.get_config()
    clone = kbm.optimizers.AdamW.from_config(config)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is kbm.optimizers.AdamW
