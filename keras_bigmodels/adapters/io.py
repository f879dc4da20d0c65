"""Saving and loading adapter weights alone (a small safetensors file)."""

import json
import os
import tempfile
import zipfile

import numpy as np

from keras_bigmodels.adapters import lora
from keras_bigmodels.adapters._state import LayerAdapters, get_state
from keras_bigmodels.adapters._targets import walk

FORMAT = "kbm-adapters"
_PARTS = ("lora_a", "lora_b", "dora_magnitude")


def save_adapters(model, path, name=None):
    """Writes one adapter's weights (only those) to a safetensors file.

    The file holds, per adapted layer `<path>`, the tensors
    `<path>/lora_a`, `<path>/lora_b` (and `<path>/dora_magnitude`) in
    float32, and in its `__metadata__` the adapter's name, kind, rank,
    alpha and dropout per layer: no pickle, readable by any safetensors
    reader. It is `r * (fan_in + fan_out)` floats per layer, not the model.

    Args:
        model: A model with adapters.
        path: The file to write (conventionally `*.safetensors`).
        name: The adapter to save. Defaults to `None` (the active one).

    Raises:
        ValueError: No such adapter, or none active.
    """
    names = lora.adapter_names(model)
    if name is None:
        name = lora.active_adapter(model)
        if name is None:
            raise ValueError(
                "No adapter is active: pass name=. "
                f"Adapters: {names}. Received: name=None"
            )
    if name not in names:
        raise ValueError(
            f"The model has no adapter named {name!r}. Adapters: {names}. "
            f"Received: name={name!r}"
        )
    tensors, layers = {}, {}
    for layer_path, layer in walk(model):
        state = get_state(layer)
        if state is None or name not in state.adapters:
            continue
        adapter = state.adapters[name]
        layers[layer_path] = {
            "kind": adapter.kind,
            "rank": adapter.rank,
            "alpha": adapter.alpha,
            "dropout": adapter.dropout,
        }
        for part, var in zip(_PARTS, adapter.variables):
            tensors[f"{layer_path}/{part}"] = np.asarray(
                var.numpy(), dtype="<f4"
            )
    metadata = {
        "format": FORMAT,
        "version": "1",
        "name": name,
        "layers": json.dumps(layers, sort_keys=True),
    }
    _write_safetensors(path, tensors, metadata)


def load_adapters(model, path, name=None):
    """Loads an adapter written by `save_adapters` into `model`.

    Layers are found by path. A layer that lacks the adapter gets it (with
    the file's kind, rank, alpha and dropout), so a freshly built base
    model takes a saved adapter in one call; a layer that has it gets its
    values (kind, rank and shapes must match). The loaded adapter becomes
    active.

    Args:
        model: The model (built, with the base weights the adapter was
            trained on).
        path: The file.
        name: The name to give the adapter in `model`. Defaults to `None`
            (the name stored in the file).

    Returns:
        The adapter's name in `model`.

    Raises:
        ValueError: Not an adapter file, a layer path missing from
            `model`, or a mismatch in kind, rank or shape.
    """
    from keras_bigmodels.models.safetensors import load_safetensors

    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a kbm adapter file (its metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r})."
        )
    name = metadata["name"] if name is None else name
    lora._check_args(1, None, name, 0.0)
    if lora._merged_states(model):
        raise ValueError(
            "The model has a merged adapter; call "
            "kbm.adapters.unmerge(model) before loading another."
        )
    specs = json.loads(metadata["layers"])
    tensors = load_safetensors(path)
    by_path = dict(walk(model))
    missing = [p for p in specs if p not in by_path]
    if missing:
        raise ValueError(
            f"{path!r} holds adapters for layers the model does not have: "
            f"{missing[:8]}."
        )
    created = False
    for layer_path, spec in specs.items():
        layer = by_path[layer_path]
        state = get_state(layer)
        if state is None or name not in state.adapters:
            lora._check_layer(layer_path, layer, name)
            state = state or LayerAdapters(layer, layer_path)
            state.add(
                name,
                spec["kind"],
                int(spec["rank"]),
                float(spec["alpha"]),
                float(spec["dropout"]),
            )
            created = True
        adapter = state.adapters[name]
        if adapter.kind != spec["kind"] or adapter.rank != spec["rank"]:
            raise ValueError(
                f"Layer {layer_path!r}: adapter {name!r} is "
                f"{adapter.kind} rank {adapter.rank}, the file's is "
                f"{spec['kind']} rank {spec['rank']}."
            )
        for part, var in zip(_PARTS, adapter.variables):
            value = tensors[f"{layer_path}/{part}"]
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"Layer {layer_path!r}: {part} has shape "
                    f"{tuple(var.shape)} in the model and {value.shape} in "
                    f"{path!r}."
                )
            var.assign(value)
    lora._activate(model, name)
    if created:
        head = lora._train_also_layers(model, [], "head")
        lora._freeze(model, head)
    return name


