"""kbm.models.load_safetensors: a NumPy-only safetensors reader."""

import json
import struct

import numpy as np
import pytest

import keras_bigmodels as kbm
from tests.models._checkpoints import (
    from_bf16_bits,
    to_bf16_bits,
    write_safetensors,
)


def test_golden_bytes(tmp_path):
    # Written by hand: header {"a": F32 [2], "b": BF16 [1], "c": F16 [1]}.
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "BF16", "shape": [1], "data_offsets": [8, 10]},
            "c": {"dtype": "F16", "shape": [1, 1], "data_offsets": [10, 12]},
        }
    ).encode()
    data = (
        struct.pack("<ff", 1.5, -2.0)
        + bytes([0xC0, 0x3F])  # bfloat16 1.5 = 0x3FC0
        + bytes([0x00, 0x3C])  # float16 1.0 = 0x3C00
    )
    path = tmp_path / "golden.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    tensors = kbm.models.load_safetensors(path)
    header = kbm.models.read_safetensors_header(path)
    assert list(tensors) == ["a", "b", "c"]
    np.testing.assert_array_equal(tensors["a"], [1.5, -2.0])
    assert tensors["b"].dtype == np.float32 and tensors["b"][0] == 1.5
    assert tensors["c"].dtype == np.float16 and tensors["c"].shape == (1, 1)
    assert tensors["c"][0, 0] == 1.0
    assert "__metadata__" not in header


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((3, 5)).astype("float32"),
        "scalar": np.float32(2.5).reshape(()),
        "empty": np.zeros((0, 4), "float32"),
        "ids": np.arange(6, dtype="int64").reshape(2, 3),
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, dtype, metadata={"format": "np"})
    loaded = kbm.models.load_safetensors(path)
    for name, value in tensors.items():
        if value.dtype.kind == "f":
            value = {
                "F32": value,
                "F16": value.astype(np.float16),
                "BF16": from_bf16_bits(to_bf16_bits(value)),
                "F64": value.astype(np.float64),
            }[dtype]
        assert loaded[name].shape == value.shape
        assert loaded[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded[name], value)
    assert loaded["w"].flags.writeable
    only = kbm.models.load_safetensors(path, names=["ids"])
    assert list(only) == ["ids"]


def write_raw(path, header, data=b""):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "header,data,match",
    [
        (b"{not json", b"", "not valid UTF-8 JSON"),
        (b"[1, 2]", b"", "must be a JSON object"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"", "'data_offsets'"),
        (
            {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
            bytes(8),
            "dtype='C64'",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
            bytes(4),
            "needs 8 bytes",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            bytes(4),
            "outside the 4 data bytes",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            bytes(4),
            "shape=\\[-1\\]",
        ),
    ],
)
def test_malformed_files(tmp_path, header, data, match):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=match):
        kbm.models.load_safetensors(path)


def test_truncated_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No safetensors file"):
        kbm.models.load_safetensors(tmp_path / "nothing.safetensors")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="fewer than the 8-byte"):
        kbm.models.load_safetensors(short)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="exceeds the file size"):
        kbm.models.load_safetensors(huge)
    path = tmp_path / "ok.safetensors"
    write_safetensors(path, {"a": np.ones(2, "float32")})
    with pytest.raises(ValueError, match="no tensor named 'b'"):
        kbm.models.load_safetensors(path, names=["a", "b"])
