"""Benchmark: bias + GELU epilogues and FusedDense, float32, CPU.

Table "bias+GELU": `gelu(x + bias)`, exact (erf) and tanh approximation, on
x of [8192, 3072] (a BERT-base FFN activation, 16 x 512 tokens) and
[8192, 768], forward and forward+backward. Four variants are timed
interleaved round-robin in one process (see `_harness.bench`):

* `tf.nn.gelu`: the stock composite `tf.nn.gelu(x + b, approximate=...)`
  inside `tf.function`;
* `keras gelu`: `keras.activations.gelu(x + b, approximate=...)` inside
  `tf.function`;
* `tf.nn.gelu + XLA`: the composite inside `tf.function(jit_compile=True)`;
* `kbm fused`: `kbm.ops.bias_gelu(x, b, approximate=..., use_fused_kernel=
  True)` inside `tf.function`.

"fwd" returns y; "fwd+bwd" is one `tf.GradientTape` step returning y, dx and
dbias (b is a `tf.Variable`), with dy supplied through `output_gradients`.
Effective GB/s counts the minimal bytes: fwd = read x + write y (2 tensors);
fwd+bwd = 5 tensors (x, y; x and dy read again, dx written). "% of copy"
divides by the copy bandwidth measured in the same process; "kbm speed-up"
is the median of the per-round ratios (variant time / kbm time).

Table "Dense + GELU": one fwd+bwd training step of an FFN up-projection,
x [8192, 768] -> 3072 units, returning y, dx, dkernel (and dbias):

* `matmul only`: `x @ W`, no bias, no activation, gradients w.r.t. x and W;
  the floor a fused epilogue can approach;
* `keras Dense`: `keras.layers.Dense(3072, activation="gelu")` in
  `tf.function`, and the same under `jit_compile=True` (`keras Dense + XLA`);
* `kbm FusedDense`: `kbm.layers.FusedDense(3072, activation="gelu")`, with
  the same weights, in `tf.function`.

"epilogue cost" is (t - t_matmul) / t_matmul, taken as the median of the
per-round ratios minus one; the target for FusedDense is <= 10 %. GFLOP/s
counts the three matmuls only (6 * M * K * N).

Before timing, the outputs (y and every gradient) of the variants that
compute the same thing are checked to agree (`_harness.check_agreement`).

Run alone with `python benchmarks/bias_activation.py [--quick] [--out PATH]`;
`benchmarks/run_all.py` runs it once per allocator setting, in a fresh
process with `TF_CPP_MIN_LOG_LEVEL=2` (set it yourself when running a
script alone, for the same quiet output).
"""

import _harness
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

FAMILY = "bias_activation"
SHAPES = [[8192, 3072], [8192, 768]]
QUICK_SHAPES = [[512, 768]]
DENSE = {"tokens": 8192, "in": 768, "units": 3072}
QUICK_DENSE = {"tokens": 512, "in": 768, "units": 3072}
KBM = "kbm fused"
KBM_DENSE = "kbm FusedDense"
MATMUL = "matmul only"
TARGET_EPILOGUE = 0.10

DENSE_COLUMNS = [
    _harness.Column("variant", "variant"),
    _harness.Column("ms", "median ms", "ms"),
    _harness.Column("gflops", "matmul GFLOP/s", "gflops"),
    _harness.Column("epilogue", "epilogue cost", "pct"),
    _harness.Column("kbm_speedup", "kbm speed-up", "ratio"),
]


def _gelu_variants(bias, approximate):
    """{name: (forward fn of x, jit_compile)}; all add the same bias."""

    def composite(x):
        return tf.nn.gelu(x + bias, approximate=approximate)

    def keras_gelu(x):
        return keras.activations.gelu(x + bias, approximate=approximate)

    def fused(x):
        return kbm.ops.bias_gelu(
            x, bias, approximate=approximate, use_fused_kernel=True
        )

    return {
        "tf.nn.gelu": (composite, False),
        "keras gelu": (keras_gelu, False),
        "tf.nn.gelu + XLA": (composite, True),
        KBM: (fused, False),
    }


def forward_step(forward, jit_compile):
    """A tf.function computing y = forward(x)."""
    return tf.function(lambda x: forward(x), jit_compile=jit_compile)


def forward_backward_step(forward, params, jit_compile):
    """A tf.function for one training step: y, dx and d(params).

    The upstream gradient dy enters through `output_gradients`.
    """

    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = forward(x)
        dx, *dparams = tape.gradient(y, [x, *params], output_gradients=dy)
        return y, dx, *dparams

    return tf.function(step, jit_compile=jit_compile)


