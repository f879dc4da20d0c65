"""Reading `.safetensors` checkpoints with NumPy only.

The format (https://github.com/huggingface/safetensors): an 8-byte
little-endian unsigned header length `N`, then `N` bytes of UTF-8 JSON
mapping each tensor name to `{"dtype", "shape", "data_offsets": [begin,
end]}` (offsets relative to the end of the header; an optional
`"__metadata__"` entry holds strings), then the raw little-endian,
row-major tensor data.
"""

import json
import os

import numpy as np

# safetensors dtype -> NumPy dtype of the stored bytes. BF16 is stored as
# the upper 16 bits of a float32 and is widened on load.
_STORED_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# The format caps the header at 100 MB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_safetensors_header(path):
    """Reads and checks the header of a `.safetensors` file.

    Args:
        path: Path of the file.

    Returns:
        A dict mapping each tensor name to `{"dtype": str, "shape": list,
        "data_offsets": [begin, end]}`, in file order, without the
        `"__metadata__"` entry.

    Raises:
        FileNotFoundError: There is no file at `path`.
        ValueError: The file is not a valid safetensors file; the message
            names the problem and the tensor.

    Example:

    ```python
    header = kbm.models.read_safetensors_header("model.safetensors")
    header["embeddings.word_embeddings.weight"]["shape"]  # [30522, 384]
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No safetensors file at {path!r}.")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(
                f"{path!r} is not a safetensors file: it has {file_size} "
                "bytes, fewer than the 8-byte header length."
            )
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
            raise ValueError(
                f"{path!r} is not a safetensors file: its header length "
                f"{header_len} exceeds the file size ({file_size} bytes) "
                "or the 100 MB limit."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(
            f"{path!r} is not a safetensors file: its header is not valid "
            f"UTF-8 JSON ({e})."
        ) from None
    if not isinstance(header, dict):
        raise ValueError(
            f"{path!r}: the safetensors header must be a JSON object. "
            f"Received: {type(header).__name__}"
        )
    header.pop("__metadata__", None)
    data_size = file_size - 8 - header_len
    for name, info in header.items():
        _check_entry(path, name, info, data_size)
    return header


def _check_entry(path, name, info, data_size):
    if not isinstance(info, dict) or not {
        "dtype",
        "shape",
        "data_offsets",
    } <= set(info):
        raise ValueError(
            f"{path!r}: tensor {name!r} must have 'dtype', 'shape' and "
            f"'data_offsets'. Received: {info!r}"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _STORED_DTYPES:
        raise ValueError(
            f"{path!r}: tensor {name!r} has an unsupported dtype. Supported: "
            f"{sorted(_STORED_DTYPES)}. Received: dtype={dtype!r}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and d >= 0 for d in shape
    ):
        raise ValueError(
            f"{path!r}: tensor {name!r} has an invalid shape. "
            f"Received: shape={shape!r}"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise ValueError(
            f"{path!r}: tensor {name!r} has data_offsets outside the "
            f"{data_size} data bytes. Received: data_offsets={offsets!r}"
        )
    expected = int(np.prod(shape, dtype=np.int64)) * (
        _STORED_DTYPES[dtype].itemsize
    )
    if offsets[1] - offsets[0] != expected:
        raise ValueError(
            f"{path!r}: tensor {name!r} of dtype {dtype} and shape {shape} "
            f"needs {expected} bytes, but its data_offsets {offsets} span "
            f"{offsets[1] - offsets[0]}."
        )


def load_safetensors(path, names=None):
    """Loads tensors from a `.safetensors` file into NumPy arrays.

    Reads with NumPy only (no `safetensors` or `torch` package). `F16` stays
    `float16`; `BF16` (which NumPy lacks) is widened exactly to `float32`;
    `F32`, `F64` and the integer and `BOOL` dtypes load as themselves.
    Arrays are writable and in native byte order.

    Args:
        path: Path of the file.
        names: Optional iterable of tensor names to load; `None` loads
            every tensor. Defaults to `None`.

    Returns:
        A dict mapping names to NumPy arrays, in file order.

    Raises:
        FileNotFoundError: There is no file at `path`.
        ValueError: The file is malformed, or a name in `names` is not in
            it.

    Example:

    ```python
    tensors = kbm.models.load_safetensors(
        "model.safetensors", names=["embeddings.word_embeddings.weight"]
    )
    ```
    """
    header = read_safetensors_header(path)
    if names is None:
        wanted = list(header)
    else:
        wanted = list(names)
        missing = [n for n in wanted if n not in header]
        if missing:
            raise ValueError(
                f"{os.fspath(path)!r} has no tensor named "
                f"{', '.join(map(repr, missing))}."
            )
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
        tensors = {}
        for name in wanted:
            info = header[name]
            stored = _STORED_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)
            if f.readinto(buffer) != len(buffer):
                raise ValueError(
                    f"{os.fspath(path)!r}: the data of tensor {name!r} is "
                    "cut short (the file changed while reading?)."
                )
            array = np.frombuffer(buffer, dtype=stored)
            if info["dtype"] == "BF16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            else:
                array = array.astype(stored.newbyteorder("="), copy=False)
            tensors[name] = array.reshape(info["shape"])
    return tensors
