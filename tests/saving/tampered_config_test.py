"""A `.keras` file whose config.json was edited gives a clear error.

Each case saves a small model holding one kbm class (`_cases.CASES`),
edits that class's config inside the zip (an unknown class name, a wrong
type, a negative or zero size, a rank or width that does not match the
saved weights, a missing required key) and loads it with
`safe_mode=True`: the load raises a `ValueError` or `TypeError` whose
message names the field and the value received (kbm's "Received:
name=value", Python's "missing ... argument: 'name'", or Keras's message
naming the variable whose saved shape differs), and nothing else happens.
"""

import json
import os
import re

import pytest

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras
from tests.saving import _cases

DROP = object()  # Remove the key.


def _received(field, value):
    """The "field=value" of a kbm/Keras message, value as repr or str."""
    options = {re.escape(repr(value)), re.escape(str(value))}
    return rf"{field}=(?:{'|'.join(sorted(options))})"


def _missing(field):
    return rf"(?:missing 1 required positional argument: '{field}'|{field})"


SHAPE = r"(?:[Ss]hape|incompatible|could not be loaded)"

# (registered class, class whose config is edited, {key: value}, pattern).
# A pattern of None means "field=value" for the one edited key.
CASES = [
    # Layers.
    ("FusedDense", "FusedDense", {"units": -1}, None),
    ("FusedDense", "FusedDense", {"units": 0}, None),
    ("FusedDense", "FusedDense", {"units": "8"}, None),
    ("FusedDense", "FusedDense", {"units": [8]}, None),
    ("FusedDense", "FusedDense", {"units": 2.5}, None),
    ("FusedDense", "FusedDense", {"units": 16}, SHAPE),
    ("FusedDense", "FusedDense", {"units": DROP}, _missing("units")),
    ("LayerNormalization", "LayerNormalization", {"epsilon": -1e-3}, None),
    ("LayerNormalization", "LayerNormalization", {"epsilon": "1e-3"}, None),
    ("LayerNormalization", "LayerNormalization", {"epsilon": [1e-3]}, None),
    (
        "LayerNormalization",
        "LayerNormalization",
        {"axis": "last"},
        r"argument 'axis', but received: 'last'",
    ),
    (
        "LayerNormalization",
        "LayerNormalization",
        {"axis": 1.5},
        r"argument 'axis', but received: 1.5",
    ),
    ("RMSNormalization", "RMSNormalization", {"epsilon": -1}, None),
    ("RMSNormalization", "RMSNormalization", {"epsilon": "x"}, None),
    ("RMSNormalization", "RMSNormalization", {"epsilon": True}, None),
    ("RMSNormalization", "RMSNormalization", {"axis": [[1]]}, None),
    ("PositionEmbedding", "PositionEmbedding", {"sequence_length": 0}, None),
    ("PositionEmbedding", "PositionEmbedding", {"sequence_length": "6"}, None),
    ("PositionEmbedding", "PositionEmbedding", {"sequence_length": 9}, SHAPE),
    (
        "PositionEmbedding",
        "PositionEmbedding",
        {"sequence_length": DROP},
        _missing("sequence_length"),
    ),
    (
        "TokenAndPositionEmbedding",
        "TokenAndPositionEmbedding",
        {"vocabulary_size": -1},
        None,
    ),
    (
        "TokenAndPositionEmbedding",
        "TokenAndPositionEmbedding",
        {"embedding_dim": 0},
        None,
    ),
    (
        "TokenAndPositionEmbedding",
        "TokenAndPositionEmbedding",
        {"embedding_dim": 16},
        SHAPE,
    ),
    (
        "TokenAndPositionEmbedding",
        "TokenAndPositionEmbedding",
        {"mask_zero": "yes"},
        None,
    ),
    ("RotaryEmbedding", "RotaryEmbedding", {"max_wavelength": 0}, None),
    ("RotaryEmbedding", "RotaryEmbedding", {"max_wavelength": "1e4"}, None),
    ("RotaryEmbedding", "RotaryEmbedding", {"scaling_factor": -2.0}, None),
    ("RotaryEmbedding", "RotaryEmbedding", {"scaling_factor": [1.0]}, None),
    ("RotaryEmbedding", "RotaryEmbedding", {"feature_axis": 1.5}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"num_heads": -1}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"num_heads": 0}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"num_heads": "2"}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"key_dim": -3}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"key_dim": 2.5}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"key_dim": 8}, SHAPE),
    ("MultiHeadAttention", "MultiHeadAttention", {"num_heads": 4}, SHAPE),
    ("MultiHeadAttention", "MultiHeadAttention", {"value_dim": -1}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"dropout": "0.1"}, None),
    ("MultiHeadAttention", "MultiHeadAttention", {"dropout": 1.5}, None),
    (
        "MultiHeadAttention",
        "MultiHeadAttention",
        {"rope_max_wavelength": "x"},
        None,
    ),
    (
        "MultiHeadAttention",
        "MultiHeadAttention",
        {"num_heads": DROP},
        _missing("num_heads"),
    ),
    ("GroupedQueryAttention", "GroupedQueryAttention", {"head_dim": 0}, None),
    (
        "GroupedQueryAttention",
        "GroupedQueryAttention",
        {"num_query_heads": -1},
        None,
    ),
    (
        "GroupedQueryAttention",
        "GroupedQueryAttention",
        {"num_key_value_heads": 3},
        r"num_key_value_heads=3",
    ),
    ("GroupedQueryAttention", "GroupedQueryAttention", {"dropout": "x"}, None),
    (
        "GroupedQueryAttention",
        "GroupedQueryAttention",
        {"sliding_window": 0},
        None,
    ),
    (
        "GroupedQueryAttention",
        "GroupedQueryAttention",
        {"rope_max_wavelength": -1},
        None,
    ),
    (
        "GroupedQueryAttention",
        "GroupedQueryAttention",
        {"rope_scaling_factor": "x"},
        None,
    ),
    ("GroupedQueryAttention", "GroupedQueryAttention", {"head_dim": 8}, SHAPE),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"intermediate_dim": 0},
        None,
    ),
    ("TransformerEncoder", "TransformerEncoder", {"num_heads": -1}, None),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"num_heads": 3},
        r"num_heads \(3\)",
    ),
    ("TransformerEncoder", "TransformerEncoder", {"dropout": "x"}, None),
    ("TransformerEncoder", "TransformerEncoder", {"dropout": [0.1]}, None),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"layer_norm_epsilon": -1},
        None,
    ),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"layer_norm_epsilon": "x"},
        None,
    ),
    ("TransformerEncoder", "TransformerEncoder", {"activation": "tanh"}, None),
    ("TransformerEncoder", "TransformerEncoder", {"norm_first": "yes"}, None),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"num_key_value_heads": True},
        None,
    ),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"rope_max_wavelength": "x"},
        None,
    ),
    (
        "TransformerEncoder",
        "TransformerEncoder",
        {"intermediate_dim": 32},
        SHAPE,
    ),
    ("TransformerDecoder", "TransformerDecoder", {"num_heads": 0}, None),
    ("TransformerDecoder", "TransformerDecoder", {"norm": "batch"}, None),
    (
        "TransformerDecoder",
        "TransformerDecoder",
        {"intermediate_dim": DROP},
        _missing("intermediate_dim"),
    ),
    # Models.
    ("BertEncoder", "BertEncoder", {"num_layers": 0}, None),
    ("BertEncoder", "BertEncoder", {"hidden_dim": "8"}, None),
    ("BertEncoder", "BertEncoder", {"num_heads": 3}, r"num_heads \(3\)"),
    ("BertEncoder", "BertEncoder", {"layer_norm_epsilon": -1}, None),
    ("BertEncoder", "BertEncoder", {"dropout": [0.1]}, None),
    ("BertEncoder", "BertEncoder", {"activation": "swish"}, None),
    ("BertEncoder", "BertEncoder", {"vocabulary_size": 31}, SHAPE),
    (
        "BertEncoder",
        "BertEncoder",
        {"num_layers": DROP},
        _missing("num_layers"),
    ),
    ("MeanPooling", "MeanPooling", {"pool_size": 2}, r"pool_size"),
    # Optimizers and schedules (in the compile config).
    ("AdamW", "AdamW", {"epsilon": -1}, None),
    ("AdamW", "AdamW", {"epsilon": "x"}, None),
    ("AdamW", "AdamW", {"beta_1": 1.5}, None),
    ("AdamW", "AdamW", {"beta_2": "0.9"}, None),
    ("AdamW", "AdamW", {"learning_rate": -1.0}, None),
    ("AdamW", "AdamW", {"learning_rate": "fast"}, None),
    ("AdamW", "AdamW", {"weight_decay": [0.1]}, None),
    ("Lamb", "Lamb", {"epsilon": -1e-6}, None),
    ("Lamb", "Lamb", {"beta_1": "x"}, None),
    ("Lion", "Lion", {"beta_2": [0.9]}, None),
    ("Lion", "Lion", {"learning_rate": -1}, None),
    ("RAdam", "RAdam", {"sma_threshold": "x"}, None),
    ("RAdam", "RAdam", {"epsilon": -1}, None),
    ("RAdam", "RAdam", {"weight_decay": -0.1}, None),
    ("Lookahead", "Lookahead", {"sync_period": 0}, None),
    ("Lookahead", "Lookahead", {"sync_period": "2"}, None),
    ("Lookahead", "Lookahead", {"slow_step_size": 2}, None),
    (
        "Lookahead",
        "Lookahead",
        {"inner_optimizer": DROP},
        _missing("inner_optimizer"),
    ),
    (
        "WarmupCosineDecay",
        "WarmupCosineDecay",
        {"peak_learning_rate": -1},
        None,
    ),
    ("WarmupCosineDecay", "WarmupCosineDecay", {"decay_steps": 0}, None),
    ("WarmupLinearDecay", "WarmupLinearDecay", {"warmup_steps": "x"}, None),
    (
        "WarmupInverseSqrtDecay",
        "WarmupInverseSqrtDecay",
        {"initial_learning_rate": [0.0]},
        None,
    ),
    # Distillation.
    ("Distiller", "Distiller", {"student_loss_weight": 2}, None),
    ("Distiller", "Distiller", {"teacher_weights": ["x"]}, None),
    ("Distiller", "Distiller", {"distillation_loss_weights": ["x"]}, None),
    ("Distiller", "Distiller", {"distillation_loss_weights": 3}, None),
    ("Distiller", "Distiller", {"teacher_cache": "redis"}, None),
    ("Distiller", "Distiller", {"multi_teacher": "vote"}, None),
    ("Distiller", "Distiller", {"student": DROP}, _missing("student")),
    ("LogitsDistillation", "LogitsDistillation", {"temperature": 0}, None),
    ("LogitsDistillation", "LogitsDistillation", {"temperature": "x"}, None),
    ("LogitsDistillation", "LogitsDistillation", {"loss": "hinge"}, None),
    ("FeatureDistillation", "FeatureDistillation", {"loss": "l1"}, None),
    ("FeatureDistillation", "FeatureDistillation", {"projection": 5}, None),
    (
        "FeatureDistillation",
        "FeatureDistillation",
        {"teacher_layer": 3},
        None,
    ),
    (
        "FeatureDistillation",
        "FeatureDistillation",
        {"teacher_layer": "no_such_layer"},
        r"no_such_layer",
    ),
    (
        "HiddenStateDistillation",
        "HiddenStateDistillation",
        {"layer_map": 5},
        None,
    ),
    (
        "HiddenStateDistillation",
        "HiddenStateDistillation",
        {"layer_map": [["student_hidden"]]},
        r"layer_map=",
    ),
    (
        "HiddenStateDistillation",
        "HiddenStateDistillation",
        {"layer_map": DROP},
        _missing("layer_map"),
    ),
    (
        "AttentionDistillation",
        "AttentionDistillation",
        {"relation_heads": -1},
        None,
    ),
    (
        "AttentionDistillation",
        "AttentionDistillation",
        {"relations": ["xx"]},
        r"relations=",
    ),
    # Pruning: the pruned layers, their schedules, the skipped block.
    ("PrunedDense", "PrunedDense", {"pruning_schedule": "x"}, None),
    ("PrunedDense", "PrunedDense", {"pruning_schedule": None}, None),
    ("PrunedDense", "PrunedDense", {"block": [-1, 2]}, r"block="),
    ("PrunedDense", "PrunedDense", {"sparsity_m_by_n": [4, 2]}, r"m < n"),
    ("PrunedDense", "PrunedDense", {"units": -1}, None),
    ("PrunedDense", "PrunedDense", {"units": 12}, SHAPE),
    ("PrunedFusedDense", "PrunedFusedDense", {"units": 0}, None),
    (
        "PrunedFusedDense",
        "PrunedFusedDense",
        {"sparsity_m_by_n": [2, "4"]},
        r"sparsity_m_by_n=",
    ),
    ("PrunedEinsumDense", "PrunedEinsumDense", {"block": [2, 2, 2]}, None),
    ("PrunedEinsumDense", "PrunedEinsumDense", {"block": "2x2"}, None),
    ("PrunedConv2D", "PrunedConv2D", {"filters": 8}, SHAPE),
    (
        "PrunedConv2D",
        "PrunedConv2D",
        {"pruning_schedule": {"class_name": "system", "config": {}}},
        r"pruning_schedule=",
    ),
    ("PrunedEmbedding", "PrunedEmbedding", {"output_dim": 16}, SHAPE),
    ("PrunedEmbedding", "PrunedEmbedding", {"block": [0, 0]}, None),
    ("ConstantSparsity", "ConstantSparsity", {"target_sparsity": 1.5}, None),
    ("ConstantSparsity", "ConstantSparsity", {"target_sparsity": "x"}, None),
    ("ConstantSparsity", "ConstantSparsity", {"begin_step": -1}, None),
    ("ConstantSparsity", "ConstantSparsity", {"frequency": 0}, None),
    (
        "ConstantSparsity",
        "ConstantSparsity",
        {"target_sparsity": DROP},
        _missing("target_sparsity"),
    ),
    ("PolynomialDecay", "PolynomialDecay", {"power": -1}, None),
    ("PolynomialDecay", "PolynomialDecay", {"final_sparsity": [0.5]}, None),
    ("PolynomialDecay", "PolynomialDecay", {"end_step": 0}, r"end_step=0"),
    ("PolynomialDecay", "PolynomialDecay", {"end_step": "x"}, None),
    ("SkippedBlock", "SkippedBlock", {"units": 3}, r"units"),
    # Quantization: the quantized and QAT layers and models.
    (
        "QuantizedDense",
        "QuantizedDense",
        {"kbm_quantization": {"mode": "int3"}},
        r"mode='int3'",
    ),
    (
        "QuantizedDense",
        "QuantizedDense",
        {"kbm_quantization": "int8"},
        r"kbm_quantization=",
    ),
    (
        "QuantizedDense",
        "QuantizedDense",
        {"kbm_quantization": {"mode": "int8", "pack_version": 99}},
        r"version 99",
    ),
    ("QuantizedDense", "QuantizedDense", {"units": -1}, None),
    ("QuantizedDense", "QuantizedDense", {"units": 16}, SHAPE),
    (
        "QuantizedEinsumDense",
        "QuantizedEinsumDense",
        {"kbm_quantization": [1]},
        r"kbm_quantization=",
    ),
    (
        "QuantizedEinsumDense",
        "QuantizedEinsumDense",
        {"kbm_quantization": {"mode": None}},
        r"mode=None",
    ),
    (
        "QuantizedEmbedding",
        "QuantizedEmbedding",
        {"kbm_quantization": {"mode": "int4_weight_only", "group_size": -2}},
        r"group_size=-2",
    ),
    ("QuantizedEmbedding", "QuantizedEmbedding", {"output_dim": 16}, SHAPE),
    (
        "QuantizedConv2D",
        "QuantizedConv2D",
        {"kbm_quantization": {"mode": "int8", "group_size": "x"}},
        r"group_size='x'",
    ),
    ("QuantizedConv2D", "QuantizedConv2D", {"filters": 8}, SHAPE),
    (
        "QuantizedFunctional",
        "QuantizedFunctional",
        {"kbm_quantized_layers": "x"},
        r"kbm_quantized_layers=",
    ),
    (
        "QuantizedFunctional",
        "QuantizedFunctional",
        {"kbm_quantized_layers": {"99": {"mode": "int8"}}},
        r"'99'",
    ),
    (
        "QuantizedFunctional",
        "QuantizedFunctional",
        {"kbm_quantized_layers": {"-1": {"mode": "int8"}}},
        r"'-1'",
    ),
    (
        "QuantizedFunctional",
        "QuantizedFunctional",
        {"kbm_quantized_layers": {"a/b": {"mode": "int8"}}},
        r"'a/b'",
    ),
    (
        "QuantizedSequential",
        "QuantizedSequential",
        {"kbm_quantized_layers": [1]},
        r"kbm_quantized_layers=",
    ),
    (
        "QuantizedModel",
        "QuantizedModel",
        {"kbm_quantized_layers": {"0": "int8"}},
        r"'int8'",
    ),
    ("QuantizedBertEncoder", "QuantizedBertEncoder", {"num_layers": 0}, None),
    (
        "QuantizedBertEncoder",
        "QuantizedBertEncoder",
        {"kbm_quantized_layers": {}},
        r".",
    ),
    ("QATDense", "QATDense", {"kbm_qat": {"mode": "int2"}}, r"mode='int2'"),
    ("QATDense", "QATDense", {"units": -1}, None),
    ("QATFusedDense", "QATFusedDense", {"kbm_qat": "x"}, r"kbm_qat="),
    ("QATFusedDense", "QATFusedDense", {"units": 16}, SHAPE),
    (
        "QATEinsumDense",
        "QATEinsumDense",
        {"kbm_qat": {"mode": "int8", "pack_version": 0}},
        r"version 0",
    ),
    ("QATEmbedding", "QATEmbedding", {"output_dim": 16}, SHAPE),
    ("QATConv2D", "QATConv2D", {"filters": -1}, r"filters=-1"),
]


