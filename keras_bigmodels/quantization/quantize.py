"""`kbm.quantization.quantize`: post-training quantization, in place."""

from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.quantization import layers as qlayers

ROOT_KEY = "kbm_quantized_layers"

# Exact float classes -> the quantized class they become. Subclasses of
# these (other than FusedDense) are left alone: their `call` may differ.
_TARGETS = (
    (keras.layers.Dense, "QuantizedDense"),
    (FusedDense, "QuantizedDense"),
    (keras.layers.EinsumDense, "QuantizedEinsumDense"),
    (keras.layers.Embedding, "QuantizedEmbedding"),
    (keras.layers.Conv2D, "QuantizedConv2D"),
)
_QUANTIZED = (
    qlayers.QuantizedDense,
    qlayers.QuantizedEinsumDense,
    qlayers.QuantizedEmbedding,
    qlayers.QuantizedConv2D,
)


def _target_class(layer):
    for cls, name in _TARGETS:
        if type(layer) is cls:
            return getattr(qlayers, name)
    return None


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _excluder(exclude):
    if exclude is None:
        return lambda layer: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    try:
        names = set(exclude)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(
            "exclude must be None, a layer name, a list of layer names or a "
            f"callable taking a layer. Received: exclude={exclude!r}"
        )
    return lambda layer: layer.name in names


def _walk(layer, path=()):
    """Yields `(path, layer)` depth first; path = child indices."""
    for i, child in enumerate(_children(layer)):
        yield path + (i,), child
        if not isinstance(child, _QUANTIZED):
            yield from _walk(child, path + (i,))


def _path_key(path):
    return "/".join(str(i) for i in path)


def _locate(root, key):
    layer = root
    for part in key.split("/"):
        children = _children(layer)
        i = int(part)
        if i >= len(children):
            raise ValueError(
                f"Cannot find the quantized sublayer {key!r} of "
                f"{root.name!r}: the model's structure differs from the "
                "one that was quantized."
            )
        layer = children[i]
    return layer


def _spec_for(layer, mode, group_size):
    target = _target_class(layer)
    if target is qlayers.QuantizedConv2D:
        return qlayers.make_spec("int8_weight_only")
    if target is qlayers.QuantizedEmbedding and mode == "int8":
        return qlayers.make_spec("int8_weight_only")
    return qlayers.make_spec(
        mode, group_size if mode == "int4_weight_only" else None
    )


def _check_convertible(layer):
    if not layer.built:
        raise ValueError(
            f"Layer {layer.name!r} is not built. Build the model (call it "
            "once or call model.build) before quantizing it."
        )
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer {layer.name!r} has LoRA enabled; merge or drop it "
            "before quantizing."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"Layer {layer.name!r} is already quantized by Keras (mode "
            f"{layer.quantization_mode!r}); kbm cannot re-quantize it."
        )


