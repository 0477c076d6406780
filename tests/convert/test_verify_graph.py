"""`verify`'s deep check (convert/verify_graph.py): the graph computes with the combiner and decision policy
manifest.json reports. One row per refusal the check makes; each forgery is consistent (edited, bound into
the graph again and re-hashed, as someone with write access would), so `runtime.load`'s binding passes it
and only the check can refuse it. docs/artifacts.md lists what the load binds and what verify reads."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from domain_rows import typical_rows
from forge import Edit, rebound

import runtime
from runtime import contract
from runtime.artifacts import REBUILD, read_folder

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def verify_refusal(folder: Path, models: Path) -> str:
    """What `ensemble-onnx verify FOLDER --models MODELS` says on its last line, having exited 1."""
    from convert.cli import main

    result = CliRunner().invoke(main, ["verify", str(folder), "--models", str(models), "-q"])
    assert result.exit_code == 1, result.output
    return result.stderr.strip().splitlines()[-1]


def _node(model: Any, output: str) -> Any:
    return next(n for n in model.graph.node if output in n.output)


def _initializer(model: Any, name: str) -> Any:
    return next(t for t in model.graph.initializer if t.name == name)


def _drop(model: Any, outputs: tuple[str, ...] = (), initializers: tuple[str, ...] = ()) -> None:
    """Remove the nodes computing `outputs` and the stored tensors named `initializers`."""
    graph = model.graph
    kept = [n for n in graph.node if not set(outputs) & set(n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    tensors = [t for t in graph.initializer if t.name not in initializers]
    del graph.initializer[:]
    graph.initializer.extend(tensors)


def _set_weights(block: np.ndarray, member: int = 0) -> Callable[[Any], None]:
    """`edit_graph`: member `member`'s 3x3 block of the [12, 3] `weights` replaced by `block`."""
    def edit(model: Any) -> None:
        w = numpy_helper.to_array(_initializer(model, "weights")).copy()
        w[3 * member:3 * member + 3] = block
        _initializer(model, "weights").CopyFrom(numpy_helper.from_array(w.astype(np.float32), "weights"))
    return edit


def _replace_tensor(name: str, value: np.ndarray) -> Callable[[Any], None]:
    return lambda model: _initializer(model, name).CopyFrom(numpy_helper.from_array(value, name))


def _by_constant_node(name: str) -> Callable[[Any], None]:
    """`edit_graph`: the stored tensor `name` computed by a Constant node of the same value instead."""
    def edit(model: Any) -> None:
        value = numpy_helper.to_array(_initializer(model, name))
        _drop(model, initializers=(name,))
        model.graph.node.insert(0, helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value)))
    return edit


def _add_temperature(model: Any, member: str, t: float, axis: int = 1, stored: str = "raw_data") -> None:
    """`edit_graph`: the graph divides `member`'s log-probabilities by t, with the nodes and names convert/graph.py
    writes (Log, Div by `NAME/temperature`, Softmax over `axis`) feeding member_flat, t stored as `stored`."""
    nodes = model.graph.node
    at = next(i for i, n in enumerate(nodes) if n.output[0] == "member_flat")
    concat = nodes[at]
    concat.input[list(concat.input).index(f"{member}/probabilities")] = f"{member}/calibrated"
    for k, node in enumerate([
            helper.make_node("Log", [f"{member}/probabilities"], [f"{member}/log_p"]),
            helper.make_node("Div", [f"{member}/log_p", f"{member}/temperature"], [f"{member}/cooled"]),
            helper.make_node("Softmax", [f"{member}/cooled"], [f"{member}/calibrated"], axis=axis)]):
        nodes.insert(at + k, node)
    model.graph.initializer.append(
        numpy_helper.from_array(np.array(t, dtype=np.float32), f"{member}/temperature") if stored == "raw_data"
        else helper.make_tensor(f"{member}/temperature", TensorProto.FLOAT, [], [t]))  # float_data


