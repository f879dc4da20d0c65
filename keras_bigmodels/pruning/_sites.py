"""Where a model can be pruned: attention heads, feed-forward units, blocks.

A *site* is one prunable place, keyed by a name: the layer's name in the
model (`"transformer_layer_3"` in a `kbm.models.BertEncoder`, `"mha"` for a
top-level attention layer, `"encoder/transformer_layer_0"` for a block of a
nested model). Head sites hold an attention layer; unit sites hold the
feed-forward net of a transformer block or a `Dense` layer together with
the `Dense` layers that read its output.
"""

from keras_bigmodels.backend import keras
from keras_bigmodels.layers.fused_dense import FusedDense
from keras_bigmodels.layers.grouped_query_attention import (
    GroupedQueryAttention,
)
from keras_bigmodels.layers.transformer_decoder import TransformerDecoder
from keras_bigmodels.layers.transformer_encoder import TransformerEncoder

BLOCKS = (TransformerEncoder, TransformerDecoder)
# Layers between a Dense and its readers that act on each unit alone.
_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)
_KERAS_GQA = getattr(keras.layers, "GroupQueryAttention", None)
GQA_TYPES = (GroupedQueryAttention,) + ((_KERAS_GQA,) if _KERAS_GQA else ())


def is_attention(layer):
    return isinstance(layer, (keras.layers.MultiHeadAttention, *GQA_TYPES))


def is_gqa(layer):
    return isinstance(layer, GQA_TYPES)


def is_dense(layer):
    return type(layer) in (keras.layers.Dense, FusedDense)


def _is_bert(model):
    # Imported here: kbm.models is a lazily imported subpackage.
    from keras_bigmodels.models.bert import BertEncoder

    return isinstance(model, BertEncoder)


def head_count(attention):
    """Prunable heads: query heads, or key/value groups for GQA."""
    if is_gqa(attention):
        return attention.num_key_value_heads
    return attention._num_heads


def query_heads_kept(attention, keep):
    """Query-head indices kept when `keep` (head or group indices) stay."""
    if not is_gqa(attention):
        return list(keep)
    group = attention.num_query_heads // attention.num_key_value_heads
    return [g * group + j for g in keep for j in range(group)]


class HeadSite:
    """The heads of one attention layer (`owner` is the layer to rebuild:
    the attention layer itself or its transformer block)."""

    kind = "heads"

    def __init__(self, name, attention, owner):
        self.name = name
        self.attention = attention
        self.owner = owner
        self.count = head_count(attention)

    def row_kernel(self):
        """The kernel whose leading-axis rows a head mask scales: the
        output projection `[query_heads, head_dim, ...]`."""
        return self.attention._output_dense.kernel

    def reduce_rows(self, product):
        """Per-head sums of `kernel * gradient` (per group for GQA)."""
        import tensorflow as tf

        per_query = tf.reduce_sum(
            tf.reshape(product, [tf.shape(product)[0], -1]), axis=1
        )
        if is_gqa(self.attention):
            per_query = tf.reduce_sum(
                tf.reshape(per_query, [self.count, -1]), axis=1
            )
        return per_query


class UnitSite:
    """The hidden units of a feed-forward net (a block's) or of a Dense
    layer (`readers`: the Dense layers reading its output)."""

    kind = "units"

    def __init__(self, name, owner, readers=None):
        self.name = name
        self.owner = owner
        self.readers = readers or []
        if isinstance(owner, BLOCKS):
            self.count = owner.intermediate_dim
        else:
            self.count = owner.units

    def row_kernel(self):
        if isinstance(self.owner, BLOCKS):
            return self.owner._ffn_output.kernel
        return self.readers[0].kernel

    def reduce_rows(self, product):
        import tensorflow as tf

        return tf.reduce_sum(product, axis=1)


def _inbound_names(node_config):
    """Layer names a functional-config node reads from (both Keras lines:
    `[name, node, tensor, ...]` histories anywhere in the structure)."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            if (
                len(x) >= 3
                and isinstance(x[0], str)
                and isinstance(x[1], int)
                and isinstance(x[2], int)
            ):
                found.append(x[0])
                for v in x[3:]:  # tf-keras: the call's keyword tensors.
                    walk(v)
            else:
                for v in x:
                    walk(v)

    walk(node_config)
    return found


def readers_of(model):
    """{layer name: [names of the layers reading its output]}; model
    outputs read by `None`."""
    names = [layer.name for layer in model.layers]
    readers = {n: [] for n in names}
    if isinstance(model, keras.Sequential):
        for a, b in zip(names, names[1:]):
            readers[a].append(b)
        readers[names[-1]].append(None)
        return readers
    config = model.get_config()
    for layer_config in config.get("layers", []):
        name = layer_config.get("name") or layer_config["config"]["name"]
        for source in _inbound_names(layer_config.get("inbound_nodes", [])):
            if source in readers and name not in readers[source]:
                readers[source].append(name)
    for source in _inbound_names(config.get("output_layers", [])):
        if source in readers:
            readers[source].append(None)
    return readers


def dense_readers(model, layer, readers):
    """The Dense layers reading `layer`'s output (through Dropout/ReLU-like
    layers), or None when something else reads it."""
    found, passes = [], []
    todo = list(readers.get(layer.name, []))
    if not todo:
        return None
    while todo:
        name = todo.pop()
        if name is None:
            return None
        reader = model.get_layer(name)
        if is_dense(reader):
            found.append(reader)
        elif isinstance(reader, _PASS_THROUGH) or (
            isinstance(reader, keras.layers.Activation)
            and "softmax" not in str(reader.get_config().get("activation"))
        ):
            passes.append(reader)
            following = readers.get(name, [])
            if not following:
                return None
            todo.extend(following)
        else:
            return None
    return found or None


def find_sites(model, prefix=""):
    """{name: site} for heads, {name: site} for units, {name: block} for
    droppable blocks, and the nested models, found in `model`."""
    heads, units, blocks = {}, {}, {}
    if _is_bert(model):
        for block in model.transformer_layers:
            key = prefix + block.name
            heads[key] = HeadSite(key, block._self_attention, block)
            units[key] = UnitSite(key, block)
            blocks[key] = block
        return heads, units, blocks
    if not isinstance(model, keras.Model) or not hasattr(model, "layers"):
        return heads, units, blocks
    readers = None
    for layer in model.layers:
        key = prefix + layer.name
        if isinstance(layer, keras.Model):
            h, u, b = find_sites(layer, key + "/")
            heads.update(h)
            units.update(u)
            blocks.update(b)
        elif isinstance(layer, BLOCKS):
            heads[key] = HeadSite(key, layer._self_attention, layer)
            units[key] = UnitSite(key, layer)
            blocks[key] = layer
        elif is_attention(layer):
            heads[key] = HeadSite(key, layer, layer)
        elif is_dense(layer):
            if readers is None:
                readers = readers_of(model)
            found = dense_readers(model, layer, readers)
            if found:
                units[key] = UnitSite(key, layer, found)
    return heads, units, blocks
