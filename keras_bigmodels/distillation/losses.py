"""Distillation losses (`kbm.distillation.losses`).

Each loss names the teacher and student features it needs (a layer name, or
None for the model's output), gets those features from the `Distiller`, and
returns a scalar. Losses are serialisable (`get_config` / `from_config`,
registered under the package name).
"""

import tensorflow as tf

from keras_bigmodels.backend import keras, register_serializable
from keras_bigmodels.ops.distillation import (
    check_temperature,
    softmax_kl_divergence,
)

OUTPUT = None  # Feature key of a model's final output.


class DistillationLoss:
    """Base class: what a loss needs from the models, and the loss itself.

    Subclasses set `teacher_features` / `student_features` (lists of layer
    names, `None` for the final output) and implement `compute_loss`.
    """

    teacher_features = (OUTPUT,)
    student_features = (OUTPUT,)

    def configure(self, teacher, student):
        """Sees the (first) teacher and the student before the Distiller
        collects `teacher_features` / `student_features`."""

    def build(self, distiller, teacher_shapes, student_shapes):
        """Creates trainable state (projections); shapes by feature key."""

    def trainable_layers(self):
        """Layers this loss trains with the student (e.g. projections)."""
        return []

    def compute_loss(self, teacher, student):
        """Scalar loss from dicts {feature key: tensor}."""
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register_serializable
class LogitsDistillation(DistillationLoss):
    """Matches the student's softened outputs to the teacher's.

    With `loss="kl"` (Hinton et al., 2015): `T**2 * mean(KL(softmax(t/T) ||
    softmax(s/T)))` over the examples, with `T` the temperature. The `T**2`
    factor keeps the gradient's scale independent of `T`. It runs the fused
    `kbm.ops.softmax_kl_divergence` kernel (one pass over both logit rows,
    no softmax tensors; stable at any logit size; classes whose teacher
    logit is `-inf` are masked out). The value equals that of
    `keras.distillation.LogitsDistillation(temperature,
    loss=keras.losses.KLDivergence())` up to Keras's probability clipping
    at 1e-7. (Keras 3.15's default, the string `"kl_divergence"`, resolves
    to a function, skips the softmax and computes KL on clipped logits.)

    With `loss="mse"`: `mean((t/T - s/T)**2)`, as Keras computes it.

    Args:
        temperature: Softmax temperature, > 0. Defaults to `3.0`.
        loss: `"kl"` or `"mse"` (Keras's names `"kl_divergence"` and
            `"mean_squared_error"` also work). Defaults to `"kl"`.

    Example:

    ```python
    loss = kbm.distillation.losses.LogitsDistillation(temperature=4.0)
    ```

    Reference:
    - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
    """

    _ALIASES = {
        "kl": "kl",
        "kl_divergence": "kl",
        "mse": "mse",
        "mean_squared_error": "mse",
    }

    def __init__(self, temperature=3.0, loss="kl"):
        check_temperature(temperature)
        if loss not in self._ALIASES:
            raise ValueError(
                f"loss must be 'kl' or 'mse'. Received: loss={loss!r}"
            )
        self.temperature = float(temperature)
        self.loss = self._ALIASES[loss]

    def compute_loss(self, teacher, student):
        t = tf.convert_to_tensor(teacher[OUTPUT])
        s = tf.convert_to_tensor(student[OUTPUT])
        if not t.shape.is_compatible_with(s.shape):
            raise ValueError(
                "LogitsDistillation needs teacher and student outputs of the "
                f"same shape. Received: teacher {tuple(t.shape)}, student "
                f"{tuple(s.shape)}"
            )
        if self.loss == "kl":
            s = tf.cast(s, t.dtype) if s.dtype != t.dtype else s
            kl = softmax_kl_divergence(
                t, s, self.temperature, teacher_gradient=False
            )
            return tf.reduce_mean(kl) * self.temperature**2
        t = tf.cast(t, tf.float32) / self.temperature
        s = tf.cast(s, tf.float32) / self.temperature
        return tf.reduce_mean(tf.square(t - s))

    def get_config(self):
        return {"temperature": self.temperature, "loss": self.loss}


