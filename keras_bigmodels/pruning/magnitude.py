"""Unstructured and 2:4 magnitude pruning, in place, for any Keras model.

`prune_low_magnitude(model, schedule)` turns each targeted `Dense`,
`kbm.layers.FusedDense`, `EinsumDense` (including the query/key/value/
output projections inside Keras's and kbm's attention layers), `Conv2D`
and `Embedding` into its pruned twin (`PrunedDense`, ...): the same layer
object, with the same weights, plus one non-trainable mask per kernel.
The layer reads its kernel as `kernel * mask`, so the forward pass sees
only the kept weights and gradients reach only them. The
`UpdatePruningStep` callback recomputes the masks by magnitude at the
schedule's steps and keeps the masked entries of the kernel variables at
zero. `strip_pruning(model)` turns the layers back into plain ones whose
kernels hold the zeros.

Why in place and not wrapper layers (TensorFlow Model Optimization wraps
each layer in `PruneLowMagnitude`, which needs a functional or Sequential
model to rebuild): subclassed models such as `kbm.models.BertEncoder`, and
attention layers, create their sublayers themselves, so no wrapper can be
put around those sublayers. Changing the class of the existing layer
object works for every model, and keeps variable names and paths.

Saving: a pruned layer saves exactly the variables of its plain layer, its
kernel already multiplied by the mask. So a `.keras` file of a pruned,
unstripped model always loads: where the model's config holds the pruned
layers (functional and Sequential models whose pruned layers are their
own), they come back pruned, with the masks rebuilt from the kernel's
zeros; where the config rebuilds the sublayers itself (subclassed models,
attention layers), they come back as plain layers holding the zeros, i.e.
the stripped model; call `prune_low_magnitude` again to continue. (A
kept weight that is exactly zero is masked after loading: harmless.) The
pruned classes keep the plain class's `__name__` (Keras names weight-file
entries after it) and register as `keras_bigmodels>PrunedDense` etc.

These masks shrink nothing and speed nothing: the kernels keep their dense
shape and storage and run on the dense matmul/convolution kernels, on CPU
and GPU alike; kbm provides no sparse storage and no sparse kernels. A
`.keras` file keeps its size (Keras stores it uncompressed; gzip applied
to it shrinks it with the zeros), and 2:4 patterns only pay on
GPUs with sparse tensor cores (NVIDIA Ampere and later) with a runtime
that uses them (e.g. TensorRT), not in TensorFlow.
"""

import importlib
import re

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.pruning import schedules as schedules_lib

# --------------------------------------------------------------------------
# Mask computation (NumPy, on the host, at the schedule's steps only).


def _two_d(weights, reduction_axes):
    """`weights` as [K, N]: the reduction axes first (in order), flattened."""
    others = [a for a in range(weights.ndim) if a not in reduction_axes]
    perm = list(reduction_axes) + others
    moved = np.transpose(weights, perm)
    k = int(np.prod([weights.shape[a] for a in reduction_axes]))
    return moved.reshape(k, -1), perm, moved.shape


def _from_two_d(matrix, perm, moved_shape):
    return np.transpose(matrix.reshape(moved_shape), np.argsort(perm))


def _unstructured_mask(magnitude, sparsity):
    flat = magnitude.reshape(-1)
    n_prune = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, dtype=np.float32)
    if n_prune > 0:
        order = np.argsort(flat, kind="stable")
        mask[order[:n_prune]] = 0.0
    return mask.reshape(magnitude.shape)


def _block_mask(magnitude, sparsity, block, reduction_axes):
    matrix, perm, moved_shape = _two_d(magnitude, reduction_axes)
    bh, bw = block
    k, n = matrix.shape
    pk, pn = -k % bh, -n % bw
    padded = np.pad(matrix, ((0, pk), (0, pn)))
    blocks = padded.reshape(
        padded.shape[0] // bh, bh, padded.shape[1] // bw, bw
    )
    scores = blocks.mean(axis=(1, 3))
    block_mask = _unstructured_mask(scores, sparsity)
    full = np.repeat(np.repeat(block_mask, bh, axis=0), bw, axis=1)
    return _from_two_d(full[:k, :n], perm, moved_shape)


