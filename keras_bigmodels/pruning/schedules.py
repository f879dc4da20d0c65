"""Sparsity schedules for `kbm.pruning.prune_low_magnitude`.

A schedule maps a training step to `(should_prune, sparsity)`: whether the
masks are recomputed at that step, and the fraction of weights they zero.
The two schedules follow TensorFlow Model Optimization's (`tfmot.sparsity.
keras.PolynomialDecay` / `ConstantSparsity`) with one difference: a mask
update also happens at `end_step` itself, so the final sparsity is reached
even when `end_step - begin_step` is not a multiple of `frequency`.
"""

import numbers

from keras_bigmodels.backend import register_serializable


def _check_int(name, value, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"{name} must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_sparsity(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= value < 1.0
    ):
        raise ValueError(
            f"{name} must be a number in [0, 1). Received: {name}={value!r}"
        )
    return float(value)


def _check_step(step):
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise ValueError(
            f"step must be a Python or NumPy integer. Received: step={step!r}"
        )
    return int(step)


class PruningSchedule:
    """Base class: `schedule(step)` returns `(should_prune, sparsity)`.

    Subclasses implement `sparsity_at(step)` and `get_config()`; this base
    holds `begin_step`, `end_step` (-1: no end) and `frequency`, validated.
    """

    def __init__(self, begin_step, end_step, frequency):
        self.begin_step = _check_int("begin_step", begin_step, 0)
        if isinstance(end_step, bool) or not isinstance(
            end_step, numbers.Integral
        ):
            raise ValueError(
                f"end_step must be an integer. Received: end_step={end_step!r}"
            )
        end_step = int(end_step)
        if end_step != -1 and end_step <= self.begin_step:
            raise ValueError(
                "end_step must be greater than begin_step (or -1 for no "
                f"end). Received: begin_step={self.begin_step}, "
                f"end_step={end_step}"
            )
        self.end_step = end_step
        self.frequency = _check_int("frequency", frequency, 1)

    def should_prune(self, step):
        """Whether the masks are recomputed at `step`."""
        step = _check_step(step)
        if step < self.begin_step:
            return False
        if self.end_step != -1 and step > self.end_step:
            return False
        return (
            step - self.begin_step
        ) % self.frequency == 0 or step == self.end_step

    def sparsity_at(self, step):
        raise NotImplementedError

    def __call__(self, step):
        step = _check_step(step)
        return self.should_prune(step), self.sparsity_at(step)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register_serializable
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from `initial_sparsity` to `final_sparsity`.

    `sparsity(step) = final + (initial - final) * (1 - p) ** power` with
    `p = clip((step - begin_step) / (end_step - begin_step), 0, 1)`; the
    masks are recomputed every `frequency` steps from `begin_step` and at
    `end_step`, then no more (the last masks stay). As in Zhu & Gupta
    (2017), pruning fast early (power 3) and slowly near the end.

    Args:
        initial_sparsity: Sparsity at `begin_step`, in [0, 1).
        final_sparsity: Sparsity from `end_step` on, in [0, 1).
        begin_step: First step that prunes, an integer >= 0.
        end_step: Step at which `final_sparsity` is reached; greater than
            `begin_step`.
        power: Exponent of the decay, a number > 0. Defaults to `3`.
        frequency: Steps between mask updates, an integer >= 1. Defaults
            to `100`.

    Example:

    ```python
    schedule = kbm.pruning.PolynomialDecay(0.0, 0.8, 0, 1000)
    schedule(500)  # (True, 0.7)
    ```

    Reference:
        [Zhu & Gupta, 2017](https://arxiv.org/abs/1710.01878)
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        self.initial_sparsity = _check_sparsity(
            "initial_sparsity", initial_sparsity
        )
        self.final_sparsity = _check_sparsity("final_sparsity", final_sparsity)
        if (
            isinstance(power, bool)
            or not isinstance(power, numbers.Real)
            or not power > 0
        ):
            raise ValueError(
                f"power must be a number > 0. Received: power={power!r}"
            )
        self.power = power
        if (
            isinstance(end_step, numbers.Integral)
            and not isinstance(end_step, bool)
            and end_step == -1
        ):
            raise ValueError(
                "PolynomialDecay needs an end_step (the step at which "
                "final_sparsity is reached). Received: end_step=-1"
            )
        super().__init__(begin_step, end_step, frequency)

    def sparsity_at(self, step):
        step = _check_step(step)
        span = self.end_step - self.begin_step
        progress = min(1.0, max(0.0, (step - self.begin_step) / span))
        return (
            self.final_sparsity
            + (self.initial_sparsity - self.final_sparsity)
            * (1.0 - progress) ** self.power
        )

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@register_serializable
class ConstantSparsity(PruningSchedule):
    """The same sparsity at every update from `begin_step` on.

    Args:
        target_sparsity: The sparsity, in [0, 1).
        begin_step: First step that prunes, an integer >= 0.
        end_step: Last step that prunes, greater than `begin_step`, or -1
            to keep updating the masks for the whole training. Defaults to
            `-1`.
        frequency: Steps between mask updates, an integer >= 1. Defaults
            to `100`.

    Example:

    ```python
    schedule = kbm.pruning.ConstantSparsity(0.5, begin_step=0)
    ```
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self.target_sparsity = _check_sparsity(
            "target_sparsity", target_sparsity
        )
        super().__init__(begin_step, end_step, frequency)

    def sparsity_at(self, step):
        _check_step(step)
        return self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


_SCHEDULES = {
    "PolynomialDecay": PolynomialDecay,
    "ConstantSparsity": ConstantSparsity,
}


def serialize(schedule):
    """`{"class_name": ..., "config": ...}` for a kbm schedule."""
    return {
        "class_name": type(schedule).__name__,
        "config": schedule.get_config(),
    }


def deserialize(config):
    """The schedule `serialize` described (a schedule passes through)."""
    if isinstance(config, PruningSchedule):
        return config
    if not isinstance(config, dict) or config.get("class_name") not in (
        _SCHEDULES
    ):
        raise ValueError(
            "pruning_schedule must be a kbm.pruning schedule "
            f"({', '.join(_SCHEDULES)}) or its serialized form. "
            f"Received: pruning_schedule={config!r}"
        )
    return _SCHEDULES[config["class_name"]].from_config(config["config"])
