"""Benchmark: fused optimizer steps (`kbm.optimizers`), float32, CPU, Keras 3.

Two sections, each a table (or several) in the report:

1. Optimizer step. About 100 M float32 parameters in two layouts: 50
   variables of [2000, 1000] and 500 variables of [400, 500]. The
   parameters are `keras.Variable`s and the gradients fixed random tensors,
   both created once per optimizer and layout; every variant's optimizer
   is built (`optimizer.build(variables)`, its slots allocated) before
   anything is timed. One step is `optimizer.apply(grads, variables)`
   inside `tf.function`, returning the iteration counter. Per optimizer
   (`kbm.optimizers.AdamW`, `Lamb`, `Lion`, `RAdam`, all with
   learning_rate 1e-3 and weight_decay 0.01, the other hyperparameters at
   their defaults, which are Keras's), the variants, timed interleaved
   round-robin in one process (see `_harness.bench`):

   * `kbm fused`: the kbm optimizer; its step is ONE multi-tensor C++ op
     (`Kbm>MultiApplyAdam`, `Kbm>MultiApplyLamb`, `Kbm>MultiApplyLion`)
     updating every variable, its slots and its weight decay in place;
   * `keras.optimizers.<Name> (tf.function)`: Keras 3's own optimizer with
     the same hyperparameters; for RAdam, which Keras lacks, the kbm
     optimizer's reference path (plain TF ops), traced and called under
     `kbm.config.fused_kernels(False)`;
   * the same `+ XLA`: the step inside `tf.function(jit_compile=True)`. It
     shares the optimizer object (so the slots) of the tf.function
     variant, to keep memory down;
   * anchors, in the AdamW table only: `tf.raw_ops.ResourceApplyAdam` on
     every variable in one `tf.function` (TF's fused C++ Adam, without
     weight decay; constant step-1 beta powers), with its own m and v
     variables; and `assign_add`, an in-place `AssignAddVariableOp` of the
     gradient into every variable (`v.value.assign_add(g)`: Keras 3's own
     `Variable.assign_add` is `assign(v + g)`, not in place), a bandwidth
     reference.

   Bytes per parameter, the minimum the math must move: AdamW and RAdam
   read p, g, m, v and write p, m, v (28 B); Lion reads p, g, m and writes
   p, m (20 B); LAMB needs two passes because of the trust ratio (read p,
   g, m, v and write m, v = 24 B, then read p, m, v, recomputing the
   update, and write p = 16 B; 40 B);
   ResourceApplyAdam 28 B; assign_add 12 B (read p, g; write p). Effective
   GB/s = bytes per parameter x parameters / median time; "% of copy"
   divides by the copy bandwidth measured in the same process. Targets
   (stated, not asserted): kbm AdamW, Lamb and Lion >= 3x faster than the
   Keras 3 optimizer in tf.function, no slower than the same under XLA nor
   than ResourceApplyAdam, >= 50 % of the copy bandwidth; for all four,
   kbm's 500-variable time <= 1.3 x its 50-variable time. Before timing,
   each optimizer's variants (anchors excepted) are checked to compute the
   same update: from the same start, 8 steps (RAdam switches to its
   rectified step at step 6) on small variables of shapes [7, 129], [1023]
   and [64, 65] (standard-normal values), with learning_rate 0.1 and
   weight_decay 0.5 (so that the decay term weighs in), the parameter
   changes, divided by the largest change of the kbm variant, agree within
   1e-4 (`_harness.check_agreement`); and the kbm variant's traced step is
   checked to contain its `Kbm>` op and the others none. One optimizer's
   variables and slots exist at a time (AdamW: p, g and three m, v pairs,
   eight 400 MB tensors); they are freed before the next layout. A traced
   Keras 3 optimizer step is never freed by TensorFlow on its own (see
   `keras_graph_leak_guard`), so the script drops the leaked registry
   entries after each layout.

2. What losing XLA costs in a training step. One `model.train_on_batch(x,
   y)` call (forward, loss, gradients, optimizer update; Keras's compiled
   train function, after warm-up calls that trace and compile it) of a
   small BERT-like classifier: token ids [16, 256] -> token + learned
   position embedding (vocabulary 8000, width 256) -> 4 post-LN encoder
   blocks (4 heads of 64, FFN 1024, exact GELU, LayerNorm epsilon 1e-5,
   no dropout) -> mean pooling -> Dense(2), sparse softmax cross-entropy
   on integer labels. Variants: `kbm.layers.TokenAndPositionEmbedding` +
   `kbm.layers.TransformerEncoder` compiled with `kbm.optimizers.AdamW`
   (`jit_compile=False`), versus the same architecture from stock Keras
   layers (`keras.layers.Embedding` for tokens plus a learned
   `keras.layers.Embedding` over positions, added;
   `keras.layers.MultiHeadAttention`, `keras.layers.LayerNormalization`,
   `keras.layers.Dense(activation="gelu")`) compiled with
   `keras.optimizers.AdamW`, with `jit_compile=False` and with
   `jit_compile=True`; both optimizers weight_decay 0.01. Models with kbm
   layers cannot be XLA-compiled (custom ops have no XLA kernel; the
   layers set `supports_jit = False`): Keras 3 refuses `jit_compile=True`
   for them with a warning and runs `jit_compile=False`, which the table
   records (that row is not timed: it is the first row's step). The models
   are initialised independently (outputs not compared).

Rounds: the harness defaults (9 after 2 warm-up calls) everywhere; the
slowest call, the Keras 3 Lamb step without XLA on 100 M parameters, takes
about 0.4 s. A full run is estimated at about 5-6 minutes per allocator
setting on a 2-core machine, of which about 2.5 go to tracing and XLA
compilation of the 500-variable Keras steps (10-25 s each) and about 1 to
the training-step table; so this family runs under both allocator
settings (`run_all.py`'s default), about 11 minutes in all.

A watchdog thread aborts the process if its RSS passes 12 GB or the
machine has less than 1.5 GB available; each table records the process's
peak RSS so far (expected below ~8 GB).

Run alone with `python benchmarks/optimizers.py [--quick] [--out PATH]
[--sections step model] [--optimizers AdamW Lamb Lion RAdam]`. `--quick`
uses 2 M parameters in 10 x [400, 500] and 100 x [100, 200] variables and
the classifier at sequence length 64 with 1 block, 3 rounds after 1
warm-up (about 50 s per allocator setting). Keras 3 only: under tf-keras
(`TF_USE_LEGACY_KERAS=1`) the script prints why and exits without
results. Set `TF_CPP_MIN_LOG_LEVEL=2` when running it alone, as
`run_all.py` does, for quiet output.
"""

