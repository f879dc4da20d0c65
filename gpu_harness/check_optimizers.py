"""The optimizer family's CUDA launchers vs float64 references.

Each case runs several steps. Before every step the kernel's state (in the
variable dtype) is read into float64, the kernel steps, the reference steps
from the same state, and the new state (p and every slot) must agree within
the dtype's tolerance: every step is checked on its own, so float16 and
bfloat16 rounding does not accumulate into the comparison. Cases: one
tensor of 2^20 + 3 elements, and 1,000 tensors of odd sizes (1, 3, 4095,
4097, ...), one of them zero (LAMB's ratio 1) and some at unaligned offsets
(the scalar path). Failures name the tensor, element and both values.
"""

import pytest
import torch

from gpu_harness import ops_optimizers as ops

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"
)

# |kernel - reference| <= atol + rtol * |reference|, per variable dtype.
TOLERANCES = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}
DTYPES = list(TOLERANCES)
STEPS = 3
ODD_SIZES = [1, 3, 4095, 4097, 7, 127, 16384, 16385, 100, 2049]


def _sizes(case):
    if case == "1 tensor":
        return [(1 << 20) + 3]
    sizes = [ODD_SIZES[i % len(ODD_SIZES)] for i in range(1000)]
    sizes[500] = (1 << 20) + 3
    return sizes


def _tensors(sizes, dtype, kind, gen, unaligned_from):
    """One tensor per size; from index `unaligned_from` on, every other one
    is a view at an element offset of 1 into a larger buffer (unaligned: the
    launches holding them take the scalar path)."""
    out = []
    for i, n in enumerate(sizes):
        off = 1 if i >= unaligned_from and i % 2 else 0
        base = torch.empty(n + off, dtype=torch.float32)
        if kind == "normal":
            base.normal_(generator=gen)
        elif kind == "v":
            base.uniform_(0.0, 1.0, generator=gen)
        else:
            base.zero_()
        out.append(base.to(dtype).cuda()[off:])
    return out


