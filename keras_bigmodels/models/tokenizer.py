"""`kbm.models.WordPieceTokenizer`: BERT's tokenizer in plain Python."""

import json
import os
import re
import unicodedata

import numpy as np

from keras_bigmodels.backend import register_serializable

# Unicode White_Space (what HuggingFace `tokenizers` splits on).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_control(char):
    """Removed by BERT's text cleaning (tab/newline/CR are whitespace).

    As in `tokenizers`: control, format, surrogate and private-use
    characters; unassigned code points (Cn) stay (and become `[UNK]`).
    """
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co")


def _is_punctuation(char):
    """ASCII punctuation (`$`, `+`, `^`, ... included) or Unicode P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(char):
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _read_json(path):
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@register_serializable
class WordPieceTokenizer:
    """BERT's WordPiece tokenizer, in plain Python (no dependencies).

    Reproduces the ids of HuggingFace's `BertTokenizer` / `tokenizers`'
    BERT pipeline: text cleaning (control characters dropped, whitespace
    unified), spaces around CJK ideographs, accent stripping (NFD, then
    non-spacing marks removed) and lower-casing for uncased vocabularies,
    splitting on whitespace and punctuation, then greedy longest-match
    WordPiece with `##` continuation pieces; a word longer than
    `max_word_length` characters, or with no decomposition, becomes the
    unknown token. `encode` adds `[CLS]` ... `[SEP]`, truncates and pads
    with `[PAD]`.

    Characters are classified with Python's `unicodedata`; `tokenizers`
    uses older Unicode tables, so a format or punctuation character added
    to Unicode in recent versions (rare in text) can tokenize differently.

    Args:
        vocabulary: A list of tokens (the id of a token is its index) or
            the path of a `vocab.txt` with one token per line.
        lowercase: Lower-case the text. Defaults to `True`.
        strip_accents: Strip accents; `None` follows `lowercase` (as
            HuggingFace does). Defaults to `None`.
        split_on_cjk: Split around each CJK ideograph. Defaults to `True`.
        max_word_length: Longer words map to `oov_token`. Defaults to
            `100`.
        max_sequence_length: The longest output of `encode` when it is
            given no `sequence_length`. Defaults to `512`.
        suffix_indicator: Prefix of continuation pieces. Defaults to
            `"##"`.
        oov_token: The unknown token. Defaults to `"[UNK]"`.
        start_token: Added before each text. Defaults to `"[CLS]"`.
        end_token: Added after each text. Defaults to `"[SEP]"`.
        pad_token: Padding. Defaults to `"[PAD]"`.
        special_tokens_in_strings: Whether special tokens written in the
            input text (`"[MASK]"`, `"[SEP]"`, ...) map to their ids, as in
            HuggingFace, instead of being tokenized as text (the default,
            as in keras-hub, so that user text cannot inject them).
            Defaults to `False`.
        special_tokens: The special tokens for `special_tokens_in_strings`
            and `detokenize`; `None` means those of `pad_token`,
            `oov_token`, `start_token`, `end_token` and `"[MASK]"` present
            in the vocabulary. Defaults to `None`.

    Example:

    ```python
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(
        kbm.models.minilm_l6_v2_path()
    )
    tokenizer.tokenize("Unaffable!")   # ['una', '##ffa', '##ble', '!']
    inputs = tokenizer.encode(["Hello world.", "Hi."], sequence_length=8)
    inputs["token_ids"]     # int32 [2, 8]: [[101, 7592, 2088, 1012, 102,
                            #   0, 0, 0], [101, 7632, 1012, 102, 0, ...]]
    inputs["padding_mask"]  # int32 [2, 8], 1 for tokens
    inputs["segment_ids"]   # int32 [2, 8], zeros
    ```

    Reference:
    - [Wu et al., 2016](https://arxiv.org/abs/1609.08144) (WordPiece)
    - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        vocabulary,
        lowercase=True,
        strip_accents=None,
        split_on_cjk=True,
        max_word_length=100,
        max_sequence_length=512,
        suffix_indicator="##",
        oov_token="[UNK]",
        start_token="[CLS]",
        end_token="[SEP]",
        pad_token="[PAD]",
        special_tokens_in_strings=False,
        special_tokens=None,
    ):
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = self._read_vocabulary(vocabulary)
        vocabulary = list(vocabulary)
        if not vocabulary or not all(isinstance(t, str) for t in vocabulary):
            raise ValueError(
                "vocabulary must be a non-empty list of strings or a path. "
                f"Received: vocabulary={vocabulary[:5]!r}"
            )
        for name, value in (
            ("max_word_length", max_word_length),
            ("max_sequence_length", max_sequence_length),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"{name} must be a positive integer. "
                    f"Received: {name}={value!r}"
                )
            if value <= (2 if name == "max_sequence_length" else 0):
                raise ValueError(
                    f"{name} must be a positive integer"
                    + (
                        " > 2 (room for the start and end tokens)"
                        if name == "max_sequence_length"
                        else ""
                    )
                    + f". Received: {name}={value!r}"
                )
        self.vocabulary = vocabulary
        # As HuggingFace: a token listed twice gets its last index.
        self._ids = {token: i for i, token in enumerate(vocabulary)}
        for name, token in (
            ("oov_token", oov_token),
            ("start_token", start_token),
            ("end_token", end_token),
            ("pad_token", pad_token),
        ):
            if token not in self._ids:
                raise ValueError(
                    f"{name} is not in the vocabulary. "
                    f"Received: {name}={token!r}"
                )
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.split_on_cjk = bool(split_on_cjk)
        self.max_word_length = max_word_length
        self.max_sequence_length = max_sequence_length
        self.suffix_indicator = suffix_indicator
        self.oov_token = oov_token
        self.start_token = start_token
        self.end_token = end_token
        self.pad_token = pad_token
        self.special_tokens_in_strings = bool(special_tokens_in_strings)
        if special_tokens is None:
            candidates = (pad_token, oov_token, start_token, end_token)
            special_tokens = [
                t for t in candidates + ("[MASK]",) if t in self._ids
            ]
        missing = [t for t in special_tokens if t not in self._ids]
        if missing:
            raise ValueError(
                "special_tokens must be in the vocabulary. "
                f"Received: special_tokens={special_tokens!r} ({missing!r} "
                "are not)"
            )
        self.special_tokens = list(dict.fromkeys(special_tokens))
        self._special_pattern = re.compile(
            "("
            + "|".join(
                re.escape(t)
                for t in sorted(self.special_tokens, key=len, reverse=True)
            )
            + ")"
        )
        self._word_cache = {}

    @staticmethod
    def _read_vocabulary(path):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No vocabulary file at {path!r}.")
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]

    @classmethod
    def from_vocabulary_file(cls, path, **kwargs):
        """A tokenizer from a `vocab.txt` (one token per line).

        Args:
            path: The vocabulary file.
            **kwargs: The other constructor arguments (`lowercase`, ...).

        Returns:
            A `WordPieceTokenizer`.
        """
        return cls(cls._read_vocabulary(path), **kwargs)

    @classmethod
    def from_checkpoint(cls, path, **kwargs):
        """A tokenizer from a HuggingFace checkpoint directory.

        Reads `vocab.txt`, and from `tokenizer_config.json` (when present)
        `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` and
        `model_max_length`; a sentence-transformers checkpoint's
        `sentence_bert_config.json` `max_seq_length` (256 for
        all-MiniLM-L6-v2) takes precedence over `model_max_length`.

        Args:
            path: The checkpoint directory.
            **kwargs: Constructor arguments that override the files'.

        Returns:
            A `WordPieceTokenizer`.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"No checkpoint directory at {path!r}.")
        vocab_path = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(
                f"The checkpoint directory {path!r} has no vocab.txt."
            )
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        arguments = {
            "lowercase": config.get("do_lower_case", True),
            "strip_accents": config.get("strip_accents"),
            "split_on_cjk": config.get("tokenize_chinese_chars", True),
        }
        for name, key in (
            ("oov_token", "unk_token"),
            ("start_token", "cls_token"),
            ("end_token", "sep_token"),
            ("pad_token", "pad_token"),
        ):
            if isinstance(config.get(key), str):
                arguments[name] = config[key]
        lengths = [
            _read_json(os.path.join(path, "sentence_bert_config.json")).get(
                "max_seq_length"
            ),
            config.get("model_max_length"),
        ]
        for length in lengths:
            # HuggingFace writes a huge number when there is no limit.
            if isinstance(length, int) and 2 < length <= 1_000_000:
                arguments["max_sequence_length"] = length
                break
        return cls.from_vocabulary_file(vocab_path, **{**arguments, **kwargs})

    @property
    def vocabulary_size(self):
        """The number of tokens in the vocabulary."""
        return len(self.vocabulary)

    def token_to_id(self, token):
        """The id of `token` (a `KeyError` naming it if absent)."""
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(
                f"Token {token!r} is not in the vocabulary."
            ) from None

    def id_to_token(self, id):
        """The token with id `id`."""
        if not 0 <= id < len(self.vocabulary):
            raise ValueError(
                f"id must be in [0, {len(self.vocabulary)}). Received: id={id}"
            )
        return self.vocabulary[id]

    def _normalize(self, text):
        chars = []
        for char in text:
            if char in ("\x00", "\ufffd") or _is_control(char):
                continue
            if char in _WHITESPACE:
                chars.append(" ")
            elif self.split_on_cjk and _is_cjk(char):
                chars.extend((" ", char, " "))
            else:
                chars.append(char)
        text = "".join(chars)
        strip = self.strip_accents
        if strip is None:
            strip = self.lowercase
        if strip:
            text = "".join(
                c
                for c in unicodedata.normalize("NFD", text)
                if unicodedata.category(c) != "Mn"
            )
        if self.lowercase:
            # Character by character, as `tokenizers` does (no final-sigma
            # context rule).
            text = "".join(c.lower() for c in text)
        return text

    def _split_words(self, text):
        words, word = [], []
        for char in text:
            if char in _WHITESPACE:
                if word:
                    words.append("".join(word))
                    word = []
            elif _is_punctuation(char):
                if word:
                    words.append("".join(word))
                    word = []
                words.append(char)
            else:
                word.append(char)
        if word:
            words.append("".join(word))
        return words

    def _wordpiece(self, word):
        pieces = self._word_cache.get(word)
        if pieces is not None:
            return pieces
        pieces = []
        if len(word) > self.max_word_length:
            pieces = [self.oov_token]
        else:
            start = 0
            while start < len(word):
                end = len(word)
                piece = None
                while start < end:
                    candidate = word[start:end]
                    if start > 0:
                        candidate = self.suffix_indicator + candidate
                    if candidate in self._ids:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:
                    pieces = [self.oov_token]
                    break
                pieces.append(piece)
                start = end
        if len(self._word_cache) < 100_000:
            self._word_cache[word] = pieces
        return pieces

    def _tokenize_text(self, text):
        tokens = []
        for word in self._split_words(self._normalize(text)):
            tokens.extend(self._wordpiece(word))
        return tokens

    def tokenize(self, text):
        """The WordPiece tokens of one text (no start/end tokens).

        Args:
            text: A string.

        Returns:
            A list of token strings.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a string. Received: text={text!r}")
        if not self.special_tokens_in_strings:
            return self._tokenize_text(text)
        tokens = []
        for i, part in enumerate(self._special_pattern.split(text)):
            if i % 2:
                tokens.append(part)
            elif part:
                tokens.extend(self._tokenize_text(part))
        return tokens

    def encode(self, texts, sequence_length=None):
        """Token ids, segment ids and padding mask for a batch of texts.

        Each text becomes `[CLS] tokens [SEP]`, its tokens truncated to
        fit `sequence_length`, then padded with `[PAD]` (id of `pad_token`,
        0 in BERT vocabularies).

        Args:
            texts: A string (a batch of one) or a list of strings.
            sequence_length: The length of every row; `None` pads to the
                longest text in the batch, at most `max_sequence_length`.
                Defaults to `None`.

        Returns:
            A dict of int32 NumPy arrays of shape `[batch, length]`:
            `"token_ids"`, `"segment_ids"` (zeros) and `"padding_mask"`
            (1 for tokens, 0 for padding), the inputs of
            `kbm.models.BertEncoder`.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if sequence_length is not None and (
            isinstance(sequence_length, bool)
            or not isinstance(sequence_length, int)
            or sequence_length < 2
        ):
            raise ValueError(
                "sequence_length must be None or an integer >= 2 (room for "
                f"the start and end tokens). Received: sequence_length="
                f"{sequence_length!r}"
            )
        limit = sequence_length or self.max_sequence_length
        start = self._ids[self.start_token]
        end = self._ids[self.end_token]
        rows = []
        for text in texts:
            ids = [self._ids[t] for t in self.tokenize(text)]
            rows.append([start] + ids[: limit - 2] + [end])
        length = sequence_length or max((len(r) for r in rows), default=2)
        token_ids = np.full(
            (len(rows), length), self._ids[self.pad_token], dtype=np.int32
        )
        padding_mask = np.zeros((len(rows), length), dtype=np.int32)
        for i, row in enumerate(rows):
            token_ids[i, : len(row)] = row
            padding_mask[i, : len(row)] = 1
        return {
            "token_ids": token_ids,
            "segment_ids": np.zeros_like(token_ids),
            "padding_mask": padding_mask,
        }

    def detokenize(self, token_ids):
        """Text from token ids: special tokens dropped, `##` pieces joined.

        The inverse of `tokenize` up to lower-casing, accents and spacing
        around punctuation.

        Args:
            token_ids: A sequence of ids.

        Returns:
            A string.
        """
        special = set(self.special_tokens)
        words = []
        for i in np.asarray(token_ids).reshape(-1).tolist():
            token = self.id_to_token(int(i))
            if token in special:
                continue
            if token.startswith(self.suffix_indicator) and words:
                words[-1] += token[len(self.suffix_indicator) :]
            else:
                words.append(token)
        return " ".join(words)

    def get_config(self):
        return {
            "vocabulary": list(self.vocabulary),
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "split_on_cjk": self.split_on_cjk,
            "max_word_length": self.max_word_length,
            "max_sequence_length": self.max_sequence_length,
            "suffix_indicator": self.suffix_indicator,
            "oov_token": self.oov_token,
            "start_token": self.start_token,
            "end_token": self.end_token,
            "pad_token": self.pad_token,
            "special_tokens_in_strings": self.special_tokens_in_strings,
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_config(cls, config):
        # A config holds the vocabulary itself (get_config writes the list):
        # a path here would make loading a config read a local file.
        vocabulary = config.get("vocabulary")
        if vocabulary is not None and not isinstance(vocabulary, list):
            raise ValueError(
                "A WordPieceTokenizer config must hold the vocabulary as a "
                "list of strings (paths are accepted by the constructor "
                f"only). Received: vocabulary={vocabulary!r:.100}"
            )
        return cls(**config)
