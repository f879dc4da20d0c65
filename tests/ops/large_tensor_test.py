"""Kernels on tensors just past 2**31 elements (64-bit indexing).

Each test runs a fused kernel once on a tensor of a little more than 2**31
elements (bfloat16 or float16 where the memory allows it) and checks cheap
exact properties instead of a full reference:

- rows are independent in these kernels, so the rows around element 2**31
  and at the very end of the big tensor must equal, bit for bit, the kernel
  run on just those rows (and that small run agrees with the reference);
- reductions over rows (dgamma, dbeta, dbias) use inputs whose rows repeat
  with a short period, so the sum over all rows is a count-weighted sum of
  the period's rows.

The tests are marked `large` (deselected by default; `make test-large`).
Each one skips when the machine has too little free memory, and all of
them record their shape, peak resident memory, time and result; at the end
of the module the rows are written to
benchmarks/results/reliability_large.json.
"""

import datetime
import importlib.util
import json
import math
import pathlib
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_bigmodels.ops import _loader
from keras_bigmodels.ops import attention as attention_ops
from keras_bigmodels.ops import bias_activation as bias_ops
from keras_bigmodels.ops import distillation as distillation_ops
from keras_bigmodels.ops import normalization as normalization_ops
from keras_bigmodels.ops import optimizers as optimizer_ops
from keras_bigmodels.ops import quantization as quantization_ops
from tests.ops import _philox

pytestmark = pytest.mark.large

TWO_31 = 2**31
GB = 1e9
_ROOT = pathlib.Path(__file__).resolve().parents[2]
_RESULTS_PATH = _ROOT / "benchmarks" / "results" / "reliability_large.json"
_ROWS = []
# Rows of the period of the row patterns below (prime, so it is not aligned
# with SIMD widths, tiles or thread shards).
_PERIOD = 97


# ----------------------------------------------------------------- helpers


def _lib():
    lib = _loader.library()
    if lib is None:
        pytest.skip("the kbm op library is not built")
    return lib


def _available_gb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    return 0.0


def _reset_peak_rss():
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_gb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GB
    return float("nan")


class _Record:
    """Times a test body and records one row of the results table."""

    def __init__(self, kernel, shape, elements, dtype, need_gb):
        self.row = {
            "kernel": kernel,
            "shape": "x".join(str(d) for d in shape),
            "elements": int(elements),
            "dtype": dtype,
        }
        self.need_gb = need_gb

    def __enter__(self):
        available = _available_gb()
        if available < self.need_gb:
            self._add(
                float("nan"),
                0.0,
                f"skipped: {available:.1f} GB free, needs {self.need_gb} GB",
            )
            pytest.skip(
                f"needs {self.need_gb} GB of free memory, "
                f"{available:.1f} GB available"
            )
        _reset_peak_rss()
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        seconds = time.perf_counter() - self.start
        if exc_type is None:
            result = "pass"
        elif issubclass(exc_type, pytest.skip.Exception):
            result = f"skipped: {exc}"
        else:
            result = f"FAIL: {exc_type.__name__}: {str(exc)[:200]}"
        self._add(_peak_rss_gb(), seconds, result)
        return False

    def _add(self, peak, seconds, result):
        self.row["peak RSS GB"] = None if math.isnan(peak) else round(peak, 1)
        self.row["seconds"] = round(seconds, 1)
        self.row["result"] = result
        _ROWS.append(dict(self.row))


