"""AttentionDistillation (MiniLM) and student_from_teacher: NumPy golden,
real BertEncoder attention, gradients, Distiller training, errors."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.distillation.losses import AttentionDistillation

SEQ = 6


def encoder(layers=2, heads=2, hidden=8, name="enc", seed=0):
    keras.utils.set_random_seed(seed)
    return kbm.models.BertEncoder(
        vocabulary_size=30,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=16,
        max_sequence_length=SEQ,
        dropout=0.0,
        name=name,
    )


class ToBertInputs(keras.layers.Layer):
    def call(self, ids):
        ids = tf.cast(ids, tf.int32)
        return {
            "token_ids": ids,
            "segment_ids": tf.zeros_like(ids),
            "padding_mask": tf.cast(tf.not_equal(ids, 0), tf.int32),
        }


def classifier(enc, name):
    ids = keras.Input((SEQ,), dtype="int32")
    sequence = enc(ToBertInputs()(ids))
    pooled = keras.layers.GlobalAveragePooling1D()(sequence)
    return keras.Model(ids, keras.layers.Dense(2)(pooled), name=name)


def token_ids(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 30, (n, SEQ))
    for i in range(n):
        ids[i, SEQ - i % 3 :] = 0  # Some padding.
    return ids.astype("int32")


# ------------------------------------------------------------ NumPy golden


def np_log_softmax(z, valid):
    z = np.where(valid, z, -np.inf)
    m = z.max(-1, keepdims=True)
    out = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    return out


def np_relation(a, b, mask, heads):
    """a, b [B, T, H, D] -> log softmax(a_r b_r^T / sqrt(d)) [B, R, T, T]."""
    bsz, t = a.shape[:2]
    if heads is not None:
        a = a.reshape(bsz, t, heads, -1)
        b = b.reshape(bsz, t, heads, -1)
    a, b = a.transpose(0, 2, 1, 3), b.transpose(0, 2, 1, 3)
    scores = a @ b.transpose(0, 1, 3, 2) / np.sqrt(a.shape[-1])
    return np_log_softmax(scores, mask[:, None, None, :] > 0)


def np_kl(lt, ls, mask):
    total, rows = 0.0, 0
    for b in range(lt.shape[0]):
        valid = mask[b] > 0
        for h in range(lt.shape[1]):
            for q in np.flatnonzero(valid):
                p = np.exp(lt[b, h, q, valid])
                total += (p * (lt[b, h, q, valid] - ls[b, h, q, valid])).sum()
                rows += 1
    return total / rows


def np_attention_loss(t_qkv, s_qkv, mask, relations, heads):
    values = []
    for r in relations:
        a, b = "qkv".index(r[0]), "qkv".index(r[1])
        lt = np_relation(t_qkv[a], t_qkv[b], mask, heads)
        ls = np_relation(s_qkv[a], s_qkv[b], mask, heads)
        values.append(np_kl(lt, ls, mask))
    return np.mean(values)


def qkv_of(enc, index, hidden):
    attention = enc.transformer_layers[index]._self_attention
    return [
        np.float64(dense(hidden).numpy())
        for dense in (
            attention._query_dense,
            attention._key_dense,
            attention._value_dense,
        )
    ]


@pytest.mark.parametrize(
    "relations,relation_heads,student_heads,student_hidden",
    [
        (("qk",), None, 2, 8),
        (("qk", "vv"), None, 2, 8),
        (("qq", "kk", "vv"), 4, 4, 8),  # Another head count.
        (("qk", "vv"), 2, 2, 4),  # Narrower and another head size.
    ],
)
def test_golden_against_numpy(
    relations, relation_heads, student_heads, student_hidden
):
    teacher = encoder(layers=2, seed=1, name="t")
    student = encoder(
        layers=1,
        heads=student_heads,
        hidden=student_hidden,
        seed=2,
        name="s",
    )
    loss = AttentionDistillation(
        relations=relations, relation_heads=relation_heads
    )
    loss.configure(teacher, student)
    assert loss._pairs == [(0, 1)]
    ids = token_ids()
    mask = (ids != 0).astype("int32")
    inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": mask,
    }
    t_feat = keras.Model(
        teacher.input, teacher.get_layer("transformer_layer_0").output
    )(inputs)
    s_feat = keras.Model(
        student.input, student.get_layer("embeddings_dropout").output
    )(inputs)
    value = loss.compute_loss(
        {loss.teacher_features[0]: t_feat, loss.teacher_features[1]: mask},
        {loss.student_features[0]: s_feat, loss.student_features[1]: mask},
    )
    expected = np_attention_loss(
        qkv_of(teacher, 1, t_feat),
        qkv_of(student, 0, s_feat),
        mask,
        relations,
        relation_heads,
    )
    np.testing.assert_allclose(float(value), expected, rtol=2e-4, atol=1e-6)
    assert float(value) > 0


def test_qk_relation_is_the_layers_attention_distribution():
    """With the model's own heads, "qk" is exactly the probabilities the
    attention layer returns (return_attention_scores)."""
    enc = encoder(layers=1)
    ids = token_ids()
    mask = (ids != 0).astype("int32")
    hidden = keras.Model(enc.input, enc.get_layer("embeddings_dropout").output)(
        {
            "token_ids": ids,
            "segment_ids": np.zeros_like(ids),
            "padding_mask": mask,
        }
    )
    loss = AttentionDistillation(relations=("qk",))
    loss.configure(enc, enc)
    view = loss._views[1]
    log_probs = loss.relation_logits(view, 0, hidden, mask)["qk"]
    attention = enc.transformer_layers[0]._self_attention
    _, probs = attention(
        hidden,
        hidden,
        attention_mask=(mask[:, None, :] > 0) & np.ones((1, SEQ, 1), bool),
        return_attention_scores=True,
    )
    valid = np.broadcast_to(mask[:, None, None, :] > 0, probs.shape)
    np.testing.assert_allclose(
        np.exp(log_probs.numpy())[valid], probs.numpy()[valid], atol=1e-5
    )


def test_identical_models_give_zero_and_gradient_reaches_student_only():
    teacher = encoder(layers=2, seed=3, name="t")
    student = encoder(layers=2, seed=3, name="s")
    loss = AttentionDistillation(layer_map={0: 0, 1: 1})
    loss.configure(teacher, student)
    ids = token_ids()
    mask = (ids != 0).astype("int32")
    inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": mask,
    }

    def features(enc, keys):
        layers = [k for k in keys if k != "padding_mask"]
        outs = keras.Model(
            enc.input, [enc.get_layer(k).output for k in layers]
        )(inputs)
        return {**dict(zip(layers, outs)), "padding_mask": mask}

    t = features(teacher, loss.teacher_features)
    s = features(student, loss.student_features)
    assert abs(float(loss.compute_loss(t, s))) < 1e-6
    # Perturb the student: positive loss; gradients reach only it.
    rng = np.random.default_rng(0)
    s = {
        k: v if k == "padding_mask" else v + 5 * rng.normal(size=v.shape)
        for k, v in s.items()
    }
    t = {k: tf.convert_to_tensor(v) for k, v in t.items()}
    s = {
        k: tf.cast(v, tf.int32 if k == "padding_mask" else tf.float32)
        for k, v in s.items()
    }
    t_att = teacher.transformer_layers[1]._self_attention
    s_att = student.transformer_layers[1]._self_attention
    watched = [t[loss.teacher_features[0]], s[loss.student_features[0]]]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched)
        value = loss.compute_loss(t, s)
    assert float(value) > 1e-3
    grads = tape.gradient(value, watched)
    assert grads[0] is None
    assert float(tf.reduce_sum(tf.abs(grads[1]))) > 0
    t_vars = t_att._query_dense.trainable_variables
    s_vars = s_att._query_dense.trainable_variables
    assert all(g is None for g in tape.gradient(value, t_vars))
    assert all(g is not None for g in tape.gradient(value, s_vars))


@pytest.mark.parametrize("cache", [None, "memory"])
def test_in_a_distiller_with_nested_encoders_and_other_head_count(cache):
    """Teacher and student classifiers nest their encoders; the student has
    fewer blocks, other heads and a narrower width (hidden states
    projected); logits, hidden states and attention together."""
    teacher = classifier(encoder(layers=2, seed=4, name="t_enc"), "teacher")
    student = classifier(
        encoder(layers=1, heads=4, hidden=4, seed=5, name="s_enc"), "student"
    )
    losses = [
        kbm.distillation.losses.LogitsDistillation(2.0),
        kbm.distillation.losses.HiddenStateDistillation(
            {"s_enc/transformer_layer_0": "t_enc/transformer_layer_1"}
        ),
        AttentionDistillation("t_enc", "s_enc", relation_heads=2),
    ]
    distiller = kbm.distillation.Distiller(
        teacher, student, losses, student_loss_weight=0.2, teacher_cache=cache
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = token_ids(16)
    y = np.arange(16) % 2
    before = [w.copy() for w in teacher.get_weights()]
    data = kbm.distillation.with_example_index(
        tf.data.Dataset.from_tensor_slices((ids, y))
    ).batch(16)
    first = distiller.evaluate(data, verbose=0, return_dict=True)
    distiller.fit(data, epochs=8, verbose=0)
    after = distiller.evaluate(data, verbose=0, return_dict=True)
    if cache:
        assert distiller.teacher_cache_size() == 16
    assert after["distillation_loss"] < first["distillation_loss"]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_serialisation_round_trip():
    loss = AttentionDistillation(
        "a", "b", layer_map={1: 3}, relations=("qq", "vv"), relation_heads=4
    )
    back = AttentionDistillation.from_config(loss.get_config())
    assert back.get_config() == loss.get_config()
    assert back.layer_map == {1: 3}


def test_errors():
    with pytest.raises(ValueError, match="relations"):
        AttentionDistillation(relations=("qv",))
    with pytest.raises(ValueError, match="relation_heads"):
        AttentionDistillation(relation_heads=0)
    with pytest.raises(ValueError, match="layer_map"):
        AttentionDistillation(layer_map=[])
    t, s = encoder(layers=2, name="t"), encoder(layers=1, heads=4, name="s")
    with pytest.raises(ValueError, match="relation_heads=R"):  # 2 vs 4.
        AttentionDistillation().configure(t, s)
    with pytest.raises(ValueError, match="out of range"):
        AttentionDistillation(layer_map={0: 5}, relation_heads=2).configure(
            t, s
        )
    with pytest.raises(ValueError, match="no layer"):
        AttentionDistillation("missing").configure(
            classifier(t, "ct"), classifier(s, "cs")
        )
    with pytest.raises(ValueError, match="BertEncoder"):
        AttentionDistillation().configure(
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), s
        )


# ---------------------------------------------------- student_from_teacher


def test_student_from_teacher_copies_the_mapped_blocks():
    teacher = encoder(layers=4, seed=6, name="teacher")
    student = kbm.distillation.student_from_teacher(teacher, num_layers=2)
    assert student.num_layers == 2 and student.name == "student_teacher"
    for s, t in enumerate([1, 3]):  # The uniform map.
        for a, b in zip(
            student.transformer_layers[s].get_weights(),
            teacher.transformer_layers[t].get_weights(),
        ):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        student.token_embedding.get_weights()[0],
        teacher.token_embedding.get_weights()[0],
    )
    explicit = kbm.distillation.student_from_teacher(
        teacher, layer_map=[0, 2, 3], name="s3"
    )
    assert explicit.num_layers == 3
    np.testing.assert_array_equal(
        explicit.transformer_layers[1].get_weights()[0],
        teacher.transformer_layers[2].get_weights()[0],
    )


def test_student_from_teacher_narrower_slices_the_weights():
    teacher = encoder(layers=2, heads=2, hidden=8, seed=7, name="teacher")
    student = kbm.distillation.student_from_teacher(
        teacher, num_layers=1, hidden_dim=4, num_heads=1, intermediate_dim=8
    )
    assert student.hidden_dim == 4 and student.num_heads == 1
    np.testing.assert_array_equal(
        student.token_embedding.get_weights()[0],
        teacher.token_embedding.get_weights()[0][:, :4],
    )
    out = student(
        {
            "token_ids": token_ids(),
            "segment_ids": np.zeros((4, SEQ), "int32"),
            "padding_mask": np.ones((4, SEQ), "int32"),
        }
    )
    assert tuple(out.shape) == (4, SEQ, 4)


def test_student_from_teacher_errors():
    teacher = encoder(layers=2, name="teacher")
    with pytest.raises(ValueError, match="BertEncoder"):
        kbm.distillation.student_from_teacher(keras.Sequential())
    with pytest.raises(ValueError, match="num_layers"):
        kbm.distillation.student_from_teacher(teacher, num_layers=3)
    with pytest.raises(ValueError, match="layer_map"):
        kbm.distillation.student_from_teacher(teacher, layer_map=[0, 7])
    with pytest.raises(ValueError, match="hidden_dim"):
        kbm.distillation.student_from_teacher(teacher, hidden_dim=16)
