"""CPU tests of the attention references in gpu_harness/ops_attention.py:
the float64 forward against a NumPy softmax-attention golden (GQA, masks,
causal both ways, dropout, fully masked rows), the backward against central
differences, and the NumPy Philox / dropout stream against Random123's known
answers and bits printed by cc/common/philox.h compiled with g++."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpu_harness import ops_attention as ops  # noqa: E402


def _numpy_attention(q, k, v, vis, scale, keep=None, rate=0.0):
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    o = np.zeros((b, tq, hq, v.shape[3]))
    lse = np.full((b, hq, tq), np.inf)
    for bi in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            for i in range(tq):
                js = [j for j in range(k.shape[1]) if vis[bi, i, j]]
                if not js:
                    continue
                s = np.array([scale * q[bi, i, h] @ k[bi, j, g] for j in js])
                m = s.max()
                e = np.exp(s - m)
                lse[bi, h, i] = m + np.log(e.sum())
                p = e / e.sum()
                for pj, j in zip(p, js):
                    f = pj
                    if rate > 0:
                        f = pj * keep[bi, h, i, j] / (1 - rate)
                    o[bi, i, h] += f * v[bi, j, g]
    return o, lse


def _vis_numpy(b, tq, tk, key_mask, mask, causal, top_left):
    vis = np.ones((b, tq, tk), dtype=bool)
    if key_mask is not None:
        vis &= key_mask[:, None, :]
    if mask is not None:
        vis &= mask
    if causal:
        off = 0 if top_left else tk - tq
        vis &= np.arange(tk)[None, :] <= np.arange(tq)[:, None] + off
    return vis


@pytest.mark.parametrize(
    "tq,tk,hq,hkv,causal,top_left,masks,rate",
    [
        (5, 7, 4, 2, True, False, "k", 0.0),
        (7, 5, 3, 1, True, False, "", 0.0),
        (6, 6, 2, 2, True, True, "m", 0.0),
        (4, 9, 4, 1, False, False, "km", 0.3),
    ],
)
def test_reference_forward_matches_numpy(
    tq, tk, hq, hkv, causal, top_left, masks, rate
):
    rng = np.random.default_rng(0)
    b, d = 2, 8
    q = rng.standard_normal((b, tq, hq, d))
    k = rng.standard_normal((b, tk, hkv, d))
    v = rng.standard_normal((b, tk, hkv, 5))
    key_mask = mask = keep = None
    if "k" in masks:
        key_mask = rng.random((b, tk)) > 0.3
        key_mask[1] = False
    if "m" in masks:
        mask = rng.random((1, tq, tk)) > 0.4
        mask[0, 0] = False
    if rate > 0:
        keep = rng.random((b, hq, tq, tk)) > rate
    vis = _vis_numpy(b, tq, tk, key_mask, mask, causal, top_left)
    want_o, want_lse = _numpy_attention(q, k, v, vis, 0.3, keep, rate)
    t = torch.from_numpy
    o, lse = ops.reference_forward(
        t(q),
        t(k),
        t(v),
        key_mask=None if key_mask is None else t(key_mask),
        mask=None if mask is None else t(mask),
        scale=0.3,
        causal=causal,
        top_left=top_left,
        rate=rate,
        keep=None if keep is None else t(keep),
    )
    np.testing.assert_allclose(o.numpy(), want_o, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse.numpy()), np.isinf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(lse.numpy()[fin], want_lse[fin], rtol=1e-12)


def test_reference_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    b, tq, tk, hq, hkv, d = 1, 4, 6, 4, 2, 3
    q = torch.randn(b, tq, hq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, tk, hkv, d, generator=g, dtype=torch.float64)
    d_o = torch.randn(b, tq, hq, d, generator=g, dtype=torch.float64)
    key_mask = torch.tensor([[True, False, True, True, True, False]])
    kw = dict(key_mask=key_mask, causal=True, scale=0.7)
    grads = ops.reference_backward(d_o, q, k, v, **kw)
    eps = 1e-6
    for x, gx in zip((q, k, v), grads):
        num = torch.zeros_like(x)
        flat = x.view(-1)
        for idx in range(flat.numel()):
            old = flat[idx].item()
            flat[idx] = old + eps
            up = (ops.reference_forward(q, k, v, **kw)[0] * d_o).sum()
            flat[idx] = old - eps
            dn = (ops.reference_forward(q, k, v, **kw)[0] * d_o).sum()
            flat[idx] = old
            num.view(-1)[idx] = (up - dn) / (2 * eps)
        np.testing.assert_allclose(gx.numpy(), num.numpy(), atol=1e-7)


def test_philox_known_answers():
    # Random123 kat_vectors for philox4x32_10.
    cases = [
        ([0, 0, 0, 0], 0, 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        (
            [0xFFFFFFFF] * 4,
            0xFFFFFFFF,
            0xFFFFFFFF,
            [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
        ),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            0xA4093822,
            0x299F31D0,
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for ctr, k0, k1, want in cases:
        got = ops.philox4x32_10(np.array([ctr], dtype=np.uint64), k0, k1)
        assert [int(x) for x in got[0]] == want


@pytest.mark.parametrize(
    "seed,rate,bits",
    [
        # AttentionDropoutKeep for flat indices 0..39, printed by
        # cc/common/philox.h compiled with g++.
        (
            (0x123456789ABCDEF0, 42),
            0.2,
            "1101011011011011101111100110111111111111",
        ),
        (
            (2**64 - 1, 2**63 + 5),
            0.9,
            "1001001000000000000000000010000000000001",
        ),
    ],
)
def test_dropout_keep_numpy_matches_header(seed, rate, bits):
    got = ops.dropout_keep_numpy(seed, (1, 1, 1, 40), rate).ravel()
    assert "".join(str(int(x)) for x in got) == bits


def test_dropout_threshold():
    assert ops.dropout_threshold(0.0) == 0
    assert ops.dropout_threshold(0.5) == 2**31
    assert ops.dropout_threshold(0.999999999) == 0xFFFFFFFF
