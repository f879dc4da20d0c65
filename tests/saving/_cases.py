"""One small saveable case per registered keras_bigmodels class.

`CASES` maps each registered name (`"keras_bigmodels>FusedDense"`) to a
function that builds a `Case`: a Keras model holding the class (saved to a
`.keras` file), the inputs to call it on, and where the class's own config
sits in the saved `config.json` (found by class name). Classes that are not
saved inside a model (the tokenizer) give a plain object instead.
`registered_classes()` lists what Keras has registered under the package
name, so a new class without a case here fails the coverage test.
"""

import importlib
import json
import zipfile
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

PACKAGE = "keras_bigmodels"
# Subpackages imported on first use register their classes on import.
LAZY_SUBPACKAGES = (
    "models",
    "datasets",
    "distribute",
    "pruning",
    "quantization",
    "adapters",
)

RNG = np.random.default_rng(0)


class Case(NamedTuple):
    """What to save and how to call it.

    Attributes:
        model: The Keras model to save, or None for `obj`.
        inputs: Inputs of `model` (None for a model that is not called).
        obj: A serializable non-Keras object (no model).
    """

    model: Any = None
    inputs: Any = None
    obj: Any = None


# Registered classes without safe-mode and tampered-config cases here yet.
NOT_YET_COVERED = set()


def registered_classes():
    """{registered name: class} of everything kbm registers with Keras,
    less `NOT_YET_COVERED`."""
    for name in LAZY_SUBPACKAGES:
        importlib.import_module(f"{PACKAGE}.{name}")
    return {
        name: cls
        for name, cls in keras.saving.get_custom_objects().items()
        if name.startswith(f"{PACKAGE}>") and name not in NOT_YET_COVERED
    }


def _floats(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _layer_model(layer, shape, dtype="float32", two_inputs=False):
    x = keras.Input(shape, dtype=dtype, name="x")
    if two_inputs:
        y = layer(x, x)
    else:
        y = layer(x)
    model = keras.Model(x, y)
    if dtype.startswith("int"):
        data = RNG.integers(1, 10, (2, *shape)).astype(dtype)
    else:
        data = _floats(2, *shape)
    return Case(model, data)


def _dense_model(name="m"):
    x = keras.Input((4,), name=f"{name}_in")
    h = keras.layers.Dense(6, activation="relu", name=f"{name}_hidden")(x)
    return keras.Model(x, keras.layers.Dense(3, name=f"{name}_out")(h))


def _compiled(optimizer):
    """A small model compiled with `optimizer`, trained one step (so the
    optimizer's variables are saved too)."""
    keras.utils.set_random_seed(1)
    model = _dense_model()
    model.compile(optimizer=optimizer, loss="mse")
    x = _floats(8, 4)
    model.fit(x, _floats(8, 3), batch_size=8, epochs=1, verbose=0)
    return Case(model, x)


def _distiller(losses):
    keras.utils.set_random_seed(2)
    teacher, student = _dense_model("teacher"), _dense_model("student")
    d = kbm.distillation.Distiller(teacher, student, losses)
    d.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    x = _floats(8, 4)
    d.fit(x, _floats(8, 3), batch_size=8, epochs=1, verbose=0)
    return Case(d, x)


def _attention_distiller():
    keras.utils.set_random_seed(2)

    def encoder(layers, name):
        return kbm.models.BertEncoder(
            vocabulary_size=30,
            num_layers=layers,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            max_sequence_length=16,
            dropout=0.0,
            name=name,
        )

    d = kbm.distillation.Distiller(
        encoder(2, "teacher_encoder"),
        encoder(1, "student_encoder"),
        [kbm.distillation.losses.AttentionDistillation(relation_heads=2)],
        student_loss_weight=0.0,
    )
    d.compile(optimizer=keras.optimizers.SGD(1e-2))
    ids = RNG.integers(1, 30, (4, 6)).astype("int32")
    inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": np.ones_like(ids),
    }
    d.fit(inputs, batch_size=4, epochs=1, verbose=0)
    return Case(d, inputs)


