"""The fused update path shared by kbm's optimizers, on both Keras lines.

An optimizer mixes `FusedUpdateMixin` in front of its Keras base class and
implements two hooks:

- `_kbm_unsupported()`: a reason this optimizer's configuration has no
  kernel (e.g. AdamW with `amsgrad=True`), or None;
- `_kbm_update(grads, variables, learning_rate)`: applies its update to the
  lists through `kbm.ops.optimizers` with `use_fused_kernel=True`.

The mixin then routes Keras's per-step work:

- without a distribution strategy, all variables of a step go to ONE
  multi-tensor op call (Keras 3: `_backend_update_step`; tf-keras:
  `_distributed_apply_gradients_fn`);
- under a strategy, Keras updates each variable on each replica through
  `update_step`, which runs the same kernel for that one variable;
- decoupled weight decay is folded into the kernel, so Keras's separate
  weight-decay pass (`_apply_weight_decay`) is skipped.

When the kernel cannot run (switched off, library missing, XLA, unsupported
configuration) every method defers to the Keras base class: the reference is
Keras's own update.
"""

import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.ops import _loader


def densify(gradient):
    """Dense form of a gradient (IndexedSlices are scattered into zeros)."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


class FusedUpdateMixin:
    """Routes an optimizer's update through the fused multi-tensor kernels."""

    def _kbm_unsupported(self):
        return None

    def _kbm_update(self, grads, variables, learning_rate):
        raise NotImplementedError

    def _kbm_active(self):
        """Whether this trace uses the fused kernels (warns once if not)."""
        return (
            _loader.select(
                type(self).__name__,
                "auto",
                (),
                self._kbm_unsupported(),
            )
            is not None
        )

    def _kbm_decays(self, variables, learning_rate):
        """Per-variable decoupled weight decay factors (lr * wd, or 0)."""
        if self.weight_decay is None:
            return [0.0] * len(variables)
        lr = tf.cast(learning_rate, tf.float32)
        wd = tf.cast(self.weight_decay, tf.float32)
        zero = tf.constant(0.0, tf.float32)
        return [
            lr * wd if self._use_weight_decay(v) else zero for v in variables
        ]

    def _kbm_slot(self, slots, variable):
        """The slot variable of `variable` in the list `slots`."""
        if IS_LEGACY_KERAS:
            return slots[self._index_dict[self._var_key(variable)]]
        return slots[self._get_variable_index(variable)]

    def _kbm_step(self, dtype=tf.float32):
        return tf.cast(self.iterations + 1, dtype)

    # -- Keras hooks ---------------------------------------------------

    def _apply_weight_decay(self, variables):
        if self._kbm_active():
            return  # Folded into the fused update.
        super()._apply_weight_decay(variables)

    def update_step(self, gradient, variable, learning_rate=None):
        if self._kbm_active():
            lr = self.learning_rate if learning_rate is None else learning_rate
            self._kbm_update([gradient], [variable], lr)
            return
        if IS_LEGACY_KERAS:
            super().update_step(gradient, variable)
        else:
            super().update_step(gradient, variable, learning_rate)

    if IS_LEGACY_KERAS:

        def _distributed_apply_gradients_fn(
            self, distribution, grads_and_vars, **kwargs
        ):
            if tf.distribute.has_strategy() or not self._kbm_active():
                return super()._distributed_apply_gradients_fn(
                    distribution, grads_and_vars, **kwargs
                )
            grads, variables = zip(*grads_and_vars)
            self._kbm_update(list(grads), list(variables), self.learning_rate)
            if self.use_ema:
                self._update_model_variables_moving_average(variables)
                if self.ema_overwrite_frequency:
                    overwrite = (
                        self.iterations + 1
                    ) % self.ema_overwrite_frequency == 0
                    tf.cond(
                        tf.cast(overwrite, tf.bool),
                        lambda: (
                            self._overwrite_model_variables_with_average_value(  # noqa: E501
                                variables
                            )
                        ),
                        lambda: None,
                    )
            return self.iterations.assign_add(1)

    else:

        def _backend_update_step(
            self, grads, trainable_variables, learning_rate
        ):
            if tf.distribute.has_strategy() or not self._kbm_active():
                return super()._backend_update_step(
                    grads, trainable_variables, learning_rate
                )
            self._kbm_update(
                list(grads), list(trainable_variables), learning_rate
            )
