"""Slot variables for kbm's own optimizers, on either Keras line."""

from keras_bigmodels.backend import IS_LEGACY_KERAS


def build_slots(optimizer, var_list, names):
    """Creates one zero slot per variable for each name, as Keras does.

    Keras 3 names them `{name}/{variable}` through
    `add_optimizer_variables`; tf-keras through `add_variable_from_reference`.
    Returns one list of slots per name.
    """
    if not IS_LEGACY_KERAS:
        slots = optimizer.add_optimizer_variables(var_list, list(names))
        return list(slots) if len(names) > 1 else [slots]
    return [
        [
            optimizer.add_variable_from_reference(
                model_variable=v, variable_name=name
            )
            for v in var_list
        ]
        for name in names
    ]


def legacy_build_guard(optimizer):
    """tf-keras: True if build() already ran (its base has no guard)."""
    if getattr(optimizer, "_kbm_slots_built", False):
        return True
    optimizer._kbm_slots_built = True
    return False
