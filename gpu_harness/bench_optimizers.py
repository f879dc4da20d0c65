"""Optimizer benchmarks: kbm's multi-tensor AdamW / LAMB / Lion launchers
vs PyTorch, float32, 100M parameters in 50 tensors and in 1,000 tensors.

AdamW is compared with torch.optim.AdamW(fused=True) and (foreach=True);
LAMB and Lion with plain torch._foreach implementations (PyTorch has no
LAMB or Lion). Minimal bytes moved per parameter (float32): AdamW 28 (read
p, g, m, v; write p, m, v), LAMB 40 (a second pass over p, m, v after the
trust ratios: read p, m, v, write p), Lion 20 (read p, g, m; write p, m).
The kbm call is timed with its pointer tables prebuilt (ops.bind_*), as a
framework would keep them.
"""

import torch

from gpu_harness import kbm_gpu
from gpu_harness import ops_optimizers as ops

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01


def _lists(num, size, count):
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [
        [
            torch.randn(size, generator=gen, device="cuda") * 0.1
            for _ in range(num)
        ]
        for _ in range(count)
    ]


def _row(op, case, num, size, kbm_ms, torch_ms, impl, bytes_per_param):
    return {
        "family": "optimizers",
        "op": op,
        "case": case,
        "dtype": "float32",
        "shape": [num, size],
        "kbm_ms": kbm_ms,
        "torch_ms": torch_ms,
        "torch_impl": impl,
        "bytes": bytes_per_param * num * size,
    }


def _torch_adamw(p, g, **kw):
    params = [x.clone().requires_grad_() for x in p]
    for x, gx in zip(params, g):
        x.grad = gx
    opt = torch.optim.AdamW(
        params, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, **kw
    )
    opt.step()  # creates the state
    return opt


def _mul_each(xs, scalars):
    """xs[i] *= scalars[i] (0-d tensors) with a foreach call where this
    PyTorch accepts one, per tensor otherwise."""
    try:
        torch._foreach_mul_(xs, scalars)
    except RuntimeError:
        for x, s in zip(xs, scalars):
            x.mul_(s)


def _foreach_lamb(p, m, v, g):
    b1c, b2c = 1.0 - B1**2, 1.0 - B2**2  # a fixed step's corrections

    def step():
        torch._foreach_lerp_(m, g, 1.0 - B1)
        torch._foreach_mul_(v, B2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - B2)
        torch._foreach_mul_(p, 1.0 - LR * WD)
        denom = torch._foreach_div(v, b2c)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, EPS)
        u = torch._foreach_div(m, b1c)
        torch._foreach_div_(u, denom)
        w_norm = torch.stack(torch._foreach_norm(p))
        u_norm = torch.stack(torch._foreach_norm(u))
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
        _mul_each(u, list((-LR * ratio).unbind()))
        torch._foreach_add_(p, u)

    return step


def _foreach_lion(p, m, g):
    def step():
        c = torch._foreach_mul(m, B1)
        torch._foreach_add_(c, g, alpha=1.0 - B1)
        torch._foreach_sign_(c)
        torch._foreach_mul_(p, 1.0 - LR * WD)
        torch._foreach_add_(p, c, alpha=-LR)
        torch._foreach_lerp_(m, g, 1.0 - B2)

    return step


def run(results, quick=False):
    total = 10_000_000 if quick else 100_000_000
    for num in (50, 1000):
        size = total // num
        case = f"{num} tensors"
        p, m, v, g = _lists(num, size, 4)
        v = [x.abs() for x in v]
        decays = torch.full((num,), LR * WD, device="cuda")

        # AdamW.
        adam = ops.bind_adam(
            p, m, v, g, decays=decays, **ops.adamw_scalars(LR, B1, B2, EPS, 2)
        )
        kbm_ms = kbm_gpu.time_ms(adam)
        for impl, kw in (
            ("torch.optim.AdamW(fused=True)", {"fused": True}),
            ("torch.optim.AdamW(foreach=True)", {"foreach": True}),
        ):
            opt = _torch_adamw(p, g, **kw)
            torch_ms = kbm_gpu.time_ms(opt.step)
            del opt
            results.append(
                _row("adamw", case, num, size, kbm_ms, torch_ms, impl, 28)
            )

        # LAMB.
        lamb = ops.bind_lamb(
            p, m, v, g, decays=decays, **ops.lamb_scalars(LR, B1, B2, EPS, 2)
        )
        kbm_ms = kbm_gpu.time_ms(lamb)
        torch_ms = kbm_gpu.time_ms(_foreach_lamb(p, m, v, g))
        results.append(
            _row(
                "lamb", case, num, size, kbm_ms, torch_ms, "torch._foreach", 40
            )
        )

        # Lion.
        lion = ops.bind_lion(
            p, m, g, learning_rate=LR, beta_1=B1, beta_2=B2, decays=decays
        )
        kbm_ms = kbm_gpu.time_ms(lion)
        torch_ms = kbm_gpu.time_ms(_foreach_lion(p, m, g))
        results.append(
            _row(
                "lion", case, num, size, kbm_ms, torch_ms, "torch._foreach", 20
            )
        )
        del p, m, v, g, adam, lamb, lion
        torch.cuda.empty_cache()


if __name__ == "__main__":
    rows = []
    run(rows)
    for r in rows:
        gbps = r["bytes"] / r["kbm_ms"] / 1e6
        print(
            f"{r['op']:6s} {r['case']:13s} kbm {r['kbm_ms']:.3f} ms "
            f"({gbps:.0f} GB/s)  {r['torch_impl']} {r['torch_ms']:.3f} ms"
        )