import contextlib
import dataclasses
import gc
import os
import sys
import threading
import time
import warnings

import _harness
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

import keras_bigmodels as kbm
from keras_bigmodels.backend import IS_LEGACY_KERAS, keras

FAMILY = "optimizers"

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
# (variable count, shape); both about 100 M parameters.
LAYOUTS = [(50, (2000, 1000)), (500, (400, 500))]
QUICK_LAYOUTS = [(10, (400, 500)), (100, (100, 200))]
PARAM_SCALE = 0.02  # std of the initial parameters

AGREE_SHAPES = [(7, 129), (1023,), (64, 65)]
# Past RAdam's switch to the rectified step (at step 6 with beta_2 0.999).
AGREE_STEPS = 8
# Large enough that the weight-decay term weighs in the compared update.
AGREE_HYPER = {"learning_rate": 0.1, "weight_decay": 0.5}

KBM = "kbm fused"
RAA = "tf.raw_ops.ResourceApplyAdam"
ASSIGN_ADD = "assign_add"
KERNEL_OP_PREFIX = "Kbm>"

TARGET_VS_GRAPH = 3.0
TARGET_VS_XLA = 1.0
TARGET_VS_RAA = 1.0
TARGET_PCT_COPY = 50.0
TARGET_LAYOUT_RATIO = 1.3

E2E = {
    "batch": 16,
    "length": 256,
    "vocabulary": 8000,
    "hidden": 256,
    "blocks": 4,
    "heads": 4,
    "intermediate": 1024,
    "classes": 2,
    "epsilon": 1e-5,
}
QUICK_E2E = dict(E2E, length=64, blocks=1)
E2E_KBM = "kbm layers + kbm AdamW"
E2E_KERAS = "keras layers + keras AdamW"
E2E_KERAS_XLA = "keras layers + keras AdamW, XLA"
E2E_KBM_XLA = "kbm layers + kbm AdamW, XLA requested"

WATCHDOG_RSS = 12e9
WATCHDOG_MIN_AVAILABLE = 1.5e9
WATCHDOG_EXIT = 86
GB = 1e9


# ------------------------------------------------------------ optimizers ----