def _m_by_n_mask(magnitude, m_by_n, reduction_axes):
    m, n = m_by_n
    matrix, perm, moved_shape = _two_d(magnitude, reduction_axes)
    k, cols = matrix.shape
    groups = matrix.reshape(k // n, n, cols)
    # Rank within each group of n consecutive weights along K (stable:
    # ties keep the earlier weight).
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros_like(groups, dtype=np.float32)
    np.put_along_axis(mask, order[:, :m, :], 1.0, axis=1)
    return _from_two_d(mask.reshape(k, cols), perm, moved_shape)


def compute_mask(
    weights, sparsity, *, block=None, sparsity_m_by_n=None, reduction_axes=(0,)
):
    """The magnitude mask (1 keep, 0 prune) of `weights`, as float32 NumPy.

    Unstructured: the `round(sparsity * size)` smallest |weights| are
    pruned (ties: the earlier index first). With `block=(r, c)` the
    weights, viewed as a [K, N] matrix (the `reduction_axes` flattened
    into K), are pruned in r x c blocks ranked by their mean |weight|
    (the matrix is zero-padded to whole blocks). With
    `sparsity_m_by_n=(m, n)` `sparsity` is ignored: in every group of n
    consecutive weights along K the m largest are kept.
    """
    magnitude = np.abs(np.asarray(weights, dtype=np.float64))
    if sparsity_m_by_n is not None:
        return _m_by_n_mask(magnitude, sparsity_m_by_n, reduction_axes)
    if block is not None and tuple(block) != (1, 1):
        return _block_mask(magnitude, sparsity, block, reduction_axes)
    return _unstructured_mask(magnitude, sparsity)


# --------------------------------------------------------------------------
# Pruned layers: the plain layer's class plus a mask on one weight.


def _call_context_training():
    """`training` of the Keras call in progress (None outside a call)."""
    try:
        if IS_LEGACY_KERAS:
            utils = importlib.import_module(
                keras.__name__ + ".src.engine.base_layer_utils"
            )
            return utils.call_context().training
        state = importlib.import_module(
            keras.__name__ + ".src.backend.common.global_state"
        )
        ctx = state.get_global_attribute("current_call_ctx")
        return None if ctx is None else ctx.training
    except Exception:  # A private API moved: skip the check.
        return None


class _PrunedMixin:
    """Reads `<weight>` as `raw * mask`. Mixed in before the plain class."""

    _kbm_weight = "kernel"

    def __init__(
        self,
        *args,
        pruning_schedule=None,
        block=None,
        sparsity_m_by_n=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        _set_pruning_attrs(
            self,
            schedules_lib.deserialize(pruning_schedule),
            block,
            sparsity_m_by_n,
        )

    def build(self, *args, **kwargs):
        super().build(*args, **kwargs)
        _add_mask(self)

    # ---- the masked weight -------------------------------------------
    def _kbm_raw(self):
        """The plain layer's weight (variable, or LoRA sum in Keras 3)."""
        attr = getattr(self._kbm_base, self._kbm_weight, None)
        if isinstance(attr, property):
            return attr.fget(self)
        return self.__dict__[self._kbm_weight]

    def _kbm_variable(self):
        """The variable that holds the weight."""
        if IS_LEGACY_KERAS:
            return self.__dict__[self._kbm_weight]
        return getattr(self, "_" + self._kbm_weight)

    def _kbm_masked(self):
        mask = self.__dict__.get("_kbm_mask")
        raw = self._kbm_raw()
        if mask is None:
            return raw
        if self._kbm_step is None and _call_context_training() is True:
            raise RuntimeError(
                f"Layer {self.name!r} is pruned (kbm.pruning."
                "prune_low_magnitude) and is being trained without "
                "updating its pruning step. Pass kbm.pruning."
                "UpdatePruningStep() in the callbacks of fit(), or call "
                "kbm.pruning.update_pruning_masks(model, step) in a custom "
                "training loop before the first training step."
            )
        return raw * mask

    # ---- saving: the plain layer's variables, kernel masked -----------
    def save_own_variables(self, store):
        if self.__dict__.get("_kbm_mask") is None:
            return super().save_own_variables(store)
        _apply_mask_to_variable(self)
        with _mask_hidden(self):
            super().save_own_variables(store)

    def load_own_variables(self, store):
        if self.__dict__.get("_kbm_mask") is None:
            return super().load_own_variables(store)
        with _mask_hidden(self):
            super().load_own_variables(store)
        variable = self._kbm_variable()
        self._kbm_mask.assign(
            tf.cast(tf.not_equal(variable, 0), self._kbm_mask.dtype)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "pruning_schedule": schedules_lib.serialize(self._kbm_schedule),
            "block": _as_list(self._kbm_block),
            "sparsity_m_by_n": _as_list(self._kbm_m_by_n),
        }


def _weight_property(name):
    def getter(self):
        return self._kbm_masked()

    def setter(self, value):
        # tf-keras assigns the variable in build(); keep it in __dict__.
        base = getattr(self._kbm_base, name, None)
        if isinstance(base, property) and base.fset is not None:
            base.fset(self, value)
        else:
            self.__dict__[name] = value

    return property(getter, setter)


_PRUNED_DOC = """A pruned `{base}`: its `{weight}` is read as `{weight} * mask`.

    Made in place by `kbm.pruning.prune_low_magnitude` (which changes the
    class of an existing `{base}`), or by Keras when it loads a model
    saved with one. It has the plain layer's arguments and variables plus
    a non-trainable `{weight}_mask` of the same shape (all ones until the
    first update), saves exactly the plain layer's variables (the
    `{weight}` multiplied by the mask; the mask is rebuilt from its zeros
    on loading) and turns back into a `{base}` with
    `kbm.pruning.strip_pruning`.

    Args:
        pruning_schedule: A `kbm.pruning` schedule or its serialized form.
        block: `(rows, cols)` blocks, or `None`. Defaults to `None`.
        sparsity_m_by_n: `(m, n)`, or `None`. Defaults to `None`.
        *args, **kwargs: The arguments of `{base}`.
    """


def _make_pruned(base, weight="kernel"):
    # The class keeps the plain class's __name__: Keras names the entries
    # of a model's weights file after it (layers/dense, layers/dense_1...),
    # so a pruned model's file also loads into the plain model. It is
    # registered under its own name, "keras_bigmodels>Pruned<Base>".
    cls = type(
        base.__name__,
        (_PrunedMixin, base),
        {
            "_kbm_base": base,
            "_kbm_weight": weight,
            weight: _weight_property(weight),
            "__module__": __name__,
            "__doc__": _PRUNED_DOC.format(base=base.__name__, weight=weight),
        },
    )
    cls.__qualname__ = "Pruned" + base.__name__
    return keras.saving.register_keras_serializable(
        package="keras_bigmodels", name="Pruned" + base.__name__
    )(cls)


PrunedDense = _make_pruned(keras.layers.Dense)
PrunedFusedDense = _make_pruned(FusedDense)
PrunedEinsumDense = _make_pruned(keras.layers.EinsumDense)
PrunedConv2D = _make_pruned(keras.layers.Conv2D)
PrunedEmbedding = _make_pruned(keras.layers.Embedding, weight="embeddings")

# Exact plain class -> pruned class (subclasses of these are not matched:
# their call may read the weight in ways the mask does not cover).
_PRUNED = {
    keras.layers.Dense: PrunedDense,
    FusedDense: PrunedFusedDense,
    keras.layers.EinsumDense: PrunedEinsumDense,
    keras.layers.Conv2D: PrunedConv2D,
    keras.layers.Embedding: PrunedEmbedding,
}
_PRUNED_CLASSES = tuple(_PRUNED.values())


def _set_pruning_attrs(layer, schedule, block, m_by_n):
    layer._kbm_schedule = schedule
    # Tuples (Keras wraps lists set as layer attributes for tracking).
    layer._kbm_block, layer._kbm_m_by_n = _check_pattern_args(block, m_by_n)
    layer._kbm_step = None  # Set by update_pruning_masks.
    layer._kbm_last_step = None  # Last step whose update was applied.


def _add_mask(layer):
    if layer.__dict__.get("_kbm_mask") is not None:
        return
    variable = layer._kbm_variable()
    _check_pattern(layer, variable.shape, layer._kbm_m_by_n, layer.name)
    tracker = getattr(layer, "_tracker", None)
    locked = bool(getattr(tracker, "locked", False))
    if locked:
        tracker.unlock()
    try:
        layer._kbm_mask = layer.add_weight(
            name=f"{layer._kbm_weight}_mask",
            shape=tuple(variable.shape),
            initializer="ones",
            dtype=variable.dtype,
            trainable=False,
        )
    finally:
        if locked:
            tracker.lock()


class _mask_hidden:
    """Takes the mask out of the layer's variable lists for a while, so
    the plain layer's save/load code sees only its own variables."""

    _LISTS = ("_non_trainable_variables", "_non_trainable_weights")

    def __init__(self, layer):
        self.layer = layer
        self.removed = []

    def __enter__(self):
        mask = self.layer._kbm_mask
        for name in self._LISTS:
            lst = self.layer.__dict__.get(name)
            if lst is None:
                continue
            for i, v in enumerate(lst):
                if v is mask:
                    del lst[i]
                    self.removed.append((lst, i))
                    break

    def __exit__(self, *exc):
        mask = self.layer._kbm_mask
        for lst, i in self.removed:
            lst.insert(i, mask)


def _reduction_axes(layer, ndim):
    """Kernel axes summed over in the layer's product (K of a GEMM)."""
    if isinstance(layer, keras.layers.EinsumDense):
        equation = layer.equation.replace(" ", "")
        lhs, out = equation.split("->")
        inp, ker = lhs.split(",")
        axes = tuple(i for i, c in enumerate(ker) if c in inp and c not in out)
        return axes or (0,)
    if isinstance(layer, keras.layers.Conv2D):
        return tuple(range(ndim - 1))  # (kh, kw, in), either data format
    if isinstance(layer, keras.layers.Embedding):
        return (ndim - 1,)  # Along the embedding width.
    return tuple(range(ndim - 1))  # Dense: (in,)


def _check_pattern(layer, shape, m_by_n, name):
    """Raises unless the input dimension is a multiple of n."""
    if m_by_n is None:
        return
    axes = _reduction_axes(layer, len(shape))
    inner = int(shape[axes[-1]])
    if inner % m_by_n[1]:
        raise ValueError(
            f"sparsity_m_by_n={tuple(m_by_n)} needs the input dimension of "
            f"layer {name!r} (kernel axis {axes[-1]} of shape "
            f"{tuple(shape)}) to be a multiple of {m_by_n[1]}. "
            f"Received: {inner}"
        )


def _apply_mask_to_variable(layer):
    variable = layer._kbm_variable()
    variable.assign(
        tf.convert_to_tensor(variable)
        * tf.cast(layer._kbm_mask, variable.dtype)
    )


def _update_mask(layer, sparsity):
    """Recomputes the layer's mask at `sparsity` from |kernel * mask|."""
    variable = layer._kbm_variable()
    mask_var = layer._kbm_mask
    current = np.asarray(tf.convert_to_tensor(variable)) * np.asarray(
        tf.convert_to_tensor(mask_var)
    )
    mask = compute_mask(
        current,
        sparsity,
        block=layer._kbm_block,
        sparsity_m_by_n=layer._kbm_m_by_n,
        reduction_axes=_reduction_axes(layer, current.ndim),
    )
    mask_var.assign(tf.cast(mask, mask_var.dtype))
    _apply_mask_to_variable(layer)


def _as_list(pair):
    return None if pair is None else [int(v) for v in pair]


# --------------------------------------------------------------------------
# Walking a model.


def _children(layer):
    return layer._flatten_layers(include_self=False, recursive=False)


def _walk(root):
    """(path, layer) for every layer under `root` (root excluded when it
    is a model or has sublayers), each layer once."""
    seen = set()
    out = []

    def visit(layer, path):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        out.append((path, layer))
        for child in _children(layer):
            visit(child, f"{path}/{child.name}" if path else child.name)

    if isinstance(root, keras.layers.Layer) and not list(_children(root)):
        return [(root.name, root)]
    seen.add(id(root))
    for child in _children(root):
        visit(child, child.name)
    return out


def _pruned_layers(model):
    return [
        (p, lay) for p, lay in _walk(model) if isinstance(lay, _PRUNED_CLASSES)
    ]


def _reset_functions(model):
    for name in ("train_function", "test_function", "predict_function"):
        if hasattr(model, name):
            try:
                setattr(model, name, None)
            except AttributeError:
                pass


def _matcher(targets):
    if targets is None:
        return lambda path, layer: True
    if callable(targets) and not isinstance(targets, str):
        return lambda path, layer: bool(targets(layer))
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, (list, tuple)) or not all(
        isinstance(t, str) for t in targets
    ):
        raise ValueError(
            "targets must be None, a layer name or regular expression, a "
            "list of them, or a callable taking a layer. "
            f"Received: targets={targets!r}"
        )
    patterns = [re.compile(t) for t in targets]

    def match(path, layer):
        return any(
            layer.name == t or p.fullmatch(path) or p.fullmatch(layer.name)
            for t, p in zip(targets, patterns)
        )

    return match


def _check_pair(name, value, positive_second=True):
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            for v in value
        )
        or not all(v >= 1 for v in value)
    ):
        raise ValueError(
            f"{name} must be a pair of positive integers. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in value)


def _check_pattern_args(block, m_by_n):
    block = _check_pair("block", block)
    m_by_n = _check_pair("sparsity_m_by_n", m_by_n)
    if block is not None and m_by_n is not None:
        raise ValueError(
            "Pass block or sparsity_m_by_n, not both. Received: "
            f"block={block}, sparsity_m_by_n={m_by_n}"
        )
    if m_by_n is not None and not m_by_n[0] < m_by_n[1]:
        raise ValueError(
            "sparsity_m_by_n=(m, n) needs m < n. "
            f"Received: sparsity_m_by_n={m_by_n}"
        )
    return block, m_by_n


# --------------------------------------------------------------------------
# Public API.


def prune_low_magnitude(
    model_or_layer, schedule, *, targets=None, block=None, sparsity_m_by_n=None
):
    """Adds magnitude-pruning masks to the kernels of a model, in place.

    Each targeted layer (exactly `keras.layers.Dense`, `kbm.layers.
    FusedDense`, `keras.layers.EinsumDense`, `keras.layers.Conv2D` or
    `keras.layers.Embedding`, found at any depth: inside attention layers,
    transformer blocks, subclassed models) becomes its pruned twin
    (`PrunedDense`, ...): the same object, same weights and names, plus a
    non-trainable `<kernel>_mask` variable (all ones at first). Its call
    reads the kernel as `kernel * mask`. Train with the `UpdatePruningStep`
    callback: it recomputes the masks at the schedule's steps, keeping the
    largest |weights|, and keeps the masked kernel entries at zero.
    Training a pruned model without it raises a `RuntimeError`.

    The masks shrink nothing and speed nothing: the kernels stay dense and
    run on the dense kernels, on CPU and GPU; kbm provides no sparse
    storage or sparse kernels. 2:4 masks pay only on GPUs with sparse
    tensor cores, in a runtime that uses them (not TensorFlow).

    Args:
        model_or_layer: A built Keras model or layer. It is modified in
            place (clone it first to keep the dense one). Under a
            `tf.distribute` strategy, call this inside `strategy.scope()`
            (the masks are variables).
        schedule: A `kbm.pruning.PolynomialDecay` or `ConstantSparsity`.
        targets: Which layers: `None` (every supported layer), a layer
            name or regular expression matched (`re.fullmatch`) against
            layer names and paths such as
            `"transformer_layer_0/self_attention/query"`, a list of those,
            or a callable `layer -> bool`. Defaults to `None`.
        block: `(rows, cols)`: prune whole blocks of the kernel, viewed
            as a [input, output] matrix, ranked by mean |weight|. Defaults
            to `None` (single weights).
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)`: keep the m largest of
            every n consecutive weights along the input (reduction)
            dimension; the schedule then only says when (its sparsity
            values are not used). The input dimension must be a multiple
            of n. For `Conv2D` the groups run along the input channels,
            for `Embedding` along the embedding width. Defaults to `None`.

    Returns:
        `model_or_layer`, pruned.

    Raises:
        ValueError: a bad schedule, block or pattern, an unbuilt model,
            targets that match no supported layer, or both `block` and
            `sparsity_m_by_n`.

    Example:

    ```python
    schedule = kbm.pruning.PolynomialDecay(0.0, 0.8, 0, 1000, frequency=50)
    kbm.pruning.prune_low_magnitude(model, schedule)
    model.compile("adam", "mse")
    model.fit(x, y, epochs=5, callbacks=[kbm.pruning.UpdatePruningStep()])
    kbm.pruning.strip_pruning(model)
    ```
    """
    if not isinstance(schedule, schedules_lib.PruningSchedule):
        raise ValueError(
            "schedule must be a kbm.pruning.PolynomialDecay or "
            f"ConstantSparsity. Received: schedule={schedule!r}"
        )
    block, sparsity_m_by_n = _check_pattern_args(block, sparsity_m_by_n)
    if not isinstance(model_or_layer, keras.layers.Layer):
        raise ValueError(
            "model_or_layer must be a Keras model or layer. "
            f"Received: {type(model_or_layer).__name__}"
        )
    if not model_or_layer.built:
        raise ValueError(
            f"{model_or_layer.name!r} is not built: build it (call it on "
            "data, or give the model an Input) before pruning it."
        )
    match = _matcher(targets)
    chosen = []
    for path, layer in _walk(model_or_layer):
        if isinstance(layer, _PRUNED_CLASSES):
            if targets is not None and match(path, layer):
                raise ValueError(
                    f"Layer {path!r} is already pruned. Strip it first."
                )
            continue
        if type(layer) in _PRUNED and match(path, layer):
            chosen.append((path, layer))
    if not chosen:
        raise ValueError(
            "targets match no prunable layer (Dense, kbm FusedDense, "
            "EinsumDense, Conv2D, Embedding) in "
            f"{model_or_layer.name!r}. Received: targets={targets!r}"
        )
    for path, layer in chosen:
        if getattr(layer, "quantization_mode", None) or getattr(
            layer, "lora_enabled", False
        ):
            raise ValueError(
                f"Layer {path!r} is quantized or has LoRA enabled; prune "
                "the plain layer first."
            )
        if not layer.built:
            raise ValueError(f"Layer {path!r} is not built.")
        # Check every layer before changing any.
        _check_pattern(layer, _variable_of(layer).shape, sparsity_m_by_n, path)
    for _, layer in chosen:
        layer.__class__ = _PRUNED[type(layer)]
        _set_pruning_attrs(layer, schedule, block, sparsity_m_by_n)
        _add_mask(layer)
    _reset_functions(model_or_layer)
    return model_or_layer


def _variable_of(layer):
    weight = (
        "embeddings"
        if isinstance(layer, keras.layers.Embedding)
        else ("kernel")
    )
    if IS_LEGACY_KERAS:
        return layer.__dict__[weight]
    return getattr(layer, "_" + weight)


def update_pruning_masks(model, step):
    """Sets the pruning step and recomputes the masks due at it.

    What `UpdatePruningStep` does before each batch; call it in a custom
    training loop (before the training step, with the optimizer's
    iteration count). Every step since the last call is considered, so a
    mask update falling between two calls is applied at the second.

    Args:
        model: A model (or layer) pruned by `prune_low_magnitude`.
        step: The training step, an integer >= 0.

    Returns:
        The number of layers whose masks were recomputed.
    """
    step = int(step)
    updated = 0
    for _, layer in _pruned_layers(model):
        layer._kbm_step = step
        schedule = layer._kbm_schedule
        last = layer._kbm_last_step
        first = step if last is None else last + 1
        due = [s for s in range(first, step + 1) if schedule.should_prune(s)]
        layer._kbm_last_step = step if last is None else max(last, step)
        if due:
            _update_mask(layer, schedule.sparsity_at(due[-1]))
            updated += 1
    return updated


def _apply_masks(model):
    for _, layer in _pruned_layers(model):
        _apply_mask_to_variable(layer)


@register_serializable
class UpdatePruningStep(keras.callbacks.Callback):
    """Keras callback that drives `prune_low_magnitude`'s schedules.

    Before each batch it reads the optimizer's iteration count and
    recomputes every mask the schedule asks for (by magnitude, from the
    already-masked kernel, so a pruned weight does not grow back); after
    each batch and epoch it sets the masked kernel entries back to zero
    (optimizers with momentum or weight decay would move them, though no
    gradient reaches them). Required when fitting a pruned model.

    Example:

    ```python
    model.fit(x, y, callbacks=[kbm.pruning.UpdatePruningStep()])
    ```
    """

    def __init__(self):
        super().__init__()

    def _step(self):
        iterations = getattr(self.model.optimizer, "iterations", None)
        return 0 if iterations is None else int(iterations.numpy())

    def on_train_begin(self, logs=None):
        if not _pruned_layers(self.model):
            raise ValueError(
                "UpdatePruningStep: the model has no pruned layers "
                "(call kbm.pruning.prune_low_magnitude first)."
            )
        update_pruning_masks(self.model, self._step())

    def on_train_batch_begin(self, batch, logs=None):
        update_pruning_masks(self.model, self._step())

    def on_train_batch_end(self, batch, logs=None):
        _apply_masks(self.model)

    def on_epoch_end(self, epoch, logs=None):
        update_pruning_masks(self.model, self._step())

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        # Keras callbacks have no `from_config`; this one takes no
        # arguments, so any key is an error.
        if not isinstance(config, dict) or config:
            raise ValueError(
                "UpdatePruningStep takes no arguments; its config must be "
                f"an empty dict. Received: config={config!r}"
            )
        return cls()


def strip_pruning(model_or_layer):
    """Removes the masks: plain layers whose kernels hold the zeros.

    Each pruned layer's kernel variable becomes `kernel * mask`, its mask
    variable is deleted and it turns back into its plain class (`Dense`,
    `FusedDense`, ...), in place. The model then gives the same outputs as
    before, has exactly the variables of the unpruned model, and saves and
    exports as one. The zeros stay dense: nothing gets smaller or faster.

    Args:
        model_or_layer: A model or layer, pruned or not.

    Returns:
        `model_or_layer`, stripped.
    """
    for _, layer in _pruned_layers(model_or_layer):
        base = layer._kbm_base
        if layer.__dict__.get("_kbm_mask") is not None:
            _apply_mask_to_variable(layer)
            mask = layer._kbm_mask
            if IS_LEGACY_KERAS:
                for name in ("_non_trainable_weights", "_trainable_weights"):
                    lst = layer.__dict__.get(name)
                    if lst is not None:
                        for i, v in enumerate(lst):
                            if v is mask:
                                del lst[i]
                                break
                object.__delattr__(layer, "_kbm_mask")
            else:
                del layer._kbm_mask  # Keras 3 untracks the variable.
        layer.__class__ = base
        for name in (
            "_kbm_schedule",
            "_kbm_block",
            "_kbm_m_by_n",
            "_kbm_step",
            "_kbm_last_step",
        ):
            layer.__dict__.pop(name, None)
    _reset_functions(model_or_layer)
    return model_or_layer


def get_sparsity(model_or_layer):
    """The fraction of zeros in each prunable layer's effective kernel.

    Args:
        model_or_layer: A model or layer, pruned, stripped or plain.

    Returns:
        A dict `{layer path: sparsity}` (a float in [0, 1]) for every
        `Dense`, `FusedDense`, `EinsumDense`, `Conv2D` and `Embedding`
        (pruned or not), in model order. For pruned layers the kernel is
        read as `kernel * mask`.
    """
    report = {}
    for path, layer in _walk(model_or_layer):
        if not (isinstance(layer, _PRUNED_CLASSES) or type(layer) in _PRUNED):
            continue
        if not layer.built:
            continue
        if isinstance(layer, _PRUNED_CLASSES):
            weights = layer._kbm_masked()
        else:
            weights = _variable_of(layer)
        values = np.asarray(tf.convert_to_tensor(weights))
        report[path] = float(np.mean(values == 0)) if values.size else 0.0
    return report
