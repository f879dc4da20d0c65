"""keras-bigmodels-saved-model-cli: saved_model_cli with the op library."""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_bigmodels as kbm
from keras_bigmodels.testing import assert_close
from tests.export._models import dense_classifier, float_batch

BIN = os.path.dirname(sys.executable)
WRAPPER = os.path.join(BIN, "keras-bigmodels-saved-model-cli")
PLAIN = os.path.join(BIN, "saved_model_cli")


def cli(program, *args):
    """Runs a CLI in a fresh process; returns the CompletedProcess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [program, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def fused_export(tmp_path_factory):
    model = dense_classifier()
    x = float_batch(n=2)
    path = kbm.export.export_saved_model(
        model, tmp_path_factory.mktemp("fused") / "1", stock_ops=False
    )
    assert "Kbm>BiasGelu" in kbm.export.find_fused_ops(path)
    return path, x, model.predict(x, verbose=0)


def run_args(path, outdir, x):
    return [
        "run",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--input_exprs",
        f"features={x.tolist()}",
        "--outdir",
        str(outdir),
    ]


def test_wrapper_is_installed():
    assert os.access(WRAPPER, os.X_OK), (
        f"{WRAPPER} is missing: reinstall with "
        "`pip install --no-build-isolation -e .`"
    )


def test_plain_saved_model_cli_cannot_run_fused_ops(fused_export, tmp_path):
    path, x, _ = fused_export
    proc = cli(PLAIN, *run_args(path, tmp_path / "out", x))
    assert proc.returncode != 0
    assert "Op type not registered 'Kbm>" in proc.stderr


def test_wrapper_runs_fused_ops(fused_export, tmp_path):
    path, x, expected = fused_export
    proc = cli(WRAPPER, *run_args(path, tmp_path / "out", x))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Result for output key logits" in proc.stdout
    # The op library ran: the fused kernels, not a reference.
    assert_close(np.load(tmp_path / "out" / "logits.npy"), expected, 1e-5, 1e-5)


def test_wrapper_show_lists_the_signature(fused_export):
    path, _, _ = fused_export
    proc = cli(
        WRAPPER,
        "show",
        "--dir",
        path,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inputs['features'] tensor_info" in proc.stdout
    assert "outputs['logits'] tensor_info" in proc.stdout
    assert "Method name is: tensorflow/serving/predict" in proc.stdout


def test_wrapper_reports_a_library_it_cannot_load(fused_export, tmp_path):
    path, x, _ = fused_export
    env = {**os.environ, "KERAS_BIGMODELS_DISABLE_FUSED": "1"}
    proc = subprocess.run(
        [WRAPPER, *run_args(path, tmp_path / "out", x)],
        capture_output=True,
        text=True,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "op library is not loaded (disabled by" in proc.stderr
    assert "Op type not registered 'Kbm>" in proc.stderr
