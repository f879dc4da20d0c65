"""Structured pruning: remove attention heads, feed-forward units, blocks.

Each function returns a new model whose kernels are physically smaller
(fewer heads, narrower feed-forward nets, fewer blocks) and whose outputs
equal the original's with the removed heads or units masked (zeroed), up to
float rounding. The original model is not changed.
"""

import numbers

from keras_bigmodels.backend import keras, register_serializable
from keras_bigmodels.pruning import _sites
from keras_bigmodels.pruning._sites import (
    BLOCKS,
    is_attention,
    is_dense,
    is_gqa,
    query_heads_kept,
)


@register_serializable
class SkippedBlock(keras.layers.Layer):
    """What `drop_layers` leaves where a block was: returns its first input.

    Takes (and ignores) the block's other call arguments, and passes the
    Keras mask of its input through.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, *args, **kwargs):
        return inputs

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape


def prune_heads(model, heads):
    """Returns a copy of `model` without the given attention heads.

    Args:
        model: A `kbm.models.BertEncoder`, or a functional or `Sequential`
            model holding `kbm.layers.TransformerEncoder` /
            `TransformerDecoder` blocks, `kbm.layers.MultiHeadAttention` /
            `GroupedQueryAttention` or Keras's `MultiHeadAttention` /
            `GroupQueryAttention` layers (nested models too).
        heads: `{layer name: [head indices]}`. The name is the block's or
            attention layer's (`"transformer_layer_2"` in a BertEncoder;
            `"outer/inner"` inside a nested model). For grouped-query
            attention the indices are key/value heads: removing one removes
            its whole group of query heads, so every group keeps the same
            size.

    Returns:
        A new model with `num_heads` reduced where asked (a BertEncoder gets
        per-layer head counts) and its query/key/value/output kernels
        sliced; its outputs equal the original's with those heads' outputs
        zeroed before the output projection.

    Raises:
        ValueError: An unknown layer name, an index out of range, or every
            head of a layer (use `drop_layers` to remove a block).

    Example:

    ```python
    small = kbm.pruning.prune_heads(encoder, {"transformer_layer_0": [1, 5]})
    ```

    Reference:
    - [Michel et al., 2019](https://arxiv.org/abs/1905.10650)
    """
    return prune(model, heads=heads)


def prune_neurons(model, units):
    """Returns a copy of `model` without the given hidden units.

    Args:
        model: As for `prune_heads`; units are the feed-forward units of
            transformer blocks, or the units of a `Dense` / `FusedDense`
            layer whose output only `Dense` layers read (possibly through
            `Dropout`, `Activation` or ReLU-like layers): its kernel loses
            columns and the readers' kernels lose the matching rows.
        units: `{layer name: [unit indices]}`.

    Returns:
        A new, narrower model whose outputs equal the original's with those
        units zeroed.

    Raises:
        ValueError: An unknown layer name, an index out of range, or every
            unit of a layer.

    Example:

    ```python
    small = kbm.pruning.prune_neurons(encoder, {"transformer_layer_0": [3]})
    ```
    """
    return prune(model, units=units)


def drop_layers(model, names):
    """Returns a copy of `model` without the given transformer blocks.

    In a `kbm.models.BertEncoder` the remaining blocks are renumbered
    (`transformer_layer_0`, ...); in a functional model a dropped block is
    replaced by `kbm.pruning.SkippedBlock`, which returns its input.

    Args:
        model: As for `prune_heads`.
        names: Names of `TransformerEncoder` / `TransformerDecoder` blocks.

    Returns:
        A new model without those blocks.

    Raises:
        ValueError: An unknown block name, or every block of a
            BertEncoder.
    """
    if isinstance(names, str):
        names = [names]
    return prune(model, drop=list(names))


def prune(model, heads=None, units=None, drop=None):
    """`prune_heads`, `prune_neurons` and `drop_layers` in one rebuild.

    Args:
        model: As for `prune_heads`.
        heads: `{layer name: [head indices]}`. Defaults to `None`.
        units: `{layer name: [unit indices]}`. Defaults to `None`.
        drop: Block names to remove. Defaults to `None`.

    Returns:
        The new, smaller model.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "model must be a Keras model. Received: model of type "
            f"{type(model).__name__}"
        )
    head_sites, unit_sites, block_sites = _sites.find_sites(model)
    plan = _Plan()
    plan.keep_heads = _keep(heads, head_sites, "heads", "attention layer")
    plan.keep_units = _keep(units, unit_sites, "units", "prunable layer")
    for name in drop or []:
        if name not in block_sites:
            raise ValueError(
                f"Unknown layer name {name!r}: no transformer block by that "
                f"name. Blocks: {sorted(block_sites)}"
            )
        plan.drop.add(name)
    for key, keep in plan.keep_heads.items():
        site = head_sites[key]
        owner = site.owner
        if (
            isinstance(owner, _sites.TransformerDecoder)
            and owner._cross_attention is not None
        ):
            raise ValueError(
                f"Cannot prune the heads of {key!r}: a TransformerDecoder "
                "with cross-attention shares one head count between its "
                "self- and cross-attention."
            )
        plan.add(_attention_slicers(site.attention, keep))
    for key, keep in plan.keep_units.items():
        plan.add(_unit_slicers(unit_sites[key], keep))
    return _rebuild(model, plan, "")