def _with_policy(threshold: float, axis1: int = 1) -> Callable[[Any], None]:
    """`edit_graph`: label and confidence by the minimum-confidence policy, HOLD (the fallback) under `threshold`
    becoming the most probable other class, from the node list convert builds from (contract.decision_nodes)."""
    def edit(model: Any) -> None:
        _drop(model, outputs=("label", "confidence"))
        for op, inputs, output, attributes in contract.decision_nodes(True):
            model.graph.node.append(helper.make_node(op, list(inputs), [output], **{
                k: list(v) if isinstance(v, tuple) else v for k, v in attributes.items()}))
        for name, (dtype, value) in contract.policy_values(["SELL", "HOLD", "BUY"], {"HOLD": threshold},
                                                           "HOLD").items():
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        model.graph.initializer.append(numpy_helper.from_array(np.array([axis1], dtype=np.int64), "axis1"))
    return edit


def _min_confidence(minimum: dict[str, float], fallback: str = "HOLD") -> Edit:
    return lambda m: m["decision"].update(min_confidence=minimum, fallback=fallback)


# ------------------------------------------------------------------ graph edits, one per way a graph can lie

def _swap_member_outputs(model: Any) -> None:
    # Each member's final node now produces the other's output: the names in member_flat are unchanged.
    a, b = _node(model, "nhits/probabilities"), _node(model, "patchtst/probabilities")
    a.output[0], b.output[0] = "patchtst/probabilities", "nhits/probabilities"


def _member_reads_a_ghost(model: Any) -> None:
    _node(model, "xgboost/probabilities").input[0] = "xgboost/ghost"


def _member_by_a_subgraph(model: Any) -> None:
    # xgboost/probabilities = If(xgboost/cond) whose branches return its margins' Softmax: read unnamed.
    def branch(name: str) -> Any:
        return helper.make_graph([helper.make_node("Softmax", ["xgboost/margins"], [f"{name}/p"], axis=1)], name,
                                 [], [helper.make_tensor_value_info(f"{name}/p", TensorProto.FLOAT, None)])
    _drop(model, outputs=("xgboost/probabilities",))
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "xgboost/cond"))
    model.graph.node.append(helper.make_node("If", ["xgboost/cond"], ["xgboost/probabilities"],
                                             then_branch=branch("then"), else_branch=branch("else")))


def _member_input_cast(model: Any) -> None:
    node = _node(model, "xgboost/input")
    node.op_type = "Cast"
    node.attribute.append(helper.make_attribute("to", TensorProto.FLOAT))


def _second_scaler(model: Any) -> None:
    # scaler1: a copy of scaler0's nodes and constants under another prefix, feeding xgboost. Same values, so
    # only the wiring differs; with two scalers of other constants the predictions differ (attack report 2, N2a).
    graph = model.graph
    for node in [n for n in graph.node if n.output[0].startswith("scaler0/")]:
        twin = copy.deepcopy(node)
        twin.input[:] = [i.replace("scaler0/", "scaler1/") for i in twin.input]
        twin.output[:] = [o.replace("scaler0/", "scaler1/") for o in twin.output]
        graph.node.insert(0, twin)
    for init in [i for i in graph.initializer if i.name.startswith("scaler0/")]:
        twin = copy.deepcopy(init)
        twin.name = init.name.replace("scaler0/", "scaler1/")
        graph.initializer.append(twin)
    _node(model, "xgboost/input").input[0] = "scaler1/float32"


def _scaled_twice(model: Any) -> None:
    # scaler0/float32 = Cast(scaler0/div * 100): computed under scaler0/, but not as convert/graph.py scales.
    _node(model, "scaler0/float32").input[0] = "scaler0/evil"
    model.graph.initializer.append(numpy_helper.from_array(np.array(100.0), "scaler0/k"))
    model.graph.node.insert(0, helper.make_node("Mul", ["scaler0/div", "scaler0/k"], ["scaler0/evil"]))


def _scaled_from_outside(model: Any) -> None:
    # scaler0/sub = Sub(evil/x, scaler0/mean), evil/x = Identity(features): the scaler reads a tensor outside it.
    _node(model, "scaler0/sub").input[0] = "evil/x"
    model.graph.node.insert(0, helper.make_node("Identity", ["features"], ["evil/x"]))


def _scaler_left_out(model: Any) -> None:
    # scaler0/float32 = Cast(features), Sub, Div and constants removed: the members read raw features.
    _drop(model, outputs=("scaler0/sub", "scaler0/div"), initializers=("scaler0/mean", "scaler0/scale"))
    _node(model, "scaler0/float32").input[0] = "features"
    if any(n.output[0] == "scaler0/float64" for n in model.graph.node):  # the members that read float64 (LightGBM)
        _node(model, "scaler0/float64").input[0] = "features"


