"""Which operator and layout onnxruntime runs fastest for one row, per weight matrix and for the whole graph,
measured on this host (issue 17). A study, not part of a build: it needs onnx (the `[convert]` extra).

    python -m benchmarks.layouts ARTIFACTS [--out DIR] [--rounds N]

Per distinct weight shape of the float32 ensemble graph (PatchTST's feed-forward matrices are most of the
bytes), one-row time of:
  Gemm transB=1 (what torch.onnx exports: W stored [out, in]),  Gemm with W stored transposed [in, out],
  MatMul + Add (transposed), MatMulNBits 8-bit with float32 compute (accuracy_level 1: what the int8 build
  could use without VNNI), each at graph optimisation ORT_DISABLE_ALL and ORT_ENABLE_ALL,
beside numpy's own matvec over the same matrix. Then the whole ensemble with every Gemm against a weight
rewritten into each float32 form, and each member's own graph alone. Every candidate is alive at once and
timed in turns (`--rounds`), so a slow spell on a shared machine lands on all of them; each figure is the
median over all calls. Writes DIR/layouts.json and DIR/layouts.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bench.host import member_feed, service_rows

from .common import host, refused, write

GEMM_FORMS = ("Gemm transB=1", "Gemm W transposed", "MatMul + Add")
COLD_COPIES = 24  # 24 MB of copies of a 1 MB matrix: past any L2 and most last-level caches


def _in_turns(candidates: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, float]:
    """name -> median µs per call, every candidate timed `calls` times per round, rounds interleaved."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        for _ in range(20):
            fn()
    for turn in range(rounds):
        order = list(candidates) if turn % 2 == 0 else list(reversed(candidates))
        for name in order:
            fn = candidates[name]
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: float(np.median(t) * 1e6) for name, t in times.items()}


def _rotating(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One call per invocation, taking `calls` in turn (each reads its own copy of the weights)."""
    turn = iter(range(1 << 62))

    def call() -> Any:
        return calls[next(turn) % len(calls)]()

    return call


def _gemm_form(form: str, x: str, w: np.ndarray, b: np.ndarray | None, out: str, prefix: str) -> tuple[list, list]:
    """Nodes and initializers computing out = x @ w.T + b (w is torch's [out, in]) in `form`."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(w if form == "Gemm transB=1" else np.ascontiguousarray(w.T), f"{prefix}/W")]
    if b is not None:
        inits.append(numpy_helper.from_array(b, f"{prefix}/b"))
    bias = [f"{prefix}/b"] if b is not None else []
    if form == "Gemm transB=1":
        return [helper.make_node("Gemm", [x, f"{prefix}/W", *bias], [out], transB=1, name=f"{prefix}/Gemm")], inits
    if form == "Gemm W transposed":
        return [helper.make_node("Gemm", [x, f"{prefix}/W", *bias], [out], name=f"{prefix}/Gemm")], inits
    if b is None:
        return [helper.make_node("MatMul", [x, f"{prefix}/W"], [out], name=f"{prefix}/MatMul")], inits
    return [helper.make_node("MatMul", [x, f"{prefix}/W"], [f"{prefix}/xw"], name=f"{prefix}/MatMul"),
            helper.make_node("Add", [f"{prefix}/xw", f"{prefix}/b"], [out], name=f"{prefix}/Add")], inits


def _session(model: Any, level: str = "ORT_ENABLE_ALL") -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _single(form: str, w: np.ndarray, b: np.ndarray) -> Any:
    from onnx import TensorProto, helper

    nodes, inits = _gemm_form(form, "x", w, b, "y", "layer")
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[0]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _nbits_fp32(w: np.ndarray, b: np.ndarray) -> Any:
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(_single("MatMul + Add", w, b), bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=1)
    quantizer.process()
    return quantizer.model.model


def per_matrix(model: Any, rounds: int, calls: int) -> list[dict[str, Any]]:
    """One row through each distinct weight shape of the graph's Gemms, in every form."""
    from onnx import helper, numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, int]] = {}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and node.input[1] in weights and attrs.get("transB") == 1 and len(node.input) == 3:
            w = weights[node.input[1]]
            held = shapes.get(w.shape)
            shapes[w.shape] = (w, weights[node.input[2]], (held[2] if held else 0) + 1)
    out = []
    for shape, (w, b, count) in sorted(shapes.items(), key=lambda s: -s[1][0].size):
        x = np.random.default_rng(0).standard_normal((1, shape[1])).astype(np.float32)
        candidates: dict[str, Callable[[], Any]] = {"numpy W @ x": partial(np.matmul, w, x[0])}
        for form in GEMM_FORMS:
            for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
                session = _session(_single(form, w, b), level)
                candidates[f"{form}, {level}"] = partial(session.run, None, {"x": x})
        if w.size >= 1 << 16:
            nbits = _session(_nbits_fp32(w, b))
            candidates["MatMulNBits 8-bit, float32 compute"] = partial(nbits.run, None, {"x": x})
            # Cold: as inside the graph, where the weights of all layers together outgrow the caches, each
            # call reads a different copy of the matrix (COLD_COPIES of them, several times any L2).
            copies = [w + np.float32(i * 1e-3) for i in range(COLD_COPIES)]
            candidates["numpy W @ x, cold"] = _rotating([partial(np.matmul, c, x[0]) for c in copies])
            for form in GEMM_FORMS:
                sessions = [_session(_single(form, c, b)) for c in copies]
                candidates[f"{form}, ORT_ENABLE_ALL, cold"] = _rotating([partial(s.run, None, {"x": x})
                                                                         for s in sessions])
        figures = _in_turns(candidates, rounds, calls)
        out.append({"shape": list(shape), "count": count, "bytes": int(w.nbytes), "one_row_us": figures})
    return out


