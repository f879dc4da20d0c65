"""Feature groups for perturbation methods."""

import numpy as np


def feature_groups(feature_mask, example_shape):
    """(group id per element, number of groups).

    `feature_mask` is None (every element its own feature) or an int array
    shaped like one example (or broadcastable to it, e.g. [H, W] for
    [H, W, C] images) with ids 0..M-1, e.g. superpixels.
    """
    size = int(np.prod(example_shape))
    if feature_mask is None:
        return np.arange(size).reshape(example_shape), size
    mask = np.asarray(feature_mask)
    if mask.dtype.kind not in "iu":
        raise ValueError(
            "feature_mask must hold integer group ids. "
            f"Received: dtype {mask.dtype}"
        )
    try:
        mask = np.broadcast_to(
            mask.reshape(mask.shape + (1,) * (len(example_shape) - mask.ndim)),
            example_shape,
        )
    except ValueError:
        raise ValueError(
            f"feature_mask must be shaped like one example {example_shape} "
            f"(or broadcast to it). Received: {np.asarray(feature_mask).shape}"
        ) from None
    ids = np.unique(mask)
    if ids[0] < 0 or not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(
            "feature_mask ids must be 0, 1, ..., M-1 with every id used. "
            f"Received ids {ids[:10].tolist()}..."
        )
    return mask, len(ids)


def expand(values, groups):
    """Per-feature values [B, M] to per-element attributions [B, ...]."""
    return values[:, groups]
