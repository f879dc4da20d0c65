"""Times kbm's softmax-KL launchers against PyTorch eager.

PyTorch: F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T),
log_target=True) summed per row, autograd backward to the student (the
teacher frozen). kbm: the launchers with preallocated outputs and no teacher
gradient. Cases: forward, backward and the pair; "bytes" is the minimal
traffic (each tensor read or written once).
"""

import torch
import torch.nn.functional as F

from gpu_harness import kbm_gpu
from gpu_harness import ops_distillation as ops

SHAPES = [(16384, 4096), (65536, 1024)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TEMPERATURE = 2.0


def _kbm_fns(t, s, dloss):
    rows, cols = t.shape
    code = kbm_gpu.DTYPE[t.dtype]
    p = kbm_gpu.ptr
    loss = torch.empty(rows, device="cuda")
    lse_t = torch.empty(rows, device="cuda")
    lse_s = torch.empty(rows, device="cuda")
    ds = torch.empty_like(s)
    fwd_fn = ops._fn("kbm_distillation_softmax_kl_fwd")
    bwd_fn = ops._fn("kbm_distillation_softmax_kl_bwd")

    def fwd():
        rc = fwd_fn(
            code,
            p(t),
            p(s),
            p(loss),
            p(lse_t),
            p(lse_s),
            rows,
            cols,
            TEMPERATURE,
            kbm_gpu.stream(),
        )
        kbm_gpu.check(rc, "softmax_kl_fwd")

    def bwd():
        rc = bwd_fn(
            code,
            p(dloss),
            p(t),
            p(s),
            p(loss),
            p(lse_t),
            p(lse_s),
            None,
            p(ds),
            rows,
            cols,
            TEMPERATURE,
            kbm_gpu.stream(),
        )
        kbm_gpu.check(rc, "softmax_kl_bwd")

    def pair():
        fwd()
        bwd()

    fwd()
    return fwd, bwd, pair


def _torch_fns(t, s, dloss):
    sr = s.detach().clone().requires_grad_(True)

    def forward():
        return F.kl_div(
            F.log_softmax(sr / TEMPERATURE, -1),
            F.log_softmax(t / TEMPERATURE, -1),
            reduction="none",
            log_target=True,
        ).sum(-1)

    def fwd():
        with torch.no_grad():
            forward()

    loss = forward()

    def bwd():
        torch.autograd.grad(loss, (sr,), dloss, retain_graph=True)

    def pair():
        torch.autograd.grad(forward(), (sr,), dloss)

    return fwd, bwd, pair


def run(results, quick=False):
    iters = 10 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    for rows, cols in shapes:
        for dname, dtype in DTYPES.items():
            g = torch.Generator(device="cuda").manual_seed(0)
            t = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(
                dtype
            )
            s = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(
                dtype
            )
            dloss = torch.randn(rows, device="cuda", generator=g)
            kbm = _kbm_fns(t, s, dloss)
            ref = _torch_fns(t, s, dloss)
            n = rows * cols * t.element_size()
            # forward: t, s read, 3 row floats written; backward: t, s read,
            # ds written, 4 row floats read.
            fwd_b, bwd_b = 2 * n + 12 * rows, 3 * n + 16 * rows
            for name, k, tf, nbytes in zip(
                ("fwd", "bwd", "fwd+bwd"),
                kbm,
                ref,
                (fwd_b, bwd_b, fwd_b + bwd_b),
            ):
                results.append(
                    {
                        "family": "distillation",
                        "op": f"softmax_kl {name}",
                        "case": f"{rows}x{cols} T={TEMPERATURE}",
                        "dtype": dname,
                        "shape": [rows, cols],
                        "kbm_ms": kbm_gpu.time_ms(k, iters=iters),
                        "torch_ms": kbm_gpu.time_ms(tf, iters=iters),
                        "torch_impl": "F.kl_div(F.log_softmax) + autograd",
                        "bytes": nbytes,
                    }
                )
            del t, s, kbm, ref
            torch.cuda.empty_cache()