@dataclasses.dataclass
class OptimizerSpec:
    """One optimizer table.

    Attributes:
        name: The kbm class name ("AdamW").
        bytes_per_param: Minimal bytes one step moves per parameter.
        make_kbm: Builds the kbm optimizer from a dict of
            hyperparameters (`learning_rate`, `weight_decay`).
        make_stock: Builds the optimizer of the stock variants, likewise.
        stock_label: The stock variants' name, before " (tf.function)" or
            " + XLA".
        stock_is_reference: Whether the stock variants are the kbm
            optimizer's reference path (traced and called under
            `kbm.config.fused_kernels(False)`).
        anchors: Whether the table has the ResourceApplyAdam and assign_add
            anchors.
        targets: Whether the speed targets apply.
    """

    name: str
    bytes_per_param: int
    make_kbm: object
    make_stock: object
    stock_label: str
    stock_is_reference: bool = False
    anchors: bool = False
    targets: bool = True

    @property
    def graph(self):
        return f"{self.stock_label} (tf.function)"

    @property
    def xla(self):
        return f"{self.stock_label} + XLA"


HYPER = {"learning_rate": LEARNING_RATE, "weight_decay": WEIGHT_DECAY}

OPTIMIZERS = [
    OptimizerSpec(
        "AdamW",
        28,
        lambda h: kbm.optimizers.AdamW(**h),
        lambda h: keras.optimizers.AdamW(**h),
        "keras.optimizers.AdamW",
        anchors=True,
    ),
    OptimizerSpec(
        "Lamb",
        40,
        lambda h: kbm.optimizers.Lamb(**h),
        lambda h: keras.optimizers.Lamb(**h),
        "keras.optimizers.Lamb",
    ),
    OptimizerSpec(
        "Lion",
        20,
        lambda h: kbm.optimizers.Lion(**h),
        lambda h: keras.optimizers.Lion(**h),
        "keras.optimizers.Lion",
    ),
    OptimizerSpec(
        "RAdam",
        28,
        lambda h: kbm.optimizers.RAdam(**h),
        lambda h: kbm.optimizers.RAdam(**h),
        "kbm RAdam reference path",
        stock_is_reference=True,
        targets=False,
    ),
]
OPTIMIZER_NAMES = [spec.name for spec in OPTIMIZERS]

C = _harness.Column

STEP_COLUMNS = [
    C("layout", "variables", group=True),
    C("variant", "variant"),
    C("bytes_per_param", "B/param"),
    C("ms", "median ms", "ms"),
    C("gbps", "GB/s", "gbps"),
    C("pct_copy", "% of copy", "pct"),
    C("kbm_speedup", "kbm speed-up", "ratio"),
    C("note", "note"),
]

TARGET_COLUMNS = [
    C("optimizer", "optimizer", group=True),
    C("layout", "variables"),
    C("kbm_ms", "kbm ms", "ms"),
    C("pct_copy", "kbm % of copy", "pct"),
    C("vs_graph", "vs tf.function", "ratio"),
    C("vs_xla", "vs XLA", "ratio"),
    C("vs_raa", "vs ResourceApplyAdam", "ratio"),
    C("layout_ratio", "kbm time, many / few variables", "ratio"),
    C("targets", "targets"),
]

E2E_COLUMNS = [
    C("variant", "variant"),
    C("jit_compile", "jit_compile (requested → used)"),
    C("ms", "median step ms", "ms"),
    C("kbm_speedup", "kbm speed-up", "ratio"),
    C("params", "parameters"),
    C("note", "note"),
]


def layout_label(count, shape):
    params = count * int(np.prod(shape))
    dims = ", ".join(str(d) for d in shape)
    return f"{count} × [{dims}] ({params / 1e6:.0f} M)"


def make_parameters(count, shape, seed):
    """`count` keras.Variables of `shape` and as many fixed gradients."""
    params, grads = [], []
    for i in range(count):
        init = tf.random.stateless_normal(shape, seed=[seed, 2 * i])
        params.append(keras.Variable(init * PARAM_SCALE, name=f"p{i}"))
        grads.append(tf.random.stateless_normal(shape, seed=[seed, 2 * i + 1]))
        del init
    return params, grads


def optimizer_step(optimizer, params, grads, jit_compile):
    """A tf.function applying `grads` to `params`; returns the step count."""

    def step():
        optimizer.apply(grads, params)
        return tf.convert_to_tensor(optimizer.iterations)

    return tf.function(step, jit_compile=jit_compile)