def _state(case, dtype, n_slots, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = _sizes(case)
    unaligned_from = len(sizes) if case == "1 tensor" else 900
    p = _tensors(sizes, dtype, "normal", gen, unaligned_from)
    if len(p) > 1:
        p[10].zero_()  # ||p|| = 0: LAMB's ratio is 1
    slots = [
        _tensors(sizes, dtype, kind, gen, unaligned_from)
        for kind in ["normal", "v"][:n_slots]
    ]
    decays = torch.rand(len(sizes), generator=gen) * 0.02
    return p, slots, decays, gen


def _grads(p, gen):
    return [torch.randn(x.numel(), generator=gen).to(x.dtype).cuda() for x in p]


def _assert_close(name, got, want, tol, skip=None):
    """got: tensors in the variable dtype; want: float64 references; skip:
    optional boolean masks of elements not compared."""
    sizes = [g.numel() for g in got]
    g = torch.cat([x.detach().reshape(-1).to(torch.float64) for x in got])
    w = torch.cat([x.reshape(-1).to(g.device) for x in want])
    err = (g - w).abs() - (tol["atol"] + tol["rtol"] * w.abs())
    err = torch.where(torch.isnan(g) != torch.isnan(w), torch.inf, err)
    err = torch.where(torch.isnan(g) & torch.isnan(w), -torch.inf, err)
    if skip is not None:
        s = torch.cat([x.reshape(-1).to(g.device) for x in skip])
        err = torch.where(s, -torch.inf, err)
    bad = int((err > 0).sum())
    if bad:
        j = int(err.argmax())
        starts = torch.tensor([0] + sizes).cumsum(0)
        i = int((starts <= j).sum()) - 1
        raise AssertionError(
            f"{name}: {bad} elements out of tolerance; worst in tensor {i} "
            f"(size {sizes[i]}) element {j - int(starts[i])}: kernel "
            f"{g[j].item()!r} reference {w[j].item()!r} "
            f"(rtol {tol['rtol']}, atol {tol['atol']})"
        )


CASES = ["1 tensor", "1000 tensors"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adamw(case, dtype):
    p, (m, v), decays, gen = _state(case, dtype, 2)
    tol = TOLERANCES[dtype]
    for step in range(1, STEPS + 1):
        s = ops.adamw_scalars(0.01, 0.9, 0.999, 1e-7, step)
        g = _grads(p, gen)
        before = [[x.clone() for x in xs] for xs in (p, m, v)]
        ops.adam(p, m, v, g, decays=decays, **s)
        refs = [
            ops.adam_reference(p0, m0, v0, g0, d.item(), *s.values())
            for p0, m0, v0, g0, d in zip(*before, g, decays)
        ]
        for k, name in enumerate(["p", "m", "v"]):
            got = (p, m, v)[k]
            _assert_close(
                f"adamw step {step} {name}", got, [r[k] for r in refs], tol
            )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_adam_sgd_term(case, dtype):
    # The RAdam-style coefficients: bias_2 != 1 and a momentum-SGD term.
    p, (m, v), decays, gen = _state(case, dtype, 2, seed=1)
    s = dict(
        one_minus_beta_1=0.1,
        one_minus_beta_2=0.001,
        coef_adaptive=0.003,
        bias_2=0.02,
        coef_sgd=0.004,
        epsilon=1e-6,
    )
    g = _grads(p, gen)
    before = [[x.clone() for x in xs] for xs in (p, m, v)]
    ops.adam(p, m, v, g, decays=decays, **s)
    refs = [
        ops.adam_reference(p0, m0, v0, g0, d.item(), *s.values())
        for p0, m0, v0, g0, d in zip(*before, g, decays)
    ]
    _assert_close("adam p", p, [r[0] for r in refs], TOLERANCES[dtype])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lamb(case, dtype):
    p, (m, v), decays, gen = _state(case, dtype, 2)
    tol = TOLERANCES[dtype]
    for step in range(1, STEPS + 1):
        s = ops.lamb_scalars(0.01, 0.9, 0.999, 1e-6, step)
        g = _grads(p, gen)
        before = [[x.clone() for x in xs] for xs in (p, m, v)]
        ops.lamb(p, m, v, g, decays=decays, **s)
        refs = [
            ops.lamb_reference(p0, m0, v0, g0, d.item(), *s.values())
            for p0, m0, v0, g0, d in zip(*before, g, decays)
        ]
        for k, name in enumerate(["p", "m", "v"]):
            got = (p, m, v)[k]
            _assert_close(
                f"lamb step {step} {name}", got, [r[k] for r in refs], tol
            )


def test_lamb_deterministic():
    p, (m, v), decays, gen = _state("1000 tensors", torch.float32, 2)
    g = _grads(p, gen)
    s = ops.lamb_scalars(0.01, 0.9, 0.999, 1e-6, 1)
    results = []
    for _ in range(2):
        pc, mc, vc = ([x.clone() for x in xs] for xs in (p, m, v))
        ops.lamb(pc, mc, vc, g, decays=decays, **s)
        results.append(torch.cat([x.reshape(-1) for x in pc]))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lion(case, dtype):
    p, (m,), decays, gen = _state(case, dtype, 1)
    tol = TOLERANCES[dtype]
    lr, b1, b2 = 0.01, 0.9, 0.99
    for step in range(1, STEPS + 1):
        g = _grads(p, gen)
        before = [[x.clone() for x in xs] for xs in (p, m)]
        ops.lion(p, m, g, learning_rate=lr, beta_1=b1, beta_2=b2, decays=decays)
        refs = [
            ops.lion_reference(p0, m0, g0, d.item(), lr, b1, b2)
            for p0, m0, g0, d in zip(*before, g, decays)
        ]
        # sign(c) of a c within float32 rounding of 0 may differ.
        ambiguous = [
            r[2].abs() <= 1e-6 * (m0.double().abs() + g0.double().abs()).cpu()
            for r, m0, g0 in zip(refs, before[1], g)
        ]
        _assert_close(
            f"lion step {step} p", p, [r[0] for r in refs], tol, ambiguous
        )
        _assert_close(f"lion step {step} m", m, [r[1] for r in refs], tol)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        ops.adam(
            [torch.zeros(3, device="cuda")],
            [torch.zeros(4, device="cuda")],
            [torch.zeros(3, device="cuda")],
            [torch.zeros(3, device="cuda")],
            **ops.adamw_scalars(0.01, 0.9, 0.999, 1e-7, 1),
        )
