"""Teacher-output caching: compute the teacher once, replay it every epoch.

Two ways:

- `with_example_index(dataset)` + `Distiller(..., teacher_cache="memory")`:
  every example carries its index; the Distiller keeps the teacher's
  outputs in a table keyed by that index (filled during the first epoch,
  read afterwards), so the data can be reshuffled every epoch and each
  example still meets its own teacher output. `"disk:<dir>"` also saves the
  table at the end of each `fit` and loads it at the start of the next, in
  this or a later process.
- `cache_teacher_outputs(teacher, dataset)`: one explicit pass that returns
  a new dataset whose inputs carry the teacher's outputs (kept in memory, or
  in `.npy` files under `"disk:<dir>"`, read back as memory maps).

The cache assumes each example's input is the same every epoch. Data
augmentation applied after indexing would replay stale teacher outputs, so
the Distiller stores a fingerprint of each input and raises an
InvalidArgumentError if an example comes back changed; augment before
indexing, or train without a cache.

Files on disk: each file the cache writes (`teacher_cache.npz`,
`teacher_output_<i>.npy`) gets a JSON header next to it
(`<file>.kbm.json`) with the format name, its version, the file's size and
the SHA-256 of its bytes. Reading checks all four and refuses a file
without a header (not written by this cache), of another format or
version, truncated or changed, with a `ValueError` that names the file;
arrays are read with `allow_pickle=False` (memory maps too), so a file
holding pickled objects is refused, never unpickled.
"""

import hashlib
import io
import json
import os

import numpy as np
import tensorflow as tf

FORMAT = "keras_bigmodels.teacher_cache"
VERSION = 1
HEADER_SUFFIX = ".kbm.json"
_MAX_HEADER_BYTES = 1 << 16
_CHUNK = 1 << 20

INPUTS = "inputs"
INDEX = "example_index"
TEACHER_OUTPUTS = "teacher_outputs"


def with_example_index(dataset):
    """Attaches each element's position to its inputs.

    Args:
        dataset: A `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            elements, NOT batched (index before shuffling and batching).

    Returns:
        A dataset of `({"inputs": x, "example_index": i}, y, ...)`, for
        `Distiller(teacher_cache=...)`.

    Example:

    ```python
    ds = kbm.distillation.with_example_index(
        tf.data.Dataset.from_tensor_slices((x, y)))
    distiller.fit(ds.shuffle(1000).batch(64), epochs=10)
    ```
    """

    def attach(i, element):
        x, *rest = element
        return ({INPUTS: x, INDEX: i}, *rest)

    return dataset.enumerate().map(lambda i, e: attach(i, e))


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_atomically(path, write):
    """Runs `write(tmp)` then renames `tmp` over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_header(path, kind, extra=None):
    """Writes `<path>.kbm.json` describing the file just written."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "size": os.path.getsize(path),
        "sha256": _sha256_file(path),
        **(extra or {}),
    }

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(header, f, sort_keys=True)

    _replace_atomically(path + HEADER_SUFFIX, write)


def _read_header(path, kind):
    """The verified header of `path`, before its bytes are checked."""
    header_path = path + HEADER_SUFFIX
    if not os.path.isfile(header_path):
        raise ValueError(
            f"The teacher cache file {path} has no keras_bigmodels header "
            f"({os.path.basename(header_path)}): it was not written by this "
            "teacher cache (or by an older version). Delete it and let the "
            "cache be rebuilt."
        )
    with open(header_path, "rb") as f:
        raw = f.read(_MAX_HEADER_BYTES + 1)
    try:
        if len(raw) > _MAX_HEADER_BYTES:
            raise ValueError("too large")
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ValueError(
            f"The teacher cache header {header_path} is not a valid "
            f"keras_bigmodels header ({e}). Delete the cache."
        ) from None
    if header.get("format") != FORMAT or header.get("kind") != kind:
        raise ValueError(
            f"The file {path} is not a keras_bigmodels teacher cache {kind} "
            f"file. Received: format={header.get('format')!r}, "
            f"kind={header.get('kind')!r}"
        )
    if header.get("version") != VERSION:
        raise ValueError(
            f"The teacher cache file {path} has format version "
            f"{header.get('version')!r}; this keras_bigmodels reads version "
            f"{VERSION}. Delete it and let the cache be rebuilt."
        )
    size, digest = header.get("size"), header.get("sha256")
    if not isinstance(size, int) or not isinstance(digest, str):
        raise ValueError(
            f"The teacher cache header {header_path} lacks the file's size "
            f"or checksum. Received: size={size!r}, sha256={digest!r}"
        )
    return header


def _check_bytes(path, header, size, digest):
    if size != header["size"]:
        raise ValueError(
            f"The teacher cache file {path} has {size} bytes, its header says "
            f"{header['size']}: it was truncated or changed. Delete the cache."
        )
    if digest != header["sha256"]:
        raise ValueError(
            f"The teacher cache file {path} does not match the checksum in "
            "its header (SHA-256): it was changed or corrupted. Delete the "
            "cache."
        )


