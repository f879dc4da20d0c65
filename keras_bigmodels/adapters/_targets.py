"""Finding the layers an adapter can attach to, and their matrix view.

Every supported layer computes a linear map whose weight is seen as a
matrix `[fan_in, fan_out]`:

- `Dense` / `kbm.layers.FusedDense`: the kernel `[in, out]` itself;
- `EinsumDense`: the kernel's axes contracted with the input, flattened,
  by the kernel's other axes, flattened (the query kernel of a
  `MultiHeadAttention`, `[dim, heads, head_dim]`, is `[dim, heads *
  head_dim]`; its output kernel `[heads, head_dim, dim]` is `[heads *
  head_dim, dim]`);
- `Embedding`: the table `[vocabulary, dim]` (a one-hot input times it).
"""

import math
import re

import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

# Final path components of the attention query and value projections in
# Keras, tf-keras, kbm and keras-hub layers (the LoRA paper's default).
DEFAULT_TARGETS = r"(?:^|/)(?:query|value|query_dense|value_dense)$"

DENSE, EINSUM, EMBEDDING = "dense", "einsum_dense", "embedding"


def layer_kind(layer):
    """ "dense", "einsum_dense", "embedding", or None (unsupported)."""
    if isinstance(layer, keras.layers.Dense):
        return DENSE
    if isinstance(layer, keras.layers.EinsumDense):
        return EINSUM
    if isinstance(layer, keras.layers.Embedding):
        return EMBEDDING
    return None


def _children(layer):
    return layer._flatten_layers(include_self=False, recursive=False)


def walk(model):
    """`(path, layer)` of every layer under `model`, depth first.

    A path joins layer names with "/" from (not including) the model, e.g.
    `"transformer_layer_0/self_attention/query"`. A layer reached twice
    (shared) keeps its first path.
    """
    seen = set()
    out = []

    def visit(layer, prefix):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            out.append((path, child))
            visit(child, path + "/")

    visit(model, "")
    return out


def select(model, targets):
    """The supported layers `targets` picks, as `[(path, layer)]`.

    Args:
        model: The model.
        targets: None (the attention query and value projections), a
            string or list of strings (regular expressions searched in each
            layer path, so a plain name matches as a substring), or a
            predicate `fn(path, layer) -> bool`.

    Raises:
        ValueError: A pattern matches no supported layer, or nothing is
            selected at all.
    """
    layers = walk(model)
    supported = [(p, layer) for p, layer in layers if layer_kind(layer)]
    if targets is None:
        chosen = [
            (p, lay) for p, lay in supported if re.search(DEFAULT_TARGETS, p)
        ]
        if not chosen:
            raise ValueError(
                "targets=None selects the attention query and value "
                "projections (layers named 'query', 'value', 'query_dense' "
                "or 'value_dense'), and this model has none. Pass targets= "
                "a list of layer-path patterns. Supported layers: "
                f"{_summary([p for p, _ in supported])}. Received: "
                "targets=None"
            )
        return chosen
    if callable(targets):
        chosen = [(p, lay) for p, lay in supported if targets(p, lay)]
        if not chosen:
            raise ValueError(
                "targets (a predicate) selects no Dense, EinsumDense or "
                "Embedding layer. Supported layers: "
                f"{_summary([p for p, _ in supported])}. Received: "
                f"targets={targets!r}"
            )
        return chosen
    patterns = [targets] if isinstance(targets, str) else targets
    if (
        not isinstance(patterns, (list, tuple))
        or not patterns
        or not all(isinstance(t, str) and t for t in patterns)
    ):
        raise ValueError(
            "targets must be None, a non-empty list of layer-path patterns "
            f"(strings) or a predicate fn(path, layer). Received: "
            f"targets={targets!r}"
        )
    chosen, ids = [], set()
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"targets holds an invalid regular expression ({e}). "
                f"Received: targets={targets!r}"
            ) from None
        hits = [(p, lay) for p, lay in supported if regex.search(p)]
        if not hits:
            raise ValueError(
                f"targets pattern {pattern!r} matches no Dense, EinsumDense "
                "or Embedding layer. Supported layers: "
                f"{_summary([p for p, _ in supported])}. Received: "
                f"targets={targets!r}"
            )
        for p, lay in hits:
            if id(lay) not in ids:
                ids.add(id(lay))
                chosen.append((p, lay))
    return chosen


def _summary(paths, limit=12):
    if not paths:
        return "none"
    more = f" ... ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def base_variable(layer):
    """The layer's kernel (embedding table) variable."""
    if IS_LEGACY_KERAS:
        kind = layer_kind(layer)
        return layer.embeddings if kind == EMBEDDING else layer.kernel
    if layer_kind(layer) == EMBEDDING:
        return layer._embeddings
    return layer._kernel


class MatrixView:
    """Maps a layer's kernel to its `[fan_in, fan_out]` matrix and back."""

    def __init__(self, layer, path):
        kind = layer_kind(layer)
        if getattr(layer, "_kbm_spec", None) is not None:
            from keras_bigmodels.adapters._quantized import kernel_shape

            shape = kernel_shape(layer)
        else:
            shape = tuple(int(d) for d in base_variable(layer).shape)
        self.kind = kind
        self.kernel_shape = shape
        if kind in (DENSE, EMBEDDING):
            self.in_axes, self.out_axes = [0], [1]
        else:
            self.in_axes, self.out_axes = _einsum_axes(layer.equation, path)
        order = self.in_axes + self.out_axes
        self.perm = order
        self.inverse_perm = [order.index(i) for i in range(len(shape))]
        self.in_shape = [shape[i] for i in self.in_axes]
        self.out_shape = [shape[i] for i in self.out_axes]
        self.fan_in = math.prod(self.in_shape)
        self.fan_out = math.prod(self.out_shape)

    def to_matrix(self, kernel):
        if self.perm != sorted(self.perm):
            kernel = tf.transpose(kernel, self.perm)
        return tf.reshape(kernel, [self.fan_in, self.fan_out])

    def to_kernel(self, matrix):
        kernel = tf.reshape(matrix, self.in_shape + self.out_shape)
        if self.perm != sorted(self.perm):
            kernel = tf.transpose(kernel, self.inverse_perm)
        return kernel


def _einsum_axes(equation, path):
    """Kernel axes contracted with the input, and the kernel's output axes."""
    compact = equation.replace(" ", "")
    try:
        lhs, out = compact.split("->")
        x, w = lhs.split(",")
    except ValueError:
        raise ValueError(
            f"Layer {path!r}: cannot read the EinsumDense equation. "
            f"Received: equation={equation!r}"
        ) from None
    x, out = x.replace("...", ""), out.replace("...", "")
    in_axes, out_axes = [], []
    for i, letter in enumerate(w):
        if letter in x and letter not in out:
            in_axes.append(i)
        elif letter in out and letter not in x:
            out_axes.append(i)
        else:
            raise ValueError(
                f"Layer {path!r}: an adapter needs every kernel axis to be "
                "either contracted with the input or an output axis; axis "
                f"{letter!r} is neither. Received: equation={equation!r}"
            )
    if not in_axes or not out_axes:
        raise ValueError(
            f"Layer {path!r}: the EinsumDense kernel has no input or no "
            f"output axis. Received: equation={equation!r}"
        )
    return in_axes, out_axes
