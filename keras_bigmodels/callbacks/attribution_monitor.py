"""`kbm.callbacks.AttributionMonitor`: explanations of fixed samples,
logged at epoch ends."""

import json
import os

import numpy as np
import tensorflow as tf

from keras_bigmodels.backend import keras
from keras_bigmodels.callbacks._common import bind_method, check_common, due
from keras_bigmodels.explain import plot

KINDS = ("auto", "image", "tokens", "tabular")


class AttributionMonitor(keras.callbacks.Callback):
    """Computes attributions of fixed samples every few epochs and logs them.

    At the end of every `every_n_epochs`-th epoch (from the first) the
    method explains `samples`; the result is written as

    - TensorBoard summaries under `log_dir/attributions`: heatmap overlays
      (`tf.summary.image`) for images, coloured-token markdown
      (`tf.summary.text`) for token ids, a top-feature table for tabular
      inputs;
    - files in `save_dir`: `epoch_0003.json` (targets and attributions) and,
      per sample, `epoch_0003_sample_0.png` (images) or one
      `epoch_0003.html` page (tokens);
    - `self.attributions`, the latest NumPy attributions.

    The model is only evaluated (`training=False`); training state is not
    touched. Works in `model.fit` on Keras 3 and tf-keras, and under
    `tf.distribute.MirroredStrategy`.

    Args:
        method: A `kbm.explain` method instance, or a class / callable that
            builds one from the model being trained (e.g.
            `kbm.explain.IntegratedGradients`).
        samples: The fixed batch to explain.
        targets: An int or one int per sample, or None for each sample's
            predicted class at that epoch. Defaults to `None`.
        every_n_epochs: Defaults to `1`.
        log_dir: TensorBoard log directory (e.g. the one given to
            `keras.callbacks.TensorBoard`). Defaults to `None` (no
            summaries).
        save_dir: Directory for PNG/HTML/JSON files. Defaults to `None`.
        kind: `"image"`, `"tokens"`, `"tabular"` or `"auto"` (integer
            `[B, T]` inputs are tokens, rank-4 inputs images, the rest
            tabular). Defaults to `"auto"`.
        vocabulary: For tokens: a list of strings indexed by id, or a
            callable id -> string. Defaults to `None` (ids are shown).
        pad_id: For tokens: this id is padding and is left out of the text
            and HTML (None keeps every position). Defaults to `0`.
        feature_names: For tabular inputs. Defaults to `None`.
        method_args: Extra keyword arguments for `attribute` (e.g.
            `{"n_steps": 32}`). Defaults to `None`.

    Example:

    ```python
    monitor = kbm.callbacks.AttributionMonitor(
        kbm.explain.IntegratedGradients, x_val[:8], log_dir="logs",
        save_dir="attributions")
    model.fit(x, y, epochs=5, callbacks=[monitor])
    ```
    """

    def __init__(
        self,
        method,
        samples,
        targets=None,
        every_n_epochs=1,
        log_dir=None,
        save_dir=None,
        kind="auto",
        vocabulary=None,
        pad_id=0,
        feature_names=None,
        method_args=None,
    ):
        super().__init__()
        samples, targets = check_common(
            method, samples, targets, every_n_epochs
        )
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}. Received: {kind!r}")
        if kind == "auto":
            if samples.dtype.kind in "iu" and samples.ndim == 2:
                kind = "tokens"
            elif samples.ndim == 4:
                kind = "image"
            else:
                kind = "tabular"
        self.method = method
        self.samples = samples
        self.targets = targets
        self.every_n_epochs = every_n_epochs
        self.log_dir = log_dir
        self.save_dir = save_dir
        self.kind = kind
        self.vocabulary = vocabulary
        self.pad_id = pad_id
        self.feature_names = feature_names
        self.method_args = dict(method_args or {})
        self.attributions = None
        self._bound = None
        self._writer = None

    def _method(self):
        if self._bound is None:
            self._bound = bind_method(self.method, self.model)
        return self._bound

    def _shown(self, ids, scores):
        """(tokens, scores) without padding positions."""
        ids = np.asarray(ids).reshape(-1)
        scores = np.asarray(scores).reshape(-1)
        keep = (
            np.ones(len(ids), bool)
            if self.pad_id is None
            else ids != self.pad_id
        )
        return self._tokens(ids[keep]), scores[keep]

    def _tokens(self, ids):
        v = self.vocabulary
        if v is None:
            return [str(int(i)) for i in ids]
        if callable(v):
            return [str(v(int(i))) for i in ids]
        return [
            str(v[int(i)]) if 0 <= int(i) < len(v) else f"[{int(i)}]"
            for i in ids
        ]

    def _feature_names(self, n):
        if self.feature_names is not None:
            return list(self.feature_names)
        return [f"x{i}" for i in range(n)]

    def on_epoch_end(self, epoch, logs=None):
        if not due(epoch, self.every_n_epochs):
            return
        method = self._method()
        targets = self.targets
        if targets is None and hasattr(method, "selector"):
            targets = method.selector(None, self.samples).indices
        out = method.attribute(self.samples, target=targets, **self.method_args)
        if isinstance(out, tuple):
            out = out[0]
        attr = np.asarray(out, np.float32)
        self.attributions = attr
        if self.log_dir:
            self._write_summaries(epoch, attr)
        if self.save_dir:
            self._write_files(epoch, attr, targets)

    def _write_summaries(self, epoch, attr):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "attributions")
            )
        with self._writer.as_default(step=epoch):
            if self.kind == "image":
                images = np.stack(
                    [plot.overlay_rgb(x, a) for x, a in zip(self.samples, attr)]
                )
                tf.summary.image(
                    "attributions/overlay", images, max_outputs=len(images)
                )
            elif self.kind == "tokens":
                tf.summary.text(
                    "attributions/tokens",
                    tf.constant(
                        [
                            self._markdown_tokens(ids, a)
                            for ids, a in zip(self.samples, attr)
                        ]
                    ),
                )
            else:
                tf.summary.text(
                    "attributions/features",
                    tf.constant([self._markdown_table(a) for a in attr]),
                )
        self._writer.flush()

    def _markdown_tokens(self, ids, scores):
        tokens, scores = self._shown(ids, scores)
        top = set(np.argsort(-np.abs(scores))[:3].tolist())
        words = []
        for i, (t, s) in enumerate(zip(tokens, scores)):
            word = f"{t}({s:+.3f})"
            words.append(f"**{word}**" if i in top else word)
        return " ".join(words)

    def _markdown_table(self, a, k=10):
        a = np.asarray(a).reshape(-1)
        names = self._feature_names(len(a))
        rows = ["| feature | attribution |", "|---|---|"]
        for i in np.argsort(-np.abs(a))[:k]:
            rows.append(f"| {names[i]} | {a[i]:+.4g} |")
        return "\n".join(rows)

    def _write_files(self, epoch, attr, targets):
        os.makedirs(self.save_dir, exist_ok=True)
        stem = os.path.join(self.save_dir, f"epoch_{epoch:04d}")
        record = {
            "epoch": epoch,
            "method": type(self._method()).__name__,
            "kind": self.kind,
            "targets": None
            if targets is None or callable(targets)
            else np.asarray(targets).tolist(),
            "attributions": attr.tolist(),
        }
        if self.kind == "tokens":
            record["tokens"] = [self._tokens(ids) for ids in self.samples]
            with open(stem + ".html", "w") as f:
                f.write("<html><body>\n")
                for ids, a in zip(self.samples, attr):
                    f.write(plot.token_html(*self._shown(ids, a)) + "\n")
                f.write("</body></html>\n")
        if self.kind == "image":
            for i, (x, a) in enumerate(zip(self.samples, attr)):
                png = tf.io.encode_png(
                    tf.constant((plot.overlay_rgb(x, a) * 255).astype(np.uint8))
                )
                tf.io.write_file(f"{stem}_sample_{i}.png", png)
        with open(stem + ".json", "w") as f:
            json.dump(record, f)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