def _local_concat(model: Any) -> None:
    # member_flat = evil.Concat(a, b, c, d), a function of the model's own computing Concat(d, c, b, a).
    _node(model, "member_flat").domain = "evil"
    body = [helper.make_node("Concat", ["d", "c", "b", "a"], ["y"], axis=1)]
    model.functions.append(helper.make_function("evil", "Concat", ["a", "b", "c", "d"], ["y"], body,
                                                [helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("evil", 1))


def _default_domain_twice(model: Any) -> None:
    model.opset_import[0].version = 11
    model.opset_import.append(helper.make_opsetid("ai.onnx", 17))  # a reader keeping the last saw 17


def _ml_domain_twice(model: Any) -> None:
    model.opset_import[1].version = 1
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))


def _xgboost_only_weights() -> np.ndarray:
    w = np.zeros((12, 3), np.float32)
    w[0:3, 0:3] = np.eye(3)
    return w


def _forged_weights_first(model: Any) -> None:
    # onnxruntime computes with this first copy; a reader keeping the last one saw the honest weights.
    model.graph.initializer.insert(0, numpy_helper.from_array(_xgboost_only_weights(), "weights"))


def _weights_by_a_constant_node_too(model: Any) -> None:
    model.graph.node.insert(0, helper.make_node("Constant", [], ["weights"],
                                                value=numpy_helper.from_array(_xgboost_only_weights())))


def _three_members_concat(model: Any) -> None:
    del _node(model, "member_flat").input[3]


def _concat_axis_0(model: Any) -> None:
    _node(model, "member_flat").attribute[0].i = 0


def _members_reordered(model: Any) -> None:
    concat = _node(model, "member_flat")
    concat.input[0], concat.input[1] = concat.input[1], concat.input[0]


def _stacker_reading_a_member(model: Any) -> None:
    # probabilities = Identity(stacker/probabilities), the "stacker" being xgboost's column under its name.
    _drop(model, outputs=("probabilities",))
    model.graph.node.extend([helper.make_node("Identity", ["xgboost/probabilities"], ["stacker/probabilities"]),
                             helper.make_node("Identity", ["stacker/probabilities"], ["probabilities"])])


def _probabilities_by_another_matmul(model: Any) -> None:
    _node(model, "probabilities").input[1] = "weights2"
    model.graph.initializer.append(numpy_helper.from_array(_xgboost_only_weights(), "weights2"))


def _matmul_of_another_domain(model: Any) -> None:
    _node(model, "probabilities").domain = "com.microsoft"


def _least_probable_label(model: Any) -> None:
    _node(model, "label").op_type = "ArgMin"


def _dead_nodes(model: Any) -> None:
    # 10,000 Identity nodes no output depends on: every load of the folder took 9 times as long.
    previous = "features"
    for i in range(10_000):
        model.graph.node.append(helper.make_node("Identity", [previous], [f"dead/{i:05}"]))
        previous = f"dead/{i:05}"


def _unused_tensor(model: Any) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1000, np.float32), "junk"))


def _no_edit(m: dict[str, Any]) -> None:
    pass


# xgboost's weight 0.25 on the diagonal, and a share of each class's probability moved to the next class
LEAKY = np.float32(0.25) * np.eye(3, dtype=np.float32) + np.float32(0.125) * np.roll(np.eye(3, dtype=np.float32), 1, 1)
M = "manifest.json: field"

