"""Training processes for the distribute tests.

Each process runs `_train_worker.py` with a JSON config, logs stdout and
stderr to `<name>.log` under the test's temporary directory (shown when a
test fails) and writes its result to `<name>.out.json`. Every wait has a
deadline, after which the processes still running are killed: when one
MultiWorkerMirroredStrategy worker dies, the others block in a collective.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

import keras_bigmodels as kbm
from keras_bigmodels.testing import assert_close

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
CRASH_EXIT_CODE = 17  # as in _train_worker.py
# One launch: ~7 s of TensorFlow start-up and ~6 s of fit per worker here.
LAUNCH_TIMEOUT_S = 120
# 4 epochs x 8 steps of AdamW; measured max |diff| against the
# single-process run: 3.8e-6 (Keras 3), 2.5e-7 (tf-keras).
RTOL, ATOL = 1e-4, 5e-5
TRAINING = {"epochs": 4, "batch_size": 32, "examples": 256}


class Process:
    """A training process started from `_train_worker.py`, logging to a
    file."""

    def __init__(self, tmp_path, name, config, tf_config=None):
        self.name = name
        self.log = tmp_path / f"{name}.log"
        self.out = tmp_path / f"{name}.out.json"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**config, "out": str(self.out)}))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("TF_CONFIG", None)
        if tf_config is not None:
            env["TF_CONFIG"] = tf_config
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, WORKER, str(path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait(self, deadline):
        """The exit code, or None if still running at `deadline`."""
        try:
            return self.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, chars=3000):
        return f"--- {self.name} log ---\n{self.log.read_text()[-chars:]}"

    def result(self):
        return json.loads(self.out.read_text())


def launch(tmp_path, name, config, num_workers=2):
    """Starts `num_workers` MWMS workers on free local ports."""
    workers = kbm.distribute.local_workers(num_workers)
    return [
        Process(
            tmp_path,
            f"{name}_{i}",
            {**config, "mode": "multi"},
            kbm.distribute.tf_config(workers, i),
        )
        for i in range(num_workers)
    ]


def finish(processes, timeout=LAUNCH_TIMEOUT_S):
    """Waits for all; kills the rest at the timeout; returns exit codes."""
    deadline = time.time() + timeout
    codes = [p.wait(deadline) for p in processes]
    for p in processes:
        p.kill()
    return codes


def logs(processes):
    return "\n".join(p.tail() for p in processes)


def expect_success(processes):
    codes = finish(processes)
    if codes != [0] * len(processes):
        raise AssertionError(f"exit codes {codes}\n{logs(processes)}")
    return [p.result() for p in processes]


def assert_same_weights(actual, expected, what):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close(np.array(a), np.array(e), RTOL, ATOL, what=f"{what} {i}")


def max_difference(a, b):
    return max(
        float(np.abs(np.array(x) - np.array(y)).max()) for x, y in zip(a, b)
    )
