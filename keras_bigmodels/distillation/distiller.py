"""`kbm.distillation.Distiller`: knowledge distillation as a Keras model."""

import math

import tensorflow as tf

from keras_bigmodels._validation import is_number
from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.distillation import cache as cache_lib
from keras_bigmodels.distillation.losses import (
    OUTPUT,
    DistillationLoss,
    LogitsDistillation,
)
from keras_bigmodels.export import export_saved_model

MULTI_TEACHER_MODES = ("average", "per_teacher")


class _Untracked:
    """Holds objects Keras must not track (shared sub-models, caches)."""


class _KerasDistillationLoss(DistillationLoss):
    """Adapts a Keras 3 `keras.distillation.DistillationLoss` to kbm's.

    Features are taken as Keras's Distiller takes them: the layer named by
    the loss's `teacher_layer_name` / `student_layer_name` if it has one,
    else the model's output; `validate_outputs` runs before each
    `compute_loss(teacher_output, student_output)`.
    """

    def __init__(self, loss):
        self.keras_loss = loss
        self.teacher_features = (
            getattr(loss, "teacher_layer_name", None) or OUTPUT,
        )
        self.student_features = (
            getattr(loss, "student_layer_name", None) or OUTPUT,
        )
        # A logits loss can take several teachers averaged into one.
        self.temperature = getattr(loss, "temperature", None)

    def compute_loss(self, teacher, student):
        t = teacher[self.teacher_features[0]]
        s = student[self.student_features[0]]
        self.keras_loss.validate_outputs(t, s)
        return self.keras_loss.compute_loss(t, s)


def _keras_distillation_loss_class():
    """Keras 3's DistillationLoss base class (None on tf-keras)."""
    if IS_LEGACY_KERAS:
        return None
    return keras.distillation.DistillationLoss


def _as_kbm_loss(loss, teacher, student):
    """kbm's losses as they are; Keras's adapted (and validated)."""
    if isinstance(loss, DistillationLoss):
        return loss
    keras_base = _keras_distillation_loss_class()
    if keras_base is not None and isinstance(loss, keras_base):
        loss.validate_model_compatibility(teacher, student)
        return _KerasDistillationLoss(loss)
    accepted = "kbm.distillation.losses objects" + (
        "" if keras_base is None else " or keras.distillation losses"
    )
    raise ValueError(
        f"distillation_losses must be {accepted}. Received: {loss!r}"
    )


def _combines_teachers(loss):
    """Whether several teachers' logits are averaged for this loss."""
    if isinstance(loss, _KerasDistillationLoss):
        return isinstance(
            loss.keras_loss, keras.distillation.LogitsDistillation
        )
    return isinstance(loss, LogitsDistillation)


def _feature_model(model, keys, role):
    """A model returning [features for each key] (None = the output).

    A key is a layer name, or a path `"encoder/layer"` into a nested
    functional model (the nested model called once by `model`); a path
    ending in one of the nested model's input names is the tensor fed to
    that input.
    """
    if keys == [OUTPUT]:
        return model
    if not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(
            f"Distilling intermediate layers needs a functional or Sequential "
            f"{role} model; {model.name!r} has no symbolic inputs."
        )
    features = _symbolic_features(
        model, [k for k in keys if k is not OUTPUT], role
    )
    outputs = [model.outputs[0] if k is OUTPUT else features[k] for k in keys]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def _get_layer(model, name, role="given"):
    try:
        return model.get_layer(name)
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"The {role} model {model.name!r} has no layer named {name!r} "
            f"(its layers: {names})"
        ) from None


def _find_layer(model, key, role="given"):
    """The layer a key names (a path descends into nested models)."""
    for name in key.split("/"):
        model = _get_layer(model, name, role)
    return model


def _call_arguments(model, sub, role):
    """The symbolic first argument `model` calls its nested model with."""
    nodes = [n for n in sub._inbound_nodes if not n.is_input]
    if len(nodes) != 1:
        raise ValueError(
            f"A feature path into {sub.name!r} needs it called exactly once "
            f"in the {role} model {model.name!r}; it is called "
            f"{len(nodes)} times"
        )
    node = nodes[0]
    args = node.call_args if IS_LEGACY_KERAS else node.arguments.args
    return args[0]