def _case_id(case):
    name, _, edit, _ = case
    key, value = next(iter(edit.items()))
    shown = "DROP" if value is DROP else repr(value)
    return f"{name}-{key}={shown}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The `.keras` file of each registered class's case, saved once."""
    files = {}

    def get(name):
        if name not in files:
            case = _cases.CASES[f"{_cases.PACKAGE}>{name}"]()
            path = str(tmp_path_factory.mktemp("saved") / f"{name}.keras")
            case.model.save(path)
            files[name] = path
        return files[name]

    return get


def _edit(config, target, edit):
    nodes = _cases.find_configs(config, target)
    assert nodes, f"no {target} in the saved config"
    for node in nodes:
        for key, value in edit.items():
            if value is DROP:
                node["config"].pop(key, None)
            else:
                node["config"][key] = value


def _expect(path, pattern):
    with pytest.raises((ValueError, TypeError)) as info:
        keras.saving.load_model(path, safe_mode=True)
    message = str(info.value)
    assert re.search(pattern, message, re.S), (
        f"pattern {pattern!r} not in the error: {type(info.value).__name__}: "
        f"{message[-2000:]}"
    )
    return info.value


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_tampered_value_gives_a_clear_error(case, saved, tmp_path):
    name, target, edit, pattern = case
    path = saved(name)
    config = _cases.read_config(path)
    _edit(config, target, edit)
    bad = str(tmp_path / "tampered.keras")
    _cases.write_config(path, bad, config)
    if pattern is None:
        ((key, value),) = edit.items()
        pattern = _received(key, value)
    _expect(bad, pattern)