def resource_apply_adam_step(params, grads):
    """ResourceApplyAdam on every variable in one tf.function (no decay).

    The step function holds its own m and v variables.
    """
    slots = [
        (
            tf.Variable(tf.zeros(p.shape), name=f"m{i}"),
            tf.Variable(tf.zeros(p.shape), name=f"v{i}"),
        )
        for i, p in enumerate(params)
    ]
    scalars = {
        name: tf.constant(value, tf.float32)
        for name, value in (
            ("beta1_power", 0.9),
            ("beta2_power", 0.999),
            ("lr", LEARNING_RATE),
            ("beta1", 0.9),
            ("beta2", 0.999),
            ("epsilon", 1e-7),
        )
    }

    def step():
        for p, (m, v), g in zip(params, slots, grads):
            tf.raw_ops.ResourceApplyAdam(
                var=p.handle, m=m.handle, v=v.handle, grad=g, **scalars
            )

    return tf.function(step)


def assign_add_step(params, grads):
    """In-place `AssignAddVariableOp` of each gradient into its variable."""

    def step():
        for p, g in zip(params, grads):
            p.value.assign_add(g, read_value=False)

    return tf.function(step)


@contextlib.contextmanager
def keras_graph_leak_guard():
    """Frees the graphs of traced Keras 3 optimizer steps after the block.

    Keras 3's TensorFlow optimizer sums the gradients through the default
    strategy's `all_reduce`, a `tf.custom_gradient`. In graph mode each
    call registers a gradient function ("CustomGradient-N") in
    TensorFlow's global gradient registry that is never removed, and its
    closure keeps the traced graph alive with every tensor and variable the
    step captured: here the gradients, the parameters and the slots, 400
    MB each at full size, for the life of the process. This drops the
    entries registered inside the block (whose functions are dead by its
    end) and collects; it touches a private TensorFlow registry, and does
    nothing if that is not there.
    """
    registry = getattr(tf_ops.gradient_registry, "_registry", None)
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for key in set(registry) - before:
                if key.startswith("CustomGradient-"):
                    del registry[key]
        gc.collect()


def call_with_kernels(fn, enabled):
    """Calls (and so traces) `fn` with kbm's fused kernels on or off."""
    with kbm.config.fused_kernels(enabled):
        return fn()


def stock_variants(spec, optimizer, params, grads):
    """{name: (tf.function, kernels enabled)} of the stock variants."""
    kernels = not spec.stock_is_reference
    return {
        spec.graph: (optimizer_step(optimizer, params, grads, False), kernels),
        spec.xla: (optimizer_step(optimizer, params, grads, True), kernels),
    }


def kernel_ops(fn, enabled):
    """The `Kbm>` op types in the (traced) graph of a no-argument fn."""
    with kbm.config.fused_kernels(enabled):
        graph = fn.get_concrete_function().graph
    return sorted(
        {
            op.type
            for op in graph.get_operations()
            if op.type.startswith(KERNEL_OP_PREFIX)
        }
    )


def check_optimizer(spec):
    """Checks that the variants compute the same update, and which ops run.

    Returns:
        The `Kbm>` op types in the kbm variant's step.

    Raises:
        RuntimeError: The updates disagree, the kbm step has no `Kbm>` op
            or a stock step has one.
    """
    inits = [
        tf.random.stateless_normal(shape, seed=[99, i]).numpy()
        for i, shape in enumerate(AGREE_SHAPES)
    ]
    grads = [
        tf.random.stateless_normal(shape, seed=[98, i])
        for i, shape in enumerate(AGREE_SHAPES)
    ]
    deltas, ops = {}, {}
    for name, make, jit, enabled in (
        (KBM, spec.make_kbm, False, True),
        (spec.graph, spec.make_stock, False, not spec.stock_is_reference),
        (spec.xla, spec.make_stock, True, not spec.stock_is_reference),
    ):
        params = [
            keras.Variable(x, name=f"check{i}") for i, x in enumerate(inits)
        ]
        optimizer = make(AGREE_HYPER)
        optimizer.build(params)
        step = optimizer_step(optimizer, params, grads, jit)
        for _ in range(AGREE_STEPS):
            call_with_kernels(step, enabled)
        ops[name] = kernel_ops(step, enabled)
        deltas[name] = [p.numpy() - x for p, x in zip(params, inits)]
    if not ops[KBM]:
        raise RuntimeError(
            f"{spec.name}: the kbm step has no {KERNEL_OP_PREFIX} op; the "
            "fused kernel is not in use"
        )
    for name, found in ops.items():
        if name != KBM and found:
            raise RuntimeError(f"{spec.name}: {name} runs {found}")
    scale = max(float(np.max(np.abs(d))) for d in deltas[KBM])
    _harness.check_agreement(
        {name: [d / scale for d in ds] for name, ds in deltas.items()}
    )
    return ops[KBM]


