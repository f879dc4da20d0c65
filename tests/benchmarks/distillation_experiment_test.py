"""benchmarks/distillation_experiment.py: the pruned student's bookkeeping
(settings shared with the default students, FLOPs, the RESULTS.md table),
without training anything."""

import importlib.util
from pathlib import Path

import numpy as np

import keras_bigmodels as kbm

ROOT = Path(__file__).resolve().parents[2]


def _experiment():
    spec = importlib.util.spec_from_file_location(
        "kbm_distillation_experiment",
        ROOT / "benchmarks" / "distillation_experiment.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pruned_student_shares_the_default_settings():
    exp = _experiment()
    default = exp.parse_args([])
    pruned = exp.parse_args(["--students", "pruned"])
    assert pruned.students == ["pruned"]
    assert "pruned" not in default.students
    # One results file holds both invocations' runs.
    assert exp.settings(pruned) == exp.settings(default)
    assert exp.settings(exp.parse_args(["--quick", "--students", "pruned"]))


def test_fraction_removes_at_least_the_share():
    exp = _experiment()
    scores = {f"l{i}": np.arange(12.0) + i for i in range(6)}
    chosen = kbm.pruning.select_lowest(scores, exp._fraction(0.4, 72))
    assert sum(len(v) for v in chosen.values()) == 29  # ceil(0.4 * 72)
    assert exp._fraction(0.5, 9216) == 0.5


def test_encoder_flops_counts_pruned_blocks():
    exp = _experiment()
    encoder = kbm.models.BertEncoder(
        vocabulary_size=50,
        num_layers=2,
        num_heads=4,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
        name="minilm",
    )
    length, d, width, inner = 8, 16, 16, 32
    per_block = (
        2 * length * d * width * 4
        + 4 * length * length * width
        + 4 * length * d * inner
    )
    assert exp.encoder_flops(encoder, length) == 2 * per_block
    plan = {"heads": {"transformer_layer_0": [0, 1]}, "units": {}}
    small = exp.pruned_encoder(encoder, plan)
    assert small.name == exp.STUDENT_ENCODER
    assert [b.num_heads for b in small.transformer_layers] == [2, 4]
    half = 2 * length * d * 8 * 4 + 4 * length * length * 8
    assert exp.encoder_flops(small, length) == 2 * per_block - (
        2 * length * d * width * 4 + 4 * length * length * width - half
    )


def _run(accuracy, pruning=None):
    run = {
        "accuracy": accuracy,
        "parameters": 1000,
        "token_table": 400,
        "examples": 90,
    }
    if pruning:
        run["pruning"] = pruning
    return run


def test_render_has_the_pruning_table():
    exp = _experiment()
    settings = exp.settings(exp.parse_args([]))
    pruning = {
        "heads_total": 72,
        "heads_removed": 29,
        "units_total": 9216,
        "units_removed": 4608,
        "layer_num_heads": [8, 7, 7, 9, 5, 7],
        "layer_intermediate_dims": [801, 842, 772, 782, 751, 660],
        "score_batches": 8,
        "relation_heads": 8,
        "sequence_length": 40,
        "teacher_flops": 2_000_000,
        "student_flops": 1_000_000,
        "accuracy_before_training": 0.70,
        "timing": {"speedup": 1.9, "batch": 32, "rounds": 7},
    }
    runs = {"2/alone/0": _run(0.70), "2/logits/0": _run(0.72)}
    for mode, acc in (("alone", 0.76), ("logits", 0.78), ("full", 0.77)):
        for seed in range(2):
            runs[f"pruned/{mode}/{seed}"] = _run(acc, pruning)
    text = exp.render(
        {
            "settings": settings,
            "teacher": {"accuracy": 0.80, "parameters": 2000},
            "runs": runs,
        }
    )
    assert "| pruned teacher: 6 blocks, 43 of 72 heads, 4,608 of 9,216" in text
    assert "### Pruned MiniLM" in text
    assert "| pruned + logits KD | 1,000 (50%) | 2.00× | 1.90× | " in text
    assert "0.7800 ± 0.0000 (n=2) | 97.5% | -2.0 |" in text
    assert "| pruned, no training |" in text
    # The table without pruned runs is unchanged: no pruning section.
    others = {k: v for k, v in runs.items() if not k.startswith("pr")}
    plain = exp.render({"settings": settings, "teacher": None, "runs": others})
    assert "Pruned MiniLM" not in plain