class _Plan:
    def __init__(self):
        self.keep_heads = {}
        self.keep_units = {}
        self.drop = set()
        # id(old variable) -> [array -> sliced array], applied in order (a
        # Dense kernel can lose rows and columns).
        self.slicers = {}

    def add(self, slicers):
        for key, fn in slicers.items():
            self.slicers.setdefault(key, []).append(fn)

    def apply(self, variable):
        value = variable.numpy()
        for fn in self.slicers.get(id(variable), []):
            value = fn(value)
        return value


def _keep(spec, sites, what, kind):
    """{name: sorted kept indices} from {name: pruned indices}."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError(
            f"{what} must be a dict {{layer name: [indices]}}. Received: "
            f"{spec!r}"
        )
    keep = {}
    for name, indices in spec.items():
        if name not in sites:
            raise ValueError(
                f"Unknown layer name {name!r}: no {kind} with {what} by "
                f"that name. Layers with {what}: {sorted(sites)}"
            )
        count = sites[name].count
        noun = (
            "key/value heads"
            if what == "heads" and is_gqa(sites[name].attention)
            else what
        )
        pruned = set()
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise ValueError(
                    f"Indices must be integers. Received: {i!r} for layer "
                    f"{name!r}"
                )
            if not 0 <= i < count:
                raise ValueError(
                    f"Index {int(i)} is out of range for layer {name!r}, "
                    f"which has {count} {noun} (indices 0 to {count - 1})."
                )
            pruned.add(int(i))
        if len(pruned) == count:
            extra = (
                " (use drop_layers to remove a block)"
                if isinstance(sites[name].owner, BLOCKS)
                else ""
            )
            raise ValueError(
                f"Cannot prune all {count} {noun} of layer {name!r}: at "
                f"least one must stay{extra}. Received: {sorted(pruned)}"
            )
        if pruned:
            keep[name] = [i for i in range(count) if i not in pruned]
    return keep


def _slice(axis, index):
    def fn(array):
        return array.take(index, axis=axis)

    return fn


def _attention_slicers(attention, keep):
    """Slicers of an attention layer's projections for the kept heads."""
    q_keep = query_heads_kept(attention, keep)
    kv_keep = list(keep) if is_gqa(attention) else q_keep
    parts = [
        (attention._query_dense, q_keep),
        (attention._key_dense, kv_keep),
        (attention._value_dense, kv_keep),
    ]
    gate = getattr(attention, "_gate_dense", None)
    if gate is not None:
        parts.append((gate, q_keep))
    slicers = {}
    for dense, index in parts:
        slicers[id(dense.kernel)] = _slice(1, index)  # [dim, heads, d]
        if getattr(dense, "bias", None) is not None:
            slicers[id(dense.bias)] = _slice(0, index)  # [heads, d]
    # The output projection [heads, d, dim]; its bias stays.
    slicers[id(attention._output_dense.kernel)] = _slice(0, q_keep)
    return slicers


def _unit_slicers(site, keep):
    owner = site.owner
    slicers = {}
    if isinstance(owner, BLOCKS):
        first, second = owner._ffn_intermediate, owner._ffn_output
        columns = list(keep)
        if owner.activation == "swiglu":
            columns += [owner.intermediate_dim + i for i in keep]
        readers = [second]
    else:
        first, columns, readers = owner, list(keep), site.readers
    slicers[id(first.kernel)] = _slice(1, columns)
    if first.use_bias:
        slicers[id(first.bias)] = _slice(0, columns)
    for reader in readers:
        slicers[id(reader.kernel)] = _slice(0, list(keep))
    return slicers