def step_row(layout, name, measurement, bytes_per_param, params, copy_gbps):
    rate = _harness.gbps(bytes_per_param * params, measurement.median_ms)
    return {
        "layout": layout,
        "variant": name,
        "kbm": name == KBM,
        "bytes_per_param": bytes_per_param,
        "ms": measurement.median_ms,
        "gbps": rate,
        "pct_copy": 100.0 * rate / copy_gbps,
        "kbm_speedup": None if name == KBM else measurement.ratio,
        "times_ms": measurement.times_ms,
        "params": params,
    }


ANCHOR_NOTES = {
    RAA: "fused C++ Adam, no weight decay",
    ASSIGN_ADD: "in place; bandwidth reference",
}


def run_layout(results, table, spec, count, shape, seed):
    """Times one optimizer's variants on one layout; appends the rows.

    Everything the variants allocate is freed before this returns.
    """
    with keras_graph_leak_guard():
        table.rows += time_layout(results, spec, count, shape, seed)


def time_layout(results, spec, count, shape, seed):
    """The rows of one optimizer's variants on one layout."""
    layout = layout_label(count, shape)
    n_params = count * int(np.prod(shape))
    params, grads = make_parameters(count, shape, seed)
    kbm_optimizer = spec.make_kbm(HYPER)
    stock_optimizer = spec.make_stock(HYPER)
    kbm_optimizer.build(params)
    stock_optimizer.build(params)
    variants = {
        KBM: (optimizer_step(kbm_optimizer, params, grads, False), True)
    }
    variants |= stock_variants(spec, stock_optimizer, params, grads)
    if spec.anchors:
        variants[RAA] = (resource_apply_adam_step(params, grads), True)
        variants[ASSIGN_ADD] = (assign_add_step(params, grads), True)
    calls = {
        name: (lambda fn=fn, on=on: call_with_kernels(fn, on))
        for name, (fn, on) in variants.items()
    }
    _harness.progress(
        FAMILY,
        f"{spec.name} step, {layout}: {len(calls)} variants "
        f"({results.rounds} rounds after {results.warmup} warm-up); RSS "
        f"{current_rss() / GB:.1f} GB",
    )
    measured = results.bench(calls, reference=KBM)
    rows = []
    for name, m in measured.items():
        bytes_per_param = {RAA: 28, ASSIGN_ADD: 12}.get(
            name, spec.bytes_per_param
        )
        row = step_row(
            layout, name, m, bytes_per_param, n_params, results.copy_gbps
        )
        row["note"] = ANCHOR_NOTES.get(name, "")
        if name == spec.xla:
            row["note"] = "shares the tf.function variant's optimizer"
        rows.append(row)
    return rows


def target_row(spec, layout, rows, layout_ratio):
    """The summary row of one optimizer and layout, with its targets."""
    by_name = {r["variant"]: r for r in rows if r["layout"] == layout}
    kbm_row = by_name[KBM]
    row = {
        "optimizer": spec.name,
        "layout": layout,
        "kbm_ms": kbm_row["ms"],
        "pct_copy": kbm_row["pct_copy"],
        "vs_graph": by_name[spec.graph]["kbm_speedup"],
        "vs_xla": by_name[spec.xla]["kbm_speedup"],
        "vs_raa": by_name[RAA]["kbm_speedup"] if RAA in by_name else None,
        "layout_ratio": layout_ratio,
        "kbm": False,
    }
    missed = []
    if layout_ratio > TARGET_LAYOUT_RATIO:
        missed.append(f"many / few variables > {TARGET_LAYOUT_RATIO:g}")
    if spec.targets:
        if row["vs_graph"] < TARGET_VS_GRAPH:
            missed.append(f"vs tf.function < {TARGET_VS_GRAPH:g}×")
        if row["vs_xla"] < TARGET_VS_XLA:
            missed.append("slower than XLA")
        if row["vs_raa"] is not None and row["vs_raa"] < TARGET_VS_RAA:
            missed.append("slower than ResourceApplyAdam")
        if row["pct_copy"] < TARGET_PCT_COPY:
            missed.append(f"< {TARGET_PCT_COPY:.0f} % of copy")
    verdict = "met" if not missed else "NOT met: " + "; ".join(missed)
    if not spec.targets:
        verdict += " (many / few variables only; no speed target)"
    return row | {"targets": verdict}


