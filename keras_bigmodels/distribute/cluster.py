"""`TF_CONFIG` for multi-worker training, and local clusters for trying it.

`tf.distribute.MultiWorkerMirroredStrategy` reads the cluster from the
`TF_CONFIG` environment variable of each worker process: the addresses of
all workers (the same list, in the same order, everywhere) and this
process's index in it. Worker 0 is the chief.
"""

import json
import socket


def tf_config(workers, index, task_type="worker"):
    """The `TF_CONFIG` value (a JSON string) for one task of a cluster.

    Args:
        workers: The workers' `"host:port"` addresses, the same list in
            every process.
        index: This process's position in `workers` (or in the list of its
            `task_type`).
        task_type: Defaults to `"worker"`.

    Returns:
        A JSON string for the `TF_CONFIG` environment variable.

    Example:

    ```python
    workers = ["10.0.0.1:12345", "10.0.0.2:12345"]
    os.environ["TF_CONFIG"] = kbm.distribute.tf_config(workers, index=0)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    ```
    """
    workers = list(workers)
    if not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise ValueError(
            "workers must be a non-empty list of 'host:port' strings. "
            f"Received: workers={workers!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"index must be an int. Received: index={index!r}")
    if task_type == "worker" and not 0 <= index < len(workers):
        raise ValueError(
            f"index must be in [0, {len(workers)}). Received: index={index}"
        )
    return json.dumps(
        {
            "cluster": {"worker": workers},
            "task": {"type": task_type, "index": index},
        }
    )


def local_workers(num_workers, host="127.0.0.1"):
    """Addresses for `num_workers` worker processes on this machine.

    Each port is one the operating system reports free (by binding to
    port 0); another process may still take it before the workers start,
    so this is meant for tests and examples, not for production clusters.

    Args:
        num_workers: How many addresses.
        host: Defaults to `"127.0.0.1"`.

    Returns:
        A list of `"host:port"` strings.

    Example:

    ```python
    workers = kbm.distribute.local_workers(2)
    procs = [
        subprocess.Popen(
            [sys.executable, "train.py"],
            env={**os.environ,
                 "TF_CONFIG": kbm.distribute.tf_config(workers, i)})
        for i in range(len(workers))
    ]
    ```
    """
    if isinstance(num_workers, bool) or not (
        isinstance(num_workers, int) and num_workers > 0
    ):
        raise ValueError(
            "num_workers must be a positive int. "
            f"Received: num_workers={num_workers!r}"
        )
    sockets = []
    try:
        # Hold every socket until all are bound, so the ports differ.
        for _ in range(num_workers):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [f"{host}:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()
