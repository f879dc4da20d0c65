"""bench.py's flow on the CPU: ceilings and CUDA mocked, fake families."""

import json
import sys
import types

import torch

from gpu_harness import bench


def _fake_family(name, run):
    module = types.ModuleType(f"gpu_harness.bench_{name}")
    module.run = run
    sys.modules[module.__name__] = module


def test_one_failing_family_does_not_stop_the_others(tmp_path, monkeypatch):
    def good(results, quick=False):
        results.append(
            {
                "op": "fwd",
                "case": "c",
                "dtype": "bf16",
                "kbm_ms": 2.0,
                "torch_ms": 3.0,
                "bytes": 8e9,
            }
        )

    def bad(results, quick=False):
        results.append({"op": "half", "kbm_ms": 1.0, "flops": 4e11})
        raise RuntimeError("kernel exploded")

    _fake_family("zz_good", good)
    _fake_family("aa_bad", bad)
    monkeypatch.setattr(
        bench, "available_families", lambda: ["aa_bad", "zz_good"]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: None)
    monkeypatch.setattr(bench, "device_info", lambda: {"name": "fake"})
    monkeypatch.setattr(
        bench, "ceilings", lambda quick: {"copy_tbps": 4.0, "bf16_tflops": 800}
    )
    out = tmp_path / "bench.json"
    assert bench.main(["--out", str(out), "--in-process"]) == 1
    doc = json.loads(out.read_text())
    assert doc["families"]["aa_bad"]["status"] == "error"
    assert "kernel exploded" in doc["families"]["aa_bad"]["error"]
    assert doc["families"]["zz_good"]["status"] == "ok"
    assert [c["family"] for c in doc["cases"]] == ["aa_bad", "zz_good"]
    line = bench.summarize(doc["cases"][1], doc["ceilings"])
    assert "1.50x" in line and "4.00 TB/s (100%)" in line


def test_available_families_lists_bench_modules():
    families = bench.available_families()
    assert all(isinstance(f, str) for f in families)


def test_isolated_family_reports_its_error():
    entry, cases = bench.run_family_isolated("no_such_family", False, 120)
    assert entry["status"] == "error" and cases == []
    assert (
        "No module named 'gpu_harness.bench_no_such_family'" in (entry["error"])
    )


def test_isolated_family_timeout():
    entry, cases = bench.run_family_isolated("no_such_family", False, 0.01)
    assert entry["status"] == "timeout" and cases == []