# (manifest edit, graph edit, what verify says after the folder's path); each row one refusal of the check.
REFUSALS = [
    # the combine: weights and their blocks
    pytest.param(lambda m: m["members"]["xgboost"].update(weight=0.3), None,
                 f"{M} 'members.xgboost.weight' is 0.3, but the graph weighs member 'xgboost' by 0.25", id="weight"),
    pytest.param(_no_edit, _set_weights(LEAKY),
                 f"{M} 'members.xgboost.weight' is 0.25, but the graph weighs member 'xgboost' by the block "
                 "[[0.25, 0.125, 0.0], [0.0, 0.25, 0.125],... (60 characters)", id="block-not-weight-times-identity"),
    pytest.param(_no_edit, _replace_tensor("weights", np.zeros((12, 3))),  # float64
                 "ensemble.onnx: 'weights' is not the float32 tensor of shape [12, 3] that convert writes (stored in "
                 "raw_data)", id="weights-float64"),
    pytest.param(_no_edit, _by_constant_node("weights"), "ensemble.onnx: holds no 'weights'", id="weights-not-stored"),
    pytest.param(_no_edit, _probabilities_by_another_matmul,
                 "ensemble.onnx: its probabilities are not the MatMul of the members' by a [12, 3] float32 'weights', "
                 "the 'weighted' combine convert writes", id="another-matmul"),
    pytest.param(_no_edit, _matmul_of_another_domain,
                 "ensemble.onnx: 'probabilities' is computed by com.microsoft.MatMul(member_flat, weight... (42 "
                 "characters), not by MatMul(member_flat, weights) as convert writes it", id="matmul-domain"),
    pytest.param(lambda m: m.update(combine={"method": "stacking", "source": {"file": "s.pkl", "sha256": "ab" * 32}}),
                 None, "ensemble.onnx: its probabilities are not a stacker's, but field 'combine.method' of "
                       "manifest.json is 'stacking'", id="stacking-over-weighted"),
    pytest.param(lambda m: m.update(combine={"method": "stacking", "source": {"file": "s.pkl", "sha256": "ab" * 32}}),
                 _stacker_reading_a_member, "ensemble.onnx: 'stacker/probabilities' is computed from "
                                            "'xgboost/probabilities', outside 'stacker/' (its own graph)",
                 id="stacker-outside-its-graph"),
    # the members' probabilities: order, Concat, Reshape
    pytest.param(lambda m: m["ensemble"].update(members=["lightgbm", "xgboost", "nhits", "patchtst"]), None,
                 "ensemble.onnx: member_probabilities[0] is 'xgboost/probabilities', not member 'lightgbm' (field "
                 "'ensemble.members' of manifest.json)", id="member-order"),
    pytest.param(_no_edit, _three_members_concat,
                 "ensemble.onnx: member_probabilities is not the Concat of the 4 members' probabilities that convert "
                 "writes", id="concat-of-3"),
    pytest.param(_no_edit, _concat_axis_0,
                 "ensemble.onnx: 'member_flat' is computed by Concat(xgboost/probabilities, lightgbm/p... (105 "
                 "characters), not by Concat(xgboost/probabilities, "
                 "lightgbm/probabilities, nhits/probabilities, patchtst/probabilities) axis=1 as convert writes it",
                 id="concat-axis-0"),
    pytest.param(_no_edit, _replace_tensor("member_shape", np.array([-1, 3, 4], dtype=np.int64)),
                 "ensemble.onnx: 'member_shape' is not [-1, 4, 3]: member_probabilities would not be one row of "
                 "members by classes", id="member-shape"),
    # each member inside its own graph, fed by its own scaler
    pytest.param(_no_edit, _swap_member_outputs,
                 "ensemble.onnx: 'nhits/probabilities' is computed from 'patchtst//inner/fc/fc.3/Gemm_output_0', "
                 "outside 'nhits/' (its own graph)", id="swapped-members"),
    pytest.param(_no_edit, _member_reads_a_ghost,
                 "ensemble.onnx: 'xgboost/ghost' is neither computed nor stored in it", id="ghost-tensor"),
    pytest.param(_no_edit, _member_by_a_subgraph,
                 "ensemble.onnx: 'xgboost/probabilities' comes from a If holding a subgraph, which convert's members "
                 "do not write", id="subgraph"),
    pytest.param(_no_edit, _member_input_cast,
                 "ensemble.onnx: 'xgboost/input' is not an Identity of 'scaler0/float32' (its scaler's output, as "
                 "field 'members.xgboost.scaler' of manifest.json and the member order say)", id="input-not-identity"),
    pytest.param(lambda m: m["members"]["xgboost"].update(scaler=None), None,
                 "ensemble.onnx: 'xgboost/input' is not an Identity of the raw features in float32 ('raw/float32'), "
                 "as field 'members.xgboost.scaler' of manifest.json says (null)", id="scaler-null"),
    pytest.param(_no_edit, _second_scaler,
                 "ensemble.onnx: 'xgboost/input' is not an Identity of 'scaler0/float32' (its scaler's output, as "
                 "field 'members.xgboost.scaler' of manifest.json and the member order say)", id="another-scaler"),
    # the scaler computed from the features alone
    pytest.param(_no_edit, _scaler_left_out,
                 "ensemble.onnx: 'scaler0/float32' casts the features with neither a Sub nor a Div, but a scaler's "
                 "output always has one of them as convert writes it", id="scaler-left-out"),
    pytest.param(_no_edit, _by_constant_node("scaler0/mean"),
                 "ensemble.onnx: 'scaler0/mean' is not a stored tensor, as convert writes it", id="mean-not-stored"),
    pytest.param(_no_edit, _scaled_twice,
                 "ensemble.onnx: 'scaler0/float32' is computed by Cast(scaler0/evil) to=1, not by Cast(scaler0/div) "
                 "to=1 as convert writes it", id="scaled-twice"),
    pytest.param(_no_edit, _scaled_from_outside,
                 "ensemble.onnx: 'scaler0/sub' is computed by Sub(evil/x, scaler0/mean), not by Sub(features, "
                 "scaler0/mean) as convert writes it", id="scaled-from-outside"),
    # temperatures
    pytest.param(lambda m: m["decision"]["temperature"].update(nhits=2.0), None,
                 f"{M} 'decision.temperature.nhits' is 2.0, but the graph divides member 'nhits''s log-probabilities "
                 f"by 1.0", id="temperature-not-in-graph"),
    pytest.param(lambda m: m["decision"]["temperature"].update(nhits=2.0), lambda g: _add_temperature(g, "nhits", 2.5),
                 f"{M} 'decision.temperature.nhits' is 2.0, but the graph divides member 'nhits''s log-probabilities "
                 f"by 2.5", id="other-temperature"),
    pytest.param(_no_edit, lambda g: _add_temperature(g, "nhits", 2.5),
                 f"{M} 'decision.temperature.nhits' is 1.0, but the graph divides member 'nhits''s log-probabilities "
                 f"by 2.5", id="temperature-not-in-manifest"),
    pytest.param(lambda m: m["decision"]["temperature"].update(nhits=2.5),
                 lambda g: _add_temperature(g, "nhits", 2.5, axis=0),
                 "ensemble.onnx: 'nhits/calibrated' is computed by Softmax(nhits/cooled) axis=0, not by "
                 "Softmax(nhits/cooled) axis=1 as convert writes it", id="softmax-over-the-batch"),
    pytest.param(lambda m: m["decision"]["temperature"].update(nhits=2.5),
                 lambda g: _add_temperature(g, "nhits", 2.5, 1, "float_data"),
                 "ensemble.onnx: 'nhits/temperature' is not the float32 tensor of shape [] that convert writes (stored "
                 "in raw_data)", id="temperature-float-data"),
    # the decision policy
    pytest.param(_min_confidence({"HOLD": 0.99}), None,
                 f"{M} 'decision.min_confidence' is {{'HOLD': 0.99}}, but the graph's label applies no minimum "
                 f"confidence", id="policy-not-in-graph"),
    pytest.param(_no_edit, _with_policy(0.7),
                 f"{M} 'decision.min_confidence' is {{}}, but the graph's label applies a minimum confidence",
                 id="policy-not-in-manifest"),
    pytest.param(_min_confidence({"HOLD": 0.4}), _with_policy(0.7),
                 f"{M} 'decision.min_confidence' is {{'HOLD': 0.4}}, but the graph's 'policy/fallback_min' holds "
                 f"0.699999988079071", id="other-minimum"),
    pytest.param(_min_confidence({"HOLD": 0.7}, "SELL"), _with_policy(0.7),
                 f"{M} 'decision.fallback' is SELL, but the graph's 'policy/fallback' holds 1", id="other-fallback"),
    pytest.param(_min_confidence({"HOLD": 0.7}), _with_policy(0.7, axis1=0),
                 "ensemble.onnx: 'axis1' is not [1]", id="policy-over-another-axis"),
    pytest.param(_no_edit, _least_probable_label,
                 "ensemble.onnx: 'label' is computed by ArgMin(probabilities) axis=1 keepdims=0, not by "
                 "ArgMax(probabilities) axis=1 keepdims=0 as convert writes it", id="argmin-label"),
    # what the graph's names mean: functions, operator sets, names given twice
    pytest.param(_no_edit, _local_concat,
                 "ensemble.onnx: defines 1 function(s) of its own, which convert never writes (a node could call one "
                 "by an operator's name)", id="local-function"),
    pytest.param(_no_edit, _default_domain_twice,
                 "ensemble.onnx: imports the operator set 'ai.onnx' more than once (\"\" and \"ai.onnx\" are one)",
                 id="default-opset-twice"),
    pytest.param(_no_edit, _ml_domain_twice, "ensemble.onnx: imports the operator set 'ai.onnx.ml' more than once",
                 id="ml-opset-twice"),
    pytest.param(_no_edit, lambda g: g.opset_import.append(helper.make_opsetid("evil", 1)),
                 "ensemble.onnx: imports the operator set(s) {'evil': 1}, but field 'opsets' of manifest.json names "
                 "{'ai.onnx': 17, 'ai.onnx.ml': 3}", id="another-opset"),
    pytest.param(lambda m: m["opsets"].update({"com.microsoft": 1}), None,
                 "ensemble.onnx: imports none of ['com.microsoft'], but field 'opsets' of manifest.json names "
                 "{'ai.onnx': 17, 'ai.onnx.ml': 3, 'com.microsoft': 1}", id="opset-not-imported"),
    pytest.param(_no_edit, _forged_weights_first,
                 "ensemble.onnx: names ['weights'] more than once (initializers or node outputs): onnxruntime could "
                 "compute with another than the one this check reads", id="weights-twice"),
    # nothing else: what no output depends on
    pytest.param(_no_edit, _dead_nodes,
                 "ensemble.onnx: computes 10000 tensor(s) no output depends on (the first: 'dead/00000'), which "
                 "convert never writes",
                 id="dead-nodes"),
    pytest.param(_no_edit, _unused_tensor,
                 "ensemble.onnx: stores 1 tensor(s) no node reads (the first: 'junk'), which convert never writes",
                 id="unused-tensor"),
    pytest.param(_no_edit, _weights_by_a_constant_node_too,
                 "ensemble.onnx: names ['weights'] more than once (initializers or node outputs): onnxruntime could "
                 "compute with another than the one this check reads", id="weights-and-a-constant"),
]


