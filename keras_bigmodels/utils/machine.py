"""A one-line figure of how fast this machine computes."""

import dataclasses
import os
import platform
import statistics
import time

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class MachineFigure:
    """The float32 matmul rate TensorFlow reaches on this machine.

    Attributes:
        gflops: Median rate over the timed calls, in GFLOP/s (1e9 FLOP).
        size: The matmul was [size, size] x [size, size] (2 size^3 FLOP).
        calls: Timed calls.
        seconds: Total time of the timed calls.
        threads: TensorFlow's intra-op threads (its default: one per CPU
            this process may use).
        cpu: The CPU model, as the OS names it.
    """

    gflops: float
    size: int
    calls: int
    seconds: float
    threads: int
    cpu: str

    def __str__(self):
        return (
            f"{self.gflops:.0f} GFLOP/s float32 matmul (TensorFlow, "
            f"{self.size}x{self.size}x{self.size}, {self.threads} "
            f"thread{'s' if self.threads != 1 else ''}, {self.calls} calls "
            f"in {self.seconds:.1f} s; {self.cpu})"
        )


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _threads():
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def matmul_gflops(seconds=1.0, size=1024):
    """Measures the float32 matmul rate TensorFlow reaches here, on CPU.

    One `tf.function` matmul of two [size, size] float32 matrices, as
    TensorFlow runs it (its oneDNN/Eigen kernels on its intra-op threads),
    warmed up once, then called for about `seconds`; the rate is 2 size^3
    FLOP over the median call time. Transformer training and inference on
    CPU are matmul-bound, so their times scale roughly with this figure
    (and with what else runs on the machine).

    Args:
        seconds: How long to keep calling, at least 5 calls. Defaults to
            `1.0`.
        size: The matrices' side. Defaults to `1024`.

    Returns:
        A `MachineFigure`; `str()` of it is a one-line description.

    Example:

    ```python
    print(f"machine: {kbm.utils.matmul_gflops()}")
    ```
    """
    if not seconds > 0:
        raise ValueError(
            f"seconds must be positive. Received: seconds={seconds!r}"
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"size must be a positive integer. Received: size={size!r}"
        )
    with tf.device("/CPU:0"):
        a = tf.random.stateless_normal([size, size], seed=(1, 2))
        b = tf.random.stateless_normal([size, size], seed=(3, 4))
        matmul = tf.function(tf.linalg.matmul)
        matmul(a, b).numpy()
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            matmul(a, b).numpy()
            times.append(time.perf_counter() - t0)
    return MachineFigure(
        gflops=2 * size**3 / statistics.median(times) / 1e9,
        size=size,
        calls=len(times),
        seconds=sum(times),
        threads=_threads(),
        cpu=_cpu_model(),
    )
