"""Flash attention launchers vs float64 references (forward and backward).

Cases cover T in {1, 7, 63, 64, 65, 257, 4096}, Tq != Tk, every head dim,
Hq/Hkv 12/12, 12/4, 8/1, causal in both alignments, key and dense masks with
fully masked rows, dropout (with the device keep mask, itself checked against
NumPy's Philox), float16 / bfloat16 / float32. Errors are measured as
max |kernel - reference| / max(|reference|, floor).
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from gpu_harness import ops_attention as ops  # noqa: E402

# dtype -> (forward tolerance, backward tolerance), relative to max |ref|.
TOL = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (2e-2, 4e-2),
}
LSE_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (dtype, B, Tq, Tk, Hq, Hkv, D, Dv, causal, top_left, masks, rate)
# masks: "" none, "k" key_mask, "m" dense mask (Bm = 1), "M" dense (Bm = B),
# "x" key_mask masking all keys of batch element 1.
CASES = [
    (F16, 2, 64, 64, 12, 12, 64, 64, False, False, "", 0.0),
    (BF16, 2, 65, 257, 12, 4, 128, 128, True, False, "k", 0.0),
    (F16, 1, 257, 63, 8, 1, 80, 80, True, True, "m", 0.0),
    (BF16, 2, 7, 65, 12, 4, 96, 96, True, False, "", 0.0),
    (F16, 3, 1, 7, 8, 1, 32, 32, False, False, "k", 0.0),
    (BF16, 1, 65, 7, 12, 12, 256, 256, True, False, "", 0.0),
    (F16, 2, 63, 129, 12, 4, 256, 256, False, False, "M", 0.0),
    (BF16, 2, 64, 63, 8, 1, 32, 32, True, True, "x", 0.0),
    (F16, 2, 129, 65, 12, 4, 96, 64, False, False, "km", 0.0),
    (BF16, 1, 257, 257, 8, 1, 64, 64, True, False, "", 0.0),
    (F16, 1, 1, 1, 12, 12, 128, 128, True, False, "", 0.0),
    (F32, 2, 63, 65, 12, 4, 64, 64, True, True, "k", 0.0),
    (F32, 1, 7, 257, 8, 1, 128, 128, False, False, "M", 0.0),
    (F32, 1, 65, 64, 12, 12, 256, 256, True, False, "", 0.0),
    (F32, 2, 64, 7, 12, 4, 80, 80, False, False, "x", 0.0),
    (F32, 1, 1, 63, 8, 1, 32, 32, False, False, "", 0.0),
    (F16, 2, 65, 129, 12, 4, 64, 64, False, False, "k", 0.2),
    (BF16, 1, 129, 65, 8, 1, 128, 128, True, True, "", 0.1),
    (F32, 1, 63, 65, 12, 4, 32, 32, True, False, "m", 0.3),
    (BF16, 1, 4096, 4096, 12, 4, 128, 128, True, False, "", 0.0),
]


def _case_id(c):
    dt = {F16: "f16", BF16: "bf16", F32: "f32"}[c[0]]
    causal = ("tl" if c[9] else "br") if c[8] else "nc"
    return (
        f"{dt}-B{c[1]}-Tq{c[2]}-Tk{c[3]}-H{c[4]}/{c[5]}-D{c[6]}/{c[7]}-"
        f"{causal}-{c[10] or 'nomask'}-r{c[11]}"
    )


def _inputs(c, seed=0):
    dtype, b, tq, tk, hq, hkv, d, dv, causal, top_left, masks, rate = c
    g = torch.Generator(device="cuda").manual_seed(1234 + seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, device="cuda").to(dt)

    q, k, v = rnd(b, tq, hq, d), rnd(b, tk, hkv, d), rnd(b, tk, hkv, dv)
    d_o = rnd(b, tq, hq, dv)
    key_mask = mask = None
    if "k" in masks:
        key_mask = torch.rand(b, tk, generator=g, device="cuda") > 0.3
    if "x" in masks:
        key_mask = torch.ones(b, tk, dtype=torch.bool, device="cuda")
        key_mask[1 % b] = False
        key_mask[0, : tk // 2] = False
    if "m" in masks or "M" in masks:
        mb = b if "M" in masks else 1
        mask = torch.rand(mb, tq, tk, generator=g, device="cuda") > 0.4
        mask[:, : max(1, tq // 5)] = False  # fully masked rows
        mask[:, tq // 5 :: 3, ::2] = True
    kwargs = dict(
        key_mask=key_mask,
        mask=mask,
        scale=d**-0.5,
        causal=causal,
        top_left=top_left,
        rate=rate,
    )
    return q, k, v, d_o, kwargs


def _rel_err(got, want, floor=1e-3):
    got = got.double()
    want = want.double()
    bad = ~torch.isfinite(got)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return float("inf"), f"non-finite at {idx}: {got[idx].item()}"
    diff = (got - want).abs()
    scale = max(want.abs().max().item(), floor)
    flat = int(diff.argmax())
    idx = tuple(
        int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)
    )
    return diff.max().item() / scale, (
        f"max abs err {diff.max().item():.3g} at {idx} (got "
        f"{got[idx].item():.6g}, want {want[idx].item():.6g}), "
        f"max |ref| {scale:.3g}"
    )


def _check_lse(lse, ref_lse, dtype, what):
    inf_ref = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse) & (lse > 0), inf_ref), (
        f"{what}: +inf lse rows differ: kernel {int(torch.isinf(lse).sum())}"
        f" vs reference {int(inf_ref.sum())}; nan {int(lse.isnan().sum())}"
    )
    fin = ~inf_ref
    if fin.any():
        err = (lse[fin].double() - ref_lse[fin]).abs().max().item()
        assert err <= LSE_TOL[dtype] * max(
            1.0, ref_lse[fin].abs().max().item()
        ), f"{what}: lse max abs err {err:.3g}"


# Kernel variants per dtype (AttentionParams::variant): 16-bit types run the
# default (0), the plain (1), the ldmatrix/cp.async (2), the wide-forward (3)
# and the double-buffered backward (4) tensor-core kernels, all against the
# same reference; float32 has one.
VARIANTS = {F32: [0], F16: [0, 1, 2, 3, 4], BF16: [0, 1, 2, 3, 4]}


def _check_lse_msg(lse, ref_lse, dtype):
    """None when lse matches, else what differs."""
    try:
        _check_lse(lse, ref_lse, dtype, "lse")
    except AssertionError as e:
        return str(e)
    return None


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_attention(case):
    dtype, b, tq, tk, hq = case[:5]
    rate = case[11]
    q, k, v, d_o, kw = _inputs(case)
    seed = (0x1234_5678_9ABC_DEF0, 42)
    keep = None
    if rate > 0:
        keep = ops.dropout_mask(seed, (b, hq, tq, tk), rate)
    ref_o, ref_lse = ops.reference_forward(q, k, v, keep=keep, **kw)
    refs = ops.reference_backward(d_o, q, k, v, keep=keep, **kw)
    tol_f, tol_b = TOL[dtype]
    failures = []
    for variant in VARIANTS[dtype]:
        what = f"{_case_id(case)} variant {variant}"
        try:
            o, lse = ops.forward(q, k, v, seed=seed, variant=variant, **kw)
            torch.cuda.synchronize()
            err, detail = _rel_err(o, ref_o)
            if not err <= tol_f:
                failures.append(f"{what} o: rel err {err:.3g}; {detail}")
            msg = _check_lse_msg(lse, ref_lse, dtype)
            if msg:
                failures.append(f"{what} {msg}")
            grads = ops.backward(
                d_o, q, k, v, o, lse, seed=seed, variant=variant, **kw
            )
            torch.cuda.synchronize()
            for name, got, want in zip(("dq", "dk", "dv"), grads, refs):
                err, detail = _rel_err(got, want)
                if not err <= tol_b:
                    failures.append(
                        f"{what} {name}: rel err {err:.3g}; {detail}"
                    )
        except RuntimeError as e:
            failures.append(f"{what}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("variant", [1, 2, 4])
def test_backward_deterministic(variant):
    case = (BF16, 2, 257, 129, 12, 4, 64, 64, True, False, "k", 0.1)
    q, k, v, d_o, kw = _inputs(case, seed=3)
    o, lse = ops.forward(q, k, v, seed=(7, 8), variant=variant, **kw)
    runs = [
        ops.backward(d_o, q, k, v, o, lse, seed=(7, 8), variant=variant, **kw)
        for _ in range(2)
    ]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_variants_agree():
    case = (F16, 2, 129, 257, 12, 4, 128, 128, True, False, "k", 0.2)
    q, k, v, d_o, kw = _inputs(case, seed=5)
    outs = []
    for variant in (1, 2, 3, 4):
        o, lse = ops.forward(q, k, v, seed=(1, 2), variant=variant, **kw)
        grads = ops.backward(
            d_o, q, k, v, o, lse, seed=(1, 2), variant=variant, **kw
        )
        outs.append((o, lse, *grads))
    for other in outs[1:]:
        for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), outs[0], other):
            fin = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), fin), name
            err = (a[fin].double() - b[fin].double()).abs().max().item()
            assert err <= 1e-2 * max(1.0, b[fin].double().abs().max().item()), (
                f"{name}: variants differ by {err:.3g}"
            )


@pytest.mark.parametrize(
    "seed,shape,rate",
    [
        ((0, 0), (1, 1, 3, 5), 0.5),
        ((0x1234_5678_9ABC_DEF0, 42), (2, 3, 7, 9), 0.2),
        ((2**64 - 1, 2**63 + 5), (1, 2, 5, 13), 0.9),
    ],
)
def test_dropout_mask_matches_numpy(seed, shape, rate):
    got = ops.dropout_mask(seed, shape, rate).cpu().numpy()
    want = ops.dropout_keep_numpy(seed, shape, rate)
    assert (got == want).all(), f"{int((got != want).sum())} bits differ"


def test_dropout_rate_statistics():
    keep = ops.dropout_mask((11, 12), (4, 8, 256, 256), 0.25)
    frac = keep.float().mean().item()
    assert abs(frac - 0.75) < 0.005


def test_empty_and_no_keys():
    q = torch.randn(2, 5, 4, 64, device="cuda", dtype=F16)
    k = torch.randn(2, 0, 2, 64, device="cuda", dtype=F16)
    v = torch.randn(2, 0, 2, 64, device="cuda", dtype=F16)
    o, lse = ops.forward(q, k, v)
    assert torch.equal(o, torch.zeros_like(o))
    assert torch.isinf(lse).all() and (lse > 0).all()
    d_o = torch.randn_like(o)
    dq, dk, dv = ops.backward(d_o, q, k, v, o, lse)
    assert torch.equal(dq, torch.zeros_like(dq))
    assert dk.numel() == 0 and dv.numel() == 0
