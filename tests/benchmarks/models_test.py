"""benchmarks/models.py's target lines and passes, from fake rows."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _models():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "kbm_bench_models", ROOT / "benchmarks" / "models.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _row(task, variant, speedup, pct=40.0):
    return {
        "task": task,
        "variant": variant,
        "kbm_speedup": speedup,
        "pct_peak": pct,
    }


def test_target_notes():
    m = _models()
    train, infer = "training step, batch 32", "inference, batch 1"
    rows = [
        _row(train, "kbm", None, pct=45.0),
        _row(train, "kbm, kernels off", 1.2),
        _row(train, "Keras layers", 1.1),
        _row(train, "PyTorch", 1.4),
        _row(infer, "kbm", None),
        _row(infer, "kbm, kernels off", 1.1),
        _row(infer, "SavedModel (stock ops)", 1.0),
        _row(infer, "SavedModel, jit_compile", 1.25),
        _row(infer, "PyTorch", 1.2),
    ]
    notes = m._target_notes(rows)
    assert notes[0] == (
        "training step, batch 32: kbm 1.40x faster than PyTorch (target "
        "1.3x: met); 1.20x faster than kbm, kernels off (target 1.5x: not "
        "met); 1.10x faster than Keras layers; 45 % of the FMA peak (target "
        "75 %: not met)."
    )
    assert notes[1] == (
        "inference, batch 1: kbm 1.20x faster than PyTorch eager (target "
        "1.3x: not met); SavedModel (stock ops) 1.10x the speed of the Keras "
        "model with kernels off (target >= 1: met); SavedModel, jit_compile "
        "0.88x the speed of the Keras model with kernels off (target >= 1: "
        "not met)."
    )


def test_bert_base_runs_in_passes_that_cover_every_variant():
    m = _models()
    passes = m.MODELS["BERT-base"]["passes"]
    flat = [v for group in passes for v in group]
    assert sorted(flat) == sorted(v for v in m.VARIANTS if v != m.KBM)
    assert all(v in m.VARIANTS for v in flat)
