"""kbm.layers.TokenAndPositionEmbedding: token + position embeddings."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import (
    assert_close,
    last_json_line,
    random_tensor,
    run_layer_test,
    run_python,
)

IDS = np.array([[5, 1, 7, 0, 0], [3, 9, 0, 0, 0]], np.int32)


def layer_and_reference(keras, mask_zero=False, **kwargs):
    """Our layer and a plain `Embedding` holding the same token table."""
    layer = kbm.layers.TokenAndPositionEmbedding(
        vocabulary_size=10,
        sequence_length=8,
        embedding_dim=6,
        mask_zero=mask_zero,
        **kwargs,
    )
    reference = keras.layers.Embedding(10, 6, mask_zero=mask_zero)
    reference.build((None, None))
    reference.set_weights([random_tensor((10, 6), tf.float32, 0).numpy()])
    layer.build((None, None))
    layer.token_embedding.set_weights(reference.get_weights())
    return layer, reference


def positions_table(layer):
    return layer.position_embedding.embeddings.numpy()


def test_sum_of_token_and_position_embeddings(keras):
    layer, reference = layer_and_reference(keras)
    y = layer(IDS)
    assert y.shape == (2, 5, 6)
    expected = reference(IDS).numpy() + positions_table(layer)[:5]
    assert_close(y, expected, 1e-6, 1e-6)
    # With zero position embeddings, exactly the plain Embedding's output.
    layer.position_embedding.set_weights([np.zeros((8, 6), np.float32)])
    assert_close(layer(IDS), reference(IDS), 0, 0)


def test_weights_names_and_order(keras):
    layer, _ = layer_and_reference(keras)
    names = [w.name.split(":")[0] for w in layer.weights]
    if not IS_LEGACY_KERAS:
        names = [w.path for w in layer.weights]
    assert [n.split("/")[-2:] for n in names] == [
        ["token_embedding", "embeddings"],
        ["position_embedding", "embeddings"],
    ]
    assert [tuple(w.shape) for w in layer.weights] == [(10, 6), (8, 6)]


def test_leading_dims_shorter_inputs_and_start_index(keras):
    layer, reference = layer_and_reference(keras)
    table = positions_table(layer)
    ids = np.tile(IDS[:, :3], (4, 1, 1))  # [4, 2, 3]
    assert_close(layer(ids), reference(ids).numpy() + table[:3], 1e-6, 1e-6)
    full = layer(IDS).numpy()
    assert_close(layer(IDS[:, 2:], start_index=2), full[:, 2:], 1e-6, 1e-6)
    assert_close(
        layer(IDS[:, :2], positions=tf.constant([6, 7])),
        reference(IDS[:, :2]).numpy() + table[6:8],
        1e-6,
        1e-6,
    )


def test_compute_mask(keras):
    layer, _ = layer_and_reference(keras, mask_zero=True)
    np.testing.assert_array_equal(layer.compute_mask(IDS), IDS != 0)
    upstream = tf.constant([[True, False, True, True, True]] * 2)
    np.testing.assert_array_equal(
        layer.compute_mask(IDS, upstream), (IDS != 0) & upstream.numpy()
    )
    plain, _ = layer_and_reference(keras, mask_zero=False)
    assert plain.compute_mask(IDS) is None
    assert plain.compute_mask(IDS, upstream) is upstream


@pytest.mark.parametrize("mask_zero", [True, False])
def test_mask_reaches_downstream_layers(keras, mask_zero):
    seen = []

    class MaskProbe(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def call(self, inputs, mask=None):
            if tf.executing_eagerly():
                seen.append(None if mask is None else mask.numpy())
            return inputs

    layer, _ = layer_and_reference(keras, mask_zero=mask_zero)
    inputs = keras.Input((None,), dtype="int32")
    h = MaskProbe()(layer(inputs))
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, [h, pooled])
    h, pooled = model(IDS)
    if mask_zero:
        np.testing.assert_array_equal(seen[-1], IDS != 0)
        # Average pooling respects the mask: padded positions are left out.
        keep = (IDS != 0)[..., None]
        expected = (h.numpy() * keep).sum(1) / keep.sum(1)
    else:
        assert seen[-1] is None
        expected = h.numpy().mean(1)
    assert_close(pooled, expected, 1e-5, 1e-5)


def test_mixed_precision_output_dtype():
    layer = kbm.layers.TokenAndPositionEmbedding(
        10, 8, 6, dtype="mixed_float16"
    )
    assert layer(IDS).dtype == tf.float16
    assert all(w.dtype == tf.float32 for w in layer.weights)


def test_config_round_trip():
    layer = kbm.layers.TokenAndPositionEmbedding(
        vocabulary_size=100,
        sequence_length=16,
        embedding_dim=4,
        embeddings_initializer="zeros",
        mask_zero=True,
    )
    config = layer.get_config()
    for key, value in dict(
        vocabulary_size=100, sequence_length=16, embedding_dim=4, mask_zero=True
    ).items():
        assert config[key] == value
    clone = kbm.layers.TokenAndPositionEmbedding.from_config(config)
    assert clone.get_config() == config
    assert_close(clone(IDS), np.zeros((2, 5, 4)), 0, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocabulary_size=0), "Received: vocabulary_size=0"),
        (dict(sequence_length=-3), "Received: sequence_length=-3"),
        (dict(embedding_dim=None), "Received: embedding_dim=None"),
        (dict(embedding_dim=2.0), "Received: embedding_dim=2.0"),
        (dict(mask_zero="yes"), "Received: mask_zero='yes'"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(vocabulary_size=10, sequence_length=8, embedding_dim=6)
    with pytest.raises(ValueError, match=message):
        kbm.layers.TokenAndPositionEmbedding(**{**args, **kwargs})


def test_too_long_inputs():
    layer = kbm.layers.TokenAndPositionEmbedding(10, 4, 6)
    with pytest.raises(ValueError, match="sequence_length=4 positions"):
        layer(IDS)
    with pytest.raises(ValueError, match="sequence_length=4 positions"):
        layer(IDS[:, :3], start_index=2)


@pytest.mark.parametrize("mask_zero", [False, True])
def test_layer_contract(tmp_path, mask_zero):
    run_layer_test(
        kbm.layers.TokenAndPositionEmbedding,
        {
            "vocabulary_size": 20,
            "sequence_length": 8,
            "embedding_dim": 4,
            "mask_zero": mask_zero,
        },
        (16, 7),
        input_dtype="int32",
        input_range=(0, 20),
        expected_output_shape=(16, 7, 4),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        tmp_dir=tmp_path,
    )


def test_contract(keras, tmp_path):
    """Eager == tf.function, one fit epoch, .keras save and load elsewhere."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, size=(32, 7)).astype(np.int32)
    x[:, 5:] = 0  # padding, masked out below
    y = rng.standard_normal((32, 1)).astype(np.float32)
    layer = kbm.layers.TokenAndPositionEmbedding(20, 8, 4, mask_zero=True)
    inputs = keras.Input((7,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(layer(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))

    assert_close(tf.function(model)(x), model(x), 1e-6, 1e-6)
    before = [w.numpy().copy() for w in layer.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for b, w in zip(before, layer.weights):
        assert not np.allclose(b, w.numpy()), w.name
    # Padded positions get no gradient: their position embeddings are as
    # they were.
    np.testing.assert_array_equal(before[1][5:], layer.weights[1].numpy()[5:])

    expected = model.predict(x, verbose=0)
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    np.save(os.path.join(str(tmp_path), "x.npy"), x)
    out = run_python(
        f"""
        import json
        import numpy as np
        from keras_bigmodels.backend import keras
        model = keras.models.load_model({path!r})
        x = np.load({os.path.join(str(tmp_path), "x.npy")!r})
        print(json.dumps(model.predict(x, verbose=0).tolist()))
        """,
        env={
            "KERAS_BIGMODELS_DISABLE_FUSED": "1",
            "TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None,
        },
    )
    assert_close(np.array(last_json_line(out)), expected, 1e-6, 1e-6)
