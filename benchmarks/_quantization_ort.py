"""The ONNX Runtime peer of benchmarks/quantization.py (runs in the ORT venv).

Times ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul` followed by
`com.microsoft.Gelu`: `gelu(x @ W + b)` with x float32 quantized on the fly
(ORT quantizes activations asymmetrically to uint8, per tensor) and W int8,
symmetric, one scale per output channel, as kbm's W8A8. The graph is built
with `onnx.helper`, one per shape, run on the CPU execution provider with
`intra_op_num_threads` threads. Timing: warm-up calls, then timed rounds
(`time.perf_counter()` around `session.run`); prints one JSON line
`{"M x K x N": {"times_ms": [...]}, ..., "versions": {...}}`.

Usage: `python _quantization_ort.py '{"shapes": [[m, k, n], ...],
"rounds": 9, "warmup": 2, "threads": 2}'`. Needs only numpy, onnx and
onnxruntime (no TensorFlow, no keras_bigmodels).
"""

import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build(k, n, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    scale = np.abs(w).max(axis=0) / 127.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(scale.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"),
        numpy_helper.from_array(b, "bias"),
    ]
    nodes = [
        helper.make_node(
            "DynamicQuantizeMatMul",
            ["x", "w_q", "w_scale", "w_zero", "bias"],
            ["z"],
            domain="com.microsoft",
        ),
        helper.make_node("Gelu", ["z"], ["y"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "w8a8_gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("com.microsoft", 1),
        ],
    )
    return model.SerializeToString(), q.astype(np.float32) * scale, b


def main():
    spec = json.loads(sys.argv[1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    out = {
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__}
    }
    for m, k, n in spec["shapes"]:
        model, w, b = build(k, n)
        session = ort.InferenceSession(
            model, options, providers=["CPUExecutionProvider"]
        )
        x = np.random.default_rng(1).standard_normal((m, k)).astype("float32")
        z = x @ w + b
        expected = 0.5 * z * (1 + np.tanh(0.7978845608 * (z + 0.044715 * z**3)))
        y = session.run(None, {"x": x})[0]
        # Sanity only: uint8 activations + int8 weights vs the float math.
        err = float(np.abs(y - expected).max() / np.abs(expected).max())
        if err > 0.05:
            sys.exit(f"ORT output off by {err:.3f} of max at {m}x{k}x{n}")
        for _ in range(spec["warmup"]):
            session.run(None, {"x": x})
        times = []
        for _ in range(spec["rounds"]):
            t0 = time.perf_counter()
            session.run(None, {"x": x})
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"{m} x {k} x {n}"] = {"times_ms": times, "rel_err": err}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
