"""Property-based tests of the fused multi-tensor optimizer updates.

Adam family, LAMB and Lion, through the raw kernels and the public update
functions: lists of variables of random shapes (empty, scalar, prime and
long), dtypes, special gradient values and random hyperparameters.
Properties: no crash; one update matches the reference within
`TOLERANCES` and is non-finite only where the reference is; inconsistent
slots, gradients, decays and scalars are rejected with an error naming the
tensor, leaving the variables unchanged.
"""

import numpy as np
import tensorflow as tf
from hypothesis import example, given
from hypothesis import strategies as st

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops import optimizers as ops
from keras_bigmodels.ops.optimizers import TOLERANCES
from tests.ops import _fuzz

FAMILY = "optimizers"
KINDS = ("adam", "lamb", "lion")
N_SLOTS = {"adam": 2, "lamb": 2, "lion": 1}
UNITS = st.sampled_from([0.0, 1e-8, 1e-3, 0.1, 0.5, 0.9, 1.0])


@st.composite
def var_shapes(draw, max_elements=1 << 14):
    n = draw(st.integers(1, 4))
    shapes = []
    for _ in range(n):
        rank = draw(st.integers(0, 3))
        if rank == 0:
            shapes.append(())
            continue
        shape = list(draw(_fuzz.row_shapes(max_elements // n, rank, rank)))
        shapes.append(tuple(shape))
    return shapes


@st.composite
def hyperparameters(draw, kind):
    if kind == "adam":
        return dict(
            one_minus_beta_1=draw(UNITS),
            one_minus_beta_2=draw(UNITS),
            coef_adaptive=draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
            bias_2=draw(st.sampled_from([1e-3, 0.1, 1.0])),
            coef_sgd=draw(st.sampled_from([0.0, 0.0, 1e-3, 0.1])),
            epsilon=draw(st.sampled_from([0.0, 1e-12, 1e-7, 1e-3])),
        )
    if kind == "lamb":
        return dict(
            learning_rate=draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
            one_minus_beta_1=draw(UNITS),
            one_minus_beta_2=draw(UNITS),
            bias_1=draw(st.sampled_from([1e-3, 0.1, 1.0])),
            bias_2=draw(st.sampled_from([1e-3, 0.1, 1.0])),
            epsilon=draw(st.sampled_from([0.0, 1e-12, 1e-7, 1e-3])),
        )
    return dict(
        learning_rate=draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
        beta_1=draw(UNITS),
        beta_2=draw(UNITS),
    )


def _state(kind, shapes, dtype, spec, g_spec):
    """Variables, slot lists and gradients (NumPy float64 values)."""
    values = [_fuzz.array(spec, s, i) for i, s in enumerate(shapes)]
    slots = [
        [
            np.abs(_fuzz.array(spec, s, 10 * k + i + 10)) * 0.1
            for i, s in enumerate(shapes)
        ]
        for k in range(N_SLOTS[kind])
    ]
    grads = [_fuzz.array(g_spec, s, 100 + i) for i, s in enumerate(shapes)]
    return values, slots, grads


def _variables(arrays, dtype):
    return [tf.Variable(a, dtype=dtype) for a in arrays]


class _Slot:
    """What the references update instead of a `tf.Variable`: `assign`
    keeps the new tensor. The references only read (`convert_to_tensor`)
    and `assign` their variables, and a `tf.Variable` costs more to create
    than a whole update (the long profile's time went there)."""

    def __init__(self, value):
        self.t = value

    @property
    def dtype(self):
        return self.t.dtype

    def assign(self, value):
        self.t = value

    def value(self):
        return self.t


tf.register_tensor_conversion_function(
    _Slot, lambda s, dtype=None, name=None, as_ref=False: s.t
)


def _slots(arrays, dtype):
    return [_Slot(tf.constant(a, dtype)) for a in arrays]


UPDATES = {
    "adam": (ops.adam_update, ops._adam_reference, "kbm_multi_apply_adam"),
    "lamb": (ops.lamb_update, ops._lamb_reference, "kbm_multi_apply_lamb"),
    "lion": (ops.lion_update, ops._lion_reference, "kbm_multi_apply_lion"),
}


def _run_reference(kind, variables, slots, grads, decays, hp):
    reference = UPDATES[kind][1]
    for *vs, g, d in zip(variables, *slots, grads, decays):
        reference(*vs, g, d, *hp.values())


@st.composite
def case(draw, allow_special=True):
    kind = draw(st.sampled_from(KINDS))
    return dict(
        kind=kind,
        shapes=draw(var_shapes()),
        dtype=draw(_fuzz.dtypes()),
        spec=draw(_fuzz.values(allow_special=allow_special)),
        g_spec=draw(_fuzz.values(allow_special=allow_special)),
        hp=draw(hyperparameters(kind)),
        decay=draw(st.sampled_from([0.0, 1e-4, 0.01, 0.5])),
    )


def _check_update(c, fused_fn):
    kind, dtype, hp = c["kind"], c["dtype"], c["hp"]
    values, slots, grads = _state(
        kind, c["shapes"], dtype, c["spec"], c["g_spec"]
    )
    decays = [c["decay"] * (i % 2) for i in range(len(values))]
    got = [_variables(values, dtype)] + [_variables(s, dtype) for s in slots]
    want = [_slots(values, dtype)] + [_slots(s, dtype) for s in slots]
    g = [tf.constant(x, dtype) for x in grads]
    fused_fn(got, g, decays)
    _run_reference(kind, want[0], want[1:], g, decays, hp)
    tol = TOLERANCES[dtype]
    ordinary = _fuzz.is_ordinary(c["spec"], c["g_spec"])
    if kind == "lion":
        # sign() of a value within rounding of 0 may differ: compare the
        # momentum exactly-ish and the variables where it is not ambiguous.
        ordinary = False if ordinary is True else ordinary
    for group, (gs, ws) in enumerate(zip(got, want)):
        for i, (a, b) in enumerate(zip(gs, ws)):
            g_tol = tol
            if not group:
                g_tol = _variable_tol(tol, values[i], b, dtype)
                if kind == "lion":
                    g_tol = _lion_sign_tol(
                        g_tol, dtype, slots[0][i], grads[i], hp
                    )
                else:
                    g_tol = _moments_tol(
                        g_tol,
                        dtype,
                        [s[i] for s in slots],
                        grads[i],
                        [w[i] for w in want[1:]],
                        values[i],
                        b,
                    )
            _fuzz.check_matches(
                a.value(), b.value(), g_tol, ordinary, f"slot {group}[{i}]"
            )


def _rounded(a, dtype):
    """NumPy float64 values rounded to `dtype` and back."""
    with np.errstate(over="ignore"):  # to inf, as TensorFlow rounds
        a = np.asarray(a).astype(dtype.as_numpy_dtype)
    return a.astype(np.float64)


def _moments_tol(tol, dtype, old_slots, g, new_slots, old_p, new_p):
    """Adam/LAMB: m += (g - m) (1 - b1) and v += (g^2 - v) (1 - b2) cancel
    when the new moment is much smaller than the old (beta_2 = 0: v = g^2
    ~ 1e-10 from v ~ 3), a rounding error of u |old| (fused multiply-add
    or not) that the step m / sqrt(v) carries relatively."""
    u = 2.3e-16 if dtype == tf.float64 else 1.2e-7
    m0, v0 = (np.abs(x) for x in old_slots)
    m1, v1 = (np.abs(_fuzz.to_f64(w.value())) for w in new_slots)
    step = np.abs(_rounded(old_p, dtype) - _fuzz.to_f64(new_p.value()))
    with np.errstate(all="ignore"):
        cond = (m0 + np.abs(g)) / m1 + 0.5 * (v0 + g * g) / v1
        extra = 4 * u * step * cond
    extra = np.where(np.isfinite(extra), extra, 0.0)
    return {"rtol": tol["rtol"], "atol": tol["atol"] + extra}


def _lion_sign_tol(tol, dtype, m, g, hp):
    """Lion steps by lr * sign(b1 m + (1 - b1) g): where that sum is within
    rounding of 0 (fused multiply-add or not), either side's sign is right
    and the variables may differ by 2 lr (long run: bfloat16, b1 = 0.1, m =
    -9 g, one side's step 0, the other's -1 at lr = 1). Elementwise atol."""
    u = 2.3e-16 if dtype == tf.float64 else 1.2e-7
    b1, lr = hp["beta_1"], hp["learning_rate"]
    m, g = _rounded(m, dtype), _rounded(g, dtype)
    with np.errstate(all="ignore"):
        terms = np.abs(b1 * m) + np.abs((1 - b1) * g)
        ambiguous = np.abs(b1 * m + (1 - b1) * g) <= 4 * u * terms
    extra = np.where(ambiguous & np.isfinite(terms), 2 * abs(lr), 0.0)
    return {"rtol": tol["rtol"], "atol": tol["atol"] + extra}


def _variable_tol(tol, old, new, dtype):
    """The new value is p - step: its rounding error is relative to |p| and
    |step| (LAMB's step scales with ||p||, through the trust ratio, whose
    norms are summed in a different order), not to the difference, which
    cancels (float64: 1.1e-12 off at 0.008 for p ~ 30). Elementwise atol."""
    old = _rounded(old, dtype)
    new = _fuzz.to_f64(new.value())
    with np.errstate(all="ignore"):
        scale = np.abs(old) + np.abs(old - new)
    scale = np.where(np.isfinite(scale), scale, 0.0)
    return {"rtol": tol["rtol"], "atol": tol["atol"] + tol["rtol"] * scale}


# Found by fuzzing: Python-number hyperparameters were cast through
# float32 (tf.cast), so float64 variables were updated with rounded ones.
@example(
    c={
        "kind": "lion",
        "shapes": [()],
        "dtype": tf.float64,
        "spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {"learning_rate": 0.0, "beta_1": 0.0, "beta_2": 0.001},
        "decay": 0.0,
    }
)
# Long run: float32 Adam with beta_2 = 0: v = g^2 (~1e-10) computed as
# v + (g^2 - v) from v ~ 3, p 8e-4 off at -23.7 (`_moments_tol`).
@example(
    c={
        "kind": "adam",
        "shapes": [(), (), (8191,)],
        "dtype": tf.float32,
        "spec": {
            "pattern": "normal",
            "seed": 223,
            "scale": 30.0,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 4169,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {
            "one_minus_beta_1": 0.0,
            "one_minus_beta_2": 1.0,
            "coef_adaptive": 0.001,
            "bias_2": 0.001,
            "coef_sgd": 0.0,
            "epsilon": 0.0,
        },
        "decay": 0.0,
    }
)
# Long run: LAMB in float16 read m and v back from the variables for the
# update (pass 2): a new m of 1e-11 (one_minus_beta_1 = 1e-8) stored as 0
# gave no update where the reference (and the norm) used 1e-11, and with
# epsilon 0, v rounded to 0 gave 0/0 = NaN. The kernels now compute m and v
# again in pass 2 and store them after the update.
@example(
    c={
        "kind": "lamb",
        "shapes": [()],
        "dtype": tf.float16,
        "spec": {
            "pattern": "denormal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {
            "learning_rate": 0.001,
            "one_minus_beta_1": 1e-8,
            "one_minus_beta_2": 0.0,
            "bias_1": 0.001,
            "bias_2": 0.001,
            "epsilon": 1e-12,
        },
        "decay": 0.0,
    }
)
@example(
    c={
        "kind": "lamb",
        "shapes": [()],
        "dtype": tf.float16,
        "spec": {
            "pattern": "denormal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {
            "learning_rate": 0.0,
            "one_minus_beta_1": 0.0,
            "one_minus_beta_2": 1e-8,
            "bias_1": 0.001,
            "bias_2": 0.001,
            "epsilon": 0.0,
        },
        "decay": 0.0,
    }
)
# Long run: Lion in bfloat16 with b1 = 0.1 and m = -9 g somewhere in 8191
# values: sign(b1 m + (1 - b1) g) of a rounding error, a step of -1 on one
# side and 0 on the other at lr = 1 (see `_lion_sign_tol`).
@example(
    c={
        "kind": "lion",
        "shapes": [(8191,)],
        "dtype": tf.bfloat16,
        "spec": {"pattern": "normal", "seed": 75, "scale": 1.0, "specials": []},
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.1,
            "specials": [],
        },
        "hp": {"learning_rate": 1.0, "beta_1": 0.1, "beta_2": 0.0},
        "decay": 0.0,
    }
)
@given(c=case())
@_fuzz.counted(FAMILY)
def test_kernels_match_reference(c):
    lib = _loader.library()
    kind, dtype, hp = c["kind"], c["dtype"], c["hp"]
    kernel = getattr(lib, UPDATES[kind][2])
    u = tf.float64 if dtype == tf.float64 else tf.float32

    def fused(variable_lists, grads, decays):
        kernel(
            *[[v.handle for v in vs] for vs in variable_lists],
            grads,
            **{k: tf.constant(x, u) for k, x in hp.items()},
            decay=tf.constant(decays, u),
        )

    _check_update(c, fused)


# Found by fuzzing: with epsilon = 0 the LAMB kernel's padded SIMD lanes
# gave u = 0 / 0 = NaN, so the trust ratio fell back to 1 (any variable
# whose size is not a multiple of 8, e.g. a scalar).
@example(
    c={
        "kind": "lamb",
        "shapes": [(), (8191,)],
        "dtype": tf.float16,
        "spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {
            "learning_rate": 0.001,
            "one_minus_beta_1": 0.0,
            "one_minus_beta_2": 0.0,
            "bias_1": 0.001,
            "bias_2": 0.1,
            "epsilon": 0.0,
        },
        "decay": 0.0,
    }
)
# Long run: float64 LAMB, p ~ 30 stepping to 0.008: 1.1e-12 off, against a
# tolerance relative to the (cancelled) new value; now relative to |p| and
# the step (`_variable_tol`).
@example(
    c={
        "kind": "lamb",
        "shapes": [(), (), (16411,)],
        "dtype": tf.float64,
        "spec": {
            "pattern": "normal",
            "seed": 1416,
            "scale": 30.0,
            "specials": [],
        },
        "g_spec": {
            "pattern": "normal",
            "seed": 0,
            "scale": 0.001,
            "specials": [],
        },
        "hp": {
            "learning_rate": 0.1,
            "one_minus_beta_1": 0.0,
            "one_minus_beta_2": 0.0,
            "bias_1": 0.001,
            "bias_2": 1.0,
            "epsilon": 0.001,
        },
        "decay": 0.0,
    }
)
@given(c=case(allow_special=False))
@_fuzz.counted(FAMILY)
def test_public_updates_fused_match_reference(c):
    update = UPDATES[c["kind"]][0]

    def fused(variable_lists, grads, decays):
        update(
            *variable_lists,
            grads,
            decays=decays,
            use_fused_kernel=True,
            **c["hp"],
        )

    _check_update(c, fused)


TARGETS = ("grads", "ms", "vs", "decay", "scalar", "var_dtype")


@given(
    kind=st.sampled_from(KINDS),
    shapes=var_shapes(max_elements=1 << 10),
    dtype=_fuzz.dtypes(),
    target=st.sampled_from(TARGETS),
    how=st.sampled_from(_fuzz.CORRUPTIONS),
    which=st.integers(0, 3),
)
@_fuzz.counted(FAMILY)
def test_kernels_reject_inconsistent_inputs(
    kind, shapes, dtype, target, how, which
):
    lib = _loader.library()
    kernel = getattr(lib, UPDATES[kind][2])
    u = tf.float64 if dtype == tf.float64 else tf.float32
    n = len(shapes)
    i = which % n
    variables = [tf.Variable(tf.ones(s, dtype)) for s in shapes]
    slot_names = ["ms", "vs"][: N_SLOTS[kind]]
    slots = {
        k: [tf.Variable(tf.ones(s, dtype)) for s in shapes] for k in slot_names
    }
    grads = [tf.ones(s, dtype) for s in shapes]
    hp = {k: tf.constant(0.1, u) for k in _hyper_names(kind)}
    decay = tf.zeros([n], u)
    if target == "vs" and kind == "lion":
        target = "ms"
    other = tf.float64 if dtype != tf.float64 else tf.float32
    names = [target]
    if target == "grads":
        grads[i] = _fuzz.corrupt(grads[i], how, other)
        names += [f"grads[{i}]"]
    elif target in ("ms", "vs"):
        bad = _fuzz.corrupt(tf.ones(shapes[i], dtype), how, other)
        slots[target][i] = tf.Variable(bad)
        names += [f"{target}[{i}]"]
    elif target == "decay":
        decay = _fuzz.corrupt(
            decay, how, tf.float64 if u != tf.float64 else tf.float32
        )
    elif target == "scalar":
        name = sorted(hp)[which % len(hp)]
        hp[name] = _fuzz.corrupt(
            hp[name], how if how != "scalar" else "grow", other
        )
        names = [name]
    else:  # a variable of another dtype than the others
        variables[i] = tf.Variable(tf.ones(shapes[i], other))
        names += [f"vars[{i}]", "grads", "ms", "vs"]
        how = "dtype"
    before = [v.numpy().copy() for v in variables]
    _fuzz.check_rejects_corrupt(
        lambda: kernel(
            [v.handle for v in variables],
            *[[v.handle for v in slots[k]] for k in slot_names],
            grads,
            **hp,
            decay=decay,
        ),
        names,
        how,
    )
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def _hyper_names(kind):
    if kind == "adam":
        return [
            "one_minus_beta_1",
            "one_minus_beta_2",
            "coef_adaptive",
            "bias_2",
            "coef_sgd",
            "epsilon",
        ]
    if kind == "lamb":
        return [
            "learning_rate",
            "one_minus_beta_1",
            "one_minus_beta_2",
            "bias_1",
            "bias_2",
            "epsilon",
        ]
    return ["learning_rate", "beta_1", "beta_2"]