def quantize(
    model, mode, *, calibration_data=None, exclude=None, group_size=128
):
    """Quantizes a Keras model's weights in place (post-training).

    Converts every built `keras.layers.Dense`, `kbm.layers.FusedDense`,
    `keras.layers.EinsumDense` (the projections inside Keras and kbm
    attention layers and transformer blocks), `keras.layers.Embedding`
    (also inside `kbm.layers.TokenAndPositionEmbedding`) and
    `keras.layers.Conv2D`, at any depth, into its quantized counterpart
    (`kbm.quantization.QuantizedDense`, ...). The layer objects stay the
    same (their class is switched), so functional, Sequential and subclassed
    models are all quantized in place.

    Modes:
        - `"int8"`: dynamic W8A8 for Dense/EinsumDense (weights int8 per
          output channel, activations quantized per row on every call,
          `kbm.ops.quantized_matmul`); Embedding and Conv2D weight-only int8.
        - `"int8_weight_only"`: int8 weights, float activations
          (`kbm.ops.weight_only_matmul`); best for batches of a few rows.
        - `"int4_weight_only"`: int4 weights with one scale per
          `group_size` inputs (Dense, EinsumDense, Embedding rows); Conv2D
          gets int8 weight-only.

    The quantized model saves to `.keras` and loads back with
    `keras.models.load_model` once `keras_bigmodels.quantization` is
    imported; it exports to a stock-ops SavedModel with integer weights
    (`kbm.export.export_saved_model`).

    Args:
        model: A built Keras model (or layer).
        mode: `"int8"`, `"int8_weight_only"` or `"int4_weight_only"`.
        calibration_data: Accepted for API symmetry and ignored: all three
            modes are dynamic or weight-only and need no calibration.
            Defaults to `None`.
        exclude: Layers to leave in float: a layer name, a list of names,
            or a callable `layer -> bool`. An excluded layer's sublayers
            are left alone too. Defaults to `None`.
        group_size: int4 group size along the input axis (positive, even).
            A layer whose input size is smaller uses one group over it; one
            whose input size it does not divide raises. Defaults to `128`.

    Returns:
        `model`, quantized.

    Raises:
        ValueError: A bad mode or group_size, an unbuilt layer, a layer
            already quantized in another mode, an int4 layer whose input
            size does not fit the group size.

    Quantizing again with the same mode is a no-op.

    Example:

    ```python
    model = kbm.models.BertEncoder(...)
    kbm.quantization.quantize(model, "int8")
    model.save("int8.keras")
    ```
    """
    del calibration_data  # Dynamic / weight-only modes need none.
    qlayers.check_mode(mode)
    qlayers.check_group_size(group_size)
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"model must be a Keras model or layer. Received: {model!r}"
        )
    is_excluded = _excluder(exclude)
    specs = dict(getattr(model, "_kbm_layer_specs", {}))
    plan = []

    def visit(layer, path):
        if is_excluded(layer):
            return
        if isinstance(layer, _QUANTIZED):
            have = layer.quantization_spec["mode"]
            want = _spec_for_quantized(layer, mode)
            if have != want:
                raise ValueError(
                    f"Layer {layer.name!r} is already quantized with mode "
                    f"{have!r}; cannot quantize it again with mode={mode!r}."
                )
            return
        if _target_class(layer) is not None:
            _check_convertible(layer)
            plan.append((path, layer))
            return
        for i, child in enumerate(_children(layer)):
            visit(child, path + (i,))

    if isinstance(model, keras.Model) or _target_class(model) is None:
        for i, child in enumerate(_children(model)):
            visit(child, (i,))
    else:
        visit(model, ())
    # Validate every layer before converting any (no half-quantized model).
    converted = []
    for path, layer in plan:
        spec = _spec_for(layer, mode, group_size)
        if spec["mode"] == "int4_weight_only":
            k = _input_size(layer)
            if k is not None:
                qlayers.int4_group(k, group_size, layer.name)
        converted.append((path, layer, spec))
    for path, layer, spec in converted:
        _target_class(layer).convert(layer, spec)
        if path:
            specs[_path_key(path)] = layer.quantization_spec
    if isinstance(model, keras.Model) and converted:
        _mark_root(model, specs)
        model.train_function = None
        model.test_function = None
        model.predict_function = None
    return model


def _spec_for_quantized(layer, mode):
    if isinstance(layer, qlayers.QuantizedConv2D):
        return "int8_weight_only"
    if isinstance(layer, qlayers.QuantizedEmbedding) and mode == "int8":
        return "int8_weight_only"
    return mode


def _input_size(layer):
    """The K an int4 conversion groups over, or None if not int4-able."""
    if isinstance(layer, keras.layers.Embedding):
        return layer.output_dim
    if isinstance(layer, keras.layers.Conv2D):
        return None
    kernel = qlayers.float_weight(layer, "kernel")
    if isinstance(layer, keras.layers.EinsumDense):
        plan = qlayers.parse_einsum(layer.equation)
        ker = layer.equation.split(",")[1].split("->")[0]
        contracted = plan["contracted"] if plan else ker[:-1]
        k = 1
        for c in contracted:
            k *= int(kernel.shape[ker.index(c)])
        return k
    return int(kernel.shape[0])


# ----------------------------------------------------------------------------
# The model object records which nested layers are quantized, so a model
# rebuilt from its config (whose container layers rebuild float sublayers)
# converts them back before its weights load.
# ----------------------------------------------------------------------------