# Cases saved as a functional model around the class (not the class itself
# as the model, nor in the compile config).
_FUNCTIONAL = {
    "FusedDense",
    "GroupedQueryAttention",
    "LayerNormalization",
    "MeanPooling",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RMSNormalization",
    "RotaryEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerDecoder",
    "TransformerEncoder",
    "SkippedBlock",
    "ConstantSparsity",
    "PolynomialDecay",
}
_FUNCTIONAL |= {
    name
    for name, *_ in CASES
    if name.startswith(("Pruned", "QAT"))
    or name.endswith(("Dense", "Embedding", "Conv2D"))
}
UNKNOWN = sorted({name for name, *_ in CASES} - {"WordPieceTokenizer"})


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_kbm_class_name(name, saved, tmp_path):
    path = saved(name)
    config = _cases.read_config(path)
    for node in _cases.find_configs(config, name):
        node["class_name"] = "NoSuchClass"
        node["registered_name"] = f"{_cases.PACKAGE}>NoSuchClass"
    bad = str(tmp_path / "unknown.keras")
    _cases.write_config(path, bad, config)
    # tf-keras resolves a functional model's layers by its own rules and
    # fails later (a TypeError that does not name the class); no kbm code
    # runs either way.
    _expect(
        bad, r"." if IS_LEGACY_KERAS and name in _FUNCTIONAL else r"NoSuchClass"
    )


