"""`kbm.optimizers.AdamW`: Keras's AdamW with a fused multi-tensor update."""

import tensorflow as tf

from keras_bigmodels._validation import (
    check_beta,
    check_learning_rate,
    check_non_negative,
)
from keras_bigmodels.backend import (
    IS_LEGACY_KERAS,
    keras,
    register_serializable,
)
from keras_bigmodels.ops import optimizers as optimizer_ops
from keras_bigmodels.optimizers._fused import (
    FusedUpdateMixin,
    densify,
    one_minus,
    value_of,
)


def adam_scalars(optimizer, learning_rate):
    """The Adam step's scalars, computed as Keras's Adam computes them."""
    lr = tf.cast(learning_rate, tf.float32)
    step = optimizer._kbm_step()
    b1_power = tf.pow(tf.cast(value_of(optimizer.beta_1), tf.float32), step)
    b2_power = tf.pow(tf.cast(value_of(optimizer.beta_2), tf.float32), step)
    return dict(
        one_minus_beta_1=one_minus(optimizer.beta_1),
        one_minus_beta_2=one_minus(optimizer.beta_2),
        coef_adaptive=lr * tf.sqrt(1 - b2_power) / (1 - b1_power),
        bias_2=1.0,
        coef_sgd=0.0,
        epsilon=optimizer.epsilon,
    )


def apply_adam_family(optimizer, grads, variables, learning_rate, scalars):
    """Dense gradients: one multi-tensor call; IndexedSlices: densified, or
    row-wise (lazy) when `optimizer.lazy_sparse_updates`."""
    decays = optimizer._kbm_decays(variables, learning_rate)
    dense = [[], [], [], [], []]
    momentums = optimizer._kbm_slots("momentums", variables)
    velocities = optimizer._kbm_slots("velocities", variables)
    for g, v, d, m, vel in zip(grads, variables, decays, momentums, velocities):
        if isinstance(g, tf.IndexedSlices) and optimizer.lazy_sparse_updates:
            optimizer_ops.adam_sparse_update(v, m, vel, g, decay=d, **scalars)
            continue
        for lst, item in zip(dense, (v, m, vel, densify(g), d)):
            lst.append(item)
    if dense[0]:
        v, m, vel, g, d = dense
        optimizer_ops.adam_update(
            v, m, vel, g, decays=d, use_fused_kernel=True, **scalars
        )


@register_serializable
class AdamW(FusedUpdateMixin, keras.optimizers.AdamW):
    """AdamW with a fused, in-place, multi-tensor update kernel.

    The same constructor arguments, slot variables (`momentum`, `velocity`)
    and update math as `keras.optimizers.AdamW` of the Keras line in use
    (`weight_decay`, `exclude_from_weight_decay`, `clipnorm` / `clipvalue` /
    `global_clipnorm`, `use_ema`, `gradient_accumulation_steps`,
    `loss_scale_factor` and learning-rate schedules all behave as in Keras).
    The difference is the step: instead of a chain of TensorFlow ops per
    variable, one `Kbm>MultiApplyAdam` call updates every variable, its two
    slots and its decoupled weight decay in place, reading and writing each
    element once. Under a `tf.distribute` strategy each replica's variables
    are updated by the same kernel, one variable per call.

    Kernels: CPU, float16/bfloat16/float32/float64 variables. Keras's own
    update runs instead (one warning) when the kernel cannot: `amsgrad=True`,
    inside XLA, library not built, or kernels switched off.

    Sparse gradients (`tf.IndexedSlices`, e.g. from `Embedding`) are
    densified, as in Keras, unless `lazy_sparse_updates=True`: then only the
    rows in the gradient have their moments, weight decay and values updated
    (LazyAdam semantics; plain TensorFlow ops, no kernel).

    Under tf-keras, `jit_compile` defaults to False: XLA cannot run the
    fused kernel.

    Args:
        learning_rate: A float, schedule or callable. Defaults to `0.001`.
        weight_decay: Decoupled weight decay. Defaults to `0.004`.
        beta_1: Defaults to `0.9`.
        beta_2: Defaults to `0.999`.
        epsilon: Defaults to `1e-7`.
        amsgrad: Defaults to `False` (True runs Keras's update).
        lazy_sparse_updates: Update only the rows of sparse gradients.
            Defaults to `False`.
        **kwargs: Keras's optimizer arguments (`clipnorm`, `use_ema`, ...).

    Example:

    ```python
    model.compile(optimizer=kbm.optimizers.AdamW(3e-4, weight_decay=0.01),
                  loss="mse")
    ```

    Reference:
    - [Loshchilov and Hutter, 2019](https://arxiv.org/abs/1711.05101)
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        lazy_sparse_updates=False,
        **kwargs,
    ):
        check_learning_rate(learning_rate)
        check_beta("beta_1", beta_1)
        check_beta("beta_2", beta_2)
        check_non_negative("epsilon", epsilon)
        check_non_negative("weight_decay", weight_decay, allow_none=True)
        if IS_LEGACY_KERAS:
            kwargs.setdefault("jit_compile", False)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            **kwargs,
        )
        self.lazy_sparse_updates = lazy_sparse_updates

    def _kbm_unsupported(self):
        return "amsgrad=True has no fused kernel" if self.amsgrad else None

    def _kbm_update(self, grads, variables, learning_rate):
        apply_adam_family(
            self,
            grads,
            variables,
            learning_rate,
            adam_scalars(self, learning_rate),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "lazy_sparse_updates": self.lazy_sparse_updates,
        }
