"""Benchmark: LayerNorm and RMSNorm over the last axis, float32, CPU.

What is measured, per op, shape and pass, with four variants timed
interleaved round-robin in one process (see `_harness.bench`):

* `keras layer`: `keras.layers.LayerNormalization` (for RMSNorm,
  `keras.layers.RMSNormalization`) called inside `tf.function`;
* `stock TF`: the same math in plain TensorFlow ops inside `tf.function`
  (`kbm.ops.layer_norm(..., use_fused_kernel=False)`, the op's reference);
* `stock TF + XLA`: that reference inside `tf.function(jit_compile=True)`;
* `kbm fused`: `kbm.ops.layer_norm(..., use_fused_kernel=True)` inside
  `tf.function`.

Shapes are BERT-base activations, 16 x 512 = 8192 tokens by 768, 3072 and
4096 features. "fwd" returns y. "fwd+bwd" is one `tf.GradientTape` step that
returns y, dx and the parameter gradients (dgamma, dbeta), with dy supplied
through `output_gradients`; the parameters are `tf.Variable`s (the Keras
layer's own weights for the Keras variant).

Effective GB/s counts the minimal bytes: fwd = read x + write y (2 tensors);
fwd+bwd = 5 tensors (x, y; then x and dy read again and dx written), i.e.
5 * N * 4 bytes; the [C] parameter vectors are ignored. "% of copy" divides
by the copy bandwidth measured in the same process. "kbm speed-up" is the
median of the per-round ratios (variant time / kbm time). Before timing,
the four variants' outputs (y and every gradient) are checked to agree
(`_harness.check_agreement`).

Run alone with `python benchmarks/normalization.py [--quick] [--out PATH]`;
`benchmarks/run_all.py` runs it once per allocator setting, in a fresh
process with `TF_CPP_MIN_LOG_LEVEL=2` (set it yourself when running a
script alone, for the same quiet output).
"""

import _harness
import tensorflow as tf

import keras_bigmodels as kbm
from keras_bigmodels.backend import keras

FAMILY = "normalization"
SHAPES = [[8192, 768], [8192, 3072], [8192, 4096]]
QUICK_SHAPES = [[512, 768]]
LN_EPSILON = 1e-3  # keras.layers.LayerNormalization's default
RMS_EPSILON = 1e-6  # keras.layers.RMSNormalization's default
KBM = "kbm fused"


def _layer_norm_variants(channels):
    """{name: (forward fn of x, its parameters, jit_compile)}."""
    layer = keras.layers.LayerNormalization(epsilon=LN_EPSILON)
    layer.build((None, channels))
    gamma = tf.Variable(tf.ones([channels]), name="gamma")
    beta = tf.Variable(tf.zeros([channels]), name="beta")

    def reference(x):
        return kbm.ops.layer_norm(
            x, gamma, beta, epsilon=LN_EPSILON, use_fused_kernel=False
        )

    def fused(x):
        return kbm.ops.layer_norm(
            x, gamma, beta, epsilon=LN_EPSILON, use_fused_kernel=True
        )

    return {
        "keras layer": (layer, [layer.gamma, layer.beta], False),
        "stock TF": (reference, [gamma, beta], False),
        "stock TF + XLA": (reference, [gamma, beta], True),
        KBM: (fused, [gamma, beta], False),
    }


def _rms_norm_variants(channels):
    layer = keras.layers.RMSNormalization(epsilon=RMS_EPSILON)
    layer.build((None, channels))
    gamma = tf.Variable(tf.ones([channels]), name="gamma")

    def reference(x):
        return kbm.ops.rms_norm(
            x, gamma, epsilon=RMS_EPSILON, use_fused_kernel=False
        )

    def fused(x):
        return kbm.ops.rms_norm(
            x, gamma, epsilon=RMS_EPSILON, use_fused_kernel=True
        )

    return {
        "keras layer": (layer, [layer.scale], False),
        "stock TF": (reference, [gamma], False),
        "stock TF + XLA": (reference, [gamma], True),
        KBM: (fused, [gamma], False),
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


def run_op(results, op, make_variants, shapes):
    """Times one op over shapes and passes into one table."""
    table = results.table(
        op,
        _harness.MEMORY_BOUND_COLUMNS,
        description=(
            f"{op}, float32; bytes: fwd 2 tensors, fwd+bwd 5 tensors "
            "(4 bytes per element)."
        ),
    )
    with table:
        for shape in shapes:
            x = tf.random.stateless_normal(shape, seed=[1, 2])
            dy = tf.random.stateless_normal(shape, seed=[3, 4])
            elements = shape[0] * shape[1]
            variants = make_variants(shape[-1])
            for pass_, tensors in (("fwd", 2), ("fwd+bwd", 5)):
                _harness.progress(FAMILY, f"{op} {pass_} {shape}")
                calls = {}
                for name, (forward, params, jit) in variants.items():
                    if pass_ == "fwd":
                        fn = forward_step(forward, jit)
                        calls[name] = lambda fn=fn: fn(x)
                    else:
                        fn = forward_backward_step(forward, params, jit)
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


def main(argv=None):
    args = _harness.parse_args(__doc__, argv)
    # Every configuration traces fresh tf.functions by design; TF's
    # "excessive retracing" notices would only be noise.
    tf.get_logger().setLevel("ERROR")
    results = _harness.Results(FAMILY, __doc__.split("\n\n")[0], args)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    results.shapes = {"x": shapes}
    run_op(results, "LayerNorm", _layer_norm_variants, shapes)
    run_op(results, "RMSNorm", _rms_norm_variants, shapes)
    results.write(args.out or _harness.results_path(FAMILY, args.quick))


if __name__ == "__main__":
    main()
