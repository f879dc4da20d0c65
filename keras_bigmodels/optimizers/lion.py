"""`kbm.optimizers.Lion`: Keras's Lion with a fused multi-tensor update."""

import tensorflow as tf

from keras_bigmodels._validation import (
    check_beta,
    check_learning_rate,
    check_numeric,
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
    value_of,
)


@register_serializable
class Lion(FusedUpdateMixin, keras.optimizers.Lion):
    """Lion (evolved sign momentum) with a fused multi-tensor update kernel.

    The same constructor arguments, slot (`momentum`) and update math as
    `keras.optimizers.Lion` of the Keras line in use, with decoupled weight
    decay folded into the kernel (`weight_decay` and
    `exclude_from_weight_decay` behave as in Keras). One `Kbm>MultiApplyLion`
    call updates every variable and its momentum in place. Fallback,
    strategies and `jit_compile` as in `kbm.optimizers.AdamW`. Sparse
    gradients are densified, as in Keras.

    Args:
        learning_rate: Defaults to `0.001`.
        beta_1: Interpolation for the update direction. Defaults to `0.9`.
        beta_2: Momentum decay. Defaults to `0.99`.
        **kwargs: Keras's optimizer arguments (`weight_decay`, `clipnorm`,
            `use_ema`, ...).

    Example:

    ```python
    opt = kbm.optimizers.Lion(1e-4, weight_decay=0.1)
    ```

    Reference:
    - [Chen et al., 2023](https://arxiv.org/abs/2302.06675)
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **kwargs):
        check_learning_rate(learning_rate)
        # beta_1's range is checked by Keras's Lion, with Keras's message.
        check_numeric("beta_1", beta_1)
        check_beta("beta_2", beta_2)
        if IS_LEGACY_KERAS:
            kwargs.setdefault("jit_compile", False)
        super().__init__(
            learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, **kwargs
        )

    def _kbm_update(self, grads, variables, learning_rate):
        optimizer_ops.lion_update(
            variables,
            self._kbm_slots("momentums", variables),
            [densify(g) for g in grads],
            learning_rate=tf.cast(learning_rate, tf.float32),
            beta_1=tf.cast(value_of(self.beta_1), tf.float32),
            beta_2=tf.cast(value_of(self.beta_2), tf.float32),
            decays=self._kbm_decays(variables, learning_rate),
            use_fused_kernel=True,
        )