def run_optimizers(results, layouts, names):
    results.shapes["optimizer variables (count, shape)"] = [
        [count, *shape] for count, shape in layouts
    ]
    summary = results.table(
        "Optimizer step: targets",
        TARGET_COLUMNS,
        "Per optimizer and layout: kbm's time, its share of the copy "
        "bandwidth, and its speed-up (median of per-round ratios) against "
        "the stock optimizer in tf.function, under XLA and (AdamW) "
        f"ResourceApplyAdam. Targets (not asserted): ≥ {TARGET_VS_GRAPH:g}× "
        "vs tf.function, no slower than XLA and ResourceApplyAdam, ≥ "
        f"{TARGET_PCT_COPY:.0f} % of copy (AdamW, Lamb, Lion); for all four, "
        "kbm's time with many variables ≤ "
        f"{TARGET_LAYOUT_RATIO:g}× its time with few.",
    )
    timings = {}
    with summary:
        for spec in OPTIMIZERS:
            if spec.name in names:
                timings[spec.name] = run_optimizer(
                    results, summary, spec, layouts
                )
    # The summary goes after the per-optimizer tables it sums up.
    results.tables.remove(summary)
    results.tables.append(summary)
    return timings


def run_optimizer(results, summary, spec, layouts):
    """One optimizer's table (both layouts) and its summary rows."""
    (count_a, shape_a), (count_b, shape_b) = layouts[0], layouts[-1]
    _harness.progress(FAMILY, f"{spec.name}: checking the variants agree")
    with keras_graph_leak_guard():
        ops = check_optimizer(spec)
    anchors = (
        f" Anchors: `{RAA}` on every variable in one tf.function (TF's "
        "fused C++ Adam, no weight decay, 28 B/param) and an in-place "
        f"`{ASSIGN_ADD}` of each gradient (12 B/param)."
        if spec.anchors
        else ""
    )
    stock = (
        "the kbm optimizer's reference path (plain TF ops, under "
        "`kbm.config.fused_kernels(False)`; Keras has no RAdam)"
        if spec.stock_is_reference
        else f"`{spec.stock_label}`"
    )
    table = results.table(
        f"{spec.name} step",
        STEP_COLUMNS,
        f"`kbm.optimizers.{spec.name}` (its step runs "
        f"{', '.join(f'`{op}`' for op in ops)}) vs {stock}, in "
        "tf.function and under XLA; learning_rate 1e-3, weight_decay "
        f"0.01. {spec.bytes_per_param} B/param ("
        + {
            28: "read p, g, m, v; write p, m, v",
            20: "read p, g, m; write p, m",
            40: "two passes because of the trust ratio: read p, g, m, v, "
            "write m, v = 24 B; read p, m, v, write p = 16 B",
        }[spec.bytes_per_param]
        + "). One step = `optimizer.apply(grads, variables)` in "
        "tf.function on fixed gradients; float32 keras.Variables."
        + anchors
        + f" Before timing, {AGREE_STEPS} steps of the kbm, tf.function "
        "and XLA variants on small variables (learning_rate 0.1, "
        "weight_decay 0.5) agreed within 1e-4 of the largest update.",
    )
    with table:
        t0 = time.perf_counter()
        for seed, (count, shape) in enumerate(layouts):
            run_layout(results, table, spec, count, shape, seed)
        elapsed = time.perf_counter() - t0
    kbm_ms = {r["layout"]: r["ms"] for r in table.rows if r["variant"] == KBM}
    ratio = (
        kbm_ms[layout_label(count_b, shape_b)]
        / kbm_ms[layout_label(count_a, shape_a)]
    )
    met = "met" if ratio <= TARGET_LAYOUT_RATIO else "NOT met"
    table.notes.append(
        f"kbm, {count_b}-variable time / {count_a}-variable time: "
        f"{ratio:.2f} (target ≤ {TARGET_LAYOUT_RATIO:g}: {met})."
    )
    table.notes.append(
        f"Peak RSS of the process so far: {peak_rss() / GB:.1f} GB; "
        f"wall time of this table: {elapsed:.0f} s."
    )
    for count, shape in layouts:
        summary.rows.append(
            target_row(spec, layout_label(count, shape), table.rows, ratio)
        )
    return elapsed


# ----------------------------------------------------------------- model ----


class StockTokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus a learned embedding of the positions, added."""

    def __init__(self, vocabulary, length, hidden, **kwargs):
        super().__init__(**kwargs)
        self.token = keras.layers.Embedding(vocabulary, hidden, name="token")
        self.position = keras.layers.Embedding(length, hidden, name="pos")

    def call(self, ids):
        positions = keras.ops.arange(keras.ops.shape(ids)[-1])
        return self.token(ids) + self.position(positions)[None]


class StockEncoderBlock(keras.layers.Layer):
    """A post-LN encoder block from stock Keras layers (BERT's layout).

    x = LN(x + MHA(x, x)); x = LN(x + Dense(Dense_gelu(x))).
    """

    def __init__(self, hidden, intermediate, heads, epsilon, **kwargs):
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=heads, key_dim=hidden // heads
        )
        self.attention_norm = keras.layers.LayerNormalization(epsilon=epsilon)
        self.ffn_in = keras.layers.Dense(intermediate, activation="gelu")
        self.ffn_out = keras.layers.Dense(hidden)
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=epsilon)

    def call(self, x, training=None):
        x = self.attention_norm(x + self.attention(x, x, training=training))
        return self.ffn_norm(x + self.ffn_out(self.ffn_in(x)))


class EncoderClassifier(keras.Model):
    """Embedding, encoder blocks, mean pooling and a Dense head."""

    def __init__(self, embedding, blocks, classes, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.blocks = blocks
        self.pool = keras.layers.GlobalAveragePooling1D()
        self.head = keras.layers.Dense(classes)

    def call(self, ids, training=None):
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x, training=training)
        return self.head(self.pool(x))


def build_classifier(variant, cfg, jit_compile):
    """The compiled (and built) model of one variant."""
    n, hidden, heads = cfg["blocks"], cfg["hidden"], cfg["heads"]
    inter, eps = cfg["intermediate"], cfg["epsilon"]
    if variant in (E2E_KBM, E2E_KBM_XLA):
        embedding = kbm.layers.TokenAndPositionEmbedding(
            cfg["vocabulary"], cfg["length"], hidden
        )
        blocks = [
            kbm.layers.TransformerEncoder(
                intermediate_dim=inter,
                num_heads=heads,
                dropout=0.0,
                activation="gelu",
                norm="layer",
                norm_first=False,
                layer_norm_epsilon=eps,
            )
            for _ in range(n)
        ]
        optimizer = kbm.optimizers.AdamW(**HYPER)
    else:
        embedding = StockTokenAndPositionEmbedding(
            cfg["vocabulary"], cfg["length"], hidden
        )
        blocks = [
            StockEncoderBlock(hidden, inter, heads, eps) for _ in range(n)
        ]
        optimizer = keras.optimizers.AdamW(**HYPER)
    model = EncoderClassifier(embedding, blocks, cfg["classes"])
    model(tf.zeros([1, cfg["length"]], tf.int32))  # builds the weights
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def classifier_inputs(cfg):
    shape = [cfg["batch"], cfg["length"]]
    x = tf.random.stateless_uniform(
        shape, seed=[5, 6], minval=0, maxval=cfg["vocabulary"], dtype=tf.int32
    )
    y = tf.random.stateless_uniform(
        [cfg["batch"]],
        seed=[7, 8],
        minval=0,
        maxval=cfg["classes"],
        dtype=tf.int32,
    )
    return x, y


def run_model(results, cfg):
    results.shapes["classifier token ids"] = [[cfg["batch"], cfg["length"]]]
    table = results.table(
        "Training step: what losing XLA costs",
        E2E_COLUMNS,
        f"One `model.train_on_batch(x, y)` of a classifier: token ids "
        f"[{cfg['batch']}, {cfg['length']}] (vocabulary "
        f"{cfg['vocabulary']}) → token + learned position embedding "
        f"(width {cfg['hidden']}) → {cfg['blocks']} post-LN encoder "
        f"block(s) ({cfg['heads']} heads, FFN {cfg['intermediate']}, exact "
        f"GELU, LayerNorm epsilon {cfg['epsilon']:g}, no dropout) → mean "
        f"pooling → Dense({cfg['classes']}), sparse softmax cross-entropy; "
        "AdamW with learning_rate 1e-3, weight_decay 0.01. kbm: "
        "`kbm.layers.TokenAndPositionEmbedding` + "
        "`kbm.layers.TransformerEncoder` + `kbm.optimizers.AdamW`; keras: "
        "`keras.layers.Embedding` (tokens and positions, added), "
        "`MultiHeadAttention`, `LayerNormalization`, `Dense(activation="
        "'gelu')` + `keras.optimizers.AdamW`, compiled with jit_compile "
        "False and True. Variants are initialised independently (outputs "
        "not compared); the warm-up calls trace (and XLA-compile) Keras's "
        "train function.",
    )
    x, y = classifier_inputs(cfg)
    with table:
        keras.utils.set_random_seed(0)
        # kbm layers under jit_compile=True: Keras 3 refuses it (warning).
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            refused = build_classifier(E2E_KBM_XLA, cfg, True)
        refusal = [
            str(w.message) for w in caught if "jit_compile" in str(w.message)
        ]
        refused_jit = refused.jit_compile
        del refused
        gc.collect()
        models = {
            E2E_KBM: (build_classifier(E2E_KBM, cfg, False), False),
            E2E_KERAS: (build_classifier(E2E_KERAS, cfg, False), False),
            E2E_KERAS_XLA: (build_classifier(E2E_KERAS_XLA, cfg, True), True),
        }
        calls = {
            name: (lambda model=model: model.train_on_batch(x, y))
            for name, (model, _) in models.items()
        }
        _harness.progress(
            FAMILY,
            f"training step, seq {cfg['length']}, {cfg['blocks']} block(s) "
            f"({results.rounds} rounds after {results.warmup} warm-up)",
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(
                "always", kbm.config.FusedKernelFallbackWarning
            )
            t0 = time.perf_counter()
            measured = results.bench(calls, reference=E2E_KBM)
            elapsed = time.perf_counter() - t0
        fallbacks = sorted(
            {
                str(w.message)
                for w in caught
                if issubclass(w.category, kbm.config.FusedKernelFallbackWarning)
            }
        )
        for name, (model, requested) in models.items():
            m = measured[name]
            table.rows.append(
                {
                    "variant": name,
                    "kbm": name == E2E_KBM,
                    "jit_compile": f"{requested} → {model.jit_compile}",
                    "ms": m.median_ms,
                    "kbm_speedup": None if name == E2E_KBM else m.ratio,
                    "params": f"{model.count_params():,}",
                    "note": "",
                    "times_ms": m.times_ms,
                }
            )
        table.rows.append(
            {
                "variant": E2E_KBM_XLA,
                "kbm": False,
                "jit_compile": f"True → {refused_jit}",
                "note": (
                    "not timed: Keras 3 refuses XLA for models whose layers "
                    "set supports_jit=False and runs the first row's step"
                    + (f" (warning: “{refusal[0]}”)" if refusal else "")
                ),
            }
        )
        del calls, models, measured
        gc.collect()
    if fallbacks:
        table.notes.append(
            "kbm fell back to a reference path during the warm-up: "
            + " | ".join(fallbacks)
        )
    table.notes.append(
        f"Peak RSS of the process so far: {peak_rss() / GB:.1f} GB; wall "
        f"time of this table: {elapsed:.0f} s (incl. tracing and XLA "
        "compilation in the warm-up)."
    )
    return elapsed


# ---------------------------------------------------------------- memory ----


def current_rss():
    """This process's resident set size in bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss():
    """VmHWM (peak RSS) from /proc/self/status in bytes, or 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_available():
    """MemAvailable from /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def start_watchdog():
    """Aborts this process before it can push the machine out of memory."""

    def watch():
        while True:
            rss, free = current_rss(), memory_available()
            if rss > WATCHDOG_RSS or (
                free is not None and free < WATCHDOG_MIN_AVAILABLE
            ):
                sys.stderr.write(
                    f"[{FAMILY}] memory watchdog: RSS {rss / GB:.1f} GB, "
                    f"available {(free or 0) / GB:.1f} GB; aborting\n"
                )
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT)
            time.sleep(0.05)

    threading.Thread(target=watch, name="memory-watchdog", daemon=True).start()


