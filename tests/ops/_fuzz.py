"""Shared pieces of the property-based (hypothesis) tests of the ops.

Strategies draw small descriptions (shapes, a dtype, a value pattern and a
seed); `tensor` turns them into tensors with NumPy, so an example costs
little to generate however long its rows are. `counted` counts the examples
each test runs (`benchmarks/fuzz.py` reads the counts) and, when
`KBM_FUZZ_TEST_SECONDS` is set, ends a test with a skip once it has run for
that long (the long profile's time budget). Profiles: tests/conftest.py.
"""

import atexit
import collections
import functools
import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from keras_bigmodels.testing import assert_close

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# Sizes that have broken kernels elsewhere: empty, one, primes, powers of two
# and their neighbours (SIMD widths, tiles), and the 4095-4097 boundary.
SPECIAL_WIDTHS = (1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65)
SPECIAL_WIDTHS += (127, 128, 129, 255, 256, 257, 1023, 1024, 1025)
SPECIAL_WIDTHS += (4095, 4096, 4097)
LONG_WIDTHS = (8191, 16411, 32768)  # long rows: one or two of them
LEADING_DIMS = (0, 1, 2, 3, 5, 7, 13)

# ----------------------------------------------------------------- counting

_COUNTS = collections.Counter()
_FAILURES = collections.Counter()
_STARTED = {}


def _dump_counts():
    path = os.environ.get("KBM_FUZZ_COUNTS")
    if path:
        with open(path, "w") as f:
            json.dump({"examples": _COUNTS, "failing": _FAILURES}, f)


atexit.register(_dump_counts)


def counted(family):
    """Counts the examples of the decorated test (put it below `@given`).

    With `KBM_FUZZ_TEST_SECONDS` set, the test is skipped (ending it, with
    the examples run so far counted) once that many seconds have passed
    since its first example, unless an example has failed (hypothesis is
    then shrinking it).
    """

    def decorate(fn):
        key = f"{family}::{fn.__name__}"

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            budget = float(os.environ.get("KBM_FUZZ_TEST_SECONDS", "0"))
            now = time.monotonic()
            start = _STARTED.setdefault(key, now)
            if budget and now - start > budget and not _FAILURES[key]:
                pytest.skip(
                    f"fuzz time budget ({budget:g} s) reached after "
                    f"{_COUNTS[key]} examples"
                )
            _COUNTS[key] += 1
            try:
                return fn(*args, **kwargs)
            except Exception:
                _FAILURES[key] += 1
                raise

        return wrapper

    return decorate


# --------------------------------------------------------------- strategies


def dtypes(allowed=FLOAT_DTYPES):
    return st.sampled_from(allowed)


def widths(long_rows=True):
    """A last-axis length: special sizes, small random ones, long rows."""
    options = [st.sampled_from(SPECIAL_WIDTHS), st.integers(1, 300)]
    if long_rows:
        options.append(st.sampled_from(LONG_WIDTHS))
    return st.one_of(*options)


def dim(low=0, high=64):
    return st.one_of(
        st.sampled_from([d for d in LEADING_DIMS if low <= d <= high]),
        st.integers(low, high),
    )


