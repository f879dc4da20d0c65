"""kbm.pruning: magnitude pruning schedules, masks, callback, strip, saving."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.pruning import magnitude, schedules

P = kbm.pruning

# ---------------------------------------------------------------- helpers


def raw_kernel(layer):
    return np.asarray(tf.convert_to_tensor(magnitude._variable_of(layer)))


def mask_of(layer):
    return np.asarray(tf.convert_to_tensor(layer._kbm_mask))


def mlp(keras, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    h = kbm.layers.FusedDense(16, activation="gelu", name="fd")(h)
    out = keras.layers.Dense(4, name="d2")(h)
    return keras.Model(inp, out)


def data(n=64, d=12, k=4, seed=0):
    rs = np.random.RandomState(seed)
    return (
        rs.randn(n, d).astype("float32"),
        rs.randn(n, k).astype("float32"),
    )


def conv_embed_einsum_model(keras):
    """Conv2D, Embedding and EinsumDense kernels of odd sizes."""
    keras.utils.set_random_seed(1)
    img = keras.Input((6, 6, 3), name="img")
    ids = keras.Input((5,), dtype="int32", name="ids")
    c = keras.layers.Conv2D(5, 3, name="conv")(img)
    c = keras.layers.GlobalAveragePooling2D()(c)
    e = keras.layers.Embedding(11, 7, name="emb")(ids)
    e = keras.layers.EinsumDense("abc,cd->abd", (5, 9), name="ein")(e)
    e = keras.layers.GlobalAveragePooling1D()(e)
    out = keras.layers.Dense(1, name="head")(keras.layers.Concatenate()([c, e]))
    return keras.Model([img, ids], out)


def conv_data(n=10, seed=0):
    rs = np.random.RandomState(seed)
    return (
        [
            rs.randn(n, 6, 6, 3).astype("float32"),
            rs.randint(0, 11, (n, 5)).astype("int32"),
        ],
        rs.randn(n, 1).astype("float32"),
    )


def assert_m_by_n(weights, reduction_axes, m=2, n=4):
    """Every n consecutive weights along K hold m nonzeros, the largest."""
    matrix, _, _ = magnitude._two_d(np.asarray(weights), reduction_axes)
    groups = np.abs(matrix.reshape(matrix.shape[0] // n, n, -1))
    assert np.all(np.sum(groups != 0, axis=1) == m)


# ---------------------------------------------------------------- schedules


def test_polynomial_decay_golden_values():
    s = P.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
    # final + (initial - final) * (1 - p) ** 3
    assert s.sparsity_at(0) == pytest.approx(0.0)
    assert s.sparsity_at(250) == pytest.approx(0.8 - 0.8 * 0.75**3)  # .4625
    assert s.sparsity_at(500) == pytest.approx(0.7)
    assert s.sparsity_at(1000) == pytest.approx(0.8)
    assert s.sparsity_at(5000) == pytest.approx(0.8)
    assert s(500) == (True, pytest.approx(0.7))
    assert s(550) == (False, pytest.approx(0.8 - 0.8 * 0.45**3))
    s2 = P.PolynomialDecay(0.2, 0.6, 10, 30, power=1, frequency=7)
    assert s2.sparsity_at(5) == pytest.approx(0.2)
    assert s2.sparsity_at(20) == pytest.approx(0.4)
    due = [t for t in range(0, 50) if s2.should_prune(t)]
    # Every 7 steps from begin_step, plus end_step itself.
    assert due == [10, 17, 24, 30]


def test_constant_sparsity_golden_values():
    s = P.ConstantSparsity(0.5, begin_step=10, frequency=100)
    assert s(5) == (False, 0.5)
    assert s(10) == (True, 0.5)
    assert s(110) == (True, 0.5)
    assert s(111) == (False, 0.5)
    assert s(100_010) == (True, 0.5)  # end_step=-1: no end.
    e = P.ConstantSparsity(0.3, 0, end_step=250, frequency=100)
    assert [t for t in range(400) if e.should_prune(t)] == [0, 100, 200, 250]


@pytest.mark.parametrize(
    "schedule",
    [
        P.PolynomialDecay(0.1, 0.9, 3, 300, power=2, frequency=7),
        P.ConstantSparsity(0.25, 4, end_step=40, frequency=2),
    ],
)
def test_schedule_serialization(keras, schedule):
    assert type(schedule).from_config(schedule.get_config()) == schedule
    assert schedules.deserialize(schedules.serialize(schedule)) == schedule
    config = keras.saving.serialize_keras_object(schedule)
    assert keras.saving.deserialize_keras_object(config) == schedule


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(initial_sparsity=0.0, final_sparsity=1.0), "final_sparsity"),
        (dict(initial_sparsity=-0.1, final_sparsity=0.5), "initial_sparsity"),
        (dict(initial_sparsity="0", final_sparsity=0.5), "initial_sparsity"),
        (dict(initial_sparsity=True, final_sparsity=0.5), "initial_sparsity"),
        (dict(begin_step=-1), "begin_step"),
        (dict(begin_step=10, end_step=10), "greater than begin_step"),
        (dict(end_step=-1), "needs an end_step"),
        (dict(end_step=2.5), "end_step"),
        (dict(frequency=0), "frequency"),
        (dict(power=0), "power"),
    ],
)
def test_polynomial_decay_bad_arguments(kwargs, message):
    args = dict(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        P.PolynomialDecay(**args)


def test_constant_sparsity_bad_arguments():
    with pytest.raises(ValueError, match="target_sparsity"):
        P.ConstantSparsity(1.0, 0)
    with pytest.raises(ValueError, match="greater than begin_step"):
        P.ConstantSparsity(0.5, 5, end_step=3)
    with pytest.raises(ValueError, match="begin_step"):
        P.ConstantSparsity(0.5, None)
    with pytest.raises(ValueError, match="step"):
        P.ConstantSparsity(0.5, 0)(1.5)


# ---------------------------------------------------------------- masks


def test_compute_mask_golden():
    w = np.array([3.0, -1.0, 2.0, 0.5, -4.0, 0.0])
    np.testing.assert_array_equal(P.compute_mask(w, 0.5), [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(P.compute_mask(w, 0.0), np.ones(6))
    # Ties: the earlier index is pruned first.
    np.testing.assert_array_equal(P.compute_mask(np.ones(4), 0.5), [0, 0, 1, 1])
    # 2:4 along the input dimension (axis 0 of a [in, out] kernel).
    k = np.array([[1.0, -4.0], [3.0, 2.0], [-2.0, 0.5], [0.1, 5.0]])
    np.testing.assert_array_equal(
        P.compute_mask(k, 0.0, sparsity_m_by_n=(2, 4)),
        [[0, 1], [1, 0], [1, 0], [0, 1]],
    )
    # 2x2 blocks ranked by mean |w|; the 3-row matrix is padded to 4.
    b = np.array([[1.0, 1.0, 9.0, 9.0], [1.0, 1.0, 9.0, 9.0], [5, 5, 0, 0]])
    np.testing.assert_array_equal(
        P.compute_mask(b, 0.5, block=(2, 2)),
        [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0]],
    )


def test_prune_adds_one_mask_per_kernel_and_changes_nothing_yet(keras):
    model = mlp(keras)
    x, _ = data()
    before = np.asarray(model(x))
    n_vars = len(model.weights)
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0))
    assert len(model.weights) == n_vars + 3
    assert len(model.trainable_weights) == n_vars
    assert isinstance(model.get_layer("d1"), P.PrunedDense)
    assert isinstance(model.get_layer("fd"), P.PrunedFusedDense)
    assert isinstance(model.get_layer("fd"), kbm.layers.FusedDense)
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    assert P.get_sparsity(model) == {"d1": 0.0, "fd": 0.0, "d2": 0.0}


def test_sparsity_at_end_step_equals_target(keras):
    model = conv_embed_einsum_model(keras)
    schedule = P.PolynomialDecay(0.0, 0.75, 0, 10, frequency=3)
    P.prune_low_magnitude(model, schedule)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = conv_data(n=10)
    # 10 batches of 1: updates at steps 0, 3, 6, 9 and (after the last
    # batch, at epoch end) 10 = end_step.
    model.fit(
        x,
        y,
        batch_size=1,
        epochs=1,
        verbose=0,
        callbacks=[P.UpdatePruningStep()],
    )
    report = P.get_sparsity(model)
    assert set(report) == {"conv", "emb", "ein", "head"}
    for name in report:
        layer = model.get_layer(name)
        size = mask_of(layer).size
        zeros = int(np.sum(mask_of(layer) == 0))
        assert abs(zeros - 0.75 * size) <= 1, (name, zeros, size)
        assert report[name] == pytest.approx(zeros / size)
        # The kernel variable itself holds the zeros.
        assert np.all(raw_kernel(layer)[mask_of(layer) == 0] == 0)


def test_masks_follow_the_schedule_between_updates(keras):
    model = mlp(keras)
    schedule = P.PolynomialDecay(0.0, 0.5, 2, 6, power=1, frequency=2)
    P.prune_low_magnitude(model, schedule, targets="d1")
    layer = model.get_layer("d1")
    size = mask_of(layer).size
    expected = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.25, 5: 0.25, 6: 0.5}
    for step, sparsity in expected.items():
        P.update_pruning_masks(model, step)
        assert np.sum(mask_of(layer) == 0) == round(sparsity * size), step
    # A jump over several steps applies the last update due.
    model2 = mlp(keras)
    P.prune_low_magnitude(model2, schedule, targets=["d1"])
    P.update_pruning_masks(model2, 0)
    assert P.update_pruning_masks(model2, 5) == 1
    assert np.sum(mask_of(model2.get_layer("d1")) == 0) == size // 4


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masked_weights_stay_zero_during_fit(keras, optimizer):
    model = mlp(keras)
    P.prune_low_magnitude(model, P.PolynomialDecay(0.3, 0.6, 0, 8, frequency=4))
    opt = (
        keras.optimizers.Adam(0.01, weight_decay=0.01)
        if optimizer == "adam"
        else keras.optimizers.SGD(0.1, momentum=0.9)
    )
    model.compile(opt, "mse")
    x, y = data()
    start = {n: raw_kernel(model.get_layer(n)) for n in ("d1", "fd", "d2")}
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[P.UpdatePruningStep()],
    )
    for name in ("d1", "fd", "d2"):
        layer = model.get_layer(name)
        mask, kernel = mask_of(layer), raw_kernel(layer)
        assert np.sum(mask == 0) == round(0.6 * mask.size)
        assert np.all(kernel[mask == 0] == 0)
        # The kept weights trained.
        assert not np.allclose(kernel[mask == 1], start[name][mask == 1])


def test_gradients_reach_only_kept_weights(keras):
    model = mlp(keras)
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0), targets="d1")
    P.update_pruning_masks(model, 0)
    layer = model.get_layer("d1")
    variable = magnitude._variable_of(layer)
    x, y = data()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
    grad = np.asarray(tape.gradient(loss, variable))
    mask = mask_of(layer)
    assert np.all(grad[mask == 0] == 0)
    assert np.count_nonzero(grad[mask == 1]) > 0


def test_training_without_the_callback_raises(keras):
    model = mlp(keras)
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0))
    model.compile("sgd", "mse")
    x, y = data()
    with pytest.raises(Exception, match="UpdatePruningStep"):
        model.fit(x, y, verbose=0)
    # Inference needs no callback.
    model.predict(x, verbose=0)


def test_callback_on_an_unpruned_model_raises(keras):
    model = mlp(keras)
    model.compile("sgd", "mse")
    x, y = data()
    with pytest.raises(ValueError, match="no pruned layers"):
        model.fit(x, y, verbose=0, callbacks=[P.UpdatePruningStep()])


# ---------------------------------------------------------------- 2:4


def test_two_four_in_dense_conv_and_attention(keras):
    keras.utils.set_random_seed(3)
    tokens = keras.Input((6, 16))
    h = kbm.layers.MultiHeadAttention(2, 8, name="mha")(tokens, tokens)
    h = keras.layers.MultiHeadAttention(2, 4, name="kmha")(h, h)
    h = keras.layers.Dense(8, name="dense")(keras.layers.Flatten()(h))
    img = keras.Input((5, 5, 8))
    c = keras.layers.Conv2D(3, 3, name="conv")(img)
    c = keras.layers.Flatten()(c)
    out = keras.layers.Dense(1, name="head", dtype="float32")(
        keras.layers.Concatenate()([h, c])
    )
    model = keras.Model([tokens, img], out)
    P.prune_low_magnitude(
        model,
        P.ConstantSparsity(0.9, 0, frequency=1),
        targets=[r"mha/.*", r"kmha/.*", "dense", "conv"],
        sparsity_m_by_n=(2, 4),
    )
    pruned = [
        (p, lay)
        for p, lay in magnitude._walk(model)
        if isinstance(lay, magnitude._PRUNED_CLASSES)
    ]
    assert len(pruned) == 10  # 4 + 4 attention projections, dense, conv.
    assert not isinstance(model.get_layer("head"), P.PrunedDense)
    rs = np.random.RandomState(0)
    x = [rs.randn(4, 6, 16).astype("float32"), rs.randn(4, 5, 5, 8)]
    y = rs.randn(4, 1).astype("float32")
    model.compile("adam", "mse")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[P.UpdatePruningStep()])
    for path, layer in pruned:
        kernel = np.asarray(tf.convert_to_tensor(layer.kernel))
        axes = magnitude._reduction_axes(layer, kernel.ndim)
        assert_m_by_n(kernel, axes)
        assert P.get_sparsity(model)[path] == pytest.approx(0.5)
        # The kept two are the largest of their group (of |kernel*mask|
        # before the last update, so check against the raw variable).
        raw = raw_kernel(layer)
        assert np.all(raw[mask_of(layer) == 0] == 0)
    out_kernel = model.get_layer("mha")._output_dense
    assert magnitude._reduction_axes(out_kernel, 3) == (0, 1)


def test_two_four_keeps_the_two_largest(keras):
    layer = keras.layers.Dense(3)
    layer.build((None, 8))
    rs = np.random.RandomState(0)
    w = rs.randn(8, 3).astype("float32")
    layer.set_weights([w, np.zeros(3, "float32")])
    P.prune_low_magnitude(
        layer, P.ConstantSparsity(0.5, 0), sparsity_m_by_n=(2, 4)
    )
    P.update_pruning_masks(layer, 0)
    kept = np.asarray(tf.convert_to_tensor(layer.kernel))
    for g in range(2):
        for col in range(3):
            group = np.abs(w[4 * g : 4 * g + 4, col])
            top2 = set(np.argsort(-group)[:2])
            nonzero = set(np.flatnonzero(kept[4 * g : 4 * g + 4, col]))
            assert nonzero == top2


def test_two_four_needs_a_multiple_of_four(keras):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(4)(inp))
    with pytest.raises(ValueError, match="multiple of 4"):
        P.prune_low_magnitude(
            model, P.ConstantSparsity(0.5, 0), sparsity_m_by_n=(2, 4)
        )
    # Nothing was changed.
    assert P.get_sparsity(model) and not any(
        isinstance(lay, magnitude._PRUNED_CLASSES) for lay in model.layers
    )


# ---------------------------------------------------------------- strip


def test_strip_gives_identical_outputs_and_no_extra_variables(keras):
    model = conv_embed_einsum_model(keras)
    plain = conv_embed_einsum_model(keras)
    names = [w.name for w in plain.weights]
    P.prune_low_magnitude(model, P.ConstantSparsity(0.6, 0))
    P.update_pruning_masks(model, 0)
    x, _ = conv_data()
    pruned_out = np.asarray(model(x))
    sparsity = P.get_sparsity(model)
    P.strip_pruning(model)
    assert [w.name for w in model.weights] == names
    assert not any(
        isinstance(lay, magnitude._PRUNED_CLASSES)
        for _, lay in magnitude._walk(model)
    )
    assert type(model.get_layer("conv")) is keras.layers.Conv2D
    np.testing.assert_array_equal(np.asarray(model(x)), pruned_out)
    assert P.get_sparsity(model) == sparsity
    assert P.get_sparsity(model)["emb"] == pytest.approx(0.6, abs=0.02)
    # Stripping twice, or an unpruned model, changes nothing.
    P.strip_pruning(model)
    np.testing.assert_array_equal(np.asarray(model(x)), pruned_out)


def test_strip_then_save_loads_as_plain_model(keras, tmp_path):
    model = mlp(keras)
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0))
    P.update_pruning_masks(model, 0)
    P.strip_pruning(model)
    path = os.path.join(tmp_path, "stripped.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x, _ = data()
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert "Pruned" not in str(model.get_config())


# ---------------------------------------------------------------- saving


def test_keras_round_trip_of_pruned_functional_model(keras, tmp_path):
    model = mlp(keras)
    P.prune_low_magnitude(model, P.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2))
    model.compile("adam", "mse")
    x, y = data()
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        verbose=0,
        callbacks=[P.UpdatePruningStep()],
    )
    path = os.path.join(tmp_path, "pruned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert len(loaded.weights) == len(model.weights)
    for name in ("d1", "fd", "d2"):
        a, b = model.get_layer(name), loaded.get_layer(name)
        assert isinstance(b, magnitude._PRUNED_CLASSES)
        np.testing.assert_array_equal(mask_of(b), mask_of(a))
        assert b._kbm_schedule == a._kbm_schedule
    # The loaded model trains on, still pruned, from the saved optimizer's
    # step (a new optimizer would restart the schedule at step 0).
    assert int(loaded.optimizer.iterations.numpy()) == 4
    loaded.fit(x, y, epochs=1, verbose=0, callbacks=[P.UpdatePruningStep()])
    for name in ("d1", "fd", "d2"):
        layer = loaded.get_layer(name)
        assert np.all(raw_kernel(layer)[mask_of(layer) == 0] == 0)
        assert np.mean(mask_of(layer) == 0) == pytest.approx(0.5, abs=0.01)


def tiny_bert(seed=0):
    import keras_bigmodels.models  # noqa: F401 (lazy submodule)

    kbm.backend.keras.utils.set_random_seed(seed)
    return kbm.models.BertEncoder(
        vocabulary_size=40,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
        dropout=0.0,
    )


def bert_inputs(seed=0):
    rs = np.random.RandomState(seed)
    return {
        "token_ids": rs.randint(0, 40, (3, 8)).astype("int32"),
        "segment_ids": rs.randint(0, 2, (3, 8)).astype("int32"),
        "padding_mask": np.ones((3, 8), "int32"),
    }


def test_subclassed_bert_encoder_prune_train_save(keras, tmp_path):
    encoder = tiny_bert()
    x = bert_inputs()
    P.prune_low_magnitude(
        encoder,
        P.ConstantSparsity(0.5, 0),
        targets=r"transformer_layer_\d+/.*",
        sparsity_m_by_n=(2, 4),
    )
    report = P.get_sparsity(encoder)
    pruned = [p for p in report if p.startswith("transformer_layer")]
    assert len(pruned) == 12  # 2 layers x (q, k, v, o, ffn in, ffn out)
    assert "token_embedding" in report
    # A custom training loop: update_pruning_masks, then train steps.
    opt = keras.optimizers.Adam(0.01)
    for step in range(3):
        P.update_pruning_masks(encoder, step)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(encoder(x, training=True) ** 2)
        grads = tape.gradient(loss, encoder.trainable_weights)
        opt.apply_gradients(zip(grads, encoder.trainable_weights))
    magnitude._apply_masks(encoder)
    report = P.get_sparsity(encoder)
    for path in pruned:
        assert report[path] == pytest.approx(0.5)
    assert report["token_embedding"] == 0.0
    out = np.asarray(encoder(x))
    # Saved unstripped: BertEncoder rebuilds its sublayers from its own
    # config, so they load as plain layers holding the zeros.
    path = os.path.join(tmp_path, "bert.keras")
    encoder.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), out, atol=1e-6)
    assert P.get_sparsity(loaded) == report
    stripped = P.strip_pruning(encoder)
    assert len(stripped.weights) == len(loaded.weights)
    np.testing.assert_array_equal(np.asarray(stripped(x)), out)


def test_layer_alone_and_unbuilt(keras):
    layer = keras.layers.Dense(4)
    with pytest.raises(ValueError, match="not built"):
        P.prune_low_magnitude(layer, P.ConstantSparsity(0.5, 0))
    layer.build((None, 8))
    P.prune_low_magnitude(layer, P.ConstantSparsity(0.5, 0))
    P.update_pruning_masks(layer, 0)
    assert P.get_sparsity(layer) == {layer.name: 0.5}
    P.strip_pruning(layer)
    assert type(layer) is keras.layers.Dense
    assert len(layer.weights) == 2


# ---------------------------------------------------------------- bad input


def test_bad_arguments(keras):
    model = mlp(keras)
    schedule = P.ConstantSparsity(0.5, 0)
    with pytest.raises(ValueError, match="schedule must be"):
        P.prune_low_magnitude(model, 0.5)
    with pytest.raises(ValueError, match="not both"):
        P.prune_low_magnitude(
            model, schedule, block=(2, 2), sparsity_m_by_n=(2, 4)
        )
    for bad in [(4, 4), (2,), (2, 0), "2:4", (2.0, 4)]:
        with pytest.raises(ValueError, match="sparsity_m_by_n"):
            P.prune_low_magnitude(model, schedule, sparsity_m_by_n=bad)
    with pytest.raises(ValueError, match="block"):
        P.prune_low_magnitude(model, schedule, block=(0, 2))
    with pytest.raises(ValueError, match="match no prunable layer"):
        P.prune_low_magnitude(model, schedule, targets="no_such_layer")
    with pytest.raises(ValueError, match="targets must be"):
        P.prune_low_magnitude(model, schedule, targets=3)
    with pytest.raises(ValueError, match="Keras model or layer"):
        P.prune_low_magnitude("model", schedule)
    P.prune_low_magnitude(model, schedule, targets=lambda lay: lay.name == "d1")
    with pytest.raises(ValueError, match="already pruned"):
        P.prune_low_magnitude(model, schedule, targets="d1")
    with pytest.raises(ValueError, match="pruning_schedule"):
        schedules.deserialize({"class_name": "Nope", "config": {}})


def test_sequential_block_pruning_round_trip(keras, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(8, name="a"),
            keras.layers.Dense(4, name="b"),
        ]
    )
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0), block=(2, 2))
    P.update_pruning_masks(model, 0)
    mask = mask_of(model.get_layer("a"))
    blocks = mask.reshape(8, 2, 4, 2)
    assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3)))
    assert np.mean(mask == 0) == 0.5
    path = os.path.join(tmp_path, "seq.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("a").get_config()["block"] == [2, 2]
    np.testing.assert_array_equal(mask_of(loaded.get_layer("a")), mask)
    x, _ = data(d=16)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_mixed_precision(keras):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((8,))
        model = keras.Model(inp, keras.layers.Dense(4, name="d")(inp))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    P.prune_low_magnitude(model, P.ConstantSparsity(0.5, 0))
    P.update_pruning_masks(model, 0)
    x, _ = data(d=8)
    out = model(x)
    assert out.dtype == tf.float16
    P.strip_pruning(model)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(out))


def test_pruned_layer_from_config_validates(keras):
    config = schedules.serialize(P.ConstantSparsity(0.5, 0))
    with pytest.raises(ValueError, match="not both"):
        P.PrunedDense(
            4, pruning_schedule=config, block=(2, 2), sparsity_m_by_n=(2, 4)
        )
    layer = P.PrunedDense(4, pruning_schedule=config, sparsity_m_by_n=(2, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        layer.build((None, 6))
    with pytest.raises(ValueError, match="pruning_schedule"):
        P.PrunedDense(4)


def test_steps_per_execution_applies_updates_between_callbacks(keras):
    model = mlp(keras)
    schedule = P.PolynomialDecay(0.0, 0.5, 0, 10, frequency=3)
    P.prune_low_magnitude(model, schedule, targets="d1")
    model.compile("sgd", "mse", steps_per_execution=4)
    x, y = data(n=40)
    # Batch callbacks at steps 0, 4, 8; updates due at 0, 3, 6, 9, 10.
    model.fit(
        x,
        y,
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[P.UpdatePruningStep()],
    )
    mask = mask_of(model.get_layer("d1"))
    assert np.sum(mask == 0) == round(0.5 * mask.size)
