"""`kbm.models.BertEncoder`: a BERT encoder on the fused layers."""

import json
import os
import re

import tensorflow as tf

from keras_bigmodels._validation import check_positive_int
from keras_bigmodels.backend import keras, register_serializable
from keras_bigmodels.layers.layer_normalization import LayerNormalization
from keras_bigmodels.layers.position_embedding import PositionEmbedding
from keras_bigmodels.layers.transformer_encoder import TransformerEncoder
from keras_bigmodels.models.safetensors import (
    load_safetensors,
    read_safetensors_header,
)

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
# HuggingFace `hidden_act` -> `activation`.
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
# The arguments that set the weights' shapes.
_SHAPE_ARGUMENTS = (
    "vocabulary_size",
    "num_layers",
    "hidden_dim",
    "intermediate_dim",
    "max_sequence_length",
    "type_vocabulary_size",
)
# Checkpoint tensors that the encoder does not use: buffers, the pooler
# (tanh dense on [CLS]) and the pre-training heads.
_IGNORED = re.compile(
    r"^(embeddings\.position_ids|embeddings\.token_type_ids|pooler\..*"
    r"|cls\..*)$"
)


def _initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


def _check_rate(value, name, allow_none=False):
    if allow_none and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"{name} must be in [0, 1){' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}"
        )


