"""Flash attention: kbm launchers vs PyTorch SDPA on its flash backend.

bf16, head dims 64 and 128, T in {1k, 4k, 16k} with batch * T = 16k tokens
and hidden 2048 (heads = 2048 / D), causal and not; forward and backward
timed separately. flops: 4 * B * H * Tq * Tk * D for the forward (half of it
when causal), 2.5 times that for the backward. The layout is kbm's
[B, T, H, D]; SDPA gets the [B, H, T, D] views of the same tensors. One
T = 16k case also records the peak memory of the kbm forward + backward
beyond its inputs (`peak_bytes`), to show memory linear in T. Besides the
default kernels (`kbm_ms`), the plain tensor-core kernels (`kbm_plain_ms`)
and variant 4 (wide forward, double-buffered backward: `kbm_v4_ms`) are
timed, to pick the default.
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_harness import kbm_gpu
from gpu_harness import ops_attention as ops

HIDDEN = 2048
TOKENS = 16384


def _kbm_fns(q, k, v, d_o, causal, variant=0):
    """Closures for the kbm forward and backward with preallocated outputs."""
    lib = ops._lib()
    b, t, h, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(b, h, t, dtype=torch.float32, device="cuda")
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    ws = torch.empty(
        max(int(lib.kbm_attention_backward_workspace(b, t, h)), 1),
        dtype=torch.uint8,
        device="cuda",
    )
    sizes = [b, t, t, h, h, d, d, 1]
    attrs = [d**-0.5, int(causal), 0, 0.0, 0, 0, variant]
    code = kbm_gpu.DTYPE[q.dtype]
    p = kbm_gpu.ptr

    def fwd():
        kbm_gpu.check(
            lib.kbm_attention_forward(
                code,
                p(q),
                p(k),
                p(v),
                None,
                None,
                p(o),
                p(lse),
                *sizes,
                *attrs,
                kbm_gpu.stream(),
            ),
            "kbm_attention_forward",
        )

    def bwd():
        kbm_gpu.check(
            lib.kbm_attention_backward(
                code,
                p(d_o),
                p(q),
                p(k),
                p(v),
                None,
                None,
                p(o),
                p(lse),
                p(dq),
                p(dk),
                p(dv),
                *sizes,
                *attrs,
                p(ws),
                kbm_gpu.stream(),
            ),
            "kbm_attention_backward",
        )

    return fwd, bwd


def _torch_fns(q, k, v, d_o, causal):
    qt, kt, vt = (
        x.transpose(1, 2).detach().requires_grad_(True) for x in (q, k, v)
    )
    dot = d_o.transpose(1, 2)

    def fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    out = fwd()

    def bwd():
        torch.autograd.grad(out, (qt, kt, vt), dot, retain_graph=True)

    return fwd, bwd


def kernel_times(fn, reps=3):
    """{kernel name: mean ms per call} of `fn` from torch.profiler (CUPTI),
    or {"error": text} where the profiler is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        out = {}
        for evt in prof.key_averages():
            total = getattr(evt, "device_time_total", None)
            if total is None:
                total = getattr(evt, "cuda_time_total", 0.0)
            if total > 0:
                out[evt.key[:80]] = total / 1e3 / reps
        return out
    except Exception as e:  # noqa: BLE001 (diagnostics only)
        return {"error": repr(e)[:200]}