@register_serializable
class FeatureDistillation(DistillationLoss):
    """Matches a student layer's output to a teacher layer's (FitNets hints).

    When the two layers' widths (last axes) differ, `projection="auto"`
    adds a learnable linear map from the student's width to the teacher's,
    trained with the student (Romero et al., 2015) and kept out of the
    exported student. Other axes must match.

    Args:
        teacher_layer: Name of the teacher layer, or None for its output.
            Defaults to `None`.
        student_layer: Name of the student layer, or None for its output.
            Defaults to `None`.
        projection: `"auto"` (project when widths differ) or None (widths
            must match). Defaults to `"auto"`.
        loss: `"mse"` or `"cosine"` (1 - cosine similarity along the last
            axis). Defaults to `"mse"`.

    Example:

    ```python
    hint = kbm.distillation.losses.FeatureDistillation(
        teacher_layer="block_3", student_layer="block_1")
    ```

    Reference:
    - [Romero et al., 2015](https://arxiv.org/abs/1412.6550)
    """

    def __init__(
        self,
        teacher_layer=None,
        student_layer=None,
        projection="auto",
        loss="mse",
    ):
        if projection not in ("auto", None):
            raise ValueError(
                "projection must be 'auto' or None. "
                f"Received: projection={projection!r}"
            )
        if loss not in ("mse", "cosine"):
            raise ValueError(
                f"loss must be 'mse' or 'cosine'. Received: loss={loss!r}"
            )
        for name, value in (
            ("teacher_layer", teacher_layer),
            ("student_layer", student_layer),
        ):
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"{name} must be a layer name or None. "
                    f"Received: {name}={value!r}"
                )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.projection = projection
        self.loss = loss
        self.teacher_features = (teacher_layer,)
        self.student_features = (student_layer,)
        self._projection_layer = None

    def _describe(self):
        return (
            f"teacher layer {self.teacher_layer or '<output>'!r} and student "
            f"layer {self.student_layer or '<output>'!r}"
        )

    def build(self, distiller, teacher_shapes, student_shapes):
        t = tuple(teacher_shapes[self.teacher_layer])
        s = tuple(student_shapes[self.student_layer])
        if len(t) != len(s) or any(
            a is not None and b is not None and a != b
            for a, b in zip(t[:-1], s[:-1])
        ):
            raise ValueError(
                f"FeatureDistillation of {self._describe()}: the features "
                f"must agree on every axis but the last. Received: teacher "
                f"{t}, student {s}"
            )
        if t[-1] == s[-1]:
            return
        if self.projection is None:
            raise ValueError(
                f"FeatureDistillation of {self._describe()}: widths differ "
                f"({s[-1]} vs {t[-1]}) and projection=None; use "
                "projection='auto' to learn a projection"
            )
        self._projection_layer = keras.layers.Dense(
            t[-1],
            use_bias=False,
            name=(
                f"projection_{self.student_layer or 'output'}_to_"
                f"{self.teacher_layer or 'output'}"
            ).replace("/", "."),  # Paths into nested models.
        )
        self._projection_layer.build(s)

    def trainable_layers(self):
        return [self._projection_layer] if self._projection_layer else []

    def compute_loss(self, teacher, student):
        t = tf.cast(teacher[self.teacher_layer], tf.float32)
        s = student[self.student_layer]
        if self._projection_layer is not None:
            s = self._projection_layer(s)
        s = tf.cast(s, tf.float32)
        if self.loss == "mse":
            return tf.reduce_mean(tf.square(s - t))
        t = tf.math.l2_normalize(t, axis=-1)
        s = tf.math.l2_normalize(s, axis=-1)
        return tf.reduce_mean(1.0 - tf.reduce_sum(t * s, axis=-1))

    def get_config(self):
        return {
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "projection": self.projection,
            "loss": self.loss,
        }


