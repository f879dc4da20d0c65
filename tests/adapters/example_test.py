"""examples/lora_finetune.py runs end to end (test-sized)."""

import os
import re

from tests.examples_test import ROOT, run_example, slow_on_tf_keras


@slow_on_tf_keras
def test_lora_finetune_quick(tmp_path):
    out = run_example(
        [os.path.join(ROOT, "examples", "lora_finetune.py"), "--quick"],
        tmp_path,
    )
    assert "trainable     74,498 of 22,639,874 (0.33%)" in out
    difference = re.search(r"max \|logit difference\| (\S+)", out)
    assert difference and float(difference.group(1)) <= 1e-5