def test_every_registered_class_has_tampered_cases():
    covered = {name for name, *_ in CASES} | {"WordPieceTokenizer"}
    covered |= {name for name, *_ in OBJECT_CASES}
    registered = {n.split(">", 1)[1] for n in _cases.registered_classes()}
    assert registered <= covered, sorted(registered - covered)


def test_config_that_is_not_json_object(saved, tmp_path):
    path = saved("FusedDense")
    bad = str(tmp_path / "list.keras")
    _cases.write_config(path, bad, [1, 2, 3])
    if IS_LEGACY_KERAS:
        # tf-keras returns the JSON value itself: no model, no code run.
        assert keras.saving.load_model(bad, safe_mode=True) == [1, 2, 3]
        return
    with pytest.raises((ValueError, TypeError, AttributeError, KeyError)):
        keras.saving.load_model(bad, safe_mode=True)


# The tokenizer is not saved inside a model: its serialized config.
TOKENIZER_CASES = [
    ({"max_sequence_length": 0}, None),
    ({"max_word_length": "100"}, None),
    ({"vocabulary": [1, 2, 3]}, r"vocabulary="),
    ({"vocabulary": os.devnull}, r"vocabulary="),
    ({"oov_token": "[NOPE]"}, None),
    ({"special_tokens": ["[NOPE]"]}, r"special_tokens="),
    ({"vocabulary": DROP}, _missing("vocabulary")),
]