def _schedule(schedule):
    return _compiled(kbm.optimizers.AdamW(learning_rate=schedule))


def _bert():
    encoder = kbm.models.BertEncoder(
        vocabulary_size=30,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=0.0,
    )
    ids = RNG.integers(1, 30, (2, 6)).astype("int32")
    inputs = {
        "token_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "padding_mask": np.ones_like(ids),
    }
    return Case(encoder, inputs)


def _fused_dense():
    # Both fused activations: "gelu_tanh" is saved by name, not as the
    # Python function it runs.
    x = keras.Input((4,), name="x")
    h = kbm.layers.FusedDense(8, activation="gelu", name="fd")(x)
    y = kbm.layers.FusedDense(8, activation="gelu_tanh", name="fd_tanh")(h)
    return Case(keras.Model(x, y), _floats(2, 4))


def _decoder():
    x = keras.Input((5, 8), name="x")
    y = kbm.layers.TransformerDecoder(16, 2, name="dec")(x)
    return Case(keras.Model(x, y), _floats(2, 5, 8))


def _mean_pooling():
    x = keras.Input((5, 8), name="x")
    m = keras.Input((5,), name="m")
    y = kbm.models.MeanPooling(name="pool")(x, padding_mask=m)
    mask = np.ones((2, 5), "float32")
    mask[0, 3:] = 0
    return Case(keras.Model([x, m], y), [_floats(2, 5, 8), mask])


def _tokenizer():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "##s"]
    return Case(obj=kbm.models.WordPieceTokenizer(vocab))


def _pruned(layer, shape, dtype="float32", schedule=None, **kwargs):
    """A functional model around `layer`, pruned (`kbm.pruning`) and its
    masks updated once (half the weights zero)."""
    from keras_bigmodels import pruning

    keras.utils.set_random_seed(3)
    case = _layer_model(layer, shape, dtype=dtype)
    schedule = schedule or pruning.ConstantSparsity(0.5, begin_step=0)
    pruning.prune_low_magnitude(case.model, schedule, **kwargs)
    pruning.update_pruning_masks(case.model, 0)
    return case


def _polynomial_decay():
    from keras_bigmodels import pruning

    schedule = pruning.PolynomialDecay(0.0, 0.5, 0, 10, frequency=1)
    return _pruned(keras.layers.Dense(6, name="d"), (8,), schedule=schedule)


def _skipped_block():
    from keras_bigmodels import pruning

    return _layer_model(pruning.SkippedBlock(name="skip"), (3, 8))


def _update_pruning_step():
    from keras_bigmodels import pruning

    return Case(obj=pruning.UpdatePruningStep())


def _quantized_layers(mode="int8"):
    """A functional model with every quantized layer class, quantized."""
    from keras_bigmodels import quantization

    keras.utils.set_random_seed(4)
    ids = keras.Input((6,), dtype="int32", name="ids")
    img = keras.Input((6, 6, 2), name="img")
    h = keras.layers.Embedding(20, 8, name="emb")(ids)
    h = keras.layers.EinsumDense("abc,cd->abd", (6, 8), name="einsum")(h)
    h = keras.layers.Dense(8, activation="relu", name="dense")(h)
    h = _L.FusedDense(8, activation="gelu", name="fused")(h)
    c = keras.layers.Conv2D(4, 3, name="conv")(img)
    c = keras.layers.Flatten(name="flat")(c)
    c = keras.layers.Dense(8, name="conv_out")(c)
    y = keras.layers.Add(name="add")(
        [keras.layers.GlobalAveragePooling1D(name="gap")(h), c]
    )
    model = keras.Model([ids, img], y)
    quantization.quantize(model, mode)
    inputs = [
        RNG.integers(0, 20, (2, 6)).astype("int32"),
        _floats(2, 6, 6, 2),
    ]
    return Case(model, inputs)


