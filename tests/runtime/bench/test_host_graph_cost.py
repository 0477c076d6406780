"""`runtime.bench.floors.graph_cost`: a graph's weight bytes and FLOPs per row read off its bytes, exactly, on a
serving host without onnx (`python -m runtime.bench.host`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.bench.floors import graph_cost

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slim
def test_the_host_benchmark_counts_a_builds_weights_without_onnx(demo_artifacts):
    # onnx made unimportable, as on a serving host: the count is read off the bytes all the same.
    code = ("import sys, json; sys.modules['onnx'] = None; from pathlib import Path; "
            "from runtime.bench.host import graph_cost; print(json.dumps(graph_cost(Path(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(demo_artifacts)], capture_output=True, text=True,
                          check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    weight_bytes, flops, how = json.loads(done.stdout)
    assert how == "from the graph's initializers"
    assert (weight_bytes, flops) == graph_cost((demo_artifacts / "ensemble.onnx").read_bytes())
    size = (demo_artifacts / "ensemble.onnx").stat().st_size  # mostly float32 weights, plus tree tables
    assert 0.5 * size < weight_bytes < size and flops > 0


def _onnx_cost(model) -> tuple[int, int]:
    """The count with onnx's own reader: every non-int64 initializer's bytes, 2*K*N per weight matrix."""
    from onnx import helper, numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    flops = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            flops += 2 * attrs["K"] * attrs["N"]
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in weights and weights[node.input[1]].ndim == 2:
            flops += 2 * weights[node.input[1]].size
    return sum(w.nbytes for w in weights.values() if w.dtype != np.int64), flops


def test_the_count_is_onnxs_for_every_graph_of_a_build(demo_artifacts):
    onnx = pytest.importorskip("onnx")
    for path in [demo_artifacts / "ensemble.onnx", *sorted((demo_artifacts / "members").glob("*.onnx"))]:
        data = path.read_bytes()
        assert graph_cost(data) == _onnx_cost(onnx.load_from_string(data)), path.name


def test_the_count_reads_each_weight_type_and_each_multiplying_node():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    tensors = [numpy_helper.from_array(np.zeros((8, 4), np.float32), "w32"),      # 128 bytes, MatMul: 64 FLOPs
               numpy_helper.from_array(np.zeros((4, 2), np.float16), "w16"),      # 16 bytes, Gemm: 16 FLOPs
               numpy_helper.from_array(np.zeros(3, np.float64), "mean"),          # 24 bytes, no FLOPs
               numpy_helper.from_array(np.zeros((2, 8), np.uint8), "q"),          # 16 bytes (int8 blocks)
               numpy_helper.from_array(np.array([-1, 2], np.int64), "shape")]     # a shape: 0 bytes
    nodes = [helper.make_node("MatMul", ["x", "w32"], ["a"]),
             helper.make_node("Gemm", ["a", "w16"], ["b"]),
             helper.make_node("MatMulNBits", ["b", "q"], ["c"], domain="com.microsoft", K=32, N=2, bits=4,
                              block_size=32),                                     # 2*32*2 = 128 FLOPs
             helper.make_node("Split", ["c"], ["d", "e"], axis=1),               # two outputs, counted once
             helper.make_node("MatMul", ["d", "e"], ["f"])]                       # no weight: no FLOPs
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, None)], tensors)
    data = helper.make_model(graph).SerializeToString()
    assert graph_cost(data) == (128 + 16 + 24 + 16, 64 + 16 + 128)
    assert graph_cost(data) == _onnx_cost(onnx.load_from_string(data))
