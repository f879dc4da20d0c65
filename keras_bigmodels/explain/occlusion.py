"""`kbm.explain.Occlusion`: how much the target drops when a window is
covered."""

import itertools

import numpy as np

from keras_bigmodels.explain._base import Attribution, as_batch, baselines_like


class Occlusion(Attribution):
    """Sliding-window occlusion (Zeiler and Fergus, 2014).

    Every window position replaces a block of the example by the baseline;
    each element's attribution is the mean, over the windows covering it,
    of `f(x) - f(x with the window occluded)`. All positions of an example
    are evaluated in batches.

    Args:
        model: A Keras model or a callable on a batch.
        batch_size: Rows per model evaluation, or `"auto"` (inputs of up
            to 16 MiB per call). Defaults to `"auto"`.

    Example:

    ```python
    occ = kbm.explain.Occlusion(model)
    attr = occ.attribute(images, target=labels,
                         sliding_window_shapes=(4, 4, 1), strides=(2, 2, 1))
    ```

    Reference:
    - [Zeiler and Fergus, 2014](https://arxiv.org/abs/1311.2901)
    """

    def __init__(self, model, batch_size="auto"):
        super().__init__(model, batch_size)

    def attribute(
        self,
        inputs,
        target=None,
        baselines=None,
        sliding_window_shapes=None,
        strides=None,
    ):
        """Attributions shaped like `inputs`.

        Args:
            inputs: A batch.
            target: As in `IntegratedGradients`. Defaults to `None`.
            baselines: The occluding values. Defaults to `None` (zeros).
            sliding_window_shapes: Window shape, one entry per axis of an
                example (e.g. `(4, 4, 1)` for `[H, W, C]`). Required.
            strides: Window step per axis. Defaults to the window shape.
        """
        x = as_batch(inputs)
        b = baselines_like(baselines, x)
        shape = x.shape[1:]
        if sliding_window_shapes is None or len(sliding_window_shapes) != len(
            shape
        ):
            raise ValueError(
                f"sliding_window_shapes needs one size per axis of an "
                f"example {shape}. Received: {sliding_window_shapes}"
            )
        window = tuple(int(w) for w in sliding_window_shapes)
        strides = window if strides is None else tuple(int(s) for s in strides)
        if (
            len(strides) != len(shape)
            or min(strides) < 1
            or min(window) < 1
            or any(w > d for w, d in zip(window, shape))
        ):
            raise ValueError(
                f"Invalid window {window} / strides {strides} for examples "
                f"of shape {shape}"
            )
        starts = [
            range(0, d - w + 1, s) for d, w, s in zip(shape, window, strides)
        ]
        positions = list(itertools.product(*starts))
        sel = self.selector(target, x)
        full = self.target_values(x, np.arange(len(x)), sel)
        out = np.zeros(x.shape, np.float32)
        count = np.zeros(shape, np.float32)
        blocks = [
            tuple(slice(p, p + w) for p, w in zip(pos, window))
            for pos in positions
        ]
        for block in blocks:
            count[block] += 1
        for i in range(len(x)):
            rows = np.repeat(x[i][None], len(blocks), axis=0)
            for r, block in enumerate(blocks):
                rows[(r, *block)] = b[i][block]
            values = self.target_values(rows, np.full(len(rows), i), sel)
            for r, block in enumerate(blocks):
                out[(i, *block)] += full[i] - values[r]
        return out / np.maximum(count, 1)
