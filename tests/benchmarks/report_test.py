"""benchmarks/report.py's GPU section, rendered from a small fake run."""

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _report():
    spec = importlib.util.spec_from_file_location(
        "kbm_bench_report", ROOT / "benchmarks" / "report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKE_GPU_RUN = {
    "schema": 1,
    "date": "2026-12-04T19:58:00+00:00",
    "quick": False,
    "device": {
        "name": "NVIDIA H200",
        "capability": "9.0",
        "multiprocessors": 132,
        "memory_gib": 139.8,
        "driver": "580.159",
        "torch": "2.11.0+cu130",
        "torch_cuda": "13.0",
        "nvcc": "13.0",
        "python": "3.12.3",
    },
    "ceilings": {
        "copy_bytes": 2 * 2**31,
        "copy_ms": 1.0,
        "copy_tbps": 4.0,
        "matmul_shape": [8192, 8192, 8192],
        "matmul_ms": 1.4,
        "bf16_tflops": 800.0,
    },
    "families": {
        "normalization": {"status": "ok", "cases": 1, "seconds": 3.0},
        "attention": {
            "status": "error",
            "cases": 1,
            "error": "Traceback ...\nRuntimeError: launch failed",
        },
    },
    "cases": [
        {
            "family": "normalization",
            "op": "layer_norm fwd+bwd",
            "case": "rows x width",
            "dtype": "bfloat16",
            "shape": [16384, 4096],
            "kbm_ms": 0.5,
            "torch_ms": 1.0,
            "torch_impl": "F.layer_norm",
            "bytes": 1.6e9,
        },
        {
            "family": "attention",
            "op": "fwd",
            "case": "causal",
            "dtype": "bfloat16",
            "shape": [4, 4096, 16, 128],
            "kbm_ms": 2.0,
            "torch_ms": 1.5,
            "torch_impl": "sdpa flash",
            "flops": 8e11,
        },
    ],
}


def test_gpu_section_from_fake_json(tmp_path):
    report = _report()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    (results / "gpu_h200.json").write_text(json.dumps(FAKE_GPU_RUN))
    text = report.render(results)
    gpu = text[text.index("## GPU: NVIDIA H200") :]
    # The CPU sections are unchanged by the GPU file.
    assert (
        text[: text.index("## GPU:")].rstrip()
        == report.render(ROOT / "benchmarks" / "results").rstrip()
    )
    assert "driver 580.159" in gpu
    assert "CUDA 13.0 (PyTorch's)" in gpu and "PyTorch 2.11.0+cu130" in gpu
    assert "copy 4.00 TB/s" in gpu and "bf16 matmul 800 TFLOP/s" in gpu
    rows = [line for line in gpu.splitlines() if line.startswith("| ")]
    header, norm, attn = rows[0], rows[1], rows[2]
    assert "PyTorch / kbm" in header and "% of ceiling" in header
    # 1.6e9 bytes in 0.5 ms = 3.2 TB/s = 80 % of 4.0; PyTorch 2x slower.
    assert "| [16384, 4096] | 0.500 | 1.000 | F.layer_norm | 2.00× |" in norm
    assert "3.20 TB/s | 80 % |" in norm
    # 8e11 FLOPs in 2 ms = 400 TFLOP/s = 50 % of 800; PyTorch faster.
    assert "0.75× | 400 TFLOP/s | 50 % |" in attn
    assert "**attention**: error, 1 case(s) measured" in gpu
    assert "RuntimeError: launch failed" in gpu


def test_no_gpu_file_no_gpu_section():
    assert "## GPU" not in _report().render(ROOT / "benchmarks" / "results")


def test_readme_summary_block_from_the_family_notes(tmp_path):
    report = _report()
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(
        ROOT / "benchmarks" / "results" / "quantization.default.json", results
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "before\n"
        "<!-- bench-summary:quantization:start (generated) -->\n"
        "stale\n"
        "<!-- bench-summary:quantization:end -->\n"
        "after\n"
    )
    assert report.update_readme(results, readme) == ["quantization"]
    text = readme.read_text()
    run = json.loads((results / "quantization.default.json").read_text())
    notes = [n for t in run["tables"] for n in t.get("notes", [])]
    assert notes and all(n in text for n in notes)
    assert "stale" not in text
    assert text.startswith("before\n") and text.endswith("after\n")
    # Rewriting is idempotent; a README without blocks is left as it is.
    assert report.update_readme(results, readme) == ["quantization"]
    assert readme.read_text() == text
    other = tmp_path / "OTHER.md"
    other.write_text("no blocks\n")
    assert report.update_readme(results, other) == []
    assert other.read_text() == "no blocks\n"
