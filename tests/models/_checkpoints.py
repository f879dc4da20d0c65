"""Test helpers: write safetensors files and HuggingFace BERT checkpoints.

Independent of `kbm.models.safetensors`: the writer follows the format
description (8-byte little-endian header length, JSON header, raw
little-endian data), so the reader is checked against it.
"""

import json
import os
import struct

import numpy as np


def to_bf16_bits(array):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.array(array, dtype=np.float32, order="C").view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """Writes `{name: array}`; floating arrays are stored as `dtype`."""
    header, chunks, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, array in tensors.items():
        array = np.asarray(array)
        if array.dtype.kind == "f":
            stored_dtype = dtype
            if dtype == "BF16":
                data = to_bf16_bits(array).astype("<u2").tobytes()
            else:
                data = array.astype(
                    {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]
                ).tobytes()
        else:
            stored_dtype = {"int64": "I64", "int32": "I32"}[array.dtype.name]
            data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": stored_dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # The format pads the header to 8 bytes.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in chunks:
            f.write(data)


def hf_tensors(encoder, prefix=""):
    """The encoder's weights under HuggingFace BertModel names/layouts."""
    hidden = encoder.hidden_dim

    def value(variable):
        return np.asarray(variable.numpy(), dtype=np.float32)

    out = {
        "embeddings.position_ids": np.arange(
            encoder.max_sequence_length, dtype=np.int64
        )[None],
        "embeddings.word_embeddings.weight": value(
            encoder.token_embedding.embeddings
        ),
        "embeddings.position_embeddings.weight": value(
            encoder.position_embedding.embeddings
        ),
        "embeddings.token_type_embeddings.weight": value(
            encoder.segment_embedding.embeddings
        ),
        "embeddings.LayerNorm.weight": value(encoder.embeddings_norm.gamma),
        "embeddings.LayerNorm.bias": value(encoder.embeddings_norm.beta),
    }
    for i, block in enumerate(encoder.transformer_layers):
        hf = f"encoder.layer.{i}."
        mha = block._self_attention
        for part, dense in (
            ("query", mha._query_dense),
            ("key", mha._key_dense),
            ("value", mha._value_dense),
        ):
            out[hf + f"attention.self.{part}.weight"] = (
                value(dense.kernel).reshape(hidden, hidden).T
            )
            out[hf + f"attention.self.{part}.bias"] = value(dense.bias).reshape(
                hidden
            )
        out[hf + "attention.output.dense.weight"] = (
            value(mha._output_dense.kernel).reshape(hidden, hidden).T
        )
        out[hf + "attention.output.dense.bias"] = value(mha._output_dense.bias)
        for name, norm in (
            ("attention.output.LayerNorm", block._self_attention_norm),
            ("output.LayerNorm", block._ffn_norm),
        ):
            out[hf + name + ".weight"] = value(norm.gamma)
            out[hf + name + ".bias"] = value(norm.beta)
        for name, dense in (
            ("intermediate.dense", block._ffn_intermediate),
            ("output.dense", block._ffn_output),
        ):
            out[hf + name + ".weight"] = value(dense.kernel).T
            out[hf + name + ".bias"] = value(dense.bias)
    out["pooler.dense.weight"] = np.zeros((hidden, hidden), np.float32)
    out["pooler.dense.bias"] = np.zeros((hidden,), np.float32)
    return {prefix + k: v for k, v in out.items()}


def hf_config(encoder, **overrides):
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": encoder.vocabulary_size,
        "num_hidden_layers": encoder.num_layers,
        "num_attention_heads": encoder.num_heads,
        "hidden_size": encoder.hidden_dim,
        "intermediate_size": encoder.intermediate_dim,
        "max_position_embeddings": encoder.max_sequence_length,
        "type_vocab_size": encoder.type_vocabulary_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": encoder.layer_norm_epsilon,
        "position_embedding_type": "absolute",
        **overrides,
    }


def write_checkpoint(directory, tensors, config, dtype="F32"):
    """A HuggingFace-style checkpoint directory; returns its path."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    write_safetensors(
        os.path.join(directory, "model.safetensors"), tensors, dtype
    )
    return str(directory)


def minilm_path():
    """The packaged all-MiniLM-L6-v2 directory, or skip the test."""
    import pytest

    import keras_bigmodels as kbm

    try:
        return kbm.models.minilm_l6_v2_path()
    except ImportError as e:
        pytest.skip(str(e))