def _quantized_sequential():
    from keras_bigmodels import quantization

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="d0"),
            keras.layers.Dense(4, name="d1"),
        ]
    )
    quantization.quantize(model, "int8_weight_only")
    return Case(model, _floats(3, 8))


def _quantized_model():
    # `QuantizedModel` is what `quantize` makes of an instance of exactly
    # `keras.Model`: the base class, built from inputs and outputs (Keras
    # makes such a model a functional one, so it is built here directly).
    from keras_bigmodels import quantization

    keras.utils.set_random_seed(6)
    x = keras.Input((8,), name="x")
    y = keras.layers.Dense(4, name="d")(x)
    model = quantization.quantized_model_class(keras.Model)(x, y)
    quantization.quantize(model, "int8")
    return Case(model, _floats(2, 8))


def _quantized_bert():
    from keras_bigmodels import quantization

    keras.utils.set_random_seed(7)
    case = _bert()
    quantization.quantize(case.model, "int8")
    return case


def _qat_layers():
    from keras_bigmodels import quantization

    keras.utils.set_random_seed(8)
    ids = keras.Input((6,), dtype="int32", name="ids")
    img = keras.Input((6, 6, 2), name="img")
    h = keras.layers.Embedding(20, 8, name="emb")(ids)
    h = keras.layers.EinsumDense("abc,cd->abd", (6, 8), name="einsum")(h)
    h = keras.layers.Dense(8, activation="relu", name="dense")(h)
    h = _L.FusedDense(8, activation="gelu", name="fused")(h)
    c = keras.layers.Conv2D(4, 3, name="conv")(img)
    c = keras.layers.Flatten(name="flat")(c)
    y = keras.layers.Concatenate(name="cat")(
        [keras.layers.GlobalAveragePooling1D(name="gap")(h), c]
    )
    model = keras.Model([ids, img], y)
    quantization.quantize_aware(model, "int8")
    inputs = [
        RNG.integers(0, 20, (2, 6)).astype("int32"),
        _floats(2, 6, 6, 2),
    ]
    return Case(model, inputs)


_L = kbm.layers
_S = kbm.optimizers.schedules
_D = kbm.distillation.losses