def save_array(path, array):
    """Writes one array as `.npy` with its header (no pickling)."""
    array = np.asarray(array)
    _replace_atomically(path, lambda tmp: _save_npy(tmp, array))
    _write_header(
        path,
        "array",
        {"dtype": array.dtype.str, "shape": list(array.shape)},
    )


def _save_npy(path, array):
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def load_array(path, mmap=False):
    """Reads an array written by `save_array`, after checking its header,
    size and checksum; a memory map with `mmap=True`. Never unpickles."""
    header = _read_header(path, "array")
    _check_bytes(path, header, os.path.getsize(path), _sha256_file(path))
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if array.dtype.str != header.get("dtype") or list(
        array.shape
    ) != header.get("shape"):
        raise ValueError(
            f"The teacher cache file {path} holds a {array.dtype} array of "
            f"shape {array.shape}; its header says {header.get('dtype')} "
            f"{header.get('shape')}. Delete the cache."
        )
    return array


def save_arrays(path, arrays):
    """Writes named arrays as one `.npz` with its header (no pickling)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise ValueError(
                f"The teacher cache stores numeric arrays only. Received: "
                f"{name} of dtype {a.dtype}"
            )

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _replace_atomically(path, write)
    _write_header(path, "arrays", {"names": sorted(arrays)})


def load_arrays(path):
    """Reads the arrays written by `save_arrays` (a dict), after checking
    the header, size and checksum of the bytes it parses. Never
    unpickles."""
    header = _read_header(path, "arrays")
    with open(path, "rb") as f:
        data = f.read()
    _check_bytes(path, header, len(data), hashlib.sha256(data).hexdigest())
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        if sorted(npz.files) != header.get("names"):
            raise ValueError(
                f"The teacher cache file {path} holds arrays "
                f"{sorted(npz.files)}; its header lists "
                f"{header.get('names')}. Delete the cache."
            )
        return {name: npz[name] for name in npz.files}


def _fingerprint(x):
    """Per-example [sum, sum of squares] of every input tensor, float32."""
    parts = []
    for t in tf.nest.flatten(x):
        t = tf.cast(t, tf.float32)
        flat = tf.reshape(t, [tf.shape(t)[0], -1])
        parts += [tf.reduce_sum(flat, 1), tf.reduce_sum(flat * flat, 1)]
    return tf.stack(parts, axis=1)


class TeacherCache:
    """An index-keyed table of teacher outputs, usable inside tf.function.

    Args:
        specs: One `(shape without batch, dtype)` per teacher output.
        path: A directory to persist the table in, or None (memory only).
    """

    def __init__(self, specs, path=None):
        self.path = path
        self._shapes = [tuple(int(d) for d in s) for s, _ in specs]
        self._dtypes = [tf.as_dtype(d) for _, d in specs]
        self._tables = None
        self._fingerprints = None

    def _make_tables(self, num_inputs):
        def table(width):
            return tf.lookup.experimental.MutableHashTable(
                key_dtype=tf.int64,
                value_dtype=tf.float32,
                default_value=tf.fill([width], float("nan")),
            )

        with tf.init_scope():
            self._tables = [
                table(int(np.prod(s, dtype=np.int64))) for s in self._shapes
            ]
            self._fingerprints = table(2 * num_inputs)
            if self.path:
                self.load()

    def lookup_or_compute(self, index, x, compute):
        """Teacher outputs for the batch: from the table if every example is
        there (checking its input fingerprint), else computed and stored.

        Args:
            index: int64 [B] example indices.
            x: The batch's inputs (for the fingerprint).
            compute: A function returning the teacher outputs (list of
                tensors, batch first).
        """
        index = tf.cast(index, tf.int64)
        if self._tables is None:
            self._make_tables(len(tf.nest.flatten(x)))
        cached = [t.lookup(index) for t in self._tables]
        hit = tf.reduce_all(tf.math.is_finite(cached[0]))
        fingerprint = _fingerprint(x)

        def replay():
            stored = self._fingerprints.lookup(index)
            same = tf.reduce_all(
                tf.abs(stored - fingerprint) <= 1e-3 * (1.0 + tf.abs(stored))
            )
            check = tf.debugging.Assert(
                same,
                [
                    "keras_bigmodels teacher cache: an example's input "
                    "changed since its teacher outputs were cached (data "
                    "augmentation after with_example_index?). Augment "
                    "before indexing or use teacher_cache=None."
                ],
            )
            with tf.control_dependencies([check]):
                return [
                    tf.cast(tf.reshape(c, [-1, *s]), d)
                    for c, s, d in zip(cached, self._shapes, self._dtypes)
                ]

        def fill():
            outputs = compute()
            inserts = [
                t.insert(
                    index,
                    tf.reshape(tf.cast(o, tf.float32), [tf.shape(o)[0], -1]),
                )
                for t, o in zip(self._tables, outputs)
            ]
            inserts.append(self._fingerprints.insert(index, fingerprint))
            with tf.control_dependencies(inserts):
                return [tf.identity(o) for o in outputs]

        return tf.cond(hit, replay, fill)

    def size(self):
        return 0 if self._tables is None else int(self._tables[0].size())

    def save(self):
        if not (self.path and self._tables):
            return
        os.makedirs(self.path, exist_ok=True)
        arrays = {}
        for i, t in enumerate(self._tables + [self._fingerprints]):
            keys, values = t.export()
            arrays[f"keys_{i}"] = keys.numpy()
            arrays[f"values_{i}"] = values.numpy()
        save_arrays(os.path.join(self.path, "teacher_cache.npz"), arrays)

    def load(self):
        file = os.path.join(self.path, "teacher_cache.npz")
        if not os.path.exists(file):
            return
        data = load_arrays(file)
        tables = self._tables + [self._fingerprints]
        expected = sorted(
            f"{kind}_{i}"
            for i in range(len(tables))
            for kind in ("keys", "values")
        )
        if sorted(data) != expected:
            raise ValueError(
                f"The teacher cache {file} holds {len(data) // 2 - 1} "
                f"outputs but the teacher has {len(tables) - 1}; delete it."
            )
        for i, t in enumerate(tables):
            keys, values = data[f"keys_{i}"], data[f"values_{i}"]
            if keys.dtype != np.int64 or values.dtype != np.float32:
                raise ValueError(
                    f"The teacher cache {file} holds keys of dtype "
                    f"{keys.dtype} and values of dtype {values.dtype} "
                    "(int64 and float32 expected); delete it."
                )
            if values.ndim != 2 or values.shape[1] != int(
                t.lookup(tf.constant([-1], tf.int64)).shape[1]
            ):
                raise ValueError(
                    f"The teacher cache {file} does not match this teacher's "
                    "output shapes; delete it."
                )
            t.insert(tf.constant(keys), tf.constant(values))


def cache_teacher_outputs(teacher, dataset, cache="memory", batch_size=256):
    """Runs the teacher once over `dataset`; returns it with the outputs.

    Args:
        teacher: A Keras model (or a function of a batch of inputs returning
            a tensor or list of tensors).
        dataset: A `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            elements, not batched, with the same order every time it is
            iterated.
        cache: `"memory"` (NumPy arrays) or `"disk:<dir>"` (`.npy` files
            there, read back as memory maps). Defaults to `"memory"`.
        batch_size: Batch size of the teacher pass. Defaults to `256`.

    Returns:
        A dataset of `({"inputs": x, "teacher_outputs": t}, y, ...)`,
        unbatched: shuffle and batch it as usual; each example keeps its own
        teacher output. `Distiller` uses `t` instead of running the teacher.

    Example:

    ```python
    cached = kbm.distillation.cache_teacher_outputs(teacher, train_ds)
    distiller.fit(cached.shuffle(5000).batch(64), epochs=20)
    ```
    """
    if cache != "memory" and not (
        isinstance(cache, str) and cache.startswith("disk:") and len(cache) > 5
    ):
        raise ValueError(
            "cache must be 'memory' or 'disk:<directory>'. "
            f"Received: cache={cache!r}"
        )
    chunks = None
    for element in dataset.batch(batch_size):
        outputs = (
            teacher(element[0], training=False)
            if hasattr(teacher, "trainable_variables")
            else teacher(element[0])
        )
        outputs = [np.asarray(o) for o in tf.nest.flatten(outputs)]
        if chunks is None:
            chunks = [[] for _ in outputs]
        for c, o in zip(chunks, outputs):
            c.append(o)
    if chunks is None:
        raise ValueError("cache_teacher_outputs: the dataset is empty")
    arrays = [np.concatenate(c) for c in chunks]
    if cache.startswith("disk:"):
        directory = cache[5:]
        os.makedirs(directory, exist_ok=True)
        paths = [
            os.path.join(directory, f"teacher_output_{i}.npy")
            for i in range(len(arrays))
        ]
        for p, a in zip(paths, arrays):
            save_array(p, a)
        maps = [load_array(p, mmap=True) for p in paths]
        signature = tuple(
            tf.TensorSpec(a.shape[1:], tf.as_dtype(a.dtype)) for a in arrays
        )
        del arrays

        def rows():
            for i in range(len(maps[0])):
                row = tuple(np.asarray(m[i]) for m in maps)
                yield row if len(row) > 1 else row[0]

        outputs = tf.data.Dataset.from_generator(
            rows,
            output_signature=signature if len(signature) > 1 else signature[0],
        )
    else:
        outputs = tf.data.Dataset.from_tensor_slices(
            tuple(arrays) if len(arrays) > 1 else arrays[0]
        )

    def attach(element, teacher_outputs):
        x, *rest = element
        return ({INPUTS: x, TEACHER_OUTPUTS: teacher_outputs}, *rest)

    return tf.data.Dataset.zip((dataset, outputs)).map(attach)