_INDEX = "kbm_adapters/index.json"


def save_model(model, path):
    """Saves a model with its adapters unmerged, as one `.keras` file.

    The file is a normal `.keras` archive holding the **base** weights
    (Keras's `keras.models.load_model` reads it as the base model), plus
    every named adapter as a `save_adapters` file under `kbm_adapters/` in
    the archive, which `kbm.adapters.load_model` restores (names, active
    adapter, merged state). `model.save` instead writes the active adapter
    merged into the weights.

    Args:
        model: A model with adapters.
        path: The file to write; must end in `.keras`.

    Raises:
        ValueError: `path` does not end in `.keras`, or no adapters.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"path must end in '.keras'. Received: path={path!r}")
    names = lora.adapter_names(model)
    if not names:
        raise ValueError("The model has no adapters; use model.save.")
    states = lora._states(model)
    merged = [s.merged for s in states if s.merged is not None]
    active = lora.active_adapter(model)
    for state in states:
        state.save_base = True
    try:
        model.save(path)
    finally:
        for state in states:
            state.save_base = False
    index = {
        "adapters": names,
        "active": active,
        "merged": merged[0] if merged else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(path, "a") as archive:
            for name in names:
                file = os.path.join(tmp, f"{name}.safetensors")
                save_adapters(model, file, name=name)
                archive.write(file, f"kbm_adapters/{name}.safetensors")
            archive.writestr(_INDEX, json.dumps(index))


def load_model(path, **kwargs):
    """Loads a `.keras` file written by `save_model`, adapters included.

    Args:
        path: The file.
        **kwargs: Passed to `keras.models.load_model` (`custom_objects`,
            `compile`, ...).

    Returns:
        The model with its base weights, adapters (trainable as after
        `enable_*` with the default `train_also`), active adapter and
        merged state as saved.

    Raises:
        ValueError: The file holds no adapters (load it with
            `keras.models.load_model`).
    """
    from keras_bigmodels.backend import keras

    path = os.fspath(path)
    with zipfile.ZipFile(path) as archive:
        if _INDEX not in archive.namelist():
            raise ValueError(
                f"{path!r} holds no kbm adapters; load it with "
                "keras.models.load_model."
            )
        index = json.loads(archive.read(_INDEX))
        blobs = {
            name: archive.read(f"kbm_adapters/{name}.safetensors")
            for name in index["adapters"]
        }
    model = keras.models.load_model(path, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in blobs.items():
            file = os.path.join(tmp, f"{name}.safetensors")
            with open(file, "wb") as f:
                f.write(blob)
            load_adapters(model, file, name=name)
    lora.set_active(model, index["active"])
    if index["merged"] is not None:
        lora.merge(model, index["merged"])
    return model


def _write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    for key, value in tensors.items():
        size = value.nbytes
        header[key] = {
            "dtype": "F32",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for value in tensors.values():
            f.write(np.ascontiguousarray(value).tobytes())
    os.replace(tmp, path)


def _read_metadata(path):
    from keras_bigmodels.models.safetensors import read_safetensors_header

    read_safetensors_header(path)  # Validates the file.
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path!r} is not a kbm adapter file: it has no __metadata__."
        )
    return metadata