@register_serializable
class BertEncoder(keras.Model):
    """A BERT encoder (Devlin et al., 2019) built from kbm's fused layers.

    A functional `keras.Model`, laid out like `keras_hub.models.
    BertBackbone` without its pooler: token (`keras.layers.Embedding`),
    learned position (`kbm.layers.PositionEmbedding`) and segment
    embeddings are summed, normalised (`kbm.layers.LayerNormalization`) and
    dropped out, then run through `num_layers` post-LN
    `kbm.layers.TransformerEncoder` blocks (`norm_first=False`, exact GELU),
    each masking the padded keys in its flash-attention kernel. The output
    is the sequence output; pool it with `kbm.models.MeanPooling` /
    `kbm.models.mean_pool` for sentence embeddings, or take `[:, 0]` for
    the `[CLS]` vector.

    `BertEncoder.from_checkpoint(path)` builds one from a HuggingFace BERT
    checkpoint directory and loads its weights.

    Args:
        vocabulary_size: Number of token ids.
        num_layers: Number of transformer blocks.
        num_heads: Attention heads per block; `hidden_dim` must be a
            multiple of it.
        hidden_dim: Width of the embeddings and blocks.
        intermediate_dim: Width of the feed-forward hidden layer.
        max_sequence_length: Number of learned positions, the longest
            input. Defaults to `512`.
        type_vocabulary_size: Number of segment ids. Defaults to `2`.
        dropout: Dropout after the embeddings and in the blocks. Defaults
            to `0.1`.
        attention_dropout: Dropout on the attention probabilities; `None`
            means `dropout`. It runs inside the fused attention kernel.
            Defaults to `None`.
        layer_norm_epsilon: Epsilon of every LayerNorm. Defaults to
            `1e-12`.
        activation: Feed-forward activation, `"gelu"` (exact, erf),
            `"gelu_tanh"` or `"relu"`. Defaults to `"gelu"`.
        layer_num_heads: Optional list of `num_layers` head counts, one per
            block, overriding `num_heads` (a model whose heads were pruned
            by `kbm.pruning.prune_heads`). Defaults to `None`.
        layer_intermediate_dims: Optional list of `num_layers`
            feed-forward widths, one per block, overriding
            `intermediate_dim`. Defaults to `None`.
        head_dim: Size of each attention head; `None` means `hidden_dim //
            num_heads`. Defaults to `None`.
        dtype: Dtype or dtype policy name of the layers. Defaults to
            `None` (the global policy).
        **kwargs: `name` and `trainable`.

    Call arguments:
        inputs: A dict with `"token_ids"` (int `[batch, length]`),
            `"segment_ids"` (int `[batch, length]`, zeros for one
            sentence) and `"padding_mask"` (0/1 or bool `[batch, length]`,
            1 for tokens), as returned by `kbm.models.WordPieceTokenizer.
            encode`.

    Returns:
        The sequence output, `[batch, length, hidden_dim]`. Outputs at
        padded positions are not meaningful.

    Example:

    ```python
    path = kbm.models.minilm_l6_v2_path()
    encoder = kbm.models.BertEncoder.from_checkpoint(path)
    tokenizer = kbm.models.WordPieceTokenizer.from_checkpoint(path)
    inputs = tokenizer.encode(["A sentence.", "Another one, longer."])
    embeddings = kbm.models.mean_pool(
        encoder(inputs), inputs["padding_mask"]
    )
    ```

    Reference:
    - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        max_sequence_length=512,
        type_vocabulary_size=2,
        dropout=0.1,
        attention_dropout=None,
        layer_norm_epsilon=1e-12,
        activation="gelu",
        dtype=None,
        layer_num_heads=None,
        layer_intermediate_dims=None,
        head_dim=None,
        **kwargs,
    ):
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("max_sequence_length", max_sequence_length),
            ("type_vocabulary_size", type_vocabulary_size),
        ):
            check_positive_int(name, value)
        if head_dim is not None:
            check_positive_int("head_dim", head_dim)
        layer_num_heads = _per_layer(
            "layer_num_heads", layer_num_heads, num_layers
        )
        layer_intermediate_dims = _per_layer(
            "layer_intermediate_dims", layer_intermediate_dims, num_layers
        )
        if head_dim is None and hidden_dim % num_heads:
            raise ValueError(
                "hidden_dim must be a multiple of num_heads "
                f"({num_heads}). Received: hidden_dim={hidden_dim}"
            )
        _check_rate(dropout, "dropout")
        _check_rate(attention_dropout, "attention_dropout", allow_none=True)
        if not (
            isinstance(layer_norm_epsilon, (int, float))
            and layer_norm_epsilon > 0
        ):
            raise ValueError(
                "layer_norm_epsilon must be > 0. "
                f"Received: layer_norm_epsilon={layer_norm_epsilon!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}. "
                f"Received: activation={activation!r}"
            )
        if dtype is not None and not isinstance(dtype, str):
            dtype = dtype.name  # A dtype policy: keep its name.

        # The layers are locals until super().__init__ (tf-keras refuses
        # attributes on a Model before it), then kept as attributes.
        token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="token_embedding",
        )
        position_embedding = PositionEmbedding(
            max_sequence_length,
            initializer=_initializer(),
            dtype=dtype,
            name="position_embedding",
        )
        segment_embedding = keras.layers.Embedding(
            type_vocabulary_size,
            hidden_dim,
            embeddings_initializer=_initializer(),
            dtype=dtype,
            name="segment_embedding",
        )
        embeddings_norm = LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=dtype,
            name="embeddings_layer_norm",
        )
        blocks = [
            TransformerEncoder(
                (layer_intermediate_dims or [intermediate_dim] * num_layers)[i],
                (layer_num_heads or [num_heads] * num_layers)[i],
                head_dim=head_dim
                if head_dim is not None or layer_num_heads is None
                else hidden_dim // num_heads,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation=activation,
                norm_first=False,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=_initializer(),
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]

        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        tokens = token_embedding(token_ids)
        x = keras.layers.Add(dtype=dtype, name="embeddings_add")(
            [
                tokens,
                position_embedding(tokens),
                segment_embedding(segment_ids),
            ]
        )
        x = embeddings_norm(x)
        x = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )(x)
        for block in blocks:
            x = block(x, padding_mask=padding_mask)
        super().__init__(
            inputs={
                "token_ids": token_ids,
                "segment_ids": segment_ids,
                "padding_mask": padding_mask,
            },
            outputs=x,
            **kwargs,
        )

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.type_vocabulary_size = type_vocabulary_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation
        self._dtype_arg = dtype
        self.layer_num_heads = layer_num_heads
        self.layer_intermediate_dims = layer_intermediate_dims
        self.head_dim = head_dim
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.segment_embedding = segment_embedding
        self.embeddings_norm = embeddings_norm
        self.transformer_layers = blocks

    def get_config(self):
        # Not `super().get_config()`: a functional model's config is its
        # graph; this model is rebuilt from its constructor arguments (as
        # keras-hub backbones are). The per-layer sizes are written only
        # when set, so other configs stay as they were.
        extra = {
            name: getattr(self, name)
            for name in (
                "layer_num_heads",
                "layer_intermediate_dims",
                "head_dim",
            )
            if getattr(self, name) is not None
        }
        return {
            **extra,
            "name": self.name,
            "trainable": self.trainable,
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "type_vocabulary_size": self.type_vocabulary_size,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation": self.activation,
            "dtype": self._dtype_arg,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    @classmethod
    def from_checkpoint(cls, path, **kwargs):
        """Builds an encoder from a HuggingFace BERT checkpoint directory.

        Reads `config.json` (`model_type` "bert", absolute positions) for
        the architecture and `model.safetensors` (F32, F16 or BF16; parsed
        with NumPy only) for the weights. Tensor names may carry a
        `bert.` prefix (as in `BertForMaskedLM` checkpoints). The pooler,
        the pre-training heads (`cls.*`) and buffers (`position_ids`) are
        skipped; any other tensor that is missing, unexpected or of the
        wrong shape is an error naming it. HuggingFace Linear weights
        (`[out, in]`) are transposed, and the attention projections
        reshaped to Keras's `[hidden, heads, head_dim]` /
        `[heads, head_dim, hidden]` kernels.

        Args:
            path: The checkpoint directory (`config.json`,
                `model.safetensors`; `vocab.txt` is for the tokenizer).
            **kwargs: Constructor arguments that override the checkpoint's
                (`dropout=0.0`, `dtype`, `name`, ...); architecture
                arguments must agree with the weights.

        Returns:
            A `BertEncoder` holding the checkpoint's weights.

        Raises:
            FileNotFoundError: `path`, or a file in it, does not exist.
            ValueError: The config describes no BERT encoder, or a tensor
                is missing, unexpected or mis-shaped.

        Example:

        ```python
        encoder = kbm.models.BertEncoder.from_checkpoint(
            kbm.models.minilm_l6_v2_path(), dropout=0.0
        )
        ```
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"No checkpoint directory at {path!r}. Expected a directory "
                "with config.json and model.safetensors."
            )
        config_path = os.path.join(path, "config.json")
        weights_path = os.path.join(path, "model.safetensors")
        for file in (config_path, weights_path):
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"The checkpoint directory {path!r} has no "
                    f"{os.path.basename(file)}."
                )
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
        arguments = {**_arguments_from_hf_config(hf_config), **kwargs}
        for name in _SHAPE_ARGUMENTS:
            check_positive_int(name, arguments[name])
        # Check the tensors' names and shapes before building a model.
        header = read_safetensors_header(weights_path)
        names = _map_checkpoint_names(
            header, arguments["num_layers"], weights_path
        )
        _check_shapes(header, names, arguments, weights_path)
        encoder = cls(**arguments)
        tensors = load_safetensors(weights_path, names=names.values())
        _assign_weights(encoder, tensors, names)
        return encoder


