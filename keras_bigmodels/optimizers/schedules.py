"""`kbm.optimizers.schedules`: warmup learning-rate schedules.

Schedules that large-model recipes use and that Keras does not ship on both
of its lines: tf-keras's `CosineDecay` has no warmup, and neither line has a
warmup + linear decay (BERT) or a warmup + inverse square root (Transformer)
schedule. Each behaves the same on Keras 3 and tf-keras, works eagerly and
inside `tf.function` with an integer or float step tensor, computes in
float32, and serialises (`get_config`/`from_config`, `.keras` files).
"""

import math
import numbers

import tensorflow as tf

from keras_bigmodels.backend import keras, register_serializable


def _check_number(name, value, low, high=None):
    """Raises a `ValueError` unless `value` is a number in `[low, high]`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        what = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(
            f"{name} must be a number {what}. Received: {name}={value!r}"
        )


class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to a peak, then a decay that subclasses define.

    Subclasses implement `_decay(steps_after_warmup)` (a float32 tensor
    >= 0) returning the learning rate after the warmup, and list their own
    arguments in `get_config`.
    """

    def __init__(
        self, peak_learning_rate, warmup_steps, initial_learning_rate, name
    ):
        super().__init__()
        _check_number("peak_learning_rate", peak_learning_rate, 0)
        _check_number("warmup_steps", warmup_steps, 0)
        _check_number("initial_learning_rate", initial_learning_rate, 0)
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.initial_learning_rate = initial_learning_rate
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or type(self).__name__):
            step = tf.maximum(tf.cast(step, tf.float32), 0.0)
            warmup = tf.constant(self.warmup_steps, tf.float32)
            decayed = self._decay(tf.maximum(step - warmup, 0.0))
            if self.warmup_steps == 0:
                return decayed
            initial = tf.constant(self.initial_learning_rate, tf.float32)
            peak = tf.constant(self.peak_learning_rate, tf.float32)
            warming = initial + (peak - initial) * (step / warmup)
            return tf.where(step < warmup, warming, decayed)

    def _decay(self, steps_after_warmup):
        raise NotImplementedError

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }


@register_serializable
class WarmupCosineDecay(_WarmupSchedule):
    """Linear warmup, then cosine decay (Loshchilov and Hutter, 2017).

    With `s` the step (the optimizer's `iterations`), `w = warmup_steps`
    and `d = decay_steps`:

    ```
    s < w:          lr = initial + (peak - initial) * s / w
    w <= s:         t = min(s - w, d) / d
                    lr = peak * ((1 - alpha) * 0.5 * (1 + cos(pi * t)) + alpha)
    ```

    so the rate rises linearly from `initial_learning_rate` at step 0 to
    `peak_learning_rate` at step `w`, follows half a cosine down to
    `alpha * peak_learning_rate` at step `w + d`, and stays there. Keras 3's
    `CosineDecay(warmup_steps=...)` has the same shape, tf-keras's has no
    warmup; this one is the same on both lines. Computed in float32.

    Args:
        peak_learning_rate: The rate at the end of the warmup, a float
            `>= 0`.
        warmup_steps: Number of warmup steps, `>= 0`; `0` starts the decay
            at once.
        decay_steps: Number of steps of the cosine decay after the warmup,
            `>= 1`.
        alpha: The final rate as a fraction of `peak_learning_rate`, in
            `[0, 1]`. Defaults to `0.0`.
        initial_learning_rate: The rate at step 0, a float `>= 0`.
            Defaults to `0.0`.
        name: Name scope of the operations. Defaults to `None`.

    Call arguments:
        step: The step, a Python number or an integer or float scalar
            tensor. Negative steps count as 0.

    Returns:
        The learning rate, a float32 scalar tensor.

    Example:

    ```python
    schedule = kbm.optimizers.schedules.WarmupCosineDecay(
        peak_learning_rate=1e-3, warmup_steps=1000, decay_steps=99000
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    ```

    Reference:
    - [Loshchilov and Hutter, 2017](https://arxiv.org/abs/1608.03983)
    - [Goyal et al., 2017](https://arxiv.org/abs/1706.02677) (warmup)
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        decay_steps,
        alpha=0.0,
        initial_learning_rate=0.0,
        name=None,
    ):
        super().__init__(
            peak_learning_rate, warmup_steps, initial_learning_rate, name
        )
        _check_number("decay_steps", decay_steps, 1)
        _check_number("alpha", alpha, 0, 1)
        self.decay_steps = decay_steps
        self.alpha = alpha

    def _decay(self, steps_after_warmup):
        decay_steps = tf.constant(self.decay_steps, tf.float32)
        t = tf.minimum(steps_after_warmup, decay_steps) / decay_steps
        cosine = 0.5 * (1.0 + tf.cos(math.pi * t))
        alpha = tf.constant(self.alpha, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        return peak * ((1.0 - alpha) * cosine + alpha)

    def get_config(self):
        return {
            **super().get_config(),
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
        }


@register_serializable
class WarmupLinearDecay(_WarmupSchedule):
    """Linear warmup, then linear decay: BERT's schedule (Devlin et al.).

    With `s` the step (the optimizer's `iterations`), `w = warmup_steps`
    and `d = decay_steps`:

    ```
    s < w:          lr = initial + (peak - initial) * s / w
    w <= s:         t = min(s - w, d) / d
                    lr = peak + (end - peak) * t
    ```

    so the rate rises linearly from `initial_learning_rate` at step 0 to
    `peak_learning_rate` at step `w`, falls linearly to `end_learning_rate`
    at step `w + d`, and stays there. Computed in float32.

    Args:
        peak_learning_rate: The rate at the end of the warmup, a float
            `>= 0`.
        warmup_steps: Number of warmup steps, `>= 0`; `0` starts the decay
            at once.
        decay_steps: Number of steps of the linear decay after the warmup,
            `>= 1`.
        end_learning_rate: The final rate, a float `>= 0`. Defaults to
            `0.0`.
        initial_learning_rate: The rate at step 0, a float `>= 0`.
            Defaults to `0.0`.
        name: Name scope of the operations. Defaults to `None`.

    Call arguments:
        step: The step, a Python number or an integer or float scalar
            tensor. Negative steps count as 0.

    Returns:
        The learning rate, a float32 scalar tensor.

    Example:

    ```python
    schedule = kbm.optimizers.schedules.WarmupLinearDecay(
        peak_learning_rate=1e-4, warmup_steps=10000, decay_steps=990000
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    ```

    Reference:
    - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        decay_steps,
        end_learning_rate=0.0,
        initial_learning_rate=0.0,
        name=None,
    ):
        super().__init__(
            peak_learning_rate, warmup_steps, initial_learning_rate, name
        )
        _check_number("decay_steps", decay_steps, 1)
        _check_number("end_learning_rate", end_learning_rate, 0)
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate

    def _decay(self, steps_after_warmup):
        decay_steps = tf.constant(self.decay_steps, tf.float32)
        t = tf.minimum(steps_after_warmup, decay_steps) / decay_steps
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        end = tf.constant(self.end_learning_rate, tf.float32)
        return peak + (end - peak) * t

    def get_config(self):
        return {
            **super().get_config(),
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
        }


@register_serializable
class WarmupInverseSqrtDecay(_WarmupSchedule):
    """Linear warmup, then inverse square root decay (Vaswani et al.).

    With `s` the step (the optimizer's `iterations`) and
    `w = warmup_steps`:

    ```
    s < w:          lr = initial + (peak - initial) * s / w
    w <= s:         lr = peak * sqrt(max(w, 1) / max(s, 1))
    ```

    that is `peak * sqrt(w / s)` after a warmup of `w >= 1` steps: the
    schedule of "Attention Is All You Need",
    `d_model**-0.5 * min(s**-0.5, s * w**-1.5)`, written with its peak
    `d_model**-0.5 * w**-0.5` as the argument. With `warmup_steps=0` it is
    `peak / sqrt(max(s, 1))`. Computed in float32.

    Args:
        peak_learning_rate: The rate at the end of the warmup, a float
            `>= 0`.
        warmup_steps: Number of warmup steps, `>= 0`; `0` starts the decay
            at once.
        initial_learning_rate: The rate at step 0, a float `>= 0`.
            Defaults to `0.0`.
        name: Name scope of the operations. Defaults to `None`.

    Call arguments:
        step: The step, a Python number or an integer or float scalar
            tensor. Negative steps count as 0.

    Returns:
        The learning rate, a float32 scalar tensor.

    Example:

    ```python
    schedule = kbm.optimizers.schedules.WarmupInverseSqrtDecay(
        peak_learning_rate=7e-4, warmup_steps=4000
    )
    optimizer = keras.optimizers.Adam(learning_rate=schedule)
    ```

    Reference:
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        initial_learning_rate=0.0,
        name=None,
    ):
        super().__init__(
            peak_learning_rate, warmup_steps, initial_learning_rate, name
        )

    def _decay(self, steps_after_warmup):
        start = tf.constant(max(self.warmup_steps, 1), tf.float32)
        step = steps_after_warmup + tf.constant(self.warmup_steps, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        return peak * tf.sqrt(start / tf.maximum(step, start))