def _head_dim(attention):
    return attention.head_dim if is_gqa(attention) else attention._key_dim


def _new_layer(layer, key, plan):
    """A fresh layer like `layer`, resized by the plan (unbuilt)."""
    config = layer.get_config()
    if isinstance(layer, BLOCKS):
        if key in plan.keep_heads:
            keep = plan.keep_heads[key]
            attention = layer._self_attention
            config["head_dim"] = _head_dim(attention)
            if is_gqa(attention):
                group = (
                    attention.num_query_heads // attention.num_key_value_heads
                )
                config["num_heads"] = len(keep) * group
                config["num_key_value_heads"] = len(keep)
            else:
                config["num_heads"] = len(keep)
                config["num_key_value_heads"] = None
        if key in plan.keep_units:
            config["intermediate_dim"] = len(plan.keep_units[key])
    elif is_attention(layer) and key in plan.keep_heads:
        keep = plan.keep_heads[key]
        if is_gqa(layer):
            group = layer.num_query_heads // layer.num_key_value_heads
            config["num_query_heads"] = len(keep) * group
            config["num_key_value_heads"] = len(keep)
        else:
            config["num_heads"] = len(keep)
    elif is_dense(layer) and key in plan.keep_units:
        config["units"] = len(plan.keep_units[key])
    return layer.__class__.from_config(config)


def _copy_weights(old, new, plan):
    new.set_weights([plan.apply(v) for v in old.weights])


def _touches(plan, prefix):
    keys = list(plan.keep_heads) + list(plan.keep_units) + list(plan.drop)
    return any(k.startswith(prefix) for k in keys)


def _rebuild(model, plan, prefix):
    if _sites._is_bert(model):
        return _rebuild_bert(model, plan, prefix)
    pairs, ready = [], set()

    def clone_function(layer):
        key = prefix + layer.name
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.Model):
            new = _rebuild(layer, plan, key + "/")
            ready.add(id(new))
        elif key in plan.drop:
            new = SkippedBlock(name=layer.name)
            ready.add(id(new))  # No weights to copy.
        else:
            new = _new_layer(layer, key, plan)
        pairs.append((layer, new))
        return new

    try:
        new_model = keras.models.clone_model(
            model, clone_function=clone_function
        )
    except ValueError as error:
        raise ValueError(
            "Structured pruning rebuilds functional and Sequential models "
            "and kbm.models.BertEncoder; cloning "
            f"{model.name!r} ({type(model).__name__}) failed: {error}"
        ) from error
    for old, new in pairs:
        if id(new) not in ready and old.weights:
            _copy_weights(old, new, plan)
    return new_model


def _rebuild_bert(model, plan, prefix):
    from keras_bigmodels.models.bert import BertEncoder

    config = model.get_config()
    blocks = [
        b for b in model.transformer_layers if prefix + b.name not in plan.drop
    ]
    if not blocks:
        raise ValueError(
            f"Cannot drop all {len(model.transformer_layers)} transformer "
            f"layers of {model.name!r}: at least one must stay."
        )
    heads, inner = [], []
    for block in blocks:
        key = prefix + block.name
        keep = plan.keep_heads.get(key)
        heads.append(len(keep) if keep else block.num_heads)
        keep = plan.keep_units.get(key)
        inner.append(len(keep) if keep else block.intermediate_dim)
    config["num_layers"] = len(blocks)
    if any(h != config["num_heads"] for h in heads):
        config["layer_num_heads"] = heads
        config["head_dim"] = _head_dim(blocks[0]._self_attention)
    elif "layer_num_heads" in config:
        config["layer_num_heads"] = heads
    if any(i != config["intermediate_dim"] for i in inner):
        config["layer_intermediate_dims"] = inner
    elif "layer_intermediate_dims" in config:
        config["layer_intermediate_dims"] = inner
    new = BertEncoder.from_config(config)
    for old_layer, new_layer in (
        (model.token_embedding, new.token_embedding),
        (model.position_embedding, new.position_embedding),
        (model.segment_embedding, new.segment_embedding),
        (model.embeddings_norm, new.embeddings_norm),
        *zip(blocks, new.transformer_layers),
    ):
        _copy_weights(old_layer, new_layer, plan)
    return new
