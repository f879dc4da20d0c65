"""The fused update path shared by kbm's optimizers, on both Keras lines.

An optimizer mixes `FusedUpdateMixin` in front of its Keras base class and
implements two hooks:

- `_kbm_unsupported()`: a reason this optimizer's configuration has no
  kernel (e.g. AdamW with `amsgrad=True`), or None;
- `_kbm_update(grads, variables, learning_rate)`: applies its update to the
  lists through `kbm.ops.optimizers` with `use_fused_kernel=True`.

The mixin then routes Keras's per-step work:

- without a distribution strategy, all variables of a step go to ONE
  multi-tensor op call (through Keras's private step hooks, overridden in
  `_keras_internals.FusedStepHooks`);
- under a strategy, Keras updates each variable on each replica through
  `update_step`, which runs the same kernel for that one variable;
- decoupled weight decay is folded into the kernel, so Keras's separate
  weight-decay pass is skipped.

Gradients are cast to their variable's dtype first, as Keras's own
`update_step`s do. When the kernel cannot run (switched off, library
missing, XLA, unsupported configuration) every method defers to the Keras
base class: the reference is Keras's own update.
"""

import tensorflow as tf

from keras_bigmodels.backend import IS_LEGACY_KERAS
from keras_bigmodels.ops import _loader
from keras_bigmodels.optimizers import _keras_internals


def densify(gradient):
    """Dense form of a gradient (IndexedSlices are scattered into zeros)."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


def cast_to_variable(gradient, variable):
    """`gradient` in `variable`'s dtype (IndexedSlices stay sparse)."""
    dtype = tf.as_dtype(variable.dtype)
    if gradient.dtype == dtype:
        return gradient
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(
            tf.cast(gradient.values, dtype),
            gradient.indices,
            gradient.dense_shape,
        )
    return tf.cast(gradient, dtype)


def one_minus(value):
    """1 - value, in Python double when value is a number (as Keras does)."""
    if callable(value):
        value = value()
    return 1.0 - value


def value_of(x):
    """Calls a callable hyperparameter (Keras allows them)."""
    return x() if callable(x) else x


class FusedUpdateMixin(_keras_internals.FusedStepHooks):
    """Routes an optimizer's update through the fused multi-tensor kernels."""

    def _kbm_unsupported(self):
        return None

    def _kbm_update(self, grads, variables, learning_rate):
        raise NotImplementedError

    def _kbm_apply(self, grads, variables, learning_rate):
        """`_kbm_update` with the gradients cast as Keras casts them."""
        grads = [cast_to_variable(g, v) for g, v in zip(grads, variables)]
        self._kbm_update(grads, variables, learning_rate)

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
            lr * wd if _keras_internals.uses_weight_decay(self, v) else zero
            for v in variables
        ]

    def _kbm_slots(self, name, variables):
        """The slot variables `name` ("momentums", ...) of `variables`."""
        slots = _keras_internals.slots(self, name)
        return [
            slots[_keras_internals.variable_index(self, v)] for v in variables
        ]

    def _kbm_step(self, dtype=tf.float32):
        return tf.cast(self.iterations + 1, dtype)

    def update_step(self, gradient, variable, learning_rate=None):
        if self._kbm_active():
            lr = self.learning_rate if learning_rate is None else learning_rate
            self._kbm_apply([gradient], [variable], lr)
            return
        if IS_LEGACY_KERAS:
            super().update_step(gradient, variable)
        else:
            super().update_step(gradient, variable, learning_rate)