@register_serializable
class HiddenStateDistillation(DistillationLoss):
    """Matches student blocks' hidden states to teacher blocks' (TinyBERT).

    `layer_map` maps student layer names to teacher layer names, e.g. the
    outputs of a 4-block student's `kbm.layers.TransformerEncoder` blocks to
    every third block of a 12-block teacher
    (`uniform_layer_map(student_blocks, teacher_blocks)` builds that). Each
    pair is a `FeatureDistillation` (projected when widths differ); the loss
    is their mean.

    Args:
        layer_map: Dict `{student_layer: teacher_layer}` or a list of
            `(student_layer, teacher_layer)` pairs.
        loss: `"mse"` or `"cosine"`. Defaults to `"mse"`.
        projection: `"auto"` or None. Defaults to `"auto"`.

    Example:

    ```python
    loss = kbm.distillation.losses.HiddenStateDistillation(
        {"student_block_0": "teacher_block_2",
         "student_block_1": "teacher_block_5"})
    ```

    Reference:
    - [Jiao et al., 2020](https://arxiv.org/abs/1909.10351)
    """

    def __init__(self, layer_map, loss="mse", projection="auto"):
        if not isinstance(layer_map, (dict, list, tuple)) or not all(
            isinstance(p, (list, tuple))
            for p in (
                layer_map.items() if isinstance(layer_map, dict) else layer_map
            )
        ):
            raise ValueError(
                "layer_map must be a non-empty dict or list of "
                "(student_layer, teacher_layer) name pairs. "
                f"Received: layer_map={layer_map!r}"
            )
        pairs = (
            list(layer_map.items())
            if isinstance(layer_map, dict)
            else ([tuple(p) for p in layer_map])
        )
        if not pairs or not all(
            len(p) == 2 and all(isinstance(n, str) for n in p) for p in pairs
        ):
            raise ValueError(
                "layer_map must be a non-empty dict or list of "
                "(student_layer, teacher_layer) name pairs. "
                f"Received: layer_map={layer_map!r}"
            )
        self.layer_map = pairs
        self.loss = loss
        self.projection = projection
        self.parts = [
            FeatureDistillation(
                teacher_layer=t,
                student_layer=s,
                projection=projection,
                loss=loss,
            )
            for s, t in pairs
        ]
        self.teacher_features = tuple(t for _, t in pairs)
        self.student_features = tuple(s for s, _ in pairs)

    def build(self, distiller, teacher_shapes, student_shapes):
        for part in self.parts:
            part.build(distiller, teacher_shapes, student_shapes)

    def trainable_layers(self):
        return [layer for p in self.parts for layer in p.trainable_layers()]

    def compute_loss(self, teacher, student):
        return tf.add_n(
            [p.compute_loss(teacher, student) for p in self.parts]
        ) / len(self.parts)

    def get_config(self):
        return {
            "layer_map": [list(p) for p in self.layer_map],
            "loss": self.loss,
            "projection": self.projection,
        }


def uniform_layer_map(student_layers, teacher_layers):
    """Maps student block i to teacher block (i + 1) * k - 1, k = T // S.

    TinyBERT's uniform mapping: with 4 student and 12 teacher blocks,
    student block 0 learns from teacher block 2, block 3 from block 11.
    """
    s, t = list(student_layers), list(teacher_layers)
    if not s or len(t) < len(s):
        raise ValueError(
            "uniform_layer_map needs at least as many teacher layers as "
            f"student layers. Received: {len(s)} student, {len(t)} teacher"
        )
    k = len(t) // len(s)
    return {name: t[(i + 1) * k - 1] for i, name in enumerate(s)}


RELATIONS = ("qk", "qq", "kk", "vv")


