"""`kbm.optimizers.RAdam`: rectified Adam, with a fused update kernel."""

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
    cast_to_variable,
    one_minus,
    value_of,
)
from keras_bigmodels.optimizers._legacy_base import (
    init_optimizer,
    serialize_learning_rate,
)
from keras_bigmodels.optimizers._slots import build_slots, legacy_build_guard
from keras_bigmodels.optimizers.adamw import apply_adam_family


def radam_scalars(optimizer, learning_rate):
    """Scalars of the RAdam step, for the Adam-family kernel.

    With rho_inf = 2 / (1 - b2) - 1 and rho_t = rho_inf - 2 t b2^t /
    (1 - b2^t): if rho_t >= sma_threshold the step is the rectified one,
    lr * r_t * m_hat / (sqrt(v_hat) + eps) with
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2)
    rho_t)); otherwise it is lr * m_hat (momentum SGD).
    """
    lr = tf.cast(learning_rate, tf.float32)
    t = optimizer._kbm_step()
    b1 = tf.cast(value_of(optimizer.beta_1), tf.float32)
    b2 = tf.cast(value_of(optimizer.beta_2), tf.float32)
    b1_power, b2_power = tf.pow(b1, t), tf.pow(b2, t)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * b2_power / (1.0 - b2_power)
    rectified = rho_t >= optimizer.sma_threshold
    r_t = tf.sqrt(
        tf.maximum(
            (rho_t - 4.0)
            * (rho_t - 2.0)
            * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
            0.0,
        )
    )
    step = lr / (1.0 - b1_power)
    return dict(
        one_minus_beta_1=one_minus(optimizer.beta_1),
        one_minus_beta_2=one_minus(optimizer.beta_2),
        coef_adaptive=tf.where(rectified, step * r_t, 0.0),
        bias_2=1.0 - b2_power,
        coef_sgd=tf.where(rectified, 0.0, step),
        epsilon=optimizer.epsilon,
    )


@register_serializable
class RAdam(FusedUpdateMixin, keras.optimizers.Optimizer):
    """Rectified Adam with optional decoupled weight decay, fused.

    Adam's adaptive step has a large variance early in training; RAdam
    multiplies it by the rectification term `r_t` once the approximated
    length of the moving average `rho_t` exceeds `sma_threshold`, and takes
    a momentum-SGD step (`lr * m_hat`) before that (Liu et al., 2020).
    `weight_decay` is decoupled (`p -= lr * weight_decay * p`, as in AdamW;
    `exclude_from_weight_decay` works as in Keras). The update runs in the
    Adam-family kernel, `Kbm>MultiApplyAdam`, with the step's coefficients;
    fallback, strategies, sparse gradients (densified, or row-wise with
    `lazy_sparse_updates=True`) and `jit_compile` as in
    `kbm.optimizers.AdamW`.

    Args:
        learning_rate: Defaults to `0.001`.
        beta_1: Defaults to `0.9`.
        beta_2: Defaults to `0.999`.
        epsilon: Defaults to `1e-7`.
        weight_decay: Decoupled weight decay, or None. Defaults to `None`.
        sma_threshold: `rho_t` from which the rectified step is used (4 in
            the paper's analysis, 5 in common implementations). Defaults to
            `5.0`.
        lazy_sparse_updates: Update only the rows of sparse gradients.
            Defaults to `False`.
        **kwargs: Keras's optimizer arguments (`clipnorm`, `use_ema`, ...).

    Example:

    ```python
    opt = kbm.optimizers.RAdam(1e-3, weight_decay=0.01)
    ```

    Reference:
    - [Liu et al., 2020](https://arxiv.org/abs/1908.03265)
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=None,
        sma_threshold=5.0,
        lazy_sparse_updates=False,
        name="radam",
        **kwargs,
    ):
        check_learning_rate(learning_rate)
        check_beta("beta_1", beta_1)
        check_beta("beta_2", beta_2)
        check_non_negative("epsilon", epsilon)
        check_non_negative("weight_decay", weight_decay, allow_none=True)
        check_non_negative("sma_threshold", sma_threshold)
        init_optimizer(
            self,
            keras.optimizers.Optimizer,
            learning_rate,
            name,
            dict(kwargs, weight_decay=weight_decay),
        )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.sma_threshold = sma_threshold
        self.lazy_sparse_updates = lazy_sparse_updates

    def build(self, var_list):
        if IS_LEGACY_KERAS:
            super().build(var_list)  # tf-keras calls build() every step.
            if legacy_build_guard(self):
                return
        else:
            if self.built:
                return
            super().build(var_list)
        self._momentums, self._velocities = build_slots(
            self, var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate=None):
        if self._kbm_active():
            return super().update_step(gradient, variable, learning_rate)
        # The reference: decoupled weight decay was applied by the base.
        lr = self.learning_rate if learning_rate is None else learning_rate
        self._kbm_radam([gradient], [variable], lr, fused=False)

    def _kbm_update(self, grads, variables, learning_rate):
        self._kbm_radam(grads, variables, learning_rate, fused=True)

    def _kbm_radam(self, grads, variables, learning_rate, fused):
        scalars = radam_scalars(self, learning_rate)
        if fused:
            apply_adam_family(self, grads, variables, learning_rate, scalars)
            return
        momentums = self._kbm_slots("momentums", variables)
        velocities = self._kbm_slots("velocities", variables)
        for g, v, m, vel in zip(grads, variables, momentums, velocities):
            g = cast_to_variable(g, v)
            if isinstance(g, tf.IndexedSlices) and self.lazy_sparse_updates:
                optimizer_ops.adam_sparse_update(
                    v, m, vel, g, decay=0.0, **scalars
                )
            else:
                optimizer_ops.adam_update(
                    [v],
                    [m],
                    [vel],
                    [tf.convert_to_tensor(g)],
                    decays=[0.0],
                    use_fused_kernel=False,
                    **scalars,
                )

    def get_config(self):
        config = {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "sma_threshold": self.sma_threshold,
            "lazy_sparse_updates": self.lazy_sparse_updates,
        }
        learning_rate = serialize_learning_rate(self)
        if learning_rate is not None:
            config["learning_rate"] = learning_rate
        return config
