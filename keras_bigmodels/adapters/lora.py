"""LoRA and DoRA adapters on a Keras model's Dense, EinsumDense, Embedding."""

import math
import numbers
import re

import numpy as np

from keras_bigmodels.adapters._quantized import is_fake_quantized
from keras_bigmodels.adapters._state import LayerAdapters, get_state
from keras_bigmodels.adapters._targets import select, walk
from keras_bigmodels.backend import IS_LEGACY_KERAS

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def enable_lora(
    model,
    rank,
    alpha=None,
    targets=None,
    name="default",
    dropout=0.0,
    train_also="head",
):
    """Adds a LoRA adapter to the layers of `model` that `targets` picks.

    Each picked layer's weight `W`, seen as a matrix `[fan_in, fan_out]`,
    becomes `W + (alpha / rank) * A @ B` with `A` `[fan_in, rank]` and `B`
    `[rank, fan_out]`. `B` starts at zero (`A` for an `Embedding`), so the
    model's outputs are unchanged until training. Supported layers:
    `kbm.layers.FusedDense`, Keras `Dense`, `EinsumDense` (also inside
    Keras's and kbm's attention layers, whose query/key/value/output
    projections are EinsumDense sublayers) and `Embedding`; an
    EinsumDense kernel is viewed as (its axes contracted with the input) by
    (its other axes), so the query kernel `[dim, heads, head_dim]` of an
    attention layer gets `A` `[dim, rank]` and `B` `[rank, heads *
    head_dim]`. With `r` the rank, a layer gains `r * (fan_in + fan_out)`
    parameters.

    Layers quantized by `kbm.quantization.quantize` (int8 or int4) take
    adapters too (QLoRA): the frozen integer base runs through its
    quantized op and the adapter adds `(x @ A) @ B * alpha / rank` in
    float32; the op's straight-through input gradient lets adapters in
    earlier layers train. `merge` then requantizes (and reports the
    error).

    Afterwards only the new adapter (and the `train_also` layers) is
    trainable: every other variable of `model` (the picked layers' kernels
    and biases included) is frozen. Call it before `compile`. The model
    saves to `.keras` with the active adapter merged into the weights
    (what it computes; as Keras's own LoRA does), so the file loads
    anywhere as a plain model; keep the adapter itself with
    `save_adapters`, or the unmerged model with `kbm.adapters.save_model`.

    Args:
        model: A built Keras model (or layer).
        rank: The rank `r`, a positive integer.
        alpha: The scaling numerator, a positive number; the update is
            scaled by `alpha / rank`. Defaults to `None` (`rank`: scale 1).
        targets: Which layers: `None` for the attention query and value
            projections (layers named `query`, `value`, `query_dense` or
            `value_dense`, as in the LoRA paper), a list of regular
            expressions searched in each layer's path (names joined by
            "/", e.g. `"transformer_layer_0/self_attention/query"`; a plain
            name matches as a substring), or a predicate `fn(path, layer)`.
            Every pattern must match a supported layer. Defaults to `None`.
        name: The adapter's name; a layer holds several adapters, one of
            them active (`set_active`). Defaults to `"default"`.
        dropout: Dropout rate on the adapter's input while training (not on
            `Embedding` ids). Defaults to `0.0`.
        train_also: Layers kept trainable besides the adapter: `"head"`
            (the weighted top-level layers after the last one holding an
            adapter, e.g. a classifier on top of an encoder), a list of
            layer-path patterns, or `None` (nothing else). Defaults to
            `"head"`.

    Returns:
        The list of adapted layer paths.

    Example:

    ```python
    kbm.adapters.enable_lora(classifier, rank=8)   # query and value
    classifier.compile(kbm.optimizers.AdamW(1e-3), loss=...)
    classifier.fit(...)
    kbm.adapters.save_adapters(classifier, "sst2.safetensors")
    kbm.adapters.merge(classifier)                 # zero extra ops
    ```

    Reference:
    - [Hu et al., 2021](https://arxiv.org/abs/2106.09685)
    """
    return _enable(
        model, "lora", rank, alpha, targets, name, dropout, train_also
    )


