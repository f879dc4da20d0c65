"""MirroredStrategy on 2 logical CPUs: kbm transformer layers, kbm AdamW and
a kbm callback in `fit`, against the same training in one device."""

import os

import numpy as np

from tests.distribute._cluster import (
    TRAINING,
    Process,
    assert_same_weights,
    expect_success,
    max_difference,
)


def test_mirrored_fit_with_kbm_layers_optimizer_and_callback(
    tmp_path, reference
):
    mirrored = Process(
        tmp_path,
        "mirrored",
        {
            **TRAINING,
            "mode": "mirrored",
            "attribution_dir": str(tmp_path / "attributions"),
        },
    )
    (result,) = expect_success([mirrored])
    reference = reference()
    assert_same_weights(result["weights"], reference["weights"], "weight")
    np.testing.assert_allclose(result["loss"], reference["loss"], rtol=1e-4)
    assert result["epochs_run"] == [0, 1, 2, 3]
    files = sorted(os.listdir(tmp_path / "attributions"))
    assert files[-2:] == ["epoch_0003.html", "epoch_0003.json"]
    print(
        "max |mirrored - single| =",
        max_difference(result["weights"], reference["weights"]),
    )
