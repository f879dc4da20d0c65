"""`kbm.optimizers.Lookahead`: wraps any Keras optimizer (Zhang et al.).

One public class on both Keras lines. The lines drive optimizers
differently (Keras 3 through `apply(grads, variables)` and an eager `build`,
tf-keras through `apply_gradients(pairs)` that builds lazily), so the part
that plugs into the base class is defined for the line in use, after each
line's own wrapper, `LossScaleOptimizer`. The arguments, their checks, the
configuration, the learning-rate delegation and the Lookahead step itself
are shared.
"""

import copy
import numbers

import tensorflow as tf

from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.optimizers import _keras_internals

# Base-optimizer arguments that act on the gradients or the weights. The
# wrapper only forwards gradients to the inner optimizer, so these belong
# there; their default values are accepted (and ignored) so that configs
# written by other tools load.
_INNER_ONLY_ARGUMENTS = {
    "weight_decay": (None, 0, 0.0),
    "clipnorm": (None,),
    "clipvalue": (None,),
    "global_clipnorm": (None,),
    "use_ema": (False,),
    "ema_momentum": (0.99,),
    "ema_overwrite_frequency": (None,),
    "loss_scale_factor": (None,),
    "gradient_accumulation_steps": (None,),
}


def _check_arguments(inner_optimizer, sync_period, slow_step_size, kwargs):
    """Validates the constructor arguments; returns the kwargs to forward."""
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
        line = "tf_keras" if IS_LEGACY_KERAS else "keras"
        legacy = " (not a `legacy` one)" if IS_LEGACY_KERAS else ""
        raise TypeError(
            f"inner_optimizer must be a `{line}.optimizers.Optimizer`{legacy}"
            f", an optimizer of the Keras line in use ({line}). Received: "
            f"inner_optimizer={inner_optimizer!r} of type "
            f"{type(inner_optimizer).__module__}."
            f"{type(inner_optimizer).__qualname__}"
        )
    if (
        not isinstance(sync_period, numbers.Integral)
        or isinstance(sync_period, bool)
        or sync_period < 1
    ):
        raise ValueError(
            "sync_period must be an integer >= 1. "
            f"Received: sync_period={sync_period!r}"
        )
    if (
        not isinstance(slow_step_size, numbers.Real)
        or isinstance(slow_step_size, bool)
        or not 0 < slow_step_size <= 1
    ):
        raise ValueError(
            "slow_step_size must be a number in (0, 1]. "
            f"Received: slow_step_size={slow_step_size!r}"
        )
    forwarded = dict(kwargs)
    if "learning_rate" in forwarded:
        raise ValueError(
            "Lookahead uses the learning rate of the inner optimizer: set it "
            "there. Received: "
            f"learning_rate={forwarded['learning_rate']!r}"
        )
    for key, defaults in _INNER_ONLY_ARGUMENTS.items():
        if key not in forwarded:
            continue
        value = forwarded.pop(key)
        if not any(value is d or value == d for d in defaults):
            raise ValueError(
                f"Lookahead does not take `{key}`: set it on the inner "
                f"optimizer. Received: {key}={value!r}"
            )
    return forwarded


def _lookahead_sync(step, sync_period, slow_step_size, fast, slow):
    """The Lookahead step on TensorFlow variables, every `sync_period` steps.

    When `step` (the count of steps including the one just taken) is a
    multiple of `sync_period`:

        slow <- slow + slow_step_size * (fast - slow);  fast <- slow

    Runs in a cross-replica context under `tf.distribute` so that each
    replica's copy is updated, as Keras's own optimizers update weights.
    """

    def move_slow(slow_var, fast_var):
        alpha = tf.cast(slow_step_size, slow_var.dtype)
        slow_var.assign_add(alpha * (fast_var - slow_var))

    def reset_fast(fast_var, slow_var):
        fast_var.assign(slow_var)

    def cross_replica(strategy, fast, slow):
        def sync():
            for fast_var, slow_var in zip(fast, slow):
                strategy.extended.update(
                    slow_var, move_slow, args=(fast_var,), group=False
                )
                strategy.extended.update(
                    fast_var, reset_fast, args=(slow_var,), group=False
                )

        due = tf.equal(tf.math.floormod(step, sync_period), 0)
        tf.cond(due, sync, lambda: None)

    _keras_internals.maybe_merge_call(
        cross_replica, tf.distribute.get_strategy(), fast, slow
    )


