"""Why one row stays far from the all-core floor on a many-core host (issue 17): PatchTST's feed-forward
layers rewritten to give each node more parallel work, and onnxruntime's thread-pool knobs, timed per
thread count. A study, not part of a build: it needs onnx (the `[convert]` extra).

    python -m benchmarks.manycore ARTIFACTS --threads 2,4,8,16 [--out DIR] [--quick]

onnxruntime's float32 Gemm (MLAS) gives a one-row product at most M*N*K/65,536 + 1 threads, so each of
PatchTST's 1 MB feed-forward matrices (128 x 2048) runs on at most 5 threads however many the session has.
Two rewrites lift that limit, each computing the same function (the feed-forward block Gemm -> Relu -> Gemm
with hidden width H split into k slices of H/k):

- `blocks k`: one batched MatMul over k weight blocks per matrix (MLAS runs each block as its own task, so
  k tasks per node), an Add, a Relu, the second batched MatMul and a ReduceSum over the k partial outputs;
- `branches k`: k independent Gemm -> Relu -> Gemm branches and a Sum, for the parallel executor.

Each graph runs as a bare session (no input checks) at every thread count; the shipped graph also with the
thread-pool knobs below and through `runtime.Ensemble.predict_proba`, the service's call; each member alone
at 1 thread and at the most threads. Writes DIR/manycore.json and DIR/manycore.md. Figures are one-row p50
and p99; within one run they compare, across runs on a shared host they drift by 10-20%.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bench.host import member_feed, service_rows, session_options, thread_counts, timings

from .common import host, refused, write

FORMS = ("blocks", "branches")
KNOBS: dict[str, dict[str, Any]] = {
    "default": {},
    "spin 1 ms": {"spin_us": 1000},          # pool threads spin through a whole call instead of sleeping
    "spin 10 ms": {"spin_us": 10000},
    "workers pinned": {"pinned": True},      # session.intra_op_thread_affinities, one processor each
    "parallel executor, 2 inter-op": {"parallel": 2},
}


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_gemm(node: Any, weights: dict[str, Any]) -> bool:
    """A Gemm x @ W.T + b against a stored weight, as torch.onnx exports a Linear layer."""
    a = _attrs(node)
    return (node.op_type == "Gemm" and len(node.input) == 3 and node.input[1] in weights
            and node.input[2] in weights and a.get("transB") == 1 and not a.get("transA")
            and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0)


def feed_forward_split(model: Any, k: int, form: str, min_weights: int = 1 << 16) -> Any:
    """`model` with every Gemm -> Relu -> Gemm block whose hidden width k divides and whose first matrix holds
    at least `min_weights` weights (below MLAS's 65,536 per thread a product runs on one thread anyway)
    rewritten in `form` ("blocks" or "branches"; see the module's docstring). The rest is left as it is."""
    from onnx import helper
    from onnx import numpy_helper as nh

    if form not in FORMS:
        raise ValueError(f"form {form!r}: one of {', '.join(FORMS)}")
    model = copy.deepcopy(model)
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    replaced: dict[str, list[Any]] = {}  # second Gemm's name -> the nodes that take the block's place
    dropped: set[int] = set()  # id() of the first Gemm and the Relu of each rewritten block
    for second in graph.node:
        if not _plain_gemm(second, weights):
            continue
        relu = producer.get(second.input[0])
        if relu is None or relu.op_type != "Relu" or readers[relu.output[0]] != 1:
            continue
        first = producer.get(relu.input[0])
        if first is None or not _plain_gemm(first, weights) or readers[first.output[0]] != 1:
            continue
        w1, b1 = nh.to_array(weights[first.input[1]]), nh.to_array(weights[first.input[2]])
        w2, b2 = nh.to_array(weights[second.input[1]]), nh.to_array(weights[second.input[2]])
        hidden, width = w1.shape
        if hidden % k or w2.shape[1] != hidden or w1.size < min_weights:
            continue
        c, p, x = hidden // k, second.name or second.output[0], first.input[0]
        if form == "blocks":
            made = [nh.from_array(np.ascontiguousarray(w1.T.reshape(width, k, c).transpose(1, 0, 2)), f"{p}/B1"),
                    nh.from_array(b1.reshape(k, 1, c), f"{p}/b1"),
                    nh.from_array(np.ascontiguousarray(w2.T.reshape(k, c, w2.shape[0])), f"{p}/B2"),
                    nh.from_array(b2, f"{p}/b2"), nh.from_array(np.array([0], np.int64), f"{p}/axis")]
            nodes = [helper.make_node("MatMul", [x, f"{p}/B1"], [f"{p}/h"], name=f"{p}/MatMul1"),
                     helper.make_node("Add", [f"{p}/h", f"{p}/b1"], [f"{p}/hb"], name=f"{p}/Add1"),
                     helper.make_node("Relu", [f"{p}/hb"], [f"{p}/r"], name=f"{p}/Relu"),
                     helper.make_node("MatMul", [f"{p}/r", f"{p}/B2"], [f"{p}/parts"], name=f"{p}/MatMul2"),
                     helper.make_node("ReduceSum", [f"{p}/parts", f"{p}/axis"], [f"{p}/sum"], keepdims=0,
                                      name=f"{p}/ReduceSum"),
                     helper.make_node("Add", [f"{p}/sum", f"{p}/b2"], [second.output[0]], name=f"{p}/Add2")]
        else:
            made, nodes, parts = [nh.from_array(b2, f"{p}/b2")], [], []
            for j in range(k):
                s, q = slice(j * c, (j + 1) * c), f"{p}/{j}"
                made += [nh.from_array(np.ascontiguousarray(w1[s]), f"{q}/W1"), nh.from_array(b1[s], f"{q}/b1"),
                         nh.from_array(np.ascontiguousarray(w2[:, s]), f"{q}/W2")]
                nodes += [helper.make_node("Gemm", [x, f"{q}/W1", f"{q}/b1"], [f"{q}/h"], transB=1, name=f"{q}/Gemm1"),
                          helper.make_node("Relu", [f"{q}/h"], [f"{q}/r"], name=f"{q}/Relu"),
                          helper.make_node("Gemm", [f"{q}/r", f"{q}/W2"], [f"{q}/out"], transB=1, name=f"{q}/Gemm2")]
                parts.append(f"{q}/out")
            nodes.append(helper.make_node("Sum", [*parts, f"{p}/b2"], [second.output[0]], name=f"{p}/Sum"))
        graph.initializer.extend(made)
        replaced[second.name or second.output[0]] = nodes
        dropped |= {id(first), id(relu)}
    order = []
    for node in graph.node:
        if id(node) not in dropped:
            order.extend(replaced.get(node.name or node.output[0], [node]))
    used = {name for node in order for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(order)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _figure(times: np.ndarray) -> dict[str, float]:
    return {"p50_us": float(np.percentile(times, 50) * 1e6), "p99_us": float(np.percentile(times, 99) * 1e6)}


def sweep(folder: Path, thread_counts: list[int], quick: bool, progress: Any) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    import runtime

    calls = 30 if quick else 2000
    shipped = onnx.load(folder / "ensemble.onnx")
    row = {"features": service_rows(runtime.load(folder), 1)}  # one the build takes: predict_proba is timed too
    graphs = {"shipped": shipped.SerializeToString(),
              **{f"{form} {k}": feed_forward_split(shipped, k, form).SerializeToString()
                 for form, k in (("blocks", 8), ("blocks", 16), ("branches", 4))}}
    out: dict[str, Any] = {}
    for threads in thread_counts:
        entry: dict[str, Any] = {}
        for graph, blob in graphs.items():
            for knob, kwargs in KNOBS.items():
                if (graph != "shipped" and knob not in ("default", "parallel executor, 2 inter-op")) or \
                        (threads == 1 and knob != "default"):
                    continue
                progress(f"{threads} thread(s): {graph}, {knob}")
                session = ort.InferenceSession(blob, session_options(threads, **kwargs),
                                               providers=["CPUExecutionProvider"])
                entry[f"{graph}, {knob}"] = _figure(timings(partial(session.run, None, row), calls))
        ensemble = runtime.load(folder, session_options(threads))
        entry["runtime.predict_proba, default"] = _figure(
            timings(partial(ensemble.predict_proba, row["features"]), calls))
        out[str(threads)] = entry
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    members: dict[str, Any] = {}
    for name, member in manifest["members"].items():
        for threads in sorted({1, max(thread_counts)}):
            session = ort.InferenceSession(str(folder / member["onnx"]["file"]), session_options(threads))
            feed = member_feed(session, row["features"])
            members[f"{name} alone, {threads} thread(s)"] = _figure(timings(partial(session.run, None, feed), calls))
    return {"threads": out, "members": members}


def table(results: dict[str, Any]) -> list[str]:
    h = results["host"]
    lines = [f"Host: {h['model']}, {h['cores']} cores; {', '.join(h['instruction_sets'])}; onnxruntime "
             f"{h['onnxruntime']}" + (" (quick run: not for quoting)." if results["quick"] else "."), "",
             "| threads | graph, configuration | one row p50 | p99 |", "|---:|---|---:|---:|"]
    for threads, entry in results["threads"].items():
        lines += [f"| {threads} | {name} | {f['p50_us']:.0f} µs | {f['p99_us']:.0f} µs |" for name, f in entry.items()]
    lines += ["", "| member | one row p50 | p99 |", "|---|---:|---:|",
              *[f"| {name} | {f['p50_us']:.1f} µs | {f['p99_us']:.1f} µs |" for name, f in results["members"].items()]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manycore", description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path, help="a float32 artifacts folder")
    parser.add_argument("--threads", default="1,2,4,8,16", help="comma-separated thread counts")
    parser.add_argument("--out", type=Path, default=Path("build/bench-manycore"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls, figures not for quoting")
    args = parser.parse_args(argv)
    counts = thread_counts(args.threads, parser)
    if refused(args.artifacts, args.out):
        return 1
    started = time.perf_counter()
    results = {"host": host(), "quick": args.quick,
               **sweep(args.artifacts, counts, args.quick, lambda line: print(line, file=sys.stderr, flush=True))}
    results["seconds"] = time.perf_counter() - started
    write(args.out, "manycore", results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
