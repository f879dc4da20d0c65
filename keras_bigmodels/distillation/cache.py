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
"""

import os

import numpy as np
import tensorflow as tf

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
        np.savez(os.path.join(self.path, "teacher_cache.npz"), **arrays)

    def load(self):
        file = os.path.join(self.path, "teacher_cache.npz")
        if not os.path.exists(file):
            return
        data = np.load(file)
        tables = self._tables + [self._fingerprints]
        if len(data.files) != 2 * len(tables):
            raise ValueError(
                f"The teacher cache {file} holds {len(data.files) // 2 - 1} "
                f"outputs but the teacher has {len(tables) - 1}; delete it."
            )
        for i, t in enumerate(tables):
            values = data[f"values_{i}"]
            if values.ndim != 2 or values.shape[1] != int(
                t.lookup(tf.constant([-1], tf.int64)).shape[1]
            ):
                raise ValueError(
                    f"The teacher cache {file} does not match this teacher's "
                    "output shapes; delete it."
                )
            t.insert(tf.constant(data[f"keys_{i}"]), tf.constant(values))


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
            np.save(p, a)
        maps = [np.load(p, mmap_mode="r") for p in paths]
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