def whole_graph_in_form(model: Any, form: str) -> Any:
    """The ensemble graph with every Gemm against a weight (transB=1) rewritten into `form`."""
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    weights = {i.name: i for i in model.graph.initializer}
    nodes, inits, drop = [], [], set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (form != "Gemm transB=1" and node.op_type == "Gemm" and node.input[1] in weights
                and attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0
                and attrs.get("beta", 1.0) == 1.0):
            w = numpy_helper.to_array(weights[node.input[1]])
            b = numpy_helper.to_array(weights[node.input[2]]) if len(node.input) == 3 else None
            n, i = _gemm_form(form, node.input[0], w, b, node.output[0], node.name)
            nodes += n
            inits += i
            drop.update(node.input[1:])
            continue
        nodes.append(node)
    kept = [i for i in model.graph.initializer if i.name not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + inits)
    return model


def whole(folder: Path, rounds: int, calls: int) -> dict[str, float]:
    import onnx

    import runtime

    model = onnx.load(folder / "ensemble.onnx")
    row = service_rows(runtime.load(folder), 1)  # a row as a service sends it: tree paths as they are in service
    candidates: dict[str, Callable[[], Any]] = {}
    for form in GEMM_FORMS:
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
            session = _session(whole_graph_in_form(model, form), level)
            candidates[f"ensemble, {form}, {level}"] = partial(session.run, None, {"features": row})
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    for name, member in manifest["members"].items():
        session = _session(onnx.load(folder / member["onnx"]["file"]))
        candidates[f"member {name} alone"] = partial(session.run, None, member_feed(session, row))
    return _in_turns(candidates, rounds, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layouts", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="a float32 artifacts folder")
    parser.add_argument("--out", type=Path, default=Path("build/bench-layouts"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls: each must be at least 1 (no figure is printed that was not measured)")
    import onnx

    if refused(args.artifacts, args.out):
        return 1

    results: dict[str, Any] = {"host": host(),
               "per_matrix": per_matrix(onnx.load(args.artifacts / "ensemble.onnx"), args.rounds, args.calls),
               "whole_graph": whole(args.artifacts, args.rounds, args.calls)}
    lines = [(f"Host: {results['host']['model']} ({', '.join(results['host']['instruction_sets'])}), onnxruntime "
              f"{results['host']['onnxruntime']}, 1 thread; median µs per one-row call, candidates timed in turns."),
             ""]
    for m in results["per_matrix"]:
        lines += [f"**W {m['shape'][0]}×{m['shape'][1]}** ({m['bytes'] / 1e6:.2f} MB, {m['count']} in the graph)", "",
                  "| form | one row |", "|---|---:|", *[f"| {k} | {v:.1f} µs |" for k, v in m["one_row_us"].items()],
                  ""]
    lines += ["**Whole graph**", "", "| graph | one row |", "|---|---:|",
              *[f"| {k} | {v:.1f} µs |" for k, v in results["whole_graph"].items()]]
    write(args.out, "layouts", results, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