def _per_layer(name, values, num_layers):
    """None, or a list of `num_layers` positive ints (else a ValueError)."""
    if values is None:
        return None
    values = list(values)
    if len(values) != num_layers:
        raise ValueError(
            f"{name} must have one entry per layer ({num_layers}). "
            f"Received: {name}={values!r}"
        )
    for value in values:
        check_positive_int(name, value)
    return [int(v) for v in values]


def _arguments_from_hf_config(config):
    """BertEncoder arguments from a HuggingFace BertConfig dict."""
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(
            "BertEncoder.from_checkpoint reads BERT checkpoints "
            f"(config.json model_type 'bert'). Received: model_type="
            f"{model_type!r}"
        )
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            "BertEncoder has learned absolute positions only. Received: "
            f"position_embedding_type={position_type!r}"
        )
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"Unsupported activation; supported: {sorted(_HF_ACTIVATIONS)}. "
            f"Received: hidden_act={hidden_act!r}"
        )
    required = {
        "vocab_size": "vocabulary_size",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "hidden_size": "hidden_dim",
        "intermediate_size": "intermediate_dim",
    }
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(
            f"config.json lacks {', '.join(missing)}: is this a BERT "
            "checkpoint?"
        )
    arguments = {ours: config[theirs] for theirs, ours in required.items()}
    arguments.update(
        max_sequence_length=config.get("max_position_embeddings", 512),
        type_vocabulary_size=config.get("type_vocab_size", 2),
        dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob"),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
        activation=_HF_ACTIVATIONS[hidden_act],
    )
    return arguments