def _symbolic_features(model, keys, role="given"):
    """{key: symbolic tensor of `model`'s graph} for layer names and paths."""
    features, nested = {}, {}
    for key in keys:
        head, _, rest = key.partition("/")
        if rest:
            nested.setdefault(head, []).append(key)
        else:
            features[key] = _get_layer(model, key, role).output
    for head, group in nested.items():
        sub = _get_layer(model, head, role)
        if not hasattr(sub, "input") or not hasattr(sub, "get_layer"):
            raise ValueError(
                f"The feature path(s) {group} need {head!r} to be a "
                f"functional model. Received: {type(sub).__name__}"
            )
        args = _call_arguments(model, sub, role)
        inner_keys = [k.partition("/")[2] for k in group]
        input_names = set(args) if isinstance(args, dict) else set()
        direct = [k for k in inner_keys if k in input_names]
        layered = [k for k in inner_keys if k not in input_names]
        for k in direct:
            features[f"{head}/{k}"] = args[k]
        if layered:
            inner = _symbolic_features(sub, layered, role)
            extractor = keras.Model(
                sub.input,
                [inner[k] for k in layered],
                name=f"{sub.name}_features",
            )
            outs = extractor(args)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            features.update((f"{head}/{k}", o) for k, o in zip(layered, outs))
    return features


def _output_shape(model, key):
    if key is OUTPUT:
        return tuple(model.outputs[0].shape)
    return tuple(_find_layer(model, key).output.shape)


def _output_shapes(model, keys):
    """{key: feature shape}; None for the output of a model without
    symbolic outputs (a subclassed model: only losses that need no shape
    can use it)."""
    try:
        outputs = model.outputs
    except AttributeError:
        outputs = None
    return {
        k: None if k is OUTPUT and not outputs else _output_shape(model, k)
        for k in keys
    }


def _check_weights(name, weights):
    """A list or tuple of non-negative finite numbers."""
    if not isinstance(weights, (list, tuple)) or not all(
        is_number(w) and math.isfinite(w) and w >= 0 for w in weights
    ):
        raise ValueError(
            f"{name} must be a list of non-negative numbers. "
            f"Received: {name}={weights!r}"
        )