CASES = {
    f"{PACKAGE}>{name}": make
    for name, make in {
        "FusedDense": _fused_dense,
        "LayerNormalization": lambda: _layer_model(
            _L.LayerNormalization(epsilon=1e-5, name="ln"), (3, 8)
        ),
        "RMSNormalization": lambda: _layer_model(
            _L.RMSNormalization(epsilon=1e-5, name="rms"), (3, 8)
        ),
        "PositionEmbedding": lambda: _layer_model(
            _L.PositionEmbedding(sequence_length=6, name="pe"), (5, 8)
        ),
        "TokenAndPositionEmbedding": lambda: _layer_model(
            _L.TokenAndPositionEmbedding(20, 6, 8, name="tpe"),
            (5,),
            dtype="int32",
        ),
        "RotaryEmbedding": lambda: _layer_model(
            _L.RotaryEmbedding(max_wavelength=100, name="rope"), (5, 2, 4)
        ),
        "MultiHeadAttention": lambda: _layer_model(
            _L.MultiHeadAttention(2, 4, rope_max_wavelength=100, name="mha"),
            (5, 8),
            two_inputs=True,
        ),
        "GroupedQueryAttention": lambda: _layer_model(
            _L.GroupedQueryAttention(4, 2, 1, name="gqa"),
            (5, 8),
            two_inputs=True,
        ),
        "TransformerEncoder": lambda: _layer_model(
            _L.TransformerEncoder(16, 2, name="enc"), (5, 8)
        ),
        "TransformerDecoder": _decoder,
        "BertEncoder": _bert,
        "MeanPooling": _mean_pooling,
        "WordPieceTokenizer": _tokenizer,
        "AdamW": lambda: _compiled(kbm.optimizers.AdamW(1e-3)),
        "Lamb": lambda: _compiled(kbm.optimizers.Lamb(1e-3)),
        "Lion": lambda: _compiled(kbm.optimizers.Lion(1e-4)),
        "RAdam": lambda: _compiled(kbm.optimizers.RAdam(1e-3)),
        "Lookahead": lambda: _compiled(
            kbm.optimizers.Lookahead(kbm.optimizers.AdamW(1e-3), 2)
        ),
        "WarmupCosineDecay": lambda: _schedule(
            _S.WarmupCosineDecay(1e-3, 2, 10)
        ),
        "WarmupLinearDecay": lambda: _schedule(
            _S.WarmupLinearDecay(1e-3, 2, 10)
        ),
        "WarmupInverseSqrtDecay": lambda: _schedule(
            _S.WarmupInverseSqrtDecay(1e-3, 2)
        ),
        "Distiller": lambda: _distiller([_D.LogitsDistillation(2.0)]),
        "LogitsDistillation": lambda: _distiller(
            [_D.LogitsDistillation(2.0, loss="mse")]
        ),
        "FeatureDistillation": lambda: _distiller(
            [_D.FeatureDistillation("teacher_hidden", "student_hidden")]
        ),
        "HiddenStateDistillation": lambda: _distiller(
            [_D.HiddenStateDistillation({"student_hidden": "teacher_hidden"})]
        ),
        "AttentionDistillation": _attention_distiller,
        # Pruning.
        "PrunedDense": lambda: _pruned(keras.layers.Dense(6, name="d"), (8,)),
        "PrunedFusedDense": lambda: _pruned(
            _L.FusedDense(6, activation="gelu", name="fd"), (8,)
        ),
        "PrunedEinsumDense": lambda: _pruned(
            keras.layers.EinsumDense("ab,bc->ac", 6, name="ed"),
            (8,),
            block=(2, 2),
        ),
        "PrunedConv2D": lambda: _pruned(
            keras.layers.Conv2D(4, 3, name="conv"), (6, 6, 4)
        ),
        "PrunedEmbedding": lambda: _pruned(
            keras.layers.Embedding(20, 8, name="emb"), (5,), dtype="int32"
        ),
        "ConstantSparsity": lambda: _pruned(
            keras.layers.Dense(8, name="d"), (8,), sparsity_m_by_n=(2, 4)
        ),
        "PolynomialDecay": _polynomial_decay,
        "SkippedBlock": _skipped_block,
        "UpdatePruningStep": _update_pruning_step,
        # Quantization.
        "QuantizedDense": _quantized_layers,
        "QuantizedEinsumDense": _quantized_layers,
        "QuantizedEmbedding": _quantized_layers,
        "QuantizedConv2D": _quantized_layers,
        "QuantizedFunctional": lambda: _quantized_layers("int4_weight_only"),
        "QuantizedSequential": _quantized_sequential,
        "QuantizedModel": _quantized_model,
        "QuantizedBertEncoder": _quantized_bert,
        "QATDense": _qat_layers,
        "QATFusedDense": _qat_layers,
        "QATEinsumDense": _qat_layers,
        "QATEmbedding": _qat_layers,
        "QATConv2D": _qat_layers,
    }.items()
}


# ------------------------------------------------------------ .keras files


def read_config(path):
    """The parsed `config.json` of a `.keras` file."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def write_config(src, dst, config):
    """Copies the `.keras` file `src` to `dst` with `config` as its
    `config.json` (the weights and metadata unchanged)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "config.json":
                data = json.dumps(config)
            zout.writestr(name, data)


def _short_name(registered):
    return registered.split(">", 1)[-1]


def find_configs(config, class_name):
    """Every serialized object of `class_name` in a config tree: the dicts
    with that `class_name` (or registered name) and a `config` dict."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            names = (node.get("class_name"), node.get("registered_name"))
            if (
                class_name in names or f"{PACKAGE}>{class_name}" in names
            ) and isinstance(node.get("config"), dict):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def outputs_of(model, inputs):
    """The model's outputs in inference mode, as a list of NumPy arrays."""
    return [
        np.asarray(t) for t in tf.nest.flatten(model(inputs, training=False))
    ]