def _layer_names(i):
    """(our key, HuggingFace name) pairs of block `i`."""
    hf = f"encoder.layer.{i}."
    pairs = []
    for part in ("query", "key", "value"):
        for kind in ("weight", "bias"):
            pairs.append(
                (f"{i}/{part}/{kind}", f"{hf}attention.self.{part}.{kind}")
            )
    for ours, theirs in (
        ("attention_output", "attention.output.dense"),
        ("attention_norm", "attention.output.LayerNorm"),
        ("intermediate", "intermediate.dense"),
        ("output", "output.dense"),
        ("output_norm", "output.LayerNorm"),
    ):
        for kind in ("weight", "bias"):
            pairs.append((f"{i}/{ours}/{kind}", f"{hf}{theirs}.{kind}"))
    return pairs


def _expected_names(num_layers):
    """{our key: HuggingFace name} of every tensor the encoder needs."""
    names = {
        "token_embedding": "embeddings.word_embeddings.weight",
        "position_embedding": "embeddings.position_embeddings.weight",
        "segment_embedding": "embeddings.token_type_embeddings.weight",
        "embeddings_norm/weight": "embeddings.LayerNorm.weight",
        "embeddings_norm/bias": "embeddings.LayerNorm.bias",
    }
    for i in range(num_layers):
        names.update(_layer_names(i))
    return names


def _canonical(name):
    """The HuggingFace name without a `bert.` prefix and with old-style
    LayerNorm `gamma`/`beta` renamed `weight`/`bias`."""
    if name.startswith("bert."):
        name = name[len("bert.") :]
    if ".LayerNorm." in name:
        name = re.sub(r"\.gamma$", ".weight", name)
        name = re.sub(r"\.beta$", ".bias", name)
    return name


def _summarise(names, limit=8):
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _map_checkpoint_names(header, num_layers, path):
    """{our key: name in the file}, or a ValueError naming the missing and
    unexpected tensors."""
    canonical = {}
    for name in header:
        key = _canonical(name)
        if key in canonical:
            raise ValueError(
                f"{path!r} holds both {canonical[key]!r} and {name!r}, the "
                "same BERT tensor."
            )
        canonical[key] = name
    expected = _expected_names(num_layers)
    missing = [n for n in expected.values() if n not in canonical]
    known = set(expected.values())
    unexpected = [
        canonical[n]
        for n in canonical
        if n not in known and not _IGNORED.match(n)
    ]
    problems = []
    if missing:
        problems.append(
            f"missing tensors ({len(missing)}): {_summarise(missing)}"
        )
    if unexpected:
        problems.append(
            f"unexpected tensors ({len(unexpected)}): {_summarise(unexpected)}"
        )
    if problems:
        raise ValueError(
            f"{path!r} does not match a {num_layers}-layer BERT encoder: "
            + "; ".join(problems)
            + "."
        )
    return {ours: canonical[theirs] for ours, theirs in expected.items()}


def _hf_shapes(arguments):
    """{our key: the HuggingFace tensor's shape} for encoder `arguments`."""
    hidden = arguments["hidden_dim"]
    inner = arguments["intermediate_dim"]
    shapes = {
        "token_embedding": (arguments["vocabulary_size"], hidden),
        "position_embedding": (arguments["max_sequence_length"], hidden),
        "segment_embedding": (arguments["type_vocabulary_size"], hidden),
        "embeddings_norm/weight": (hidden,),
        "embeddings_norm/bias": (hidden,),
    }
    for i in range(arguments["num_layers"]):
        for part in ("query", "key", "value", "attention_output"):
            shapes[f"{i}/{part}/weight"] = (hidden, hidden)
            shapes[f"{i}/{part}/bias"] = (hidden,)
        shapes[f"{i}/intermediate/weight"] = (inner, hidden)
        shapes[f"{i}/intermediate/bias"] = (inner,)
        shapes[f"{i}/output/weight"] = (hidden, inner)
        shapes[f"{i}/output/bias"] = (hidden,)
        for norm in ("attention_norm", "output_norm"):
            shapes[f"{i}/{norm}/weight"] = (hidden,)
            shapes[f"{i}/{norm}/bias"] = (hidden,)
    return shapes