def run(results, quick=False):
    iters = 5 if quick else 10
    seqs = (1024, 4096) if quick else (1024, 4096, 16384)
    for d in (64, 128):
        heads = HIDDEN // d
        for t in seqs:
            b = max(1, TOKENS // t)
            for causal in (False, True):
                g = torch.Generator(device="cuda").manual_seed(0)
                q, k, v, d_o = (
                    torch.randn(b, t, heads, d, generator=g, device="cuda").to(
                        torch.bfloat16
                    )
                    for _ in range(4)
                )
                kf, kb = _kbm_fns(q, k, v, d_o, causal)
                pf, pb = _kbm_fns(q, k, v, d_o, causal, variant=1)
                wf, wb = _kbm_fns(q, k, v, d_o, causal, variant=4)
                tf, tb = _torch_fns(q, k, v, d_o, causal)
                flops = 4.0 * b * heads * t * t * d * (0.5 if causal else 1.0)
                case = f"D{d}-T{t}-{'causal' if causal else 'full'}"
                peak = None
                if t == 16384 and d == 128 and not causal:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    o2, lse2 = ops.forward(q, k, v, causal=causal)
                    ops.backward(d_o, q, k, v, o2, lse2, causal=causal)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                    del o2, lse2
                for op, kfn, pfn, wfn, tfn, f in (
                    ("forward", kf, pf, wf, tf, flops),
                    ("backward", kb, pb, wb, tb, 2.5 * flops),
                ):
                    kbm_ms = kbm_gpu.time_ms(kfn, warmup=2, iters=iters)
                    plain_ms = kbm_gpu.time_ms(pfn, warmup=1, iters=3)
                    wide_ms = kbm_gpu.time_ms(wfn, warmup=1, iters=3)
                    torch_ms = kbm_gpu.time_ms(tfn, warmup=2, iters=iters)
                    row = {
                        "family": "attention",
                        "op": op,
                        "case": case,
                        "dtype": "bfloat16",
                        "shape": [b, t, heads, d],
                        "kbm_ms": kbm_ms,
                        "torch_ms": torch_ms,
                        "torch_impl": "F.scaled_dot_product_attention "
                        "(SDPBackend.FLASH_ATTENTION)",
                        "flops": f,
                        "kbm_tflops": f / kbm_ms / 1e9,
                        "torch_tflops": f / torch_ms / 1e9,
                        "kbm_plain_ms": plain_ms,
                    }
                    row["kbm_v4_ms"] = wide_ms
                    if t == 4096 and d == 128:
                        # Where the time goes, kernel by kernel.
                        row["kbm_kernels_ms"] = kernel_times(kfn)
                        row["kbm_plain_kernels_ms"] = kernel_times(pfn)
                        row["kbm_v4_kernels_ms"] = kernel_times(wfn)
                    if peak is not None and op == "forward":
                        row["peak_bytes"] = int(peak)
                        row["input_bytes"] = int(4 * q.numel() * 2)
                    results.append(row)
                    print(describe(row), flush=True)
                del q, k, v, d_o, kf, kb, pf, pb, wf, wb, tf, tb
                torch.cuda.empty_cache()


def describe(r):
    """One printable line (or a few) for result row `r`."""
    line = (
        f"{r['op']:8s} {r['case']:18s} kbm {r['kbm_ms']:8.3f} ms "
        f"{r['kbm_tflops']:6.1f} TFLOP/s | sdpa {r['torch_ms']:8.3f} ms "
        f"{r['torch_tflops']:6.1f} TFLOP/s | "
        f"{r['torch_ms'] / r['kbm_ms']:.2f}x | plain kernels "
        f"{r['flops'] / r['kbm_plain_ms'] / 1e9:6.1f} TFLOP/s"
    )
    if "kbm_v4_ms" in r:
        line += f" | variant 4 {r['flops'] / r['kbm_v4_ms'] / 1e9:6.1f} TFLOP/s"
    for key in ("kbm_kernels_ms", "kbm_plain_kernels_ms", "kbm_v4_kernels_ms"):
        if key in r:
            parts = ", ".join(
                f"{name.split('(')[0]}: {ms:.3f} ms"
                if isinstance(ms, float)
                else f"{name}: {ms}"
                for name, ms in r[key].items()
            )
            line += f"\n    {key}: {parts}"
    if "peak_bytes" in r:
        line += f" | peak {r['peak_bytes'] / 2**20:.0f} MiB"
    return line


if __name__ == "__main__":
    import sys

    run([], quick="--quick" in sys.argv)