@pytest.mark.parametrize(("edit", "edit_graph", "says"), REFUSALS)
def test_verify_refuses_a_graph_that_is_not_its_manifests(demo_artifacts, demo_models, tmp_path, edit, edit_graph,
                                                          says):
    folder = rebound(demo_artifacts, tmp_path / "forged", edit, edit_graph=edit_graph)
    read_folder(folder)  # the load's binding holds: only the deep check can tell
    assert verify_refusal(folder, demo_models) == f"Error: ArtifactError: {folder}/{says}; {REBUILD}."


def _with_opset_bytes(folder: Path, payload: bytes) -> None:
    """ensemble.onnx with one more opset_import (field 8) holding `payload`, re-hashed into manifest.json."""
    path = folder / "ensemble.onnx"
    data = path.read_bytes() + b"\x42" + bytes([len(payload)]) + payload
    path.write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["ensemble.onnx"] = __import__("hashlib").sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_verify_refuses_a_graph_it_cannot_read(artifacts_copy, demo_models):
    # An operator set import holding wire type 7: the load's readers (metadata, external data) never look there.
    _with_opset_bytes(artifacts_copy, b"\x0f")
    read_folder(artifacts_copy)
    assert verify_refusal(artifacts_copy, demo_models) == (
        f"Error: ArtifactError: {artifacts_copy}/ensemble.onnx: not a readable ONNX model (wire type 7 of field 1 at "
        f"byte {(artifacts_copy / 'ensemble.onnx').stat().st_size}); {REBUILD}.")


