"""`kbm.optimizers.Lamb`: LAMB with a fused multi-tensor update."""

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
    densify,
    one_minus,
    value_of,
)
from keras_bigmodels.optimizers._legacy_base import (
    init_optimizer,
    serialize_learning_rate,
)
from keras_bigmodels.optimizers._slots import build_slots, legacy_build_guard


def lamb_scalars(optimizer, learning_rate):
    """The LAMB step's scalars, computed as Keras's Lamb computes them."""
    step = optimizer._kbm_step()
    return dict(
        learning_rate=tf.cast(learning_rate, tf.float32),
        one_minus_beta_1=one_minus(optimizer.beta_1),
        one_minus_beta_2=one_minus(optimizer.beta_2),
        bias_1=1.0
        - tf.pow(tf.cast(value_of(optimizer.beta_1), tf.float32), step),
        bias_2=1.0
        - tf.pow(tf.cast(value_of(optimizer.beta_2), tf.float32), step),
        epsilon=optimizer.epsilon,
    )


if IS_LEGACY_KERAS:

    class _LambBase(keras.optimizers.Optimizer):
        """LAMB for tf-keras, which has none; Keras 3's arguments and math."""

        def __init__(
            self,
            learning_rate=0.001,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-7,
            name="lamb",
            **kwargs,
        ):
            init_optimizer(
                self, keras.optimizers.Optimizer, learning_rate, name, kwargs
            )
            self.beta_1 = beta_1
            self.beta_2 = beta_2
            self.epsilon = epsilon

        def build(self, var_list):
            super().build(var_list)
            if legacy_build_guard(self):
                return
            self._momentums, self._velocities = build_slots(
                self, var_list, ["m", "v"]
            )

        def update_step(self, gradient, variable):
            # The reference; decoupled weight decay was applied by the base.
            optimizer_ops.lamb_update(
                [variable],
                self._kbm_slots("momentums", [variable]),
                self._kbm_slots("velocities", [variable]),
                [densify(cast_to_variable(gradient, variable))],
                decays=[0.0],
                use_fused_kernel=False,
                **lamb_scalars(self, self.learning_rate),
            )

        def get_config(self):
            return {
                **super().get_config(),
                "learning_rate": serialize_learning_rate(self),
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
            }

else:
    _LambBase = keras.optimizers.Lamb


@register_serializable
class Lamb(FusedUpdateMixin, _LambBase):
    """LAMB (layer-wise adaptive moments) with a fused update kernel.

    The constructor arguments, slots (`momentum`, `velocity`) and update
    math of Keras 3's `keras.optimizers.Lamb` (also provided under tf-keras,
    which has no LAMB): Adam moments, then each variable's update is scaled
    by the trust ratio `||w|| / ||update||`. `Kbm>MultiApplyLamb` updates
    all variables in two passes over memory (moments and norms, then the
    scaled update), with decoupled weight decay folded in. Fallback,
    strategies, sparse gradients (densified) and `jit_compile` as in
    `kbm.optimizers.AdamW`.

    Args:
        learning_rate: Defaults to `0.001`.
        beta_1: Defaults to `0.9`.
        beta_2: Defaults to `0.999`.
        epsilon: Defaults to `1e-7`.
        **kwargs: Keras's optimizer arguments (`weight_decay`, `clipnorm`,
            ...).

    Example:

    ```python
    opt = kbm.optimizers.Lamb(learning_rate=1e-3, weight_decay=0.01)
    ```

    Reference:
    - [You et al., 2019](https://arxiv.org/abs/1904.00962)
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        **kwargs,
    ):
        check_learning_rate(learning_rate)
        check_beta("beta_1", beta_1)
        check_beta("beta_2", beta_2)
        check_non_negative("epsilon", epsilon)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            **kwargs,
        )

    def _kbm_update(self, grads, variables, learning_rate):
        optimizer_ops.lamb_update(
            variables,
            self._kbm_slots("momentums", variables),
            self._kbm_slots("velocities", variables),
            [densify(g) for g in grads],
            decays=self._kbm_decays(variables, learning_rate),
            use_fused_kernel=True,
            **lamb_scalars(self, learning_rate),
        )