@pytest.mark.parametrize(
    "edit, pattern",
    TOKENIZER_CASES,
    ids=[
        _case_id(("WordPieceTokenizer", None, e, None))
        for e, _ in TOKENIZER_CASES
    ],
)
def test_tampered_tokenizer_config(edit, pattern):
    case = _cases.CASES[f"{_cases.PACKAGE}>WordPieceTokenizer"]()
    config = json.loads(
        json.dumps(keras.saving.serialize_keras_object(case.obj))
    )
    for key, value in edit.items():
        if value is DROP:
            config["config"].pop(key)
        else:
            config["config"][key] = value
    if pattern is None:
        ((key, value),) = edit.items()
        pattern = _received(key, value)
    with pytest.raises((ValueError, TypeError)) as info:
        keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert re.search(pattern, str(info.value), re.S), str(info.value)


# The pruning callback is not saved inside a model either.
OBJECT_CASES = [
    ("UpdatePruningStep", {"frequency": 1}, r"config="),
    ("UpdatePruningStep", "x", r"config"),
]


@pytest.mark.parametrize(
    "name, edit, pattern",
    OBJECT_CASES,
    ids=[f"{n}-{e!r}" for n, e, _ in OBJECT_CASES],
)
def test_tampered_object_config(name, edit, pattern):
    case = _cases.CASES[f"{_cases.PACKAGE}>{name}"]()
    config = json.loads(
        json.dumps(keras.saving.serialize_keras_object(case.obj))
    )
    config["config"] = edit
    with pytest.raises((ValueError, TypeError)) as info:
        keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert re.search(pattern, str(info.value), re.S), str(info.value)
    config["class_name"] = "NoSuchClass"
    config["registered_name"] = f"{_cases.PACKAGE}>NoSuchClass"
    with pytest.raises((ValueError, TypeError)) as info:
        keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert "NoSuchClass" in str(info.value)