def _embedding_output_name(encoder):
    """The layer whose output feeds an encoder's first block."""
    for name in ("embeddings_dropout", "embeddings_layer_norm"):
        try:
            encoder.get_layer(name)
            return name
        except ValueError:
            pass
    raise ValueError(
        f"Encoder {encoder.name!r} has no 'embeddings_dropout' layer; "
        "AttentionDistillation supports kbm.models.BertEncoder"
    )


class _EncoderView:
    """Feature keys and attention layers of the mapped blocks of one
    BertEncoder-like model (blocks in `transformer_layers`)."""

    def __init__(self, model, path, role):
        encoder = model
        if path is not None:
            for name in path.split("/"):
                try:
                    encoder = encoder.get_layer(name)
                except ValueError:
                    raise ValueError(
                        f"The {role} model {model.name!r} has no layer "
                        f"{path!r} (its layers: "
                        f"{[la.name for la in model.layers]})"
                    ) from None
        blocks = getattr(encoder, "transformer_layers", None)
        if not blocks:
            raise ValueError(
                f"AttentionDistillation needs the {role}'s encoder to be a "
                "kbm.models.BertEncoder (blocks in `transformer_layers`). "
                f"Received: {type(encoder).__name__} at "
                f"{path or '<the model>'!r}"
            )
        self.encoder = encoder
        self.blocks = list(blocks)
        prefix = "" if path is None else f"{path}/"
        first = _embedding_output_name(encoder)
        self.input_keys = [
            prefix + (first if i == 0 else self.blocks[i - 1].name)
            for i in range(len(self.blocks))
        ]
        self.mask_key = prefix + "padding_mask"

    def qkv(self, index, hidden):
        """Query, key and value [batch, seq, heads, head_dim] of block
        `index` for its input `hidden` (as the block computes them)."""
        block = self.blocks[index]
        if getattr(block, "norm_first", False):
            hidden = block._self_attention_norm(hidden)
        attention = block._self_attention
        return (
            attention._query_dense(hidden),
            attention._key_dense(hidden),
            attention._value_dense(hidden),
        )