def enable_dora(
    model,
    rank,
    alpha=None,
    targets=None,
    name="default",
    dropout=0.0,
    train_also="head",
):
    """Adds a DoRA adapter (weight-decomposed LoRA) to `model`'s layers.

    The weight becomes `m * V / ||V||_c` with `V = W + (alpha / rank) * A @
    B` (a LoRA update of the direction) and `||.||_c` the norm of each
    output column of the `[fan_in, fan_out]` matrix; `m` `[fan_out]` is a
    trainable magnitude initialised to the column norms of `W`, so the
    outputs are unchanged at initialisation. For an `Embedding` the norm
    and magnitude are per row (per token), as in HuggingFace PEFT. A layer
    gains `r * (fan_in + fan_out) + fan_out` parameters (`+ vocabulary`
    for an Embedding). The gradient flows through the norm (the paper's
    implementation detaches it to save memory). Arguments, freezing,
    saving and merging are those of `enable_lora`; `merge` folds `m` in.

    Args:
        model: A built Keras model (or layer).
        rank: The rank, a positive integer.
        alpha: The scaling numerator. Defaults to `None` (`rank`).
        targets: As in `enable_lora`. Defaults to `None`.
        name: The adapter's name. Defaults to `"default"`.
        dropout: Dropout rate on the adapter's input while training.
            Defaults to `0.0`.
        train_also: As in `enable_lora`. Defaults to `"head"`.

    Returns:
        The list of adapted layer paths.

    Example:

    ```python
    kbm.adapters.enable_dora(classifier, rank=4)
    ```

    Reference:
    - [Liu et al., 2024](https://arxiv.org/abs/2402.09353)
    """
    return _enable(
        model, "dora", rank, alpha, targets, name, dropout, train_also
    )


def _check_args(rank, alpha, name, dropout):
    if (
        isinstance(rank, bool)
        or not isinstance(rank, numbers.Integral)
        or rank <= 0
    ):
        raise ValueError(
            f"rank must be a positive integer. Received: rank={rank!r}"
        )
    if alpha is not None and (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(
            "alpha must be None or a positive finite number. "
            f"Received: alpha={alpha!r}"
        )
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "name must be a non-empty string of letters, digits, '_', '.' "
            f"or '-'. Received: name={name!r}"
        )
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0 <= dropout < 1
    ):
        raise ValueError(
            f"dropout must be a number in [0, 1). Received: dropout={dropout!r}"
        )


def _enable(model, kind, rank, alpha, targets, name, dropout, train_also):
    _check_args(rank, alpha, name, dropout)
    alpha = float(rank if alpha is None else alpha)
    if _merged_states(model):
        raise ValueError(
            "The model has a merged adapter; call "
            "kbm.adapters.unmerge(model) before adding another."
        )
    chosen = select(model, targets)
    for path, layer in chosen:
        _check_layer(path, layer, name)
    head = _train_also_layers(model, chosen, train_also)
    for path, layer in chosen:
        state = get_state(layer) or LayerAdapters(layer, path)
        state.add(name, kind, int(rank), alpha, float(dropout))
    _activate(model, name)
    _freeze(model, head)
    return [path for path, _ in chosen]


def _check_layer(path, layer, name):
    if not layer.built:
        raise ValueError(
            f"Layer {path!r} is not built: build or call the model before "
            "adding adapters."
        )
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"Layer {path!r} is quantized by Keras's own `quantize` "
            f"({layer.quantization_mode!r}); adapters support layers "
            "quantized by kbm.quantization.quantize."
        )
    if is_fake_quantized(layer):
        raise ValueError(
            f"Layer {path!r} is fake-quantized for quantization-aware "
            "training; convert it (kbm.quantization.convert) before adding "
            "adapters."
        )
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer {path!r} has Keras's own LoRA enabled; use one or the "
            "other."
        )
    state = get_state(layer)
    if state is not None and name in state.adapters:
        raise ValueError(
            f"Layer {path!r} already has an adapter named {name!r}; pick "
            f"another name. Received: name={name!r}"
        )


def _states(model):
    """The adapter states of every adapted layer under `model`."""
    out = [s for _, layer in walk(model) if (s := get_state(layer))]
    own = get_state(model)
    return ([own] if own else []) + out


def _merged_states(model):
    return [s for s in _states(model) if s.merged is not None]


def adapter_names(model):
    """The names of the adapters in `model`, in the order they were added.

    Args:
        model: A Keras model.

    Returns:
        A list of names.
    """
    names = []
    for state in _states(model):
        for n in state.adapters:
            if n not in names:
                names.append(n)
    return names


def active_adapter(model):
    """The name of the active adapter of `model`, or None."""
    for state in _states(model):
        if state.active is not None:
            return state.active
    return None


