"""float32 matmul alone at a model step's shapes (benchmarks/models.py).

Run by the driver with the main Python (TensorFlow) and with the PyTorch
virtual environment's Python: prints one JSON line, {"MxKxN": seconds},
the best of `rounds` timings of each product after two warm-up calls.
Imports neither keras nor keras_bigmodels.

    python benchmarks/_matmul_alone.py tf|torch THREADS SHAPES_JSON
"""

import json
import sys
import time

import numpy as np


def main():
    which, threads, shapes = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rounds = 10
    out = {}
    if which == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf
    for m, k, n in json.loads(shapes):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        if which == "torch":
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)

            def run(ta=ta, tb=tb):
                return ta @ tb

        else:
            ta, tb = tf.constant(a), tf.constant(b)

            def run(ta=ta, tb=tb):
                return tf.matmul(ta, tb).numpy()

        run()
        run()
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = best
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