def _check_shapes(header, names, arguments, path):
    """A ValueError naming every tensor whose shape does not fit."""
    wrong = []
    for key, shape in _hf_shapes(arguments).items():
        name = names[key]
        found = tuple(header[name]["shape"])
        if found != shape:
            wrong.append(f"{name!r} has shape {found}, the model needs {shape}")
    if wrong:
        described = ", ".join(
            f"{k}={arguments[k]}"
            for k in (
                "vocabulary_size",
                "hidden_dim",
                "intermediate_dim",
                "max_sequence_length",
                "type_vocabulary_size",
            )
        )
        raise ValueError(
            f"{path!r} does not fit a BertEncoder with {described}: "
            + "; ".join(wrong)
            + "."
        )


def _targets(encoder):
    """{our key: (variable, to_keras)}, where `to_keras` maps the
    HuggingFace array onto the variable's layout."""
    hidden = encoder.hidden_dim
    heads = encoder.num_heads
    head_dim = hidden // heads

    def same(a):
        return a

    def transpose(a):  # Linear [out, in] -> Dense [in, out]
        return a.T

    def split_heads_in(a):  # [out, in] -> [in, heads, head_dim]
        return a.T.reshape(hidden, heads, head_dim)

    def split_heads_bias(a):  # [out] -> [heads, head_dim]
        return a.reshape(heads, head_dim)

    def split_heads_out(a):  # [out, in] -> [heads, head_dim, out]
        return a.T.reshape(heads, head_dim, hidden)

    targets = {
        "token_embedding": (encoder.token_embedding.embeddings, same),
        "position_embedding": (encoder.position_embedding.embeddings, same),
        "segment_embedding": (encoder.segment_embedding.embeddings, same),
        "embeddings_norm/weight": (encoder.embeddings_norm.gamma, same),
        "embeddings_norm/bias": (encoder.embeddings_norm.beta, same),
    }
    for i, block in enumerate(encoder.transformer_layers):
        attention = block._self_attention
        for part, dense in (
            ("query", attention._query_dense),
            ("key", attention._key_dense),
            ("value", attention._value_dense),
        ):
            targets[f"{i}/{part}/weight"] = (dense.kernel, split_heads_in)
            targets[f"{i}/{part}/bias"] = (dense.bias, split_heads_bias)
        dense = attention._output_dense
        targets[f"{i}/attention_output/weight"] = (
            dense.kernel,
            split_heads_out,
        )
        targets[f"{i}/attention_output/bias"] = (dense.bias, same)
        for ours, dense in (
            ("intermediate", block._ffn_intermediate),
            ("output", block._ffn_output),
        ):
            targets[f"{i}/{ours}/weight"] = (dense.kernel, transpose)
            targets[f"{i}/{ours}/bias"] = (dense.bias, same)
        for ours, norm in (
            ("attention_norm", block._self_attention_norm),
            ("output_norm", block._ffn_norm),
        ):
            targets[f"{i}/{ours}/weight"] = (norm.gamma, same)
            targets[f"{i}/{ours}/bias"] = (norm.beta, same)
    return targets


def _assign_weights(encoder, tensors, names):
    """Assigns the checkpoint's arrays (`tensors`, by file name; `names`
    maps our keys to file names) to the encoder's variables."""
    assigned = set()
    for key, (variable, to_keras) in _targets(encoder).items():
        value = to_keras(tensors[names[key]])
        if tuple(value.shape) != tuple(variable.shape):
            raise RuntimeError(
                f"{names[key]!r} maps to shape {value.shape}, but "
                f"{variable.name} has shape {tuple(variable.shape)}. This "
                "is a bug in keras_bigmodels."
            )
        variable.assign(tf.cast(value, variable.dtype))
        assigned.add(id(variable))
    left = [w.name for w in encoder.weights if id(w) not in assigned]
    if left:
        raise RuntimeError(
            f"BertEncoder weights not set from the checkpoint: {left}. "
            "This is a bug in keras_bigmodels."
        )