# ------------------------------------------------------------------ main ----


def add_arguments(parser):
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["step", "model"],
        default=["step", "model"],
        help="which sections to run (default: both)",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZER_NAMES,
        default=OPTIMIZER_NAMES,
        help="which optimizer tables to run (default: all)",
    )


def main(argv=None):
    args = _harness.parse_args(__doc__, argv, add_arguments=add_arguments)
    if IS_LEGACY_KERAS:
        print(
            f"[{FAMILY}] skipped: this benchmark is for Keras 3 "
            "(TF_USE_LEGACY_KERAS is set); no results written"
        )
        return
    start_watchdog()
    # Every configuration traces fresh tf.functions by design; TF's
    # "excessive retracing" notices would only be noise.
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    t0 = time.perf_counter()
    timings = {}
    if "step" in args.sections:
        layouts = QUICK_LAYOUTS if args.quick else LAYOUTS
        timings |= run_optimizers(results, layouts, args.optimizers)
    if "model" in args.sections:
        timings["model"] = run_model(results, QUICK_E2E if args.quick else E2E)
    results.write(args.out or _harness.results_path(FAMILY, args.quick))
    _harness.progress(
        FAMILY,
        "wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {time.perf_counter() - t0:.0f} s; peak RSS "
        f"{peak_rss() / GB:.1f} GB",
    )


if __name__ == "__main__":
    main()
