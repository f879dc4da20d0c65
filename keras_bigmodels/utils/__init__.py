"""`kbm.utils`: measuring models and machines the same way everywhere.

Inference latency with a warm-up and the median and spread of repeated
timed calls (`measure_latency`, `measure_latencies`), and a one-line
figure of the machine's float32 matmul rate (`matmul_gflops`) to state
times against.
"""

from keras_bigmodels.utils.latency import (
    Latency,
    measure_latencies,
    measure_latency,
)
from keras_bigmodels.utils.machine import MachineFigure, matmul_gflops

__all__ = [
    "Latency",
    "MachineFigure",
    "matmul_gflops",
    "measure_latencies",
    "measure_latency",
]