def run_bias_gelu(results, shapes):
    table = results.table(
        "bias+GELU",
        _harness.MEMORY_BOUND_COLUMNS,
        description=(
            "gelu(x + bias), float32; bytes: fwd 2 tensors, fwd+bwd 5 "
            "tensors (4 bytes per element)."
        ),
    )
    with table:
        for shape in shapes:
            x = tf.random.stateless_normal(shape, seed=[1, 2])
            dy = tf.random.stateless_normal(shape, seed=[3, 4])
            bias = tf.Variable(
                tf.random.stateless_normal(shape[-1:], seed=[5, 6]),
                name="bias",
            )
            elements = shape[0] * shape[1]
            for approximate in (False, True):
                op = f"bias+GELU ({'tanh' if approximate else 'erf'})"
                variants = _gelu_variants(bias, approximate)
                for pass_, tensors in (("fwd", 2), ("fwd+bwd", 5)):
                    _harness.progress(FAMILY, f"{op} {pass_} {shape}")
                    calls = {}
                    for name, (forward, jit) in variants.items():
                        if pass_ == "fwd":
                            fn = forward_step(forward, jit)
                            calls[name] = lambda fn=fn: fn(x)
                        else:
                            fn = forward_backward_step(forward, [bias], jit)
                            calls[name] = lambda fn=fn: fn(x, dy)
                    measured = results.bench(
                        calls, reference=KBM, agree=list(calls)
                    )
                    table.rows += _harness.memory_bound_rows(
                        op,
                        pass_,
                        shape,
                        measured,
                        KBM,
                        nbytes=tensors * elements * 4,
                        copy_gbps=results.copy_gbps,
                    )


def run_dense(results, dims):
    m, k, n = dims["tokens"], dims["in"], dims["units"]
    table = results.table(
        "Dense + GELU",
        DENSE_COLUMNS,
        description=(
            f"fwd+bwd of x [{m}, {k}] -> {n} units, activation 'gelu' (erf), "
            "float32. epilogue cost = (t - t_matmul) / t_matmul, median of "
            f"per-round ratios; target for FusedDense <= "
            f"{TARGET_EPILOGUE:.0%}."
        ),
    )
    fused = kbm.layers.FusedDense(n, activation="gelu", name="fused_dense")
    fused.build((None, k))
    dense = keras.layers.Dense(n, activation="gelu", name="dense")
    dense.build((None, k))
    dense.set_weights(fused.get_weights())
    kernel = tf.Variable(fused.kernel.numpy(), name="kernel")
    x = tf.random.stateless_normal([m, k], seed=[1, 2])
    dy = tf.random.stateless_normal([m, n], seed=[3, 4])

    steps = {
        MATMUL: forward_backward_step(
            lambda x: tf.matmul(x, kernel), [kernel], False
        ),
        "keras Dense": forward_backward_step(
            lambda x: dense(x), dense.trainable_weights, False
        ),
        "keras Dense + XLA": forward_backward_step(
            lambda x: dense(x), dense.trainable_weights, True
        ),
        KBM_DENSE: forward_backward_step(
            lambda x: fused(x), fused.trainable_weights, False
        ),
    }
    calls = {name: (lambda fn=fn: fn(x, dy)) for name, fn in steps.items()}
    with table:
        _harness.progress(FAMILY, f"Dense + GELU fwd+bwd [{m}, {k}] -> {n}")
        measured = results.bench(
            calls,
            reference=MATMUL,
            agree=[KBM_DENSE, "keras Dense", "keras Dense + XLA"],
        )
    flops = 6 * m * k * n
    for name, meas in measured.items():
        table.rows.append(
            {
                "variant": name,
                "kbm": name == KBM_DENSE,
                "ms": meas.median_ms,
                "gflops": flops / (meas.median_ms * 1e-3) / 1e9,
                "epilogue": (
                    None if name == MATMUL else 100.0 * (meas.ratio - 1.0)
                ),
                "kbm_speedup": (
                    None
                    if name == KBM_DENSE
                    else _harness.median_ratio(
                        meas.times_ms, measured[KBM_DENSE].times_ms
                    )
                ),
                "times_ms": meas.times_ms,
            }
        )
    epilogue = measured[KBM_DENSE].ratio - 1.0
    table.notes.append(
        f"FusedDense epilogue cost {epilogue:.1%}: "
        + ("within" if epilogue <= TARGET_EPILOGUE else "above")
        + f" the {TARGET_EPILOGUE:.0%} target."
    )


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    # Every configuration traces fresh tf.functions by design; TF's
    # "excessive retracing" notices would only be noise.
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    dense = QUICK_DENSE if args.quick else DENSE
    results.shapes = {
        "bias+GELU x": shapes,
        "Dense x": [dense["tokens"], dense["in"]],
        "Dense kernel": [dense["in"], dense["units"]],
    }
    run_bias_gelu(results, shapes)
    run_dense(results, dense)
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
