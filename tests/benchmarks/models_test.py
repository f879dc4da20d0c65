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


def test_matmul_floor_note():
    m = _models()
    train = "training step, batch 32"
    rows = [
        dict(_row(train, "kbm (pass 1)", None), ms=5000.0, gflop=2000.0),
        dict(_row(train, "kbm, kernels off", 1.4), ms=7000.0, gflop=2000.0),
        dict(_row(train, "kbm (pass 2)", None), ms=5200.0, gflop=2000.0),
        dict(_row("inference, batch 1", "kbm", None), ms=50.0, gflop=20.0),
    ]
    note = m._matmul_floor_note("BERT-base", rows, 4.0, 600.0)
    assert note == (
        "BERT-base: the training step's encoder matmuls alone, at the "
        "TensorFlow rates of the matmul table, take 4000 ms, 80 % of kbm's "
        "step (5000 ms); the rest is attention, the element-wise ops, the "
        "optimizer and the framework. A step that took only that time would "
        "be 1.75x faster than kbm with kernels off and reach 83 % of the FMA "
        "peak (the targets: 1.5x and 75 %)."
    )
    assert m._matmul_floor_note("BERT-base", rows[2:], 4.0, 600.0) is None


def test_layer_products_count_each_product_once_per_role():
    m = _models()
    cfg = {"hidden": 4, "intermediate": 8}
    products = m._layer_products(cfg, 16)
    assert len(products) == 12
    assert products[:3] == [(16, 4, 12), (16, 12, 4), (4, 16, 12)]
    assert len(m._matmul_shapes(cfg, 16)) < len(products)