def _machine(**kwargs):
    """The machine line, from benchmarks/_machine.py (loaded by path)."""
    spec = importlib.util.spec_from_file_location(
        "kbm_bench_machine", _ROOT / "benchmarks" / "_machine.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.describe(**kwargs)


_NOTES = [
    "Each kernel runs once on a tensor of just over 2**31 elements on the "
    "CPU. Results are checked with exact properties: rows around element "
    "2**31 and at the end equal, bit for bit, the kernel run on those rows "
    "alone (which agrees with the float32 reference), and reductions over "
    "rows equal count-weighted sums of periodic rows.",
    "peak RSS is the process's resident high-water mark during the test "
    "(reset before each test). A test skips when the machine has less free "
    "memory than it needs; each row is the latest run that measured it.",
    "Flash attention, bfloat16, does not fit: the CPU kernel widens q to "
    "float32 (2 + 4 bytes per q element, 12.9 GB for 2**31 elements before "
    "k, v and the output) and its backward keeps about five q-sized float32 "
    "buffers (over 40 GB). The forward runs in float32 (a view, no copy) "
    "with q past 2**31 elements; the backward runs in bfloat16 with "
    "dropout on a score tensor of batch x heads x q_len x kv_len past "
    "2**31 elements, so the dropout counters and per-head offsets cross "
    "2**31 while q stays small.",
    "`make test-large` runs with TF_MKL_ALLOC_MAX_BYTES at 64 GiB: "
    "TensorFlow's oneDNN CPU allocator (`mklcpu`, a BFC pool) caps its "
    "reserved regions at the physical memory by default, and refused the "
    "weight-only matmul's 8.6 GB float32 copy of x with 17 GB free "
    "(ResourceExhaustedError; with TF_ENABLE_ONEDNN_OPTS=0 or the cap "
    "raised, the test passes).",
    "Optimizer: Lion (one slot) in bfloat16: variable, momentum and "
    "gradient are 3 x 4.3 GB. Adam in bfloat16 needs 4 x 4.3 = 17.2 GB and "
    "Adam with float32 slots 4.3 + 2 x 8.6 + 4.3 = 25.8 GB, over the "
    "machine's 24 GB shared with other jobs.",
]


def _merged_rows(new_rows):
    """This run's rows, after the rows of the previous results file for
    kernels this run did not measure (a run with -k, or a test skipped for
    lack of memory, keeps the last measured row)."""
    table = [
        [r[c] for c in ("kernel", "shape", "elements", "dtype")]
        + [r["peak RSS GB"], r["seconds"], r["result"]]
        for r in new_rows
    ]
    try:
        old = json.loads(_RESULTS_PATH.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        old = []
    fresh = {row[0]: row for row in table if not row[-1].startswith("skipped")}
    merged, seen = [], set()
    for row in old + table:
        if row[0] in seen:
            continue
        seen.add(row[0])
        merged.append(fresh.get(row[0], row))
    return merged


@pytest.fixture(scope="module", autouse=True)
def _write_results():
    yield
    if not _ROWS:
        return
    doc = {
        "topic": "large",
        "title": "Beyond 2**31 elements",
        "command": "make test-large",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "machine": _machine(memory=True),
        "columns": [
            "kernel",
            "shape",
            "elements",
            "dtype",
            "peak RSS GB",
            "seconds",
            "result",
        ],
        "rows": _merged_rows(_ROWS),
        "notes": _NOTES,
    }
    _RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    _RESULTS_PATH.write_text(json.dumps(doc, indent=2) + "\n")


def _rows_past(width, extra_rows=3):
    """Rows of `width` such that rows * width just passes 2**31."""
    return TWO_31 // width + 1 + extra_rows


def _pattern(rows, width, dtype, seed=0, affine=False):
    """[rows, width] of `dtype`: c[j] + s[r % 97] * e[j] (c[j] + s[r] if
    `affine`), built from broadcasts without a float32 copy."""
    j = tf.range(width, dtype=tf.float32)
    c = tf.cast(2.0 * tf.sin(j * (0.37 + 0.01 * seed)), dtype)[None, :]
    r = tf.range(rows, dtype=tf.int64) % _PERIOD
    s = tf.cast(tf.cast(r - _PERIOD // 2, tf.float32) / 16.0, dtype)[:, None]
    if affine:
        return c + s
    e = tf.cast(tf.cos(j * (0.91 + 0.01 * seed)), dtype)[None, :]
    t = s * e
    out = c + t
    del t
    return out


def _period_counts(rows):
    """How many of `rows` rows have each residue mod _PERIOD."""
    counts = np.full(_PERIOD, rows // _PERIOD, np.float64)
    counts[: rows % _PERIOD] += 1
    return counts


def _sample_rows(rows, width):
    """Row indices to check: the start, around element 2**31, the end."""
    boundary = TWO_31 // width
    picked = {0, 1, boundary - 1, boundary, boundary + 1, rows - 2, rows - 1}
    return sorted(r for r in picked if 0 <= r < rows)


def _take(t, row_ids):
    return tf.gather(t, tf.constant(row_ids, tf.int64), axis=0)


def _assert_same(big_rows, small, what):
    a = np.asarray(tf.cast(big_rows, tf.float32))
    b = np.asarray(tf.cast(small, tf.float32))
    np.testing.assert_array_equal(a, b, err_msg=what)


def _assert_close(got, want, atol, rtol, what):
    np.testing.assert_allclose(
        np.asarray(tf.cast(got, tf.float64)),
        np.asarray(tf.cast(want, tf.float64)),
        atol=atol,
        rtol=rtol,
        err_msg=what,
    )


def _assert_periodic_sum(big_sum, per_row, rows, what, rtol=1e-4):
    """big_sum[c] == sum_r per_row[r % P, c], with per_row [P, width]."""
    per_row = np.asarray(tf.cast(per_row, tf.float64))
    counts = _period_counts(rows)
    want = counts @ per_row
    scale = counts @ np.abs(per_row) + 1.0
    got = np.asarray(tf.cast(big_sum, tf.float64))
    err = np.max(np.abs(got - want) / scale)
    assert err < rtol, f"{what}: relative error {err:.3g}"


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_normalization_past_2_31(kind):
    lib = _lib()
    dtype = tf.bfloat16
    width = 1000
    rows = _rows_past(width)
    eps = 1e-5
    name = "LayerNorm" if kind == "layer_norm" else "RMSNorm"
    with (
        _Record(f"{name} fwd+bwd", [rows, width], rows * width, "bfloat16", 11),
        tf.device("/CPU:0"),
    ):
        gamma = 1.0 + 0.01 * tf.range(width, dtype=tf.float32) / width
        beta = 0.1 * tf.cos(tf.range(width, dtype=tf.float32))
        x = _pattern(rows, width, dtype)

        def fwd(x):
            if kind == "layer_norm":
                y, mean, rstd = lib.kbm_fused_layer_norm(
                    x, gamma, beta, epsilon=eps
                )
                return y, (mean, rstd)
            y, rstd = lib.kbm_fused_rms_norm(x, gamma, epsilon=eps)
            return y, (rstd,)

        def bwd(dy, x, stats):
            if kind == "layer_norm":
                return lib.kbm_fused_layer_norm_grad(
                    dy, x, gamma, *stats, epsilon=eps
                )
            return lib.kbm_fused_rms_norm_grad(
                dy, x, gamma, *stats, epsilon=eps
            )

        ids = _sample_rows(rows, width)
        y, stats = fwd(x)
        y_rows = _take(y, ids)
        del y
        stat_rows = [_take(s, ids) for s in stats]
        # dy = x: a valid cotangent that needs no third big tensor.
        grads = bwd(x, x, stats)
        dx_rows = _take(grads[0], ids)
        param_grads = grads[1:]
        del grads

        x_small = _take(x, ids)
        y_small, stats_small = fwd(x_small)
        _assert_same(y_rows, y_small, f"{name} y rows")
        for got, want in zip(stat_rows, stats_small):
            _assert_same(got, want, f"{name} statistics")
        grads_small = bwd(x_small, x_small, stats_small)
        _assert_same(dx_rows, grads_small[0], f"{name} dx rows")

        if kind == "layer_norm":
            ref = normalization_ops._layer_norm_reference(
                x_small, gamma, beta, eps
            )
        else:
            ref = normalization_ops._rms_norm_reference(x_small, gamma, eps)
        _assert_close(y_small, ref, 0.05, 0.02, f"{name} vs reference")

        # One row of each residue: the parameter gradients of the period.
        x_period = _take(x, list(range(_PERIOD)))
        del x
        _, st = fwd(x_period)
        per_row = [
            bwd(
                x_period[i : i + 1],
                x_period[i : i + 1],
                [s[i : i + 1] for s in st],
            )[1:]
            for i in range(_PERIOD)
        ]
        for k, big in enumerate(param_grads):
            _assert_periodic_sum(
                big,
                tf.stack([p[k] for p in per_row]),
                rows,
                f"{name} parameter gradient {k}",
            )


def test_bias_gelu_past_2_31():
    lib = _lib()
    dtype = tf.bfloat16
    width = 1000
    rows = _rows_past(width)
    with (
        _Record(
            "bias+GELU fwd+bwd", [rows, width], rows * width, "bfloat16", 11
        ),
        tf.device("/CPU:0"),
    ):
        bias = tf.cast(0.05 * tf.sin(tf.range(width, dtype=tf.float32)), dtype)
        x = _pattern(rows, width, dtype)
        ids = _sample_rows(rows, width)
        y = lib.kbm_bias_gelu(x, bias, approximate=False)
        y_rows = _take(y, ids)
        del y
        dx, dbias = lib.kbm_bias_gelu_grad(x, x, bias, approximate=False)
        dx_rows = _take(dx, ids)
        del dx

        x_small = _take(x, ids)
        _assert_same(
            y_rows,
            lib.kbm_bias_gelu(x_small, bias, approximate=False),
            "y rows",
        )
        dx_small, _ = lib.kbm_bias_gelu_grad(
            x_small, x_small, bias, approximate=False
        )
        _assert_same(dx_rows, dx_small, "dx rows")
        ref = bias_ops._bias_gelu_reference(x_small, bias, False)
        _assert_close(y_rows, ref, 0.05, 0.02, "bias+GELU vs reference")

        # The period's rows in float32 (bfloat16 values are exact in it):
        # per-row dbias without rounding; the big dbias is bfloat16.
        x_period = tf.cast(_take(x, list(range(_PERIOD))), tf.float32)
        del x
        bias32 = tf.cast(bias, tf.float32)
        per_row = tf.stack(
            [
                lib.kbm_bias_gelu_grad(
                    x_period[i : i + 1],
                    x_period[i : i + 1],
                    bias32,
                    approximate=False,
                )[1]
                for i in range(_PERIOD)
            ]
        )
        _assert_periodic_sum(dbias, per_row, rows, "dbias", rtol=1e-2)


def test_dropout_past_2_31():
    lib = _lib()
    dtype = tf.bfloat16
    width = 1000
    rows = _rows_past(width)
    seed = (123456789, 987654321)
    with (
        _Record("dropout", [rows, width], rows * width, "bfloat16", 10),
        tf.device("/CPU:0"),
    ):
        x = tf.ones([rows, width], dtype)
        y = lib.kbm_dropout(x, tf.constant(seed, tf.int64), rate=0.5)
        del x
        ids = _sample_rows(rows, width)
        y_rows = np.asarray(tf.cast(_take(y, ids), tf.float32))
        step = 1 << 18  # Rows per float32 chunk (1 GB).
        kept = (
            sum(
                float(tf.reduce_sum(tf.cast(y[r : r + step], tf.float32)))
                for r in range(0, rows, step)
            )
            / 2.0
        )
        del y
        flat = np.asarray(ids, np.int64)[:, None] * width + np.arange(width)
        keep = _philox.keep_mask(seed, flat, 0.5)
        np.testing.assert_array_equal(y_rows, np.where(keep, 2.0, 0.0))
        fraction = kept / (rows * width)
        assert abs(fraction - 0.5) < 1e-4, fraction


def test_kd_loss_past_2_31():
    lib = _lib()
    dtype = tf.bfloat16
    width = 32000
    rows = _rows_past(width)
    with (
        _Record(
            "KD loss (softmax KL) fwd+bwd",
            [rows, width],
            rows * width,
            "bfloat16",
            16,
        ),
        tf.device("/CPU:0"),
    ):
        temperature = 2.0
        student = _pattern(rows, width, dtype)
        teacher = _pattern(rows, width, dtype, seed=3, affine=True)
        ids = _sample_rows(rows, width)
        loss, lse_t, lse_s = lib.kbm_softmax_kl_divergence(
            teacher,
            student,
            temperature=temperature,
            teacher_gradient=False,
            U=tf.float32,
        )
        dloss = tf.ones_like(loss)
        _, dstudent = lib.kbm_softmax_kl_divergence_grad(
            dloss,
            teacher,
            student,
            loss,
            lse_t,
            lse_s,
            temperature=temperature,
            teacher_gradient=False,
        )
        ds_rows = _take(dstudent, ids)
        del dstudent
        t_small, s_small = _take(teacher, ids), _take(student, ids)
        del teacher, student
        small = lib.kbm_softmax_kl_divergence(
            t_small,
            s_small,
            temperature=temperature,
            teacher_gradient=False,
            U=tf.float32,
        )
        for got, want in zip((loss, lse_t, lse_s), small):
            _assert_same(_take(got, ids), want, "loss / log-sum-exp rows")
        _, ds_small = lib.kbm_softmax_kl_divergence_grad(
            tf.ones_like(small[0]),
            t_small,
            s_small,
            *small,
            temperature=temperature,
            teacher_gradient=False,
        )
        _assert_same(ds_rows, ds_small, "dstudent rows")
        ref = distillation_ops._softmax_kl_reference(
            t_small, s_small, temperature
        )
        _assert_close(small[0], ref, 1e-3, 1e-3, "KL vs reference")


def test_flash_attention_forward_past_2_31():
    lib = _lib()
    # q [B, Tq, Hq, D] past 2**31 elements; one kv head, short sequences.
    batch, q_len, kv_len, head_dim, value_dim = 8, 64, 16, 64, 16
    q_heads = TWO_31 // (batch * q_len * head_dim) + 1
    shape = [batch, q_len, q_heads, head_dim]
    elements = math.prod(shape)
    with (
        _Record("flash attention fwd", shape, elements, "float32", 14),
        tf.device("/CPU:0"),
    ):
        rows = batch * q_len * q_heads
        q = tf.reshape(_pattern(rows, head_dim, tf.float32, affine=True), shape)
        k = tf.reshape(
            0.5 * tf.sin(tf.range(batch * kv_len * head_dim, dtype=tf.float32)),
            [batch, kv_len, 1, head_dim],
        )
        v = tf.reshape(
            tf.cos(tf.range(batch * kv_len * value_dim, dtype=tf.float32)),
            [batch, kv_len, 1, value_dim],
        )
        empty = tf.zeros([0], tf.bool)
        seed = tf.zeros([2], tf.int64)
        scale = 1.0 / math.sqrt(head_dim)

        def run(q, k, v):
            return lib.kbm_flash_attention(
                q, k, v, empty, empty, seed, scale=scale, U=tf.float32
            )

        o, lse = run(q, k, v)
        # Flat q row (b, i, h) holds element index ((b*Tq + i)*Hq + h) * D:
        # check heads of the last batch element, whose q elements lie past
        # 2**31, and of the first.
        for b, heads in ((0, [0, 1]), (batch - 1, [q_heads - 2, q_heads - 1])):
            q_s = q[b : b + 1, :, heads[0] : heads[-1] + 1]
            k_s, v_s = k[b : b + 1], v[b : b + 1]
            o_s, lse_s = run(q_s, k_s, v_s)
            _assert_same(
                o[b : b + 1, :, heads[0] : heads[-1] + 1], o_s, "o slice"
            )
            _assert_same(
                lse[b : b + 1, heads[0] : heads[-1] + 1], lse_s, "lse slice"
            )
            ref = attention_ops._flash_attention_reference(
                q_s, k_s, v_s, False, None, scale
            )
            _assert_close(o_s, ref, 1e-4, 1e-4, "attention vs reference")


def _dropout_keep(seed, flat_start, q_len, kv_len, rate):
    """The keep mask [Tq, Tk] of the head whose first flat index is given."""
    f = flat_start + np.arange(q_len * kv_len, dtype=np.uint64)
    groups = tf.constant(f // 4, tf.uint64)
    low = tf.constant(0xFFFFFFFF, tf.uint64)
    shift = tf.constant(32, tf.uint64)
    s0, s1 = (np.uint64(s) for s in seed)
    counter = (
        tf.bitwise.bitwise_and(groups, low),
        tf.bitwise.right_shift(groups, shift),
        tf.fill(tf.shape(groups), tf.constant(s1 & 0xFFFFFFFF, tf.uint64)),
        tf.fill(tf.shape(groups), tf.constant(s1 >> np.uint64(32), tf.uint64)),
    )
    key = (
        tf.constant(s0 & 0xFFFFFFFF, tf.uint64),
        tf.constant(s0 >> np.uint64(32), tf.uint64),
    )
    draws = np.stack(
        [np.asarray(c) for c in attention_ops.philox4x32_10(counter, key)],
        axis=-1,
    )
    lane = (f % 4).astype(np.int64)
    picked = draws[np.arange(len(f)), lane]
    keep = picked >= attention_ops.dropout_threshold(rate)
    return keep.reshape(q_len, kv_len)


def test_flash_attention_dropout_backward_past_2_31():
    lib = _lib()
    # Scores [B, Hq, Tq, Tk] past 2**31 elements: dropout counters, lse and
    # delta offsets of the last heads lie past 2**31; q, k, v stay small.
    batch, q_len, kv_len, head_dim = 1, 1024, 1024, 16
    heads = TWO_31 // (batch * q_len * kv_len) + 2
    shape = [batch, heads, q_len, kv_len]
    elements = math.prod(shape)
    rate, seed_v = 0.25, (12345, 678)
    with (
        _Record(
            "flash attention fwd+bwd, dropout", shape, elements, "bfloat16", 4
        ),
        tf.device("/CPU:0"),
    ):
        dtype = tf.bfloat16
        rows = batch * q_len * heads

        def make(seed):
            t = _pattern(rows, head_dim, tf.float32, seed=seed, affine=True)
            return tf.cast(
                tf.reshape(0.25 * t, [batch, q_len, heads, head_dim]), dtype
            )

        q, k, v = make(0), make(1), make(2)
        seed = tf.constant(seed_v, tf.int64)
        empty = tf.zeros([0], tf.bool)
        scale = 1.0 / math.sqrt(head_dim)
        attrs = dict(scale=scale, dropout_rate=rate)
        o, lse = lib.kbm_flash_attention(
            q, k, v, empty, empty, seed, U=tf.float32, **attrs
        )
        d_o = o
        dq, dk, dv = lib.kbm_flash_attention_grad(
            d_o, q, k, v, empty, empty, seed, o, lse, **attrs
        )
        for h in (0, heads // 2, heads - 1):
            flat = h * q_len * kv_len  # batch 0
            keep = tf.constant(_dropout_keep(seed_v, flat, q_len, kv_len, rate))
            sl = [t[:, :, h : h + 1] for t in (q, k, v)]
            qf, kf, vf = (tf.cast(t, tf.float32) for t in sl)
            dof = tf.cast(d_o[:, :, h : h + 1], tf.float32)
            with tf.GradientTape() as tape:
                tape.watch([qf, kf, vf])
                s = tf.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
                p = tf.nn.softmax(s, axis=-1)
                pd = tf.where(keep[None, None], p / (1.0 - rate), 0.0)
                ref_o = tf.einsum("bhqk,bkhd->bqhd", pd, vf)
            ref_grads = tape.gradient(ref_o, [qf, kf, vf], output_gradients=dof)
            what = f"head {h}, flat index {flat}"
            _assert_close(o[:, :, h : h + 1], ref_o, 0.02, 0.02, f"o, {what}")
            for name, got, want in zip(
                ("dq", "dk", "dv"), (dq, dk, dv), ref_grads
            ):
                _assert_close(
                    got[:, :, h : h + 1], want, 0.03, 0.03, f"{name}, {what}"
                )


def test_lion_step_past_2_31():
    _lib()
    dtype = tf.bfloat16
    width = 4096
    rows = _rows_past(width, extra_rows=1)
    n = rows * width
    with (
        _Record("Lion step (bfloat16 slots)", [n], n, "bfloat16", 16),
        tf.device("/CPU:0"),
    ):
        # Eager: each variable copies its initial value, which is then
        # dropped (peak 3 x 4.3 GB). (Filling them with assign inside a
        # tf.function crashed TensorFlow 2.21 at this size.)
        var = tf.Variable(tf.reshape(_pattern(rows, width, dtype), [-1]))
        mom = tf.Variable(
            tf.reshape(_pattern(rows, width, dtype, seed=5, affine=True), [-1])
        )
        grad = tf.reshape(
            _pattern(rows, width, dtype, seed=7, affine=True), [-1]
        )
        boundary = TWO_31
        spans = [(0, 64), (boundary - 4096, boundary + 4096), (n - 4096, n)]
        # numpy copies: a slice of a tensor may share its buffer, and a
        # shared variable buffer is copied before an update.
        before = [[np.array(t[a:b]) for a, b in spans] for t in (var, mom)]
        grad_spans = [tf.constant(np.array(grad[a:b])) for a, b in spans]
        hyper = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.99)
        optimizer_ops.lion_update(
            [var], [mom], [grad], decays=[0.01], use_fused_kernel=True, **hyper
        )
        del grad
        for i, (a, b) in enumerate(spans):
            v_s = tf.Variable(before[0][i])
            m_s = tf.Variable(before[1][i])
            optimizer_ops.lion_update(
                [v_s],
                [m_s],
                [grad_spans[i]],
                decays=[0.01],
                use_fused_kernel=True,
                **hyper,
            )
            _assert_same(var[a:b], v_s, f"variable [{a}, {b})")
            _assert_same(mom[a:b], m_s, f"momentum [{a}, {b})")
            v_r = tf.Variable(before[0][i])
            m_r = tf.Variable(before[1][i])
            optimizer_ops.lion_update(
                [v_r],
                [m_r],
                [grad_spans[i]],
                decays=[0.01],
                use_fused_kernel=False,
                **hyper,
            )
            _assert_close(v_s, v_r, 1e-2, 1e-2, "Lion vs reference")


def _int8_kernel(k, n):
    """A packed int8 [k, n] kernel (sin pattern), its scales and a bias."""
    i = tf.range(k * n, dtype=tf.float32)
    w = tf.reshape(0.05 * tf.sin(0.013 * i), [k, n])
    q, scale = quantization_ops.quantize_kernel(w)
    bias = 0.1 * tf.cos(tf.range(n, dtype=tf.float32))
    return quantization_ops.pack_kernel(q), scale, bias


def _quantized_matmul_past_2_31(kernel, n, need_gb, op, reference):
    """`op(x, packed, scale, bias, dtype)` on a bfloat16 x [rows, 1024]
    past 2**31 elements: the sampled rows equal, bit for bit, the op on
    those rows alone, which agrees with `reference` (same arguments)."""
    dtype = tf.bfloat16
    width = 1024
    rows = _rows_past(width)
    with (
        _Record(kernel, [rows, width], rows * width, "bfloat16", need_gb),
        tf.device("/CPU:0"),
    ):
        packed, scale, bias = _int8_kernel(width, n)
        x = _pattern(rows, width, dtype)
        ids = _sample_rows(rows, width)
        x_small = _take(x, ids)
        y = op(x, packed, scale, bias, dtype)
        del x
        y_small = op(x_small, packed, scale, bias, dtype)
        _assert_same(_take(y, ids), y_small, "y rows")
        ref = reference(x_small, packed, scale, bias, dtype)
        _assert_close(y_small, ref, 0.02, 0.02, f"{kernel} vs reference")


def test_quantized_matmul_past_2_31():
    # The quantized rows (int8, rows x K) and the tiles' row offsets cross
    # 2**31.
    lib = _lib()
    _quantized_matmul_past_2_31(
        "W8A8 matmul (bias, GELU)",
        24,
        11,
        lambda x, w, s, b, dt: lib.kbm_quantized_mat_mul(
            x, w, s, b, activation="gelu", output_dtype=dt
        ),
        lambda x, w, s, b, dt: quantization_ops._quantized_matmul_reference(
            x, w, s, b, "gelu", dt
        ),
    )


def test_weight_only_matmul_past_2_31():
    # x is widened to a float32 copy of 8.6 GB, whose row offsets cross
    # 2**31.
    lib = _lib()
    _quantized_matmul_past_2_31(
        "weight-only int8 matmul",
        8,
        15,
        lambda x, w, s, b, dt: lib.kbm_weight_only_mat_mul(
            x, w, s, b, bits=8, group_size=0, output_dtype=dt
        ),
        lambda x, w, s, b, dt: quantization_ops._weight_only_matmul_reference(
            x, w, s, b, None, dt, 8
        ),
    )
