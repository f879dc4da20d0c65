"""The exported `serving_default` signature refuses wrong inputs clearly.

Loaded in this process with `tf.saved_model.load` and called by keyword,
as a client calls it: a wrong rank or a known dimension that differs gives
an `InvalidArgumentError` naming the input (`check_input_<name>`), inputs
of different batch sizes name both, a wrong dtype names the input's
position (in sorted-name order, the order TensorFlow flattens the keyword
arguments) and the dtype expected, and a missing or unknown input gives a
`TypeError` naming it. Both with the stock-ops export and with the fused
ops kept.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_bigmodels as kbm
from tests.export import _models

T, M = _models.TOKENS, _models.MASK
NAMES = sorted(["token_ids", "padding_mask"])

CASES = {
    "rank_3": (dict(token_ids=T[None], padding_mask=M), "token_ids"),
    "rank_1": (dict(token_ids=T[0], padding_mask=M), "token_ids"),
    "rank_0": (dict(token_ids=T, padding_mask=np.int32(1)), "padding_mask"),
    "length": (
        dict(token_ids=np.zeros((3, 9), "int32"), padding_mask=M),
        "token_ids",
    ),
    "empty_length": (
        dict(token_ids=np.zeros((3, 0), "int32"), padding_mask=M),
        "token_ids",
    ),
    "batch": (dict(token_ids=T[:2], padding_mask=M), "padding_mask"),
}
DTYPE_CASES = {
    "float32": (
        dict(token_ids=T.astype("float32"), padding_mask=M),
        "token_ids",
    ),
    "int64": (
        dict(token_ids=T, padding_mask=M.astype("int64")),
        "padding_mask",
    ),
    "string": (dict(token_ids=T.astype(str), padding_mask=M), "token_ids"),
}


@pytest.fixture(scope="module", params=[True, False], ids=["stock", "fused"])
def signature(request, tmp_path_factory):
    model = _models.encoder_classifier()
    path = str(tmp_path_factory.mktemp("serving") / "model")
    kbm.export.export_saved_model(model, path, stock_ops=request.param)
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures["serving_default"]
    want = model([T, M], training=False)
    return sig, np.asarray(want), loaded


def _call(sig, feeds):
    return sig(**{k: tf.constant(v) for k, v in feeds.items()})


def test_good_inputs_still_serve(signature):
    sig, want, _ = signature
    got = _call(sig, dict(token_ids=T, padding_mask=M))["logits"]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_rank_or_shape_names_the_input(signature, case):
    sig, _, _ = signature
    feeds, name = CASES[case]
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _call(sig, feeds)
    assert name in str(info.value), str(info.value)[:2000]


@pytest.mark.parametrize("case", sorted(DTYPE_CASES))
def test_wrong_dtype_names_the_input_position(signature, case):
    sig, _, _ = signature
    feeds, name = DTYPE_CASES[case]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as info:
        _call(sig, feeds)
    message = str(info.value)
    assert f"input #{NAMES.index(name)}" in message or name in message, message[
        :2000
    ]
    assert "int32" in message, message[:2000]


@pytest.mark.parametrize(
    "feeds, name",
    [
        (dict(token_ids=T), "padding_mask"),
        (dict(token_ids=T, padding_mask=M, segment_ids=M), "segment_ids"),
    ],
    ids=["missing", "unknown"],
)
def test_missing_or_unknown_input_names_it(signature, feeds, name):
    sig, _, _ = signature
    with pytest.raises(TypeError, match=name):
        _call(sig, feeds)


def test_signature_advertises_the_shapes(signature):
    sig, _, _ = signature
    _, specs = sig.structured_input_signature
    assert {k: s.shape.as_list() for k, s in specs.items()} == {
        "token_ids": [None, 6],
        "padding_mask": [None, 6],
    }