def set_active(model, name):
    """Makes adapter `name` the one every adapted layer runs and trains.

    Layers without an adapter of that name run their base weights. Only
    the active adapter's variables are trainable; the others are frozen
    (kept, not lost).

    Args:
        model: A model with adapters.
        name: An adapter name, or None to run the base model only.

    Raises:
        ValueError: `name` is unknown, or an adapter is merged.
    """
    names = adapter_names(model)
    if name is not None and name not in names:
        raise ValueError(
            f"The model has no adapter named {name!r}. Adapters: {names}. "
            f"Received: name={name!r}"
        )
    if _merged_states(model):
        raise ValueError(
            "The model has a merged adapter; call kbm.adapters.unmerge("
            "model) before switching."
        )
    _activate(model, name)


def _activate(model, name):
    for state in _states(model):
        state.active = name if name in state.adapters else None
        for adapter_name, adapter in state.adapters.items():
            for var in adapter.variables:
                _set_trainable(state.layer, var, adapter_name == name)
    _reset_compiled(model)


def merge(model, name=None, data=None):
    """Folds an adapter into the base weights, leaving no extra op.

    Each adapted layer's kernel (embedding table) is replaced by the
    effective weight and the layer runs its class's own `call` again, so
    the merged model computes exactly the adapted one (to float rounding)
    as fast as the base model, and saves and exports as a plain model.
    The base weights are kept in host memory for `unmerge`.

    A quantized layer (`kbm.quantization`) is dequantized, the update
    added, and the sum requantized with the layer's mode and group size
    into new integer weights and scales. That rounding is not exact: the
    returned report gives, per such layer, `max_weight_error` (the largest
    `|W_merged - dequantize(requantized)|`) and `rounding_bound` (half the
    largest new scale, which that error never exceeds); with `data`, it
    also runs the model on `data` before and after merging and gives
    `max_output_error`, the largest absolute difference of the outputs
    (what merging changes on that batch).

    Args:
        model: A model with adapters.
        name: The adapter to merge. Defaults to `None` (the active one).
        data: Optional inputs (one batch) to measure the outputs'
            change on. Defaults to `None`.

    Returns:
        A dict: `"layers"`, `{path: {"mode", "group_size",
        "max_weight_error", "rounding_bound", "max_abs_weight"}}` for the
        quantized layers (empty for a float model); `"max_weight_error"`,
        the largest over them (0.0 if none); with `data`,
        `"max_output_error"` and `"max_abs_output"` (the largest absolute
        unmerged output, for scale).

    Raises:
        ValueError: No such adapter, nothing active, or already merged.

    Example:

    ```python
    kbm.quantization.quantize(model, "int4_weight_only")
    kbm.adapters.enable_lora(model, rank=8)
    model.fit(...)
    report = kbm.adapters.merge(model, data=x_batch)
    report["max_output_error"]          # logits moved by requantizing
    ```
    """
    names = adapter_names(model)
    if _merged_states(model):
        raise ValueError(
            "The model already has a merged adapter; call "
            "kbm.adapters.unmerge(model) first."
        )
    if name is None:
        name = active_adapter(model)
        if name is None:
            raise ValueError(
                "No adapter is active: pass name= or call set_active. "
                f"Adapters: {names}. Received: name=None"
            )
    elif name not in names:
        raise ValueError(
            f"The model has no adapter named {name!r}. Adapters: {names}. "
            f"Received: name={name!r}"
        )
    _activate(model, name)
    before = None if data is None else _outputs(model, data)
    layers = {}
    for state in _states(model):
        if name in state.adapters:
            report = state.merge(name)
            if report is not None:
                layers[state.path] = report
    _reset_compiled(model)
    errors = [r["max_weight_error"] for r in layers.values()]
    out = {"layers": layers, "max_weight_error": max(errors, default=0.0)}
    if data is not None:
        after = _outputs(model, data)
        out["max_output_error"] = max(
            (float(np.max(np.abs(a - b), initial=0.0)))
            for a, b in zip(after, before)
        )
        out["max_abs_output"] = max(
            float(np.max(np.abs(b), initial=0.0)) for b in before
        )
    return out


def requantization_error(model, data=None, name=None):
    """What merging would cost on a quantized model, leaving it unmerged.

    Runs `merge(model, name, data)` then `unmerge(model)` (which restores
    the integer weights bit for bit) and returns the merge report.

    Args:
        model: A model with adapters, not merged.
        data: Optional inputs (one batch) to compare outputs on. Defaults
            to `None`.
        name: The adapter. Defaults to `None` (the active one).

    Returns:
        The report of `merge`.
    """
    report = merge(model, name=name, data=data)
    unmerge(model)
    return report