def test_a_policy_without_a_fallback_is_refused_even_built_in_code(demo_artifacts, tmp_path):
    # parse_manifest refuses a null fallback with a minimum: a Manifest made in code must not pass either.
    from convert.verify_graph import check_combiner

    folder = rebound(demo_artifacts, tmp_path / "policy", _min_confidence({"HOLD": 0.7}), edit_graph=_with_policy(0.7))
    typed = read_folder(folder).typed
    graph = (folder / "ensemble.onnx").read_bytes()
    check_combiner(typed, graph, folder / "ensemble.onnx", folder / "manifest.json")  # as built: passes
    assert typed.decision is not None
    without = replace(typed, decision=replace(typed.decision, fallback=None))
    with pytest.raises(runtime.ArtifactError) as err:
        check_combiner(without, graph, folder / "ensemble.onnx", folder / "manifest.json")
    assert str(err.value) == (f"{folder}/manifest.json: field 'decision.fallback' is null, but a minimum confidence "
                              f"needs one; {REBUILD}.")


# (manifest edit, graph edit): graphs written as convert writes them, which the check passes
PASSES = [
    pytest.param(_no_edit, None, id="demo"),
    pytest.param(lambda m: m["decision"]["temperature"].update(nhits=2.5), lambda g: _add_temperature(g, "nhits", 2.5),
                 id="temperature"),
    pytest.param(_min_confidence({"HOLD": 0.7}), _with_policy(0.7), id="policy"),
    pytest.param(lambda m: m["members"]["xgboost"].update(weight=0.5), _set_weights(np.eye(3) * 0.5), id="weight"),
]


