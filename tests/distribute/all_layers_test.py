"""Every kbm layer trains under MirroredStrategy (2 logical CPUs) as on one
device: one model holds all of them, `fit` runs under the strategy and
without it from the same initial weights, and the final
weights and predictions agree. In a fresh process: logical devices must be
configured before TensorFlow starts."""

import numpy as np

from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.testing import assert_close, last_json_line, run_python

CODE = """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.config.experimental.enable_op_determinism()
    import keras_bigmodels as kbm
    from keras_bigmodels.backend import keras

    L = kbm.layers
    VOCAB, T, D = 40, 12, 16

    def make_model():
        ids = keras.Input((T,), dtype="int32", name="token_ids")
        h = L.TokenAndPositionEmbedding(VOCAB, T, D, mask_zero=True)(ids)
        other = keras.layers.Embedding(VOCAB, D)(ids)
        other = other + L.PositionEmbedding(T)(other)
        other = L.RMSNormalization()(other)
        h = L.LayerNormalization()(h + other)
        h = L.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
        h = L.GroupedQueryAttention(
            head_dim=8, num_query_heads=4, num_key_value_heads=2,
            rope_max_wavelength=10000)(h, h)
        rotated = L.RotaryEmbedding()(keras.layers.Reshape((T, 2, 8))(h))
        h = h + keras.layers.Reshape((T, D))(rotated)
        enc = L.TransformerEncoder(32, num_heads=2, norm="rms",
                                   norm_first=True, activation="swiglu",
                                   rope_max_wavelength=10000)(h)
        dec = L.TransformerDecoder(32, num_heads=4, num_key_value_heads=2,
                                   activation="gelu_tanh")(h, enc)
        h = L.FusedDense(D, activation="gelu")(dec)
        h = keras.layers.GlobalAveragePooling1D()(h)
        return keras.Model(ids, keras.layers.Dense(2)(h))

    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, size=(64, T)).astype("int32")
    x[::3, -3:] = 0  # Padding: masks reach the attention kernels.
    y = (x[:, 0] % 2).astype("int32")
    keras.utils.set_random_seed(1)
    initial = make_model().get_weights()

    def run(strategy):
        with strategy.scope():
            model = make_model()
            model.set_weights(initial)
            # Plain SGD: Adam-type updates turn rounding differences in
            # near-zero gradients into differences of a learning rate;
            # kbm's optimizers under the strategy are tested elsewhere.
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
        history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False,
                            verbose=0)
        return {
            "weights": [w.tolist() for w in model.get_weights()],
            "loss": history.history["loss"],
            "predict": model.predict(x, verbose=0).tolist(),
            "layers": sorted({type(l).__module__.split(".")[0] + "."
                              + type(l).__name__ for l in model.layers
                              if type(l).__module__.startswith(
                                  "keras_bigmodels")}),
        }

    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = run(tf.distribute.get_strategy())
    print(json.dumps({"mirrored": mirrored, "single": single,
                      "initial": [w.tolist() for w in initial]}))
"""


def test_every_layer_trains_under_mirrored_strategy_like_one_device():
    env = {"TF_USE_LEGACY_KERAS": "1" if IS_LEGACY_KERAS else None}
    result = last_json_line(run_python(CODE, env=env, timeout=600))
    mirrored, single = result["mirrored"], result["single"]
    assert mirrored["layers"] == [
        "keras_bigmodels." + name
        for name in sorted(
            [
                "FusedDense",
                "GroupedQueryAttention",
                "LayerNormalization",
                "MultiHeadAttention",
                "PositionEmbedding",
                "RMSNormalization",
                "RotaryEmbedding",
                "TokenAndPositionEmbedding",
                "TransformerDecoder",
                "TransformerEncoder",
            ]
        )
    ]
    # Training moved the weights, all but the three attention key biases
    # without RoPE (MHA, decoder self- and cross-attention), whose gradient
    # is zero: softmax ignores a shift shared by all keys. Then: the same
    # training on 2 replicas as on one device.
    changes = [
        float(np.abs(np.array(a) - np.array(b)).max())
        for a, b in zip(mirrored["weights"], result["initial"])
    ]
    assert sum(c < 1e-7 for c in changes) == 3, changes
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    for a, b in zip(mirrored["weights"], single["weights"]):
        assert_close(np.array(a), np.array(b), 1e-4, 1e-5, what="weight")
    assert_close(
        np.array(mirrored["predict"]),
        np.array(single["predict"]),
        1e-4,
        1e-5,
        what="predict",
    )
    print(
        "max |mirrored - single| weight:",
        max(
            float(np.abs(np.array(a) - np.array(b)).max())
            for a, b in zip(mirrored["weights"], single["weights"])
        ),
    )