def _outputs(model, data):
    import tensorflow as tf

    result = model(data, training=False)
    return [
        np.asarray(tf.convert_to_tensor(t), dtype="float64")
        for t in tf.nest.flatten(result)
    ]


def unmerge(model):
    """Restores the base weights that `merge` replaced (bit for bit).

    The merged adapter becomes active (unmerged) again.

    Raises:
        ValueError: Nothing is merged.
    """
    merged = _merged_states(model)
    if not merged:
        raise ValueError("The model has no merged adapter to unmerge.")
    for state in merged:
        state.unmerge()
    _reset_compiled(model)


def _reset_compiled(model):
    """Drops traced train/test/predict functions (they hold the old call)."""
    for attr in (
        "train_function",
        "test_function",
        "predict_function",
        "train_tf_function",
    ):
        if getattr(model, attr, None) is not None:
            try:
                setattr(model, attr, None)
            except AttributeError:
                pass


# -- trainability ---------------------------------------------------------


def _own_variables(layer):
    if IS_LEGACY_KERAS:
        return list(layer._trainable_weights) + list(
            layer._non_trainable_weights
        )
    return list(layer._trainable_variables) + list(
        layer._non_trainable_variables
    )


def _set_trainable(layer, var, trainable):
    """Marks one own variable of `layer` trainable or frozen."""
    if not IS_LEGACY_KERAS:
        var.trainable = trainable
        return
    # tf-keras: a variable's `trainable` is fixed; the layer's lists decide.
    src, dst = (
        (layer._non_trainable_weights, layer._trainable_weights)
        if trainable
        else (layer._trainable_weights, layer._non_trainable_weights)
    )
    for i, v in enumerate(src):
        if v is var:
            del src[i]
            dst.append(var)
            return


def _layer_variables(layer):
    """Every variable of `layer` and its sublayers, by owner."""
    out = [(layer, v) for v in _own_variables(layer)]
    for _, sub in walk(layer):
        out.extend((sub, v) for v in _own_variables(sub))
    return out


def _freeze(model, keep_layers):
    adapter_ids = set()
    for state in _states(model):
        for adapter in state.adapters.values():
            adapter_ids.update(id(v) for v in adapter.variables)
    keep_ids = set()
    for layer in keep_layers:
        keep_ids.update(id(v) for _, v in _layer_variables(layer))
    for owner, var in _layer_variables(model):
        if id(var) in adapter_ids:
            continue  # `_activate` decides.
        _set_trainable(owner, var, id(var) in keep_ids)
    # A container frozen with `trainable = False` hides its sublayers'
    # weights: set the flag (only, not the variables) on the way down to
    # every adapter and kept layer.
    wanted = {id(s.layer) for s in _states(model)}
    wanted |= {id(layer) for layer in keep_layers}

    def open_path(layer):
        found = id(layer) in wanted
        for child in layer._flatten_layers(include_self=False, recursive=False):
            found = open_path(child) or found
        if found and not layer.trainable:
            layer._trainable = True
        return found

    open_path(model)
    _reset_compiled(model)


def _train_also_layers(model, chosen, train_also):
    if train_also is None or (
        isinstance(train_also, (list, tuple)) and not train_also
    ):
        return []
    if train_also == "head":
        adapted = {id(layer) for _, layer in chosen} | {
            id(s.layer) for s in _states(model)
        }
        children = list(
            model._flatten_layers(include_self=False, recursive=False)
        )
        last = -1
        for i, child in enumerate(children):
            inner = {id(child)} | {id(sub) for _, sub in walk(child)}
            if inner & adapted:
                last = i
        return [c for c in children[last + 1 :] if c.weights]
    patterns = [train_also] if isinstance(train_also, str) else train_also
    if not isinstance(patterns, (list, tuple)) or not all(
        isinstance(p, str) and p for p in patterns
    ):
        raise ValueError(
            'train_also must be "head", None or a list of layer-path '
            f"patterns. Received: train_also={train_also!r}"
        )
    layers = walk(model)
    out = []
    for pattern in patterns:
        hits = [lay for p, lay in layers if re.search(pattern, p)]
        if not hits:
            raise ValueError(
                f"train_also pattern {pattern!r} matches no layer. "
                f"Received: train_also={train_also!r}"
            )
        out.extend(hits)
    return out


def trainable_fraction(model):
    """(trainable parameters, all parameters) of `model`."""

    def count(variables):
        seen, total = set(), 0
        for v in variables:
            if id(v) not in seen:
                seen.add(id(v))
                total += int(np.prod(v.shape))
        return total

    return count(model.trainable_weights), count(model.weights)