@st.composite
def row_shapes(draw, max_elements=1 << 15, min_rank=1, max_rank=4):
    """`[..., C]` with at most `max_elements` elements (an empty shape when
    a leading dim is 0)."""
    c = draw(widths())
    rank = draw(st.integers(min_rank, max_rank))
    lead = []
    budget = max(1, max_elements // c)
    for _ in range(rank - 1):
        d = draw(dim())
        if d > budget:
            d = budget
        lead.append(d)
        budget = max(1, budget // max(d, 1))
    return tuple(lead) + (c,)


# Values injected at a few positions: NaN, infinities, denormals (of
# float32; float16's smallest is 6e-8), huge, zero.
SPECIAL_VALUES = (
    float("nan"),
    float("inf"),
    float("-inf"),
    1e-40,
    -1e-40,
    6e-8,
    1e30,
    -1e30,
    0.0,
)
PATTERNS = ("normal", "normal", "normal", "equal", "huge", "denormal")


@st.composite
def values(draw, allow_special=True):
    """A value pattern: a dict for `tensor`.

    pattern: "normal" (scale drawn), "equal" (one value), "huge" (about
    1e30), "denormal" (about 1e-40); specials: (position fraction, value)
    pairs written over the pattern.
    """
    pattern = draw(st.sampled_from(PATTERNS))
    spec = {
        "pattern": pattern,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "scale": draw(st.sampled_from([1e-3, 0.1, 1.0, 3.0, 30.0])),
        "specials": [],
    }
    if allow_special:
        spec["specials"] = draw(
            st.lists(
                st.tuples(
                    st.floats(0, 1, exclude_max=True),
                    st.sampled_from(SPECIAL_VALUES),
                ),
                max_size=3,
            )
        )
    return spec


def array(spec, shape, np_seed_offset=0):
    """The float64 NumPy array a value pattern describes."""
    rng = np.random.default_rng(spec["seed"] + np_seed_offset)
    pattern = spec["pattern"]
    if pattern == "equal":
        a = np.full(shape, rng.standard_normal() * spec["scale"])
    elif pattern == "huge":
        a = rng.standard_normal(shape) * 1e30
    elif pattern == "denormal":
        a = rng.standard_normal(shape) * 1e-40
    else:
        a = rng.standard_normal(shape) * spec["scale"]
    a = np.asarray(a, np.float64)
    if a.size:
        flat = a.reshape(-1)
        for frac, value in spec["specials"]:
            flat[int(frac * flat.size)] = value
    return a


def tensor(spec, shape, dtype, offset=0):
    return tf.constant(array(spec, shape, offset), dtype=dtype)


NONFINITE = "nonfinite inputs"


def is_ordinary(*specs):
    """How closely the outputs must match the reference (`check_matches`).

    True when no value is special: within the op's tolerance everywhere.
    NONFINITE when a NaN or an infinity is injected: the reference is no
    oracle for how NaN propagates (it masks with selects where a kernel
    multiplies by 0), so only "no crash" and the output shapes are checked.
    False otherwise (huge, denormal or zero values): within the tolerance
    relative to the largest output.
    """
    if any(not np.isfinite(value) for s in specs for _, value in s["specials"]):
        return NONFINITE
    return all(
        s["pattern"] in ("normal", "equal") and not s["specials"] for s in specs
    )


# --------------------------------------------------------------- properties


def to_f64(t):
    """A tensor's (or array's) values as float64 NumPy, converted by NumPy
    (bfloat16 too, through ml_dtypes) without running TensorFlow ops."""
    if hasattr(t, "numpy"):
        t = t.numpy()
    return np.asarray(t).astype(np.float64)


def check_matches(actual, expected, tol, ordinary, what="output"):
    """The fuzz property of one output against its reference.

    Always: the kernel is non-finite only where the reference is. Ordinary
    inputs: every element within `tol`. Otherwise (huge values, specials):
    the elements where both are finite, within `tol` relative to the largest
    finite reference value (sums over such rows cancel). `ordinary=None`
    (an ill-conditioned example): the finiteness property only.
    """
    a, e = to_f64(actual), to_f64(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if ordinary is NONFINITE:
        return
    extra = ~np.isfinite(a) & np.isfinite(e)
    if extra.any():
        i = np.unravel_index(np.argmax(extra), extra.shape)
        raise AssertionError(
            f"{what}: {extra.sum()} non-finite values where the reference "
            f"is finite, e.g. at {i}: got {a[i]!r}, reference {e[i]!r}"
        )
    if ordinary is None:  # ill-conditioned: finiteness only
        return
    # Where the reference is not finite, a finite kernel value is allowed.
    a, e = np.where(np.isfinite(e), a, 0.0), np.where(np.isfinite(e), e, 0.0)
    if ordinary:
        assert_close(a, e, what=what, **tol)
    else:
        both = np.isfinite(a) & np.isfinite(e)
        a, e = np.where(both, a, 0.0), np.where(both, e, 0.0)
        largest = float(np.abs(e).max()) if e.size else 0.0
        atol = tol["atol"] + tol["rtol"] * largest
        assert_close(a, e, rtol=tol["rtol"], atol=atol, what=what)


ERRORS = (tf.errors.InvalidArgumentError, ValueError)


def check_rejects(fn, names, errors=ERRORS):
    """`fn()` must raise one of `errors` whose message names one of `names`
    (a tensor's name, or TensorFlow's `input #i` for a dtype mismatch)."""
    try:
        fn()
    except errors as e:
        message = str(e)
        if not any(n in message for n in names):
            raise AssertionError(
                f"error does not name any of {names}: {message[:500]}"
            ) from e
    else:
        raise AssertionError(f"no error for inconsistent {names}")


# A raw kernel called with a wrong dtype fails in TensorFlow's dispatch,
# before any kernel runs: "input #i ... was expected to be a float tensor"
# (InvalidArgumentError; when the first input of a type attribute is the
# wrong one, a later one is named), or, when the first input already fixes
# the type attribute to a combination without a kernel, NotFoundError
# ("Could not find device for node ... All kernels registered"; for ops
# with resource inputs, InvalidArgumentError "No OpKernel was
# registered"). The
# public ops check dtypes before that and raise TypeError naming the tensor.
DTYPE_ERRORS = ERRORS + (tf.errors.NotFoundError, TypeError)
DTYPE_NAMES = [
    "All kernels registered for op",
    "No OpKernel was registered",
    "was expected to be a",
]


def check_rejects_corrupt(fn, names, how):
    """`check_rejects` for a companion tensor corrupted by `how`."""
    if how == "dtype":
        check_rejects(fn, names + DTYPE_NAMES, DTYPE_ERRORS)
    else:
        check_rejects(fn, names)


# How a companion tensor is made inconsistent.
CORRUPTIONS = ("drop", "grow", "rank_up", "rank_down", "scalar", "dtype")


def corrupt(t, how, other_dtype):
    """`t` with a wrong shape or dtype (`how` from CORRUPTIONS)."""
    shape = list(t.shape)
    if how == "dtype":
        return tf.cast(t, other_dtype)
    if how == "scalar":
        return tf.zeros([] if shape else [2], t.dtype)
    if how == "rank_up":
        return tf.zeros(shape + [1], t.dtype)
    if how == "rank_down":
        return tf.zeros(shape[1:] if shape else [2], t.dtype)
    axis = len(shape) - 1
    if axis < 0:
        return tf.zeros([2], t.dtype)
    shape[axis] = shape[axis] + 1 if how == "grow" else max(shape[axis] - 1, 0)
    if shape == list(t.shape):  # a 0 that cannot shrink
        shape[axis] += 2
    return tf.zeros(shape, t.dtype)