@register_serializable
class Distiller(keras.Model):
    """Trains a student model to match a frozen teacher (and the labels).

    A `keras.Model` whose `call()` returns the student's output and whose
    `compute_loss` is `student_loss_weight * student_loss + (1 -
    student_loss_weight) * sum(w_i * distillation_loss_i)`, with the student
    loss from `compile(loss=...)`. `fit`, `evaluate` and `predict` behave as
    the student's; `student_loss`, `distillation_loss` and `total_loss` are
    tracked as metrics. The argument names follow `keras.distillation`.
    Works under Keras 3 and tf-keras.

    Beyond `keras.distillation.Distiller`:

    - the KL loss runs the fused softmax-KL kernel;
    - `FeatureDistillation` projects mismatched widths (FitNets), and
      `HiddenStateDistillation` maps student blocks to teacher blocks;
    - several teachers: a list, weighted by `teacher_weights`, averaged in
      probability space (`multi_teacher="average"`) or as one loss per
      teacher (`"per_teacher"`); feature losses use the first teacher;
    - `teacher_cache="memory"` or `"disk:<dir>"` runs the teacher once per
      example (inputs must carry an example index, see
      `kbm.distillation.with_example_index`), and inputs prepared by
      `kbm.distillation.cache_teacher_outputs` skip the teacher entirely;
    - `export_student(path)` writes a student-only artifact.

    Args:
        teacher: A Keras model, or a list of them. It is frozen.
        student: The Keras model to train.
        distillation_losses: A distillation loss or a list of them:
            `kbm.distillation.losses` objects, or on Keras 3 also
            `keras.distillation` ones (`LogitsDistillation`,
            `FeatureDistillation`, custom `DistillationLoss` subclasses).
            Defaults to `kbm.distillation.losses.LogitsDistillation()` (KL
            at temperature 3).
        distillation_loss_weights: One weight per distillation loss.
            Defaults to `1.0` each.
        student_loss_weight: Weight of the supervised loss, in [0, 1].
            Defaults to `0.5`.
        teacher_cache: `None`, `"memory"` or `"disk:<dir>"`. Defaults to
            `None`.
        teacher_weights: Weights of several teachers. Defaults to equal.
        multi_teacher: `"average"` or `"per_teacher"`. Defaults to
            `"average"`.
        **kwargs: Base model arguments (`name`, ...).

    Example:

    ```python
    distiller = kbm.distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=kbm.distillation.losses.LogitsDistillation(4.0),
        student_loss_weight=0.3)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True), metrics=["accuracy"])
    distiller.fit(x, y, epochs=10)
    distiller.export_student("student.keras")
    ```

    Reference:
    - [Hinton et al., 2015](https://arxiv.org/abs/1503.02531)
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses=None,
        distillation_loss_weights=None,
        student_loss_weight=0.5,
        teacher_cache=None,
        teacher_weights=None,
        multi_teacher="average",
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        teachers = (
            list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        )
        for i, t in enumerate(teachers):
            if not isinstance(t, keras.Model):
                raise ValueError(
                    f"teacher must be a Keras model or a list of them. "
                    f"Received: teacher[{i}] of type {type(t).__name__}"
                )
        if not isinstance(student, keras.Model):
            raise ValueError(
                "student must be a Keras model. "
                f"Received: {type(student).__name__}"
            )
        if (
            isinstance(student_loss_weight, bool)
            or not isinstance(student_loss_weight, (int, float))
            or not 0.0 <= student_loss_weight <= 1.0
        ):
            raise ValueError(
                "student_loss_weight must be a number in [0, 1]. "
                f"Received: student_loss_weight={student_loss_weight!r}"
            )
        if multi_teacher not in MULTI_TEACHER_MODES:
            raise ValueError(
                f"multi_teacher must be one of {MULTI_TEACHER_MODES}. "
                f"Received: multi_teacher={multi_teacher!r}"
            )
        if teacher_weights is None:
            teacher_weights = [1.0 / len(teachers)] * len(teachers)
        _check_weights("teacher_weights", teacher_weights)
        teacher_weights = [float(w) for w in teacher_weights]
        if len(teacher_weights) != len(teachers) or min(teacher_weights) < 0:
            raise ValueError(
                "teacher_weights needs one non-negative weight per teacher. "
                f"Received: teacher_weights={teacher_weights} for "
                f"{len(teachers)} teacher(s)"
            )
        if distillation_losses is None:
            distillation_losses = [LogitsDistillation()]
        if not isinstance(distillation_losses, (list, tuple)):
            distillation_losses = [distillation_losses]
        losses = [
            _as_kbm_loss(loss, teachers[0], student)
            for loss in distillation_losses
        ]
        for loss in losses:
            loss.configure(teachers[0], student)
        if distillation_loss_weights is None:
            distillation_loss_weights = [1.0] * len(distillation_losses)
        _check_weights("distillation_loss_weights", distillation_loss_weights)
        if len(distillation_loss_weights) != len(distillation_losses):
            raise ValueError(
                f"Number of distillation_loss_weights "
                f"({len(distillation_loss_weights)}) must match the number "
                f"of distillation_losses ({len(distillation_losses)})"
            )
        if teacher_cache is not None and not (
            teacher_cache == "memory"
            or (
                isinstance(teacher_cache, str)
                and teacher_cache.startswith("disk:")
                and len(teacher_cache) > 5
            )
        ):
            raise ValueError(
                "teacher_cache must be None, 'memory' or 'disk:<directory>'. "
                f"Received: teacher_cache={teacher_cache!r}"
            )

        self.teachers = teachers
        self.student = student
        for t in teachers:
            t.trainable = False
        self.distillation_losses = list(distillation_losses)
        self.distillation_loss_weights = [
            float(w) for w in distillation_loss_weights
        ]
        self.student_loss_weight = float(student_loss_weight)
        self.teacher_cache = teacher_cache
        self.teacher_weights = teacher_weights
        self.multi_teacher = multi_teacher

        # Which features each side needs; the output always comes first.
        t_keys, s_keys = [OUTPUT], [OUTPUT]
        for loss in losses:
            t_keys += [k for k in loss.teacher_features if k not in t_keys]
            s_keys += [k for k in loss.student_features if k not in s_keys]
        hidden = _Untracked()
        hidden.losses = losses
        hidden.teacher_keys, hidden.student_keys = t_keys, s_keys
        hidden.teacher_models = [
            _feature_model(t, t_keys if i == 0 else [OUTPUT], "teacher")
            for i, t in enumerate(teachers)
        ]
        hidden.student_model = _feature_model(student, s_keys, "student")
        t_shapes = _output_shapes(teachers[0], t_keys)
        s_shapes = _output_shapes(student, s_keys)
        for loss in losses:
            loss.build(self, t_shapes, s_shapes)
        self._hidden = hidden
        self._projections = [
            layer for loss in losses for layer in loss.trainable_layers()
        ]
        hidden.cache = None
        if teacher_cache is not None:
            # Shapes from the feature models: a path into a nested model
            # has its sequence length there, not in the nested graph.
            specs = []
            for i, model in enumerate(hidden.teacher_models):
                outputs = model.outputs[: len(t_keys) if i == 0 else 1]
                specs += [(tuple(o.shape)[1:], o.dtype) for o in outputs]
            path = teacher_cache[5:] if teacher_cache != "memory" else None
            hidden.cache = cache_lib.TeacherCache(specs, path)

        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.supports_jit = False

    @property
    def teacher(self):
        """The (first) teacher model."""
        return self.teachers[0]

    # ---------------------------------------------------------------- data

    @staticmethod
    def _unpack(x):
        """(model inputs, example index or None, cached outputs or None)."""
        if isinstance(x, dict) and cache_lib.INPUTS in x:
            return (
                x[cache_lib.INPUTS],
                x.get(cache_lib.INDEX),
                x.get(cache_lib.TEACHER_OUTPUTS),
            )
        return x, None, None

    def call(self, inputs, training=None):
        inputs, _, _ = self._unpack(inputs)
        return self.student(inputs, training=training)

    # --------------------------------------------------------------- losses

    def _teacher_forward(self, inputs):
        """Flat list of teacher features (first teacher's keys, then the
        other teachers' outputs)."""
        flat = []
        for model in self._hidden.teacher_models:
            out = model(inputs, training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            flat += [tf.stop_gradient(o) for o in out]
        return flat

    def _teacher_features(self, inputs, index, cached):
        if cached is not None:
            flat = list(tf.nest.flatten(cached))
        elif self._hidden.cache is not None and index is not None:
            flat = self._hidden.cache.lookup_or_compute(
                index, inputs, lambda: self._teacher_forward(inputs)
            )
        else:
            flat = self._teacher_forward(inputs)
        keys = self._hidden.teacher_keys
        first = dict(zip(keys, flat[: len(keys)]))
        others = flat[len(keys) :]
        if cached is not None and len(flat) < len(keys) + len(others):
            raise ValueError(
                "The cached teacher outputs do not match the "
                "features this Distiller needs."
            )
        return first, [first[OUTPUT], *others]

    def _distillation_loss(self, inputs, index, cached, y_pred, training):
        first, outputs = self._teacher_features(inputs, index, cached)
        hidden = self._hidden
        student = {OUTPUT: y_pred}
        if hidden.student_model is not self.student:
            # Intermediate features: one more student pass, as Keras's
            # Distiller does (the output stays `y_pred`).
            outs = hidden.student_model(inputs, training=training)
            student.update(zip(hidden.student_keys[1:], outs[1:]))
        total = 0.0
        for loss, weight in zip(hidden.losses, self.distillation_loss_weights):
            total += weight * self._one_loss(loss, first, outputs, student)
        return total

    def _one_loss(self, loss, first, outputs, student):
        if len(outputs) == 1 or not _combines_teachers(loss):
            return loss.compute_loss(first, student)
        if self.multi_teacher == "per_teacher":
            return tf.add_n(
                [
                    w * loss.compute_loss({OUTPUT: o}, student)
                    for w, o in zip(self.teacher_weights, outputs)
                ]
            )
        # Average the teachers in probability space at the loss's
        # temperature T, as logits: T * log(sum_i w_i softmax(t_i / T)).
        temp = loss.temperature
        total_w = sum(self.teacher_weights)
        log_probs = tf.stack(
            [
                tf.nn.log_softmax(tf.cast(o, tf.float32) / temp, axis=-1)
                + tf.math.log(w / total_w)
                for w, o in zip(self.teacher_weights, outputs)
                if w > 0
            ]
        )
        averaged = temp * tf.reduce_logsumexp(log_probs, axis=0)
        return loss.compute_loss({OUTPUT: averaged}, student)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        inputs, index, cached = self._unpack(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        kwargs = {} if IS_LEGACY_KERAS else {"training": training}
        student_loss = 0.0
        if y is not None and self.student_loss_weight > 0:
            student_loss = super().compute_loss(
                x=inputs,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                **kwargs,
            )
        distillation_loss = 0.0
        if self.student_loss_weight < 1.0:
            distillation_loss = self._distillation_loss(
                inputs, index, cached, y_pred, training
            )
        student_loss = tf.cast(student_loss, tf.float32)
        distillation_loss = tf.cast(distillation_loss, tf.float32)
        total = (
            self.student_loss_weight * student_loss
            + (1.0 - self.student_loss_weight) * distillation_loss
        )
        self.student_loss_tracker.update_state(student_loss)
        self.distillation_loss_tracker.update_state(distillation_loss)
        self.total_loss_tracker.update_state(total)
        return total

    # ------------------------------------------------------------ training

    def fit(self, *args, **kwargs):
        history = super().fit(*args, **kwargs)
        if self._hidden.cache is not None:
            self._hidden.cache.save()
        return history

    def cache_teacher_outputs(self, dataset, cache="memory", batch_size=256):
        """Runs this Distiller's teachers once over `dataset` (all features
        its losses need) and returns the dataset with their outputs; see
        `kbm.distillation.cache_teacher_outputs`."""
        return cache_lib.cache_teacher_outputs(
            self._teacher_forward, dataset, cache=cache, batch_size=batch_size
        )

    def teacher_cache_size(self):
        """How many examples the teacher cache holds."""
        cache = self._hidden.cache
        return 0 if cache is None else cache.size()

    # ----------------------------------------------------------- artifacts

    def export_student(self, path):
        """Writes the student alone: `.keras` file, or a stock-ops
        SavedModel directory (`kbm.export.export_saved_model`) otherwise.
        Teachers and distillation projections are not included."""
        path = str(path)
        if path.endswith(".keras"):
            self.student.save(path)
            return path
        return export_saved_model(self.student, path)

    def get_config(self):
        ser = keras.saving.serialize_keras_object
        teachers = [ser(t) for t in self.teachers]
        return {
            **super().get_config(),
            "name": self.name,  # tf-keras's base config has none.
            "teacher": teachers if len(teachers) > 1 else teachers[0],
            "student": ser(self.student),
            "distillation_losses": [ser(x) for x in self.distillation_losses],
            "distillation_loss_weights": self.distillation_loss_weights,
            "student_loss_weight": self.student_loss_weight,
            "teacher_cache": self.teacher_cache,
            "teacher_weights": self.teacher_weights,
            "multi_teacher": self.multi_teacher,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        missing = [
            k
            for k in ("teacher", "student", "distillation_losses")
            if k not in config
        ]
        if missing:
            raise TypeError(
                "Distiller's config is missing the required argument(s) "
                f"{missing}. Received: config keys {sorted(config)}"
            )
        if not isinstance(config["distillation_losses"], list):
            raise ValueError(
                "distillation_losses must be a list. Received: "
                f"distillation_losses={config['distillation_losses']!r}"
            )
        de = keras.saving.deserialize_keras_object
        teacher = config.pop("teacher")
        teacher = (
            [de(t) for t in teacher]
            if isinstance(teacher, list)
            else de(teacher)
        )
        student = de(config.pop("student"))
        losses = [de(x) for x in config.pop("distillation_losses")]
        return cls(
            teacher=teacher,
            student=student,
            distillation_losses=losses,
            **config,
        )