class _LookaheadMixin:
    """What both lines share: learning rate, config, the sync call."""

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def _sync_slow_weights(self, variables, to_tf_variable):
        step = tf.cast(tf.convert_to_tensor(self.iterations), tf.int64) + 1
        pairs = [
            (v, self._slow_weights[self._slow_index(v)]) for v in variables
        ]
        # No slow copy (Keras 3): variables overwritten with their gradient.
        pairs = [(v, s) for v, s in pairs if s is not None]
        # With gradient accumulation (Keras 3), the inner optimizer updates
        # the weights once every `accumulation` calls: count those updates.
        accumulation = (
            getattr(self.inner_optimizer, "gradient_accumulation_steps", None)
            or 1
        )
        _lookahead_sync(
            step,
            self.sync_period * accumulation,
            self.slow_step_size,
            [to_tf_variable(v) for v, _ in pairs],
            [to_tf_variable(s) for _, s in pairs],
        )

    @property
    def variables(self):
        own = super().variables
        # tf-keras returns a callable list (`opt.variables()`); keep its type.
        return type(own)(list(own) + list(self.inner_optimizer.variables))

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        # Not the base config: the gradient-processing arguments belong to
        # the inner optimizer (as in Keras's LossScaleOptimizer).
        return {
            "name": self.name,
            "inner_optimizer": keras.optimizers.serialize(self.inner_optimizer),
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if "inner_optimizer" not in config:
            raise TypeError(
                "Lookahead's config is missing the required argument "
                f"'inner_optimizer'. Received: config keys {sorted(config)}"
            )
        inner = config.pop("inner_optimizer")
        if isinstance(inner, dict):
            # Keras edits the dict it deserialises: leave the caller's alone.
            inner = keras.optimizers.deserialize(
                copy.deepcopy(inner), custom_objects=custom_objects
            )
        return cls(inner, **config)


if IS_LEGACY_KERAS:

    class _LineOptimizer(_LookaheadMixin, keras.optimizers.Optimizer):
        """tf-keras: `apply_gradients` drives the step; `build` is lazy.

        As in `tf_keras.optimizers.Optimizer`, `apply_gradients` builds the
        optimizer in `tf.init_scope` (so the slow weights copy the weights
        as they are before the first step, even inside a `tf.function`),
        then lets the inner optimizer apply the gradients (it aggregates
        them across replicas itself), then syncs.
        """

        def __init__(self, name, **kwargs):
            super().__init__(name=name, **kwargs)

        def build(self, var_list):
            if _keras_internals.legacy_built(self):
                return
            super().build(var_list)
            self._slow_weights = [
                self.add_variable_from_reference(v, "slow", initial_value=v)
                for v in var_list
            ]
            self.inner_optimizer.build(var_list)
            _keras_internals.legacy_set_built(self)

        def _slow_index(self, variable):
            return _keras_internals.variable_index(self, variable)

        def apply_gradients(
            self,
            grads_and_vars,
            name=None,
            skip_gradients_aggregation=False,
            **kwargs,
        ):
            grads_and_vars = list(grads_and_vars)
            if not grads_and_vars:
                return _keras_internals.iterations_variable(self)
            variables = [v for _, v in grads_and_vars]
            with tf.init_scope():
                self.build(variables)
            self.inner_optimizer.apply_gradients(
                grads_and_vars,
                skip_gradients_aggregation=skip_gradients_aggregation,
                **kwargs,
            )
            with tf.name_scope(name or self.name):
                self._sync_slow_weights(variables, lambda v: v)
                return _keras_internals.iterations_variable(self).assign_add(1)

else:

    class _LineOptimizer(_LookaheadMixin, keras.optimizers.Optimizer):
        """Keras 3: `apply` drives the step; the base class builds.

        The base `learning_rate` variable is left unused (reads and writes
        go to the inner optimizer, as in `keras.optimizers.
        LossScaleOptimizer`). The optimizer is built in `tf.init_scope` so
        that the slow weights copy the weights as they are before the first
        step, also when the first `apply` runs inside a `tf.function`.
        """

        def __init__(self, name, **kwargs):
            super().__init__(learning_rate=0.0, name=name, **kwargs)

        def build(self, var_list):
            if self.built:
                return
            super().build(var_list)
            # As in `add_optimizer_variables`: no state for the variables
            # that are overwritten with their gradient (float8 scales).
            self._slow_weights = [
                None
                if _keras_internals.overwritten_with_gradient(self, v)
                else self.add_variable_from_reference(
                    v, name="slow", initializer=_current_value(v)
                )
                for v in var_list
            ]
            self.inner_optimizer.build(var_list)

        def _slow_index(self, variable):
            return _keras_internals.variable_index(self, variable)

        def apply(self, grads, trainable_variables=None):
            grads = list(grads)
            if not grads:
                return
            if trainable_variables is None:
                if not self.built:
                    raise ValueError(
                        "When passing `grads` without `variables`, the "
                        "optimizer must already be built on a list of "
                        "variables. Call `optimizer.build(variables)` first."
                    )
                trainable_variables = _keras_internals.tracked_variables(self)
            else:
                trainable_variables = list(trainable_variables)
                if not self.built:
                    with tf.init_scope():
                        self.build(trainable_variables)
                _keras_internals.check_variables_are_known(
                    self, trainable_variables
                )
            self.inner_optimizer.apply(grads, trainable_variables)
            with tf.name_scope(self.name):
                self._sync_slow_weights(trainable_variables, _tf_variable)
            _keras_internals.iterations_variable(self).assign_add(1)

        def scale_loss(self, loss):
            return self.inner_optimizer.scale_loss(loss)

    def _tf_variable(variable):
        """The `tf.Variable` behind a Keras 3 variable."""
        if isinstance(variable, keras.Variable):
            return variable.value
        return variable

    def _current_value(variable):
        """An initializer giving `variable`'s value now (a copy)."""
        value = tf.identity(tf.convert_to_tensor(_tf_variable(variable)))

        def initializer(shape, dtype=None):
            return tf.cast(value, dtype or value.dtype)

        return initializer


@register_serializable
class Lookahead(_LineOptimizer):
    """Lookahead: slow weights that follow any optimizer (Zhang et al.).

    Wraps an optimizer of the Keras line in use (the "fast" optimizer). Each
    step, the inner optimizer updates the weights as usual; every
    `sync_period` steps, slow weights `phi` kept by the wrapper move toward
    the weights `theta` and the weights restart from them:

    ```
    theta <- inner_update(theta, grad)                  (every step)
    if iterations % sync_period == 0:                   (iterations counted
        phi   <- phi + slow_step_size * (theta - phi)    after the step)
        theta <- phi
    ```

    The slow weights start equal to the weights when the optimizer is built
    (the first step, or `optimizer.build(variables)`). They and the inner
    optimizer's variables are part of the optimizer's state: in `variables`,
    `tf.train.Checkpoint` and `.keras` files.

    `learning_rate` reads and writes go to the inner optimizer (so
    `keras.callbacks.ReduceLROnPlateau` and `LearningRateScheduler` work),
    and so does the loss scaling (`scale_loss`). Gradient processing
    (`clipnorm`, `weight_decay`, `use_ema`, ...) is set on the inner
    optimizer. `iterations` counts the steps the wrapper has taken; when the
    inner optimizer accumulates gradients (Keras 3's
    `gradient_accumulation_steps`), `sync_period` counts its updates. Under
    `tf.distribute`, the inner optimizer aggregates the gradients and the
    sync updates every replica's copy.

    Args:
        inner_optimizer: The optimizer to wrap, a `keras.optimizers.Optimizer`
            of the Keras line in use (under tf-keras, a
            `tf_keras.optimizers.Optimizer`, not a `legacy` one).
        sync_period: Number of inner steps between syncs, an int `>= 1`
            (the paper's `k`). Defaults to `6`.
        slow_step_size: Fraction of the way the slow weights move toward the
            fast ones at a sync, in `(0, 1]` (the paper's `alpha`). Defaults
            to `0.5`.
        name: Name of the optimizer. Defaults to `"lookahead"`.
        **kwargs: Base optimizer arguments. `learning_rate` and the ones
            that process gradients (`clipnorm`, `weight_decay`, ...) belong
            to the inner optimizer: the latter are accepted here only at
            their defaults.

    Example:

    ```python
    optimizer = kbm.optimizers.Lookahead(
        keras.optimizers.Adam(1e-3), sync_period=6, slow_step_size=0.5
    )
    model.compile(optimizer=optimizer, loss="mse")
    ```

    Reference:
    - [Zhang et al., 2019](https://arxiv.org/abs/1907.08610)
    """

    def __init__(
        self,
        inner_optimizer,
        sync_period=6,
        slow_step_size=0.5,
        name="lookahead",
        **kwargs,
    ):
        kwargs = _check_arguments(
            inner_optimizer, sync_period, slow_step_size, kwargs
        )
        super().__init__(name=name, **kwargs)
        self.inner_optimizer = inner_optimizer
        self.sync_period = sync_period
        self.slow_step_size = slow_step_size