def _relation_heads(x, heads):
    """[batch, seq, heads, head_dim] -> [batch, R, seq, d]: the model's own
    heads (heads=None) or the hidden size re-split into `heads`."""
    x = tf.cast(x, tf.float32)
    if heads is not None:
        shape = tf.shape(x)
        width = x.shape[-1] * x.shape[-2]
        x = tf.reshape(x, [shape[0], shape[1], heads, width // heads])
    return tf.transpose(x, [0, 2, 1, 3])


def _log_relation(a, b, key_valid):
    """log softmax(a b^T / sqrt(d)) over the valid keys; [B, R, T, T]."""
    scores = tf.matmul(a, b, transpose_b=True)
    scores /= tf.sqrt(tf.cast(tf.shape(a)[-1], tf.float32))
    scores = tf.where(key_valid, scores, -1e9)
    return tf.nn.log_softmax(scores, axis=-1)


@register_serializable
class AttentionDistillation(DistillationLoss):
    """Matches the student's self-attention relations to the teacher's
    (MiniLM).

    For each mapped pair of blocks, the queries, keys and values are
    recomputed from the block's input (the reference attention, never the
    fused kernel, which keeps no probabilities) and each relation in
    `relations` is the row-wise softmax of `A B^T / sqrt(d)` over the
    non-padded keys:

    - `"qk"`: the attention distribution itself (MiniLM's self-attention
      distribution transfer);
    - `"vv"`: the value relation (MiniLM's value-relation transfer);
    - `"qq"`, `"kk"`: the query and key self-relations of MiniLM v2.

    The loss is `KL(teacher relation || student relation)` per query row,
    averaged over the non-padded query rows, the heads, the relations and
    the mapped block pairs. With `relation_heads=None` each model's own
    heads are used and their counts must agree; with `relation_heads=R`
    both models' concatenated heads are re-split into `R` relation heads
    (MiniLM v2), so a student with another head count or width works. The
    gradient reaches the student only.

    The models must contain a `kbm.models.BertEncoder` (or be one), named
    by `teacher_encoder` / `student_encoder` (a layer name or a
    `"outer/inner"` path; None when the model is the encoder).

    Args:
        teacher_encoder: Name of the teacher's encoder layer, or None.
        student_encoder: Name of the student's encoder layer, or None.
        layer_map: Dict `{student block index: teacher block index}`, or
            None for the uniform map (student block i to teacher block
            `(i + 1) * (T // S) - 1`). MiniLM itself maps only the last
            blocks: `{S - 1: T - 1}`. Defaults to None.
        relations: Tuple of `"qk"`, `"qq"`, `"kk"`, `"vv"`. Defaults to
            `("qk", "vv")` (MiniLM).
        relation_heads: None (the models' own heads) or the number of
            relation heads. Defaults to None.

    Example:

    ```python
    loss = kbm.distillation.losses.AttentionDistillation(
        teacher_encoder="minilm", student_encoder="student_minilm",
        relation_heads=12)
    ```

    Reference:
    - [Wang et al., 2020](https://arxiv.org/abs/2002.10957)
    - [Wang et al., 2021](https://arxiv.org/abs/2012.15828)
    """

    def __init__(
        self,
        teacher_encoder=None,
        student_encoder=None,
        layer_map=None,
        relations=("qk", "vv"),
        relation_heads=None,
    ):
        for name, value in (
            ("teacher_encoder", teacher_encoder),
            ("student_encoder", student_encoder),
        ):
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"{name} must be a layer name or None. "
                    f"Received: {name}={value!r}"
                )
        if isinstance(relations, str):
            relations = (relations,)
        relations = tuple(relations)
        if not relations or any(r not in RELATIONS for r in relations):
            raise ValueError(
                f"relations must be a non-empty tuple of {RELATIONS}. "
                f"Received: relations={relations!r}"
            )
        if relation_heads is not None and (
            isinstance(relation_heads, bool)
            or not isinstance(relation_heads, int)
            or relation_heads <= 0
        ):
            raise ValueError(
                "relation_heads must be a positive int or None. "
                f"Received: relation_heads={relation_heads!r}"
            )
        if layer_map is not None:
            if not isinstance(layer_map, dict) or not layer_map:
                raise ValueError(
                    "layer_map must be a non-empty dict {student block: "
                    f"teacher block}} or None. Received: {layer_map!r}"
                )
            layer_map = {int(s): int(t) for s, t in layer_map.items()}
        self.teacher_encoder = teacher_encoder
        self.student_encoder = student_encoder
        self.layer_map = layer_map
        self.relations = relations
        self.relation_heads = relation_heads
        self._pairs = None
        # Until configure(): the features cannot be named yet.
        self.teacher_features = ()
        self.student_features = ()

    def configure(self, teacher, student):
        t = _EncoderView(teacher, self.teacher_encoder, "teacher")
        s = _EncoderView(student, self.student_encoder, "student")
        layer_map = self.layer_map
        if layer_map is None:
            k = len(t.blocks) // len(s.blocks)
            if k < 1:
                raise ValueError(
                    "The default layer_map needs at least as many teacher "
                    f"blocks as student blocks. Received: {len(s.blocks)} "
                    f"student, {len(t.blocks)} teacher"
                )
            layer_map = {i: (i + 1) * k - 1 for i in range(len(s.blocks))}
        for si, ti in layer_map.items():
            if not (0 <= si < len(s.blocks) and 0 <= ti < len(t.blocks)):
                raise ValueError(
                    f"layer_map pair {si}: {ti} is out of range: the "
                    f"student has {len(s.blocks)} blocks, the teacher "
                    f"{len(t.blocks)}"
                )
        if self.relation_heads is None:
            heads = {
                (role, b.num_heads)
                for role, view in (("teacher", t), ("student", s))
                for b in view.blocks
            }
            if len({h for _, h in heads}) > 1:
                raise ValueError(
                    "The teacher and student have different head counts "
                    f"({sorted(heads)}); pass relation_heads=R to re-split "
                    "both into R relation heads"
                )
        self._views = (t, s)
        self._pairs = sorted(layer_map.items())
        self.teacher_features = tuple(
            dict.fromkeys(
                [t.input_keys[ti] for _, ti in self._pairs] + [t.mask_key]
            )
        )
        self.student_features = tuple(
            dict.fromkeys(
                [s.input_keys[si] for si, _ in self._pairs] + [s.mask_key]
            )
        )

    def build(self, distiller, teacher_shapes, student_shapes):
        if self.relation_heads is None:
            return
        for role, shapes, keys in (
            ("teacher", teacher_shapes, self.teacher_features[:-1]),
            ("student", student_shapes, self.student_features[:-1]),
        ):
            for key in keys:
                width = shapes[key][-1]
                if width is not None and width % self.relation_heads:
                    raise ValueError(
                        f"The {role}'s hidden size {width} (at {key!r}) is "
                        "not a multiple of relation_heads="
                        f"{self.relation_heads}"
                    )

    def relation_logits(self, view, index, hidden, mask):
        """{relation: log-probabilities [B, R, T, T]} of one block."""
        q, k, v = view.qkv(index, hidden)
        parts = {
            "q": _relation_heads(q, self.relation_heads),
            "k": _relation_heads(k, self.relation_heads),
            "v": _relation_heads(v, self.relation_heads),
        }
        key_valid = tf.cast(mask, tf.bool)[:, None, None, :]
        return {
            r: _log_relation(parts[r[0]], parts[r[1]], key_valid)
            for r in self.relations
        }

    def compute_loss(self, teacher, student):
        if self._pairs is None:
            raise ValueError(
                "AttentionDistillation is configured by the Distiller "
                "(configure(teacher, student)) before use"
            )
        t_view, s_view = self._views
        mask = tf.cast(student[s_view.mask_key], tf.float32)
        t_mask = teacher[t_view.mask_key]
        total = []
        for si, ti in self._pairs:
            t_rel = self.relation_logits(
                t_view, ti, teacher[t_view.input_keys[ti]], t_mask
            )
            s_rel = self.relation_logits(
                s_view, si, student[s_view.input_keys[si]], mask
            )
            for r in self.relations:
                total.append(
                    relation_kl(tf.stop_gradient(t_rel[r]), s_rel[r], mask)
                )
        return tf.add_n(total) / len(total)

    def get_config(self):
        return {
            "teacher_encoder": self.teacher_encoder,
            "student_encoder": self.student_encoder,
            "layer_map": self.layer_map,
            "relations": list(self.relations),
            "relation_heads": self.relation_heads,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("layer_map") is not None:
            config["layer_map"] = {
                int(k): int(v) for k, v in config["layer_map"].items()
            }
        return cls(**config)


def relation_kl(teacher_log_probs, student_log_probs, mask):
    """Mean over valid query rows and heads of KL(teacher || student).

    Args:
        teacher_log_probs, student_log_probs: [batch, heads, seq, seq]
            log-probabilities over the last axis.
        mask: [batch, seq], 1 for real tokens (rows and keys), 0 for
            padding.
    """
    mask = tf.cast(mask, tf.float32)
    key_valid = mask[:, None, None, :] > 0
    p = tf.exp(teacher_log_probs)
    terms = tf.where(
        key_valid, p * (teacher_log_probs - student_log_probs), 0.0
    )
    rows = tf.reduce_sum(terms, axis=-1)  # [B, R, T]
    rows *= mask[:, None, :]
    heads = tf.cast(tf.shape(rows)[1], tf.float32)
    return tf.reduce_sum(rows) / (heads * tf.maximum(tf.reduce_sum(mask), 1))
