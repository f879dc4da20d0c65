"""The teacher cache's files: header, checksum, no unpickling.

Every file the cache writes has a `<file>.kbm.json` header (format name,
version, size, SHA-256); reading refuses foreign, truncated, changed or
wrong-version files and pickle-bearing arrays with a `ValueError` naming
the file, and never unpickles.
"""

import json
import os
import pickle

import numpy as np
import pytest

from keras_bigmodels.distillation import cache


class _Payload:
    """Unpickling it would leave a file behind (the test checks it doesn't)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _array():
    return np.arange(24, dtype="float32").reshape(6, 4)


def _write_array(tmp_path, name="out.npy"):
    path = str(tmp_path / name)
    cache.save_array(path, _array())
    return path


def _write_arrays(tmp_path):
    path = str(tmp_path / "teacher_cache.npz")
    cache.save_arrays(
        path,
        {
            "keys_0": np.arange(3, dtype="int64"),
            "values_0": np.ones((3, 2), "float32"),
        },
    )
    return path


def _edit_header(path, **changes):
    header_path = path + cache.HEADER_SUFFIX
    with open(header_path) as f:
        header = json.load(f)
    header.update(changes)
    with open(header_path, "w") as f:
        json.dump(header, f)


def _rehash(path):
    """Rewrites the header to match the file's bytes (a forged header)."""
    _edit_header(
        path, size=os.path.getsize(path), sha256=cache._sha256_file(path)
    )


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip(tmp_path, mmap):
    path = _write_array(tmp_path)
    np.testing.assert_array_equal(cache.load_array(path, mmap=mmap), _array())
    with open(path + cache.HEADER_SUFFIX) as f:
        header = json.load(f)
    assert header["format"] == cache.FORMAT
    assert header["version"] == cache.VERSION
    assert len(header["sha256"]) == 64
    arrays = cache.load_arrays(_write_arrays(tmp_path))
    assert sorted(arrays) == ["keys_0", "values_0"]


def test_foreign_npy_is_refused(tmp_path):
    path = str(tmp_path / "foreign.npy")
    np.save(path, _array())
    with pytest.raises(ValueError, match="not written by this teacher cache"):
        cache.load_array(path, mmap=True)


def test_foreign_npz_is_refused(tmp_path):
    path = str(tmp_path / "teacher_cache.npz")
    np.savez(path, keys_0=np.arange(3), values_0=np.ones((3, 2)))
    with pytest.raises(ValueError, match="foreign|not written by"):
        cache.load_arrays(path)


@pytest.mark.parametrize("kind", ["array", "arrays"])
def test_truncated_file(tmp_path, kind):
    path = (
        _write_array(tmp_path) if kind == "array" else _write_arrays(tmp_path)
    )
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)
    load = cache.load_array if kind == "array" else cache.load_arrays
    with pytest.raises(ValueError, match="truncated or changed"):
        load(path)


@pytest.mark.parametrize("kind", ["array", "arrays"])
@pytest.mark.parametrize("where", [0, 10, -1])
def test_flipped_byte(tmp_path, kind, where):
    path = (
        _write_array(tmp_path) if kind == "array" else _write_arrays(tmp_path)
    )
    data = bytearray(open(path, "rb").read())
    data[where] ^= 0x01
    open(path, "wb").write(bytes(data))
    load = cache.load_array if kind == "array" else cache.load_arrays
    with pytest.raises(ValueError, match="checksum"):
        load(path)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(version=2), "format version 2"),
        (dict(version="1"), "format version '1'"),
        (dict(format="numpy"), "format='numpy'"),
        (dict(kind="arrays"), "kind='arrays'"),
        (dict(sha256=None), "sha256=None"),
    ],
)
def test_wrong_header(tmp_path, changes, match):
    path = _write_array(tmp_path)
    _edit_header(path, **changes)
    with pytest.raises(ValueError, match=match):
        cache.load_array(path)


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"{" * 70000])
def test_garbled_header(tmp_path, content):
    path = _write_array(tmp_path)
    with open(path + cache.HEADER_SUFFIX, "wb") as f:
        f.write(content)
    with pytest.raises(ValueError, match="not a valid keras_bigmodels header"):
        cache.load_array(path)


@pytest.mark.parametrize("mmap", [False, True])
def test_pickle_bearing_npy_is_never_unpickled(tmp_path, mmap):
    marker = tmp_path / "unpickled"
    path = str(tmp_path / "evil.npy")
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    np.save(path, evil, allow_pickle=True)
    with open(path + cache.HEADER_SUFFIX, "w") as f:
        json.dump(
            {
                "format": cache.FORMAT,
                "version": cache.VERSION,
                "kind": "array",
                "dtype": "|O",
                "shape": [1],
            },
            f,
        )
    _rehash(path)
    with pytest.raises(ValueError, match="allow_pickle|[Oo]bject"):
        cache.load_array(path, mmap=mmap)
    assert not marker.exists()


def test_pickle_bearing_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = _write_arrays(tmp_path)
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    np.savez(path, keys_0=evil, values_0=np.ones((3, 2), "float32"))
    _rehash(path)
    arrays = None
    with pytest.raises(ValueError, match="allow_pickle|[Oo]bject"):
        arrays = cache.load_arrays(path)
    assert arrays is None and not marker.exists()


def test_a_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "unpickled"
    path = str(tmp_path / "teacher_cache.npz")
    with open(path, "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with open(path + cache.HEADER_SUFFIX, "w") as f:
        json.dump(
            {
                "format": cache.FORMAT,
                "version": cache.VERSION,
                "kind": "arrays",
                "names": ["keys_0"],
            },
            f,
        )
    _rehash(path)
    with pytest.raises(ValueError):
        cache.load_arrays(path)
    assert not marker.exists()


def test_object_arrays_are_not_written(tmp_path):
    with pytest.raises(ValueError, match="numeric arrays only"):
        cache.save_arrays(
            str(tmp_path / "x.npz"), {"a": np.array([{}], dtype=object)}
        )


def _filled_cache(directory):
    import tensorflow as tf

    c = cache.TeacherCache([((2,), "float32")], str(directory))
    out = c.lookup_or_compute(
        tf.constant([0, 1]),
        tf.ones((2, 3)),
        lambda: [tf.constant([[1.0, 2.0], [3.0, 4.0]])],
    )
    return c, out


def test_teacher_cache_round_trip_and_refusals(tmp_path):
    c, _ = _filled_cache(tmp_path)
    c.save()
    file = str(tmp_path / "teacher_cache.npz")
    assert os.path.exists(file + cache.HEADER_SUFFIX)
    again, out = _filled_cache(tmp_path)  # Loaded: no recompute needed.
    assert again.size() == 2
    np.testing.assert_array_equal(np.asarray(out[0]), [[1, 2], [3, 4]])

    data = bytearray(open(file, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(file, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        _filled_cache(tmp_path)

    os.remove(file + cache.HEADER_SUFFIX)  # A cache from an older version.
    with pytest.raises(ValueError, match="not written by this teacher cache"):
        _filled_cache(tmp_path)