class QuantizedModelMixin:
    """Adds the quantized-layer map to a model's config and applies it."""

    def get_config(self):
        config = super().get_config()
        config[ROOT_KEY] = dict(getattr(self, "_kbm_layer_specs", {}))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        specs = _check_layer_specs(config.pop(ROOT_KEY, {}), config)
        model = super().from_config(config, custom_objects=custom_objects)
        apply_layer_specs(model, specs)
        return model


def _check_layer_specs(specs, config):
    """The saved `{path: spec}` map, checked (a config may have been
    edited): paths of child indices ("0/2"), specs dicts with a mode."""
    name = config.get("name") if isinstance(config, dict) else None
    if not isinstance(specs, dict):
        raise ValueError(
            f"Model {name!r}: {ROOT_KEY} must be a dict of sublayer paths "
            f"to quantization specs. Received: {ROOT_KEY}={specs!r}"
        )
    for key, spec in specs.items():
        parts = key.split("/") if isinstance(key, str) else [None]
        if not all(
            isinstance(p, str) and p.isascii() and p.isdigit() for p in parts
        ):
            raise ValueError(
                f"Model {name!r}: the {ROOT_KEY} path {key!r} is not a "
                "'/'-separated list of child indices (such as '0/2')."
            )
        if not isinstance(spec, dict) or "mode" not in spec:
            raise ValueError(
                f"Model {name!r}: the {ROOT_KEY} entry {key!r} must be a "
                f"dict with a 'mode'. Received: {spec!r}"
            )
    return specs


def apply_layer_specs(model, specs):
    """Converts the sublayers named in `specs` (a rebuilt model) in place."""
    from keras_bigmodels.quantization import qat

    for key, spec in sorted(specs.items()):
        layer = _locate(model, key)
        if isinstance(layer, _QUANTIZED + qat._QAT_CLASSES):
            continue  # Rebuilt quantized from its own config.
        if spec.get("qat"):
            target = qat._QAT_TARGETS.get(type(layer))
            spec = {k: v for k, v in spec.items() if k != "qat"}
        else:
            target = _target_class(layer)
        if target is None:
            raise ValueError(
                f"The quantized sublayer {key!r} of {model.name!r} was "
                f"rebuilt as {type(layer).__name__}, which kbm cannot "
                "quantize: the model's code changed since it was saved."
            )
        if not layer.built:
            raise ValueError(
                f"The quantized sublayer {layer.name!r} of {model.name!r} is "
                "not built after the model was rebuilt from its config."
            )
        target.convert(layer, spec)
    qlayers.set_plain(model, "_kbm_layer_specs", dict(specs))


_ROOT_CLASSES = {}


def quantized_model_class(cls):
    """The registered quantized subclass of model class `cls` (made once).

    A subclassed model class must be registered this way (in the process
    that loads it too) before a quantized instance saved to `.keras` can be
    loaded; `kbm.models.BertEncoder`, `keras.Sequential` and functional
    models are registered by `keras_bigmodels.quantization`. On tf-keras
    the class is also registered under its plain name, which the h5 and
    SavedModel formats save.
    """
    if issubclass(cls, QuantizedModelMixin):
        return cls
    if cls not in _ROOT_CLASSES:
        sub = type(f"Quantized{cls.__name__}", (QuantizedModelMixin, cls), {})
        sub.__module__ = __name__
        sub.__doc__ = f"`{cls.__name__}` holding kbm-quantized layers."
        _ROOT_CLASSES[cls] = register_serializable(sub)
        if IS_LEGACY_KERAS:
            # tf-keras's h5 and SavedModel formats save a model's plain
            # class name (not the registered one) and look it up here.
            keras.utils.get_custom_objects()[sub.__name__] = sub
    return _ROOT_CLASSES[cls]


def _mark_root(model, specs):
    model.__class__ = quantized_model_class(type(model))
    qlayers.set_plain(model, "_kbm_layer_specs", specs)


def _register_builtin_roots():
    if IS_LEGACY_KERAS:
        from tf_keras.src.engine.functional import Functional
    else:
        from keras.src.models.functional import Functional

    quantized_model_class(Functional)
    quantized_model_class(keras.Sequential)
    quantized_model_class(keras.Model)


_register_builtin_roots()
