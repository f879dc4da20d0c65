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
            name=f"projection_{self.student_layer or 'output'}_to_"
            f"{self.teacher_layer or 'output'}",
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
