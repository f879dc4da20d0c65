"""Switches for the fused kernels.

Fused kernels are on by default wherever the compiled library loads. They are
off when the environment variable `KERAS_BIGMODELS_DISABLE_FUSED` is "1" (the
library is then never loaded), or after `fused_kernels(False)`:

    kbm.config.fused_kernels(False)          # off from now on
    with kbm.config.fused_kernels(False):    # off inside the block only
        model.export("serving")

The choice is read when an op is traced: a `tf.function` traced with kernels
keeps them. It is never saved in a model's config.
"""

import os
import threading

ENV_DISABLE = "KERAS_BIGMODELS_DISABLE_FUSED"

_lock = threading.Lock()
_enabled = [True]


class FusedKernelFallbackWarning(UserWarning):
    """Warned once per reason when an op falls back to its reference."""


def env_disabled():
    """True when `KERAS_BIGMODELS_DISABLE_FUSED` switches kernels off."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )


def fused_kernels_enabled():
    """Whether ops with `use_fused_kernel="auto"` may use fused kernels."""
    return _enabled[0] and not env_disabled()


class fused_kernels:  # noqa: N801 - used like a function, as documented.
    """Turns fused kernels on or off, process-wide.

    Takes effect immediately. Used as a context manager, it restores the
    previous setting on exit, so it also works as a scoped switch.

    Args:
        enabled: Whether ops called with `use_fused_kernel="auto"` may use
            the compiled kernels. `False` makes them use their pure
            TensorFlow reference, silently.

    Example:

    ```python
    import keras_bigmodels as kbm

    with kbm.config.fused_kernels(False):
        y = kbm.ops.layer_norm(x, gamma, beta)   # reference path
    ```
    """

    def __init__(self, enabled):
        if not isinstance(enabled, bool):
            raise TypeError(
                "fused_kernels() expects True or False. "
                f"Received: enabled={enabled!r}"
            )
        with _lock:
            self._previous = _enabled[0]
            _enabled[0] = enabled
        self.enabled = enabled

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        with _lock:
            _enabled[0] = self._previous
        return False
