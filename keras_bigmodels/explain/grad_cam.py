"""`kbm.explain.GradCam` and `kbm.explain.GradCamPlusPlus`."""

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import keras
from keras_bigmodels.explain._base import (
    Attribution,
    as_batch,
    select_outputs,
)


class GradCam(Attribution):
    """Grad-CAM: a class-activation map from a convolutional layer.

    The layer's activations `A` (`[B, h, w, c]`, or `[B, t, c]` for 1-D
    convolutions) are weighted per channel by the spatial mean of the
    target's gradient w.r.t. them; `relu(sum_c w_c A_c)` is resized
    (bilinear) to the input's spatial size and repeated over its channels,
    so the attribution is shaped like the inputs. Needs a functional or
    Sequential model.

    Args:
        model: A functional or Sequential Keras model.
        layer: Name of (or the) convolutional layer, usually the last one.
        batch_size: Rows per evaluation. Defaults to `256`.

    Example:

    ```python
    cam = kbm.explain.GradCam(model, "conv2d_1").attribute(images)
    ```

    Reference:
    - [Selvaraju et al., 2017](https://arxiv.org/abs/1610.02391)
    """

    def __init__(self, model, layer, batch_size=256):
        super().__init__(model, batch_size)
        if isinstance(layer, str):
            try:
                layer = model.get_layer(layer)
            except ValueError:
                names = [x.name for x in model.layers]
                raise ValueError(
                    f"The model has no layer named {layer!r} (its layers: "
                    f"{names})"
                ) from None
        rank = len(layer.output.shape)
        if rank not in (3, 4):
            raise ValueError(
                f"Grad-CAM needs a convolutional layer with [B, h, w, c] or "
                f"[B, t, c] outputs; {layer.name!r} outputs "
                f"{tuple(layer.output.shape)}"
            )
        self.layer = layer
        self._features = keras.Model(
            model.inputs, [layer.output, model.outputs[0]]
        )
        self._cam_fns = {}

    def _channel_weights(self, acts, grads):
        axes = list(range(1, len(acts.shape) - 1))
        return tf.reduce_mean(grads, axis=axes, keepdims=True)

    def _cam(self, x, indices, fn):
        with tf.GradientTape() as tape:
            acts, out = self._features(x, training=False)
            value = select_outputs(tf.cast(out, tf.float32), indices, fn)
        grads = tape.gradient(value, acts)
        acts = tf.cast(acts, tf.float32)
        weights = self._channel_weights(acts, grads)
        return tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1))

    def attribute(self, inputs, target=None, baselines=None):
        """The map, resized to and repeated over the inputs' shape."""
        x = as_batch(inputs)
        sel = self.selector(target, x)
        fn = sel.fn if sel.callable else None
        key = id(fn)
        if key not in self._cam_fns:
            self._cam_fns[key] = tf.function(
                lambda x, i: self._cam(x, i, fn), reduce_retracing=True
            )
        n = self.rows_per_call(x[:1].nbytes)
        idx = sel.row_indices(np.arange(len(x)))
        maps = np.concatenate(
            [
                np.asarray(
                    self._cam_fns[key](
                        tf.constant(x[i : i + n]),
                        tf.constant(idx[i : i + n]),
                    )
                )
                for i in range(0, len(x), n)
            ]
        )
        return self._to_input_shape(maps, x.shape)

    @staticmethod
    def _to_input_shape(maps, shape):
        spatial = shape[1:-1] if len(shape) > 2 else shape[1:]
        m = maps[..., None] if maps.ndim == 3 else maps[:, :, None, None]
        size = tuple(spatial) if len(spatial) == 2 else (spatial[0], 1)
        resized = np.asarray(tf.image.resize(m, size, method="bilinear"))
        resized = resized[..., 0] if len(spatial) == 2 else resized[:, :, 0, 0]
        if len(shape) > len(resized.shape):
            resized = np.repeat(resized[..., None], shape[-1], axis=-1)
        return resized.reshape(shape).astype(np.float32)


class GradCamPlusPlus(GradCam):
    """Grad-CAM++: Grad-CAM with pixel-wise gradient weights.

    Channel weights are `sum_ij alpha_ij relu(g_ij)` with
    `alpha = g^2 / (2 g^2 + sum_ij A_ij g^3)` (Chattopadhay et al., 2018),
    which localises several instances of a class better than Grad-CAM.
    Arguments as in `GradCam`.

    Reference:
    - [Chattopadhay et al., 2018](https://arxiv.org/abs/1710.11063)
    """

    def _channel_weights(self, acts, grads):
        axes = list(range(1, len(acts.shape) - 1))
        g2, g3 = grads**2, grads**3
        denom = 2.0 * g2 + tf.reduce_sum(acts * g3, axis=axes, keepdims=True)
        alpha = tf.math.divide_no_nan(g2, denom)
        return tf.reduce_sum(
            alpha * tf.nn.relu(grads), axis=axes, keepdims=True
        )