@pytest.mark.parametrize(("edit", "edit_graph"), PASSES)
def test_the_check_passes_the_graphs_convert_writes(demo_artifacts, tmp_path, edit, edit_graph):
    from convert.verify_graph import check_combiner

    folder = rebound(demo_artifacts, tmp_path / "built", edit, edit_graph=edit_graph)
    typed = read_folder(folder).typed
    check_combiner(typed, (folder / "ensemble.onnx").read_bytes(), folder / "ensemble.onnx", folder / "manifest.json")


def test_a_forgery_loads_unpinned_but_verify_and_a_pin_refuse_it(demo_artifacts, demo_models, tmp_path):
    """What the load binds and what it does not: the graph's weights edited, the manifest re-bound and the
    folder re-hashed by someone who can write it. The load serves it (and describe() reports the manifest's
    weight, not the graph's); the build id changed, so a pinned load refuses it, and verify names the lie."""
    pinned = runtime.load(demo_artifacts).build_id
    folder = rebound(demo_artifacts, tmp_path / "forged", _no_edit, edit_graph=_set_weights(np.eye(3) * 0.9))
    ens = runtime.load(folder)
    assert ens.describe()["members"]["xgboost"]["weight"] == 0.25 and ens.build_id != pinned
    with pytest.raises(runtime.ArtifactError, match="not the expected build"):
        runtime.load(folder, expect_build_id=pinned)
    assert verify_refusal(folder, demo_models) == (
        f"Error: ArtifactError: {folder}/manifest.json: field 'members.xgboost.weight' is 0.25, but the graph "
        f"weighs member 'xgboost' by 0.8999999761581421; {REBUILD}.")


def test_the_policy_the_check_passes_is_the_one_served(demo_artifacts, tmp_path):
    folder = rebound(demo_artifacts, tmp_path / "policy", _min_confidence({"HOLD": 0.7}), edit_graph=_with_policy(0.7))
    ens = runtime.load(folder)
    rows = typical_rows(ens, 200, seed=0)
    p = ens.predict_proba(rows)
    unsure = (p.argmax(axis=1) == 1) & (p[:, 1] < 0.7)  # HOLD on top, under its minimum: the next class instead
    assert 0 < unsure.sum() < len(rows)
    want = np.where(unsure, np.where(p[:, 0] > p[:, 2], 0, 2), p.argmax(axis=1))
    assert [r.action for r in ens.predict(rows)] == [ens.classes[i] for i in want]


def test_convert_runs_the_check_before_it_writes_anything(demo_models, tmp_path, monkeypatch):
    # A fusing step that left a node no output needs: the parity gate cannot see it, the check refuses it, and
    # the output folder is never written.
    import convert.build
    from convert.build import build

    fuse = convert.build.build_ensemble_graph

    def fuse_and_leave_a_node(*args: Any, **kwargs: Any) -> Any:
        model = fuse(*args, **kwargs)
        model.graph.node.append(helper.make_node("Identity", ["features"], ["left/over"]))
        return model

    monkeypatch.setattr(convert.build, "build_ensemble_graph", fuse_and_leave_a_node)
    out = tmp_path / "out"
    with pytest.raises(runtime.ArtifactError) as err:
        build(demo_models, out)
    assert str(err.value) == (f"{out}/ensemble.onnx: computes 1 tensor(s) no output depends on (the first: "
                              f"'left/over'), which convert never writes; {REBUILD}.")
    assert not out.exists()
