"""Benchmarks kbm's CUDA launchers against PyTorch's kernels on one GPU.

Usage: python -m gpu_harness.bench [--quick] [--out bench.json]
       [--families a,b] [--budget-s SECONDS]

Records the device, driver, CUDA and PyTorch versions, measures the two
ceilings the cases are compared with (device-to-device copy bandwidth,
counting bytes read + written, and the bf16 matmul rate at 8192^3), then
imports each gpu_harness/bench_<family>.py and calls its
`run(results, quick)`. A family that fails is recorded with its error and the
others still run: each family runs in a child process of its own (a CUDA
error that breaks the context cannot take the later families with it). The
JSON is rewritten after every family, so a run that is cut short keeps what
it measured.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# The order in which the families run (the rest follow alphabetically).
FAMILY_ORDER = [
    "normalization",
    "bias_activation",
    "distillation",
    "optimizers",
    "attention",
]


def _command(args):
    try:
        out = subprocess.run(
            args, capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_info():
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "host": platform.node(),
    }
    smi = _command(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
            "clocks.max.mem,power.limit",
            "--format=csv,noheader",
            "--id=0",
        ]
    )
    if smi:
        keys = [
            "smi_name",
            "driver",
            "memory",
            "max_sm_clock",
            "max_mem_clock",
            "power_limit",
        ]
        info.update(zip(keys, [s.strip() for s in smi.split(",")]))
    nvcc = _command([os.environ.get("NVCC", "nvcc"), "--version"])
    match = re.search(r"release ([0-9.]+)", nvcc)
    info["nvcc"] = match.group(1) if match else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    families = os.path.join(_HERE, "build", "families.txt")
    if os.path.exists(families):
        with open(families) as f:
            info["harness_build"] = f.read().strip()
    return info


def _copy_ms(nbytes):
    import torch

    from gpu_harness import kbm_gpu

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return kbm_gpu.time_ms(lambda: dst.copy_(src), warmup=3, iters=20)


def _matmul_ms(m):
    import torch

    from gpu_harness import kbm_gpu

    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    return kbm_gpu.time_ms(lambda: a @ b, warmup=5, iters=20)


def ceilings(quick=False):
    """Measured copy bandwidth (TB/s, read + write) and bf16 TFLOP/s."""
    import torch

    n = (1 if quick else 2) * 2**30  # bytes per buffer
    ms = _copy_ms(n)
    out = {"copy_bytes": 2 * n, "copy_ms": ms, "copy_tbps": 2 * n / ms / 1e9}
    m = 8192
    ms = _matmul_ms(m)
    out.update(
        matmul_shape=[m, m, m], matmul_ms=ms, bf16_tflops=2 * m**3 / ms / 1e9
    )
    torch.cuda.empty_cache()
    return out


def available_families():
    names = [
        f[len("bench_") : -len(".py")]
        for f in os.listdir(_HERE)
        if f.startswith("bench_") and f.endswith(".py")
    ]
    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(names, key=lambda f: (order.get(f, len(order)), f))


def write(doc, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


def summarize(case, ceil):
    ms = case.get("kbm_ms")
    parts = [
        f"{case.get('family', '?')}/{case.get('op', '?')}",
        str(case.get("case", "")),
        str(case.get("dtype", "")),
    ]
    if ms:
        parts.append(f"kbm {ms:.3f} ms")
        if case.get("torch_ms"):
            parts.append(
                f"torch {case['torch_ms']:.3f} ms"
                f" ({case['torch_ms'] / ms:.2f}x)"
            )
        if case.get("bytes") and ceil.get("copy_tbps"):
            tbps = case["bytes"] / ms / 1e9
            parts.append(
                f"{tbps:.2f} TB/s ({100 * tbps / ceil['copy_tbps']:.0f}%)"
            )
        if case.get("flops") and ceil.get("bf16_tflops"):
            tflops = case["flops"] / ms / 1e9
            parts.append(
                f"{tflops:.0f} TFLOP/s "
                f"({100 * tflops / ceil['bf16_tflops']:.0f}%)"
            )
    if case.get("error"):
        parts.append(f"error: {case['error']}")
    return "  ".join(parts)


def run_family(family, quick):
    """Runs gpu_harness/bench_<family>.py: (status entry, list of cases)."""
    import torch

    entry = {}
    results = []
    t0 = time.time()
    try:
        module = importlib.import_module(f"gpu_harness.bench_{family}")
        module.run(results, quick=quick)
        torch.cuda.synchronize()
        entry["status"] = "ok"
    except Exception:
        entry["status"] = "error"
        entry["error"] = traceback.format_exc()
        print(entry["error"], flush=True)
    try:
        torch.cuda.empty_cache()
    except Exception:  # a sticky CUDA error: already recorded
        pass
    entry["seconds"] = round(time.time() - t0, 1)
    for case in results:
        case.setdefault("family", family)
    return entry, results


def run_family_isolated(family, quick, timeout):
    """run_family in a child process, so that a CUDA error that breaks the
    context (an illegal address) cannot take the later families with it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "family.json")
        cmd = [sys.executable, "-m", "gpu_harness.bench", "--child", family,
               "--child-out", out] + (["--quick"] if quick else [])  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_ROOT, env.get("PYTHONPATH")) if p
        )
        t0 = time.time()
        try:
            rc = subprocess.run(cmd, cwd=_ROOT, env=env, timeout=timeout)
            rc = rc.returncode
        except subprocess.TimeoutExpired:
            entry = {"status": "timeout", "error": f"over {timeout:.0f} s"}
            entry["seconds"] = round(time.time() - t0, 1)
            return entry, []
        if not os.path.exists(out):
            entry = {
                "status": "error",
                "error": f"the benchmark process exited with rc={rc}",
                "seconds": round(time.time() - t0, 1),
            }
            return entry, []
        with open(out) as f:
            child = json.load(f)
        return child["entry"], child["cases"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(_HERE, "bench.json"))
    parser.add_argument("--families", default="")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0,
        help="skip the remaining families once this many seconds passed",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the families in this process (default: one child each)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        entry, cases = run_family(args.child, args.quick)
        write({"entry": entry, "cases": cases}, args.child_out)
        return 0
    start = time.time()

    import torch

    doc = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "quick": args.quick,
        "device": device_info(),
        "ceilings": {},
        "families": {},
        "cases": [],
    }
    print(json.dumps(doc["device"], indent=1))
    if not torch.cuda.is_available():
        doc["error"] = "torch sees no CUDA device"
        write(doc, args.out)
        print(doc["error"])
        return 1
    try:
        doc["ceilings"] = ceilings(args.quick)
        c = doc["ceilings"]
        print(
            f"copy {c['copy_tbps']:.2f} TB/s (read+write), "
            f"bf16 matmul {c['bf16_tflops']:.0f} TFLOP/s"
        )
    except Exception:
        doc["ceilings"] = {"error": traceback.format_exc()}
        print(doc["ceilings"]["error"])
    write(doc, args.out)

    wanted = [f for f in args.families.split(",") if f]
    status = 0
    for family in available_families():
        if wanted and family not in wanted:
            continue
        left = args.budget_s - (time.time() - start) if args.budget_s else 0
        if args.budget_s and left <= 0:
            doc["families"][family] = {
                "status": "skipped",
                "error": "time budget spent",
            }
            print(f"== {family}: skipped (time budget spent)")
            continue
        print(f"== {family}", flush=True)
        if args.in_process:
            entry, results = run_family(family, args.quick)
        else:
            # A child may run past the budget by 50 s (the caller's own
            # timeout leaves 60).
            timeout = left + 50 if args.budget_s else None
            entry, results = run_family_isolated(family, args.quick, timeout)
        if entry.get("status") != "ok":
            status = 1
            if not args.in_process:
                print(entry.get("error", ""), flush=True)
        entry["cases"] = len(results)
        doc["families"][family] = entry
        for case in results:
            case.setdefault("family", family)
            print("  " + summarize(case, doc["ceilings"]), flush=True)
        doc["cases"].extend(results)
        write(doc, args.out)
    doc["seconds"] = round(time.time() - start, 1)
    write(doc, args.out)
    print(f"wrote {args.out} ({len(doc['cases'])} cases, {doc['seconds']} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
