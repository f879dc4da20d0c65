"""Every access of kbm's optimizers to Keras-private optimizer internals.

Keras has no public multi-tensor update hook, no public slot accessors and
no public cross-replica merge, so the fused optimizers and `Lookahead` must
reach into private members of Keras's `Optimizer`. They do so only through
this module. `HOOKED` lists each private name used, per Keras line;
`tests/optimizers/keras_internals_test.py` asserts that each still exists,
so a Keras upgrade that renames one fails there, in one obvious place.
"""

import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS

# Private names used below, on the classes (methods) and on built
# instances (attributes) of the line's `keras.optimizers.Optimizer`, and
# in `tf`. Slot lists (`slots`) are checked per optimizer by the test.
if IS_LEGACY_KERAS:
    HOOKED = {
        "methods": (
            "_apply_weight_decay",
            "_build_learning_rate",
            "_distributed_apply_gradients_fn",
            "_overwrite_model_variables_with_average_value",
            "_serialize_hyperparameter",
            "_update_model_variables_moving_average",
            "_use_weight_decay",
            "_var_key",
        ),
        "attributes": ("_index_dict", "_iterations", "_learning_rate"),
        "tf": ("__internal__.distribute.interim.maybe_merge_call",),
    }
else:
    HOOKED = {
        "methods": (
            "_apply_weight_decay",
            "_backend_update_step",
            "_check_variables_are_known",
            "_get_variable_index",
            "_overwrite_variable_with_gradient",
            "_use_weight_decay",
        ),
        "attributes": ("_iterations", "_trainable_variables"),
        "tf": ("__internal__.distribute.interim.maybe_merge_call",),
    }


# -- Reading optimizer state ---------------------------------------------


def slots(optimizer, name):
    """The slot list `name` ("momentums" or "velocities").

    Keras 3's Adam-family optimizers keep it as `_momentums`; tf-keras's
    Lion as the public `momentums`.
    """
    found = getattr(optimizer, "_" + name, None)
    return getattr(optimizer, name) if found is None else found


def variable_index(optimizer, variable):
    """The position of `variable` in the optimizer's slot lists."""
    if IS_LEGACY_KERAS:
        return optimizer._index_dict[optimizer._var_key(variable)]
    return optimizer._get_variable_index(variable)


def uses_weight_decay(optimizer, variable):
    """Whether decoupled weight decay applies to `variable`."""
    return optimizer._use_weight_decay(variable)


def iterations_variable(optimizer):
    """The optimizer's step counter, the variable itself."""
    return optimizer._iterations


def tracked_variables(optimizer):
    """Keras 3: the variables the optimizer was built on."""
    return optimizer._trainable_variables


def check_variables_are_known(optimizer, variables):
    """Keras 3: raises if `variables` are not the ones it was built on."""
    optimizer._check_variables_are_known(variables)


def overwritten_with_gradient(optimizer, variable):
    """Keras 3: whether `variable` is overwritten by its gradient (float8
    scales), and so has no optimizer state."""
    return optimizer._overwrite_variable_with_gradient(variable)


# -- tf-keras construction -------------------------------------------------


def legacy_set_learning_rate(optimizer, learning_rate):
    """tf-keras: builds the learning-rate variable or schedule."""
    optimizer._learning_rate = optimizer._build_learning_rate(learning_rate)


def legacy_built(optimizer):
    """tf-keras: whether `build` ran (its base sets `_built` in `build`)."""
    return getattr(optimizer, "_built", False)


def legacy_set_built(optimizer):
    optimizer._built = True


def legacy_serialize_learning_rate(optimizer):
    """tf-keras: the learning rate as `get_config` writes it."""
    return optimizer._serialize_hyperparameter(optimizer._learning_rate)


# -- Cross-replica merge ---------------------------------------------------


def maybe_merge_call(fn, strategy, *args):
    """Runs `fn(strategy, *args)` in a cross-replica context if needed."""
    return tf.__internal__.distribute.interim.maybe_merge_call(
        fn, strategy, *args
    )


# -- The step hooks --------------------------------------------------------


class FusedStepHooks:
    """Overrides of Keras's private per-step methods.

    The class using it provides `_kbm_active()` (whether this trace runs the
    fused kernel) and `_kbm_apply(grads, variables, learning_rate)` (one
    multi-tensor update of all variables, weight decay included):

    - Keras 3: `_backend_update_step` receives all variables of a step;
    - tf-keras: `_distributed_apply_gradients_fn` does, and must also run the
      EMA update that Keras does there;
    - both: `_apply_weight_decay`, Keras's separate weight-decay pass, is
      skipped (the kernel folds the decay in).

    Under a distribution strategy, or when the kernel cannot run, each
    hook defers to Keras.
    """

    def _apply_weight_decay(self, variables):
        if self._kbm_active():
            return  # Folded into the fused update.
        super()._apply_weight_decay(variables)

    if IS_LEGACY_KERAS:

        def _distributed_apply_gradients_fn(
            self, distribution, grads_and_vars, **kwargs
        ):
            if tf.distribute.has_strategy() or not self._kbm_active():
                return super()._distributed_apply_gradients_fn(
                    distribution, grads_and_vars, **kwargs
                )
            grads, variables = zip(*grads_and_vars)
            self._kbm_apply(list(grads), list(variables), self.learning_rate)
            if self.use_ema:
                _legacy_ema_step(self, variables)
            return self.iterations.assign_add(1)

    else:

        def _backend_update_step(
            self, grads, trainable_variables, learning_rate
        ):
            if tf.distribute.has_strategy() or not self._kbm_active():
                return super()._backend_update_step(
                    grads, trainable_variables, learning_rate
                )
            self._kbm_apply(
                list(grads), list(trainable_variables), learning_rate
            )


def _legacy_ema_step(optimizer, variables):
    """tf-keras: the EMA update its `_distributed_apply_gradients_fn` runs."""
    optimizer._update_model_variables_moving_average(variables)
    if optimizer.ema_overwrite_frequency:
        overwrite = (
            optimizer.iterations + 1
        ) % optimizer.ema_overwrite_frequency == 0
        tf.cond(
            tf.cast(overwrite, tf.bool),
            lambda: optimizer._overwrite_model_variables_with_average_value(
                variables
            ),
            lambda: None,
        )
