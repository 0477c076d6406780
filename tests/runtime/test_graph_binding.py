"""The graph bound to its manifest at load (`runtime/artifacts.py`, `runtime/combiner.py`): a graph whose inputs,
outputs, widths, build contract, combiner (weights, order, temperatures, stacking), decision policy, scalers or
operator sets differ from what its manifest says is refused naming both values, never served short.

Builds that differ from the demo build are made the way a careful forger would make them: the edited manifest
(or graph) is bound into ensemble.onnx's metadata again and re-hashed, so the folder is consistent; what the
runtime does with it is the promise under test."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forge import REBUILD, Edit, rebound, write_manifest

import runtime
import runtime.features
import runtime.limits
import runtime.records
from runtime import contract


def _four_classes(m: dict[str, Any]) -> None:
    m["classes"] = ["SELL", "HOLD", "BUY", "WAIT"]


def _three_members(m: dict[str, Any]) -> None:
    del m["members"]["patchtst"]
    m["ensemble"]["members"].remove("patchtst")
    m["decision"]["temperature"].pop("patchtst", None)
    m["domain"]["nan_refused_by"].remove("patchtst")  # the domain names only members that exist


@pytest.mark.parametrize("edit", [_four_classes, _three_members])
def test_a_graph_whose_widths_differ_from_the_manifest_is_refused_at_load(demo_artifacts, tmp_path, edit):
    # Found: a (consistently rebound) manifest of 4 classes over the demo's 3-class graph loaded, predict_proba
    # served 3 columns under 4 names, and predict failed on a zip: a bad artifact must fail at load.
    folder = rebound(demo_artifacts, tmp_path / "edited", edit)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == f"{folder / 'ensemble.onnx'}: inputs/outputs do not match manifest.json."


def _as_stacking(folder: Path) -> dict[str, Any]:
    """The folder's manifest.json saying "stacking", as `_crafted_graph` computes; the manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["combine"] = {"method": "stacking", "source": {"file": "stacker.pkl", "sha256": "ab" * 32}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _crafted_graph(n_features: int, probability_columns: int, member_columns: int, labels: int | None,
                   declared_classes: int = 3, members: tuple[str, ...] = ("xgboost", "lightgbm", "nhits", "patchtst")
                   ) -> bytes:
    """The ensemble's inputs and outputs declared as the builder declares them (3 classes, 4 members), computing
    what a hand-made graph may: `probability_columns` and `member_columns` wide, and `labels` labels whatever the
    rows (None: one a row). Every value is a feature, the label class 0. From the members' outputs on, the graph
    is shaped as convert writes a stacking combine (`_as_stacking`), which the load check compares it with; the
    widths are computed inside each member's and the stacker's own graph, where the check does not look."""
    onnx = pytest.importorskip("onnx")
    h, tp = onnx.helper, onnx.TensorProto
    ints: dict[str, int] = {}

    def sliced(prefix: str, source: str, reduce: str, width: int) -> list[Any]:
        # prefix/probabilities: the first int(reduce(source)) + width columns of source (0 + width in the tests)
        ints.update({f"{prefix}/zero": 0, f"{prefix}/one": 1, f"{prefix}/width": width})
        return [h.make_node("Identity", [source], [f"{prefix}/input"]),
                h.make_node(reduce, [f"{prefix}/input"], [f"{prefix}/r"], keepdims=0),
                h.make_node("Cast", [f"{prefix}/r"], [f"{prefix}/offset"], to=tp.INT64),
                h.make_node("Add", [f"{prefix}/offset", f"{prefix}/width"], [f"{prefix}/end"]),
                h.make_node("Slice", [f"{prefix}/input", f"{prefix}/zero", f"{prefix}/end", f"{prefix}/one"],
                            [f"{prefix}/probabilities"])]

    # The widths depend on the data (int(min or max of the features) + width), so shape inference cannot see them and
    # onnxruntime reports the declared shapes: the load check of the widths cannot tell.
    # The demo's members: a scaler (its mean 0, so the members read the features themselves).
    nodes = [h.make_node("Sub", ["features", "scaler0/mean"], ["scaler0/sub"]),
             h.make_node("Cast", ["scaler0/sub"], ["scaler0/float32"], to=tp.FLOAT),
             *[node for name in members for node in sliced(name, "scaler0/float32", "ReduceMax", member_columns)],
             h.make_node("Concat", [f"{name}/probabilities" for name in members], ["member_flat"], axis=1),
             h.make_node("Reshape", ["member_flat", "member_shape"], ["member_probabilities"]),
             *sliced("stacker", "member_flat", "ReduceMin", probability_columns),
             h.make_node("Identity", ["stacker/probabilities"], ["probabilities"]),
             h.make_node("ReduceMax", ["probabilities"], ["confidence"], axes=[1], keepdims=0)]
    if labels is None:
        nodes.append(h.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    else:
        nodes.append(h.make_node("Constant", [], ["label"], value=h.make_tensor("l", tp.INT64, [labels], [0] * labels)))
    inits = [h.make_tensor(name, tp.INT64, [1], [v]) for name, v in ints.items()]
    inits.append(h.make_tensor("member_shape", tp.INT64, [3], [-1, len(members), 3]))
    inits.append(h.make_tensor("scaler0/mean", tp.DOUBLE, [n_features], [0.0] * n_features))
    for tensor in inits:  # stored in raw_data, as convert's numpy_helper stores them
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
    graph = h.make_graph(nodes, "crafted", [h.make_tensor_value_info("features", tp.DOUBLE, ["N", n_features])],
                         [h.make_tensor_value_info("probabilities", tp.FLOAT, ["N", declared_classes]),
                          h.make_tensor_value_info("label", tp.INT64, ["N"]),
                          h.make_tensor_value_info("confidence", tp.FLOAT, ["N"]),
                          h.make_tensor_value_info("member_probabilities", tp.FLOAT, ["N", 4, 3])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("ai.onnx.ml", 3)],
                        ir_version=8).SerializeToString()


@pytest.mark.parametrize(("probability_columns", "member_columns", "labels"), [
    (3, 3, None),  # what it declares: served
    (4, 3, None), (2, 3, None), (3, 4, None), (3, 2, None), (3, 3, 1)])
def test_a_graph_computing_other_shapes_than_it_declares_is_never_served_short(
        artifacts_copy, probability_columns, member_columns, labels):
    # onnxruntime only warns when an output's shape differs from the declared one, and the load check sees only
    # the declared one: Prediction pairs classes, members and rows strictly, so a column or a row too many or
    # too few fails instead of being dropped. A label that is not the probabilities' is refused at load.
    manifest = _as_stacking(artifacts_copy)
    graph = _crafted_graph(len(manifest["feature_names"]), probability_columns, member_columns, labels)
    (artifacts_copy / "ensemble.onnx").write_bytes(graph)
    bound = contract.bound_part(manifest)  # bound to the manifest as it is: a consistent forgery
    _with_graph_props(artifacts_copy, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                       contract.META_DIGEST: contract.manifest_digest(bound)})
    if labels is not None:
        assert _load_refusal(artifacts_copy) == (f"{artifacts_copy}/ensemble.onnx: 'label' is computed by Constant() "
                                                 "value=..., not by ArgMax(probabilities) axis=1 keepdims=0 as convert "
                                                 f"writes it; {REBUILD}.")
        return
    ens = runtime.load(artifacts_copy)
    x = np.full((3, len(ens.feature_names)), 0.25)
    if (probability_columns, member_columns) == (3, 3):
        assert [p.action for p in ens.predict(x)] == ["SELL"] * 3
        assert ens.predict(x)[0].members["nhits"] == {"SELL": 0.25, "HOLD": 0.25, "BUY": 0.25}
    else:
        with pytest.raises(ValueError, match="zip"):
            ens.predict(x)




# ----------------------------------------------------------------------------- artifacts: the graph's contract

def _with_graph_props(folder: Path, props: dict[str, str]) -> Path:
    """ensemble.onnx with exactly these metadata props, re-hashed into manifest.json; the graph's path."""
    onnx = pytest.importorskip("onnx")
    graph_path = folder / "ensemble.onnx"
    model = onnx.load_from_string(graph_path.read_bytes())
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    graph = model.SerializeToString()
    graph_path.write_bytes(graph)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(graph).hexdigest()
    write_manifest(folder, manifest)
    return graph_path


def _bound(folder: Path) -> dict[str, Any]:
    return contract.bound_part(json.loads((folder / "manifest.json").read_text()))


# what the graph's metadata says -> how the refusal continues after the graph's path
CONTRACTS: list[Any] = [
    pytest.param(lambda b: {contract.META_DIGEST: contract.manifest_digest(b)},
                 f": carries no build contract ({contract.META_DIGEST}); it was built by an older ensemble-onnx or "
                 f"by hand. {REBUILD}.", id="digest only"),
    pytest.param(lambda b: {contract.META_MANIFEST: contract.canonical(b).decode()},
                 f": carries no build contract ({contract.META_DIGEST}); it was built by an older ensemble-onnx or "
                 f"by hand. {REBUILD}.", id="manifest only"),
    pytest.param(lambda b: {contract.META_MANIFEST: "{not json", contract.META_DIGEST: contract.manifest_digest(b)},
                 f": its build contract is not JSON (Expecting property name enclosed in double quotes: line 1 column "
                 f"2 (char 1)); {REBUILD}.", id="not json"),
    pytest.param(lambda b: {contract.META_MANIFEST: '{"a": NaN}', contract.META_DIGEST: contract.manifest_digest(b)},
                 f": its build contract is not JSON (Out of range float values are not JSON compliant); {REBUILD}.",
                 id="nan"),
    pytest.param(lambda b: {contract.META_MANIFEST: "[]", contract.META_DIGEST: contract.manifest_digest(b)},
                 f": its build contract does not match its own digest; {REBUILD}.", id="a list"),
    pytest.param(lambda b: {contract.META_MANIFEST: contract.canonical(b).decode(),
                            contract.META_DIGEST: contract.manifest_digest({**b, "schema_version": 7})},
                 f": its build contract does not match its own digest; {REBUILD}.", id="another digest"),
]


@pytest.mark.parametrize(("props", "says"), CONTRACTS)
def test_a_graph_whose_build_contract_is_absent_or_unreadable_is_refused(artifacts_copy, props, says):
    graph_path = _with_graph_props(artifacts_copy, props(_bound(artifacts_copy)))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{graph_path}{says}"


def test_a_manifest_that_differs_from_the_graphs_only_in_encoding_is_named_so(demo_artifacts, tmp_path):
    folder = rebound(demo_artifacts, tmp_path / "zero", lambda m: m["parity"].update(zero=0.0))
    path = folder / "manifest.json"
    path.write_text(path.read_text().replace('"zero": 0.0', '"zero": -0.0'))  # equal as numbers, not as bytes
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{path}: field '(encoding)' differs from the build ensemble.onnx was made for (edited "
                              f"after the build, or swapped with another build's); {REBUILD}.")


def test_external_data_is_refused_naming_the_first_five_tensors():
    onnx = pytest.importorskip("onnx")
    from runtime.artifacts import _refuse_external_data

    tensors = []
    for i in range(6):
        tensor = onnx.helper.make_tensor(f"w{i}", onnx.TensorProto.FLOAT, [1], b"\0\0\0\0", raw=True)
        onnx.external_data_helper.set_external_data(tensor, location=f"w{i}.bin")
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensors.append(tensor)
    graph = onnx.helper.make_graph([], "g", [], [], initializer=tensors)
    with pytest.raises(runtime.ArtifactError) as err:
        _refuse_external_data(onnx.helper.make_model(graph).SerializeToString(), Path("g.onnx"))
    assert str(err.value) == ("g.onnx: tensor(s) ['w0', 'w1', 'w2', 'w3', 'w4'] keep their data in external files, "
                              f"outside the verified bytes; the runtime serves only self-contained graphs. {REBUILD}.")


def test_a_graph_onnxruntime_cannot_load_is_named_with_its_reason(artifacts_copy):
    onnx = pytest.importorskip("onnx")
    h, tp = onnx.helper, onnx.TensorProto
    graph = h.make_graph([h.make_node("NoSuchOperator", ["features"], ["probabilities"])], "unknown",
                         [h.make_tensor_value_info("features", tp.DOUBLE, ["N", 18])],
                         [h.make_tensor_value_info("probabilities", tp.FLOAT, ["N", 3])])
    (artifacts_copy / "ensemble.onnx").write_bytes(
        h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8).SerializeToString())
    bound = _bound(artifacts_copy)
    graph_path = _with_graph_props(artifacts_copy, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                                    contract.META_DIGEST: contract.manifest_digest(bound)})
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert re.fullmatch(re.escape(f"{graph_path}: onnxruntime cannot load it (") + ".*NoSuchOperator.*" + r"\)\.",
                        str(err.value), re.DOTALL), str(err.value)


def _bind_crafted(folder: Path, **shape: Any) -> None:
    manifest = _as_stacking(folder)
    (folder / "ensemble.onnx").write_bytes(_crafted_graph(len(manifest["feature_names"]), 3, 3, None, **shape))
    bound = contract.bound_part(manifest)
    _with_graph_props(folder, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                               contract.META_DIGEST: contract.manifest_digest(bound)})


def _input_named_x(m: dict[str, Any]) -> None:
    m["ensemble"]["input"] = "x"


def _one_feature_more(m: dict[str, Any]) -> None:
    m["feature_names"].append("extra_feature")
    for field, value in (("lo", -1.0), ("hi", 1.0), ("nan", False)):  # a domain entry per feature
        m["domain"][field].append(value)


def _one_output_more(m: dict[str, Any]) -> None:
    m["ensemble"]["outputs"].append("extra")


@pytest.mark.parametrize("edit", [_input_named_x, _one_feature_more, _one_output_more])
def test_a_graph_whose_input_or_outputs_differ_from_a_consistent_manifest_is_refused(demo_artifacts, tmp_path, edit):
    folder = rebound(demo_artifacts, tmp_path / "edited", edit)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == f"{folder / 'ensemble.onnx'}: inputs/outputs do not match manifest.json."


def test_a_graph_declaring_other_class_columns_than_its_members_is_refused(artifacts_copy):
    _bind_crafted(artifacts_copy, declared_classes=4)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{artifacts_copy / 'ensemble.onnx'}: inputs/outputs do not match manifest.json."


def test_a_bound_graph_keeping_data_outside_is_refused_by_its_path(artifacts_copy):
    onnx = pytest.importorskip("onnx")
    graph_path = artifacts_copy / "ensemble.onnx"
    model = onnx.load_from_string(graph_path.read_bytes())
    tensor = onnx.helper.make_tensor("outside", onnx.TensorProto.FLOAT, [1], b"\0\0\0\0", raw=True)
    onnx.external_data_helper.set_external_data(tensor, location="outside.bin")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    model.graph.initializer.append(tensor)
    graph_path.write_bytes(model.SerializeToString())
    _with_graph_props(artifacts_copy, {p.key: p.value for p in model.metadata_props})  # re-hashed, still bound
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == (f"{graph_path}: tensor(s) ['outside'] keep their data in external files, outside the "
                              f"verified bytes; the runtime serves only self-contained graphs. {REBUILD}.")


# ------------------------------------------------------------- the manifest's combiner values against the graph's

def _load_refusal(folder: Path) -> str:
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    return str(err.value)


def _weights(m: dict[str, Any]) -> None:  # still summing to 1: only the graph can tell
    m["members"]["xgboost"]["weight"], m["members"]["nhits"]["weight"] = 0.3, 0.25


def _order(m: dict[str, Any]) -> None:
    m["ensemble"]["members"] = ["lightgbm", "xgboost", "nhits", "patchtst"]


def _temperature(m: dict[str, Any]) -> None:
    m["decision"]["temperature"] = {"nhits": 2.0}


def _stacking(m: dict[str, Any]) -> None:
    m["combine"] = {"method": "stacking", "source": {"file": "stacker.pkl", "sha256": "ab" * 32}}


@pytest.mark.parametrize(("edit", "says"), [
    (_weights, "manifest.json: field 'members.xgboost.weight' is 0.3, but the graph weighs member 'xgboost' by 0.25"),
    (_order, "ensemble.onnx: member_probabilities[0] is 'xgboost/probabilities', not member 'lightgbm' (field "
             "'ensemble.members' of manifest.json)"),
    (_temperature, "manifest.json: field 'decision.temperature.nhits' is 2.0, but the graph divides member "
                   "'nhits''s log-probabilities by 1.0"),
    (_stacking, "ensemble.onnx: its probabilities are not a stacker's, but field 'combine.method' of manifest.json "
                "is 'stacking'"),
])
def test_a_rebound_manifest_whose_combiner_is_not_the_graphs_is_refused_naming_both_values(
        demo_artifacts, tmp_path, edit, says):
    # Found: each of these loaded, and describe() (and member_probabilities' names) reported what the graph does
    # not compute: the digest binds the manifest to the graph, not its values to the graph's.
    folder = rebound(demo_artifacts, tmp_path / "edited", edit)
    assert _load_refusal(folder) == f"{folder}/{says}; {REBUILD}."


def test_the_demo_builds_weights_are_read_off_its_graph_exactly(demo_artifacts):
    ens = runtime.load(demo_artifacts)  # weights 0.25, 0.25, 0.3, 0.2: 0.3 and 0.2 are not exact in float32
    assert {n: m["weight"] for n, m in ens.describe()["members"].items()} == {
        "xgboost": 0.25, "lightgbm": 0.25, "nhits": 0.3, "patchtst": 0.2}


def _add_temperature(model: Any, member: str, t: float, axis: int = 1, stored: str = "raw_data") -> None:
    """`edit_graph`: the graph divides `member`'s log-probabilities by t, with the nodes and names convert/graph.py
    writes (Log, Div by `NAME/temperature`, Softmax over `axis`) feeding member_flat, t stored as `stored`."""
    from onnx import TensorProto, helper, numpy_helper

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


def _graph_with_temperature(source: Path, folder: Path, member: str, t: float) -> Path:
    """A copy of the build whose graph divides `member`'s log-probabilities by t, as convert writes it."""
    onnx = pytest.importorskip("onnx")
    shutil.copytree(source, folder)
    model = onnx.load_from_string((folder / "ensemble.onnx").read_bytes())
    _add_temperature(model, member, t)
    (folder / "ensemble.onnx").write_bytes(model.SerializeToString())
    return folder


@pytest.mark.parametrize(("manifest_t", "says"), [
    (2.5, None),
    (2.0, "field 'decision.temperature.nhits' is 2.0, but the graph divides member 'nhits''s log-probabilities by 2.5"),
    (None, "field 'decision.temperature.nhits' is 1.0, but the graph divides member 'nhits''s log-probabilities by "
           "2.5"),
])
def test_a_temperature_in_the_graph_must_be_the_manifests(demo_artifacts, tmp_path, manifest_t, says):
    graph = _graph_with_temperature(demo_artifacts, tmp_path / "graph", "nhits", 2.5)
    folder = rebound(graph, tmp_path / "edited",
                     lambda m: m["decision"]["temperature"].update({} if manifest_t is None else {"nhits": manifest_t}))
    if says is None:
        ens = runtime.load(folder)
        assert ens.describe()["decision"]["temperature"] == {"nhits": 2.5}
    else:
        assert _load_refusal(folder) == f"{folder}/manifest.json: {says}; {REBUILD}."


@pytest.mark.parametrize(("field", "value", "says"), [
    ("opsets", {"ai.onnx": 10**3000}, "field 'opsets' needs 'ai.onnx' 1" + "0" * 39 + "... (3001 digits); this "
                                      "runtime runs {'ai.onnx': 17, 'ai.onnx.ml': 3, 'com.microsoft': 1}. Rebuild "
                                      "with a matching ensemble-onnx."),
    ("opsets", {"d" * 5000: 1}, "field 'opsets' needs '" + "d" * 39 + "... (5000 characters) 1; this runtime runs "
                                "{'ai.onnx': 17, 'ai.onnx.ml': 3, 'com.microsoft': 1}. Rebuild with a matching "
                                "ensemble-onnx."),
    ("precision", {"weights": "int8", "min_onnxruntime": "v" * 5000},
     "field 'precision.min_onnxruntime' is '" + "v" * 39 + "... (5000 characters), not a version; " + REBUILD + "."),
    ("precision", {"weights": "w" * 5000, "min_onnxruntime": "999.0." + "9" * 5000},
     "field 'precision' says these " + "w" * 40 + "... (5000 characters) weights need onnxruntime>=999.0." + "9" * 34
     + f"... (5006 characters); this host has {__import__('onnxruntime').__version__}. Upgrade onnxruntime, or serve "
       "a --precision fp32 build."),
])
def test_a_huge_value_in_a_load_refusal_is_shown_cut_short(artifacts_copy, field, value, says):
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    manifest[field] = value  # refused before the binding is checked: no need to re-bind
    path = write_manifest(artifacts_copy, manifest)
    assert _load_refusal(artifacts_copy) == f"{path}: {says}"


@pytest.mark.parametrize(("raw", "says"), [
    ("1_000", "'1_000' is not a whole number (digits 0-9 only)."),  # int() reads 1000
    (" 4096", "' 4096' is not a whole number (digits 0-9 only)."),  # int() strips the space
    ("+4096", "'+4096' is not a whole number (digits 0-9 only)."),
    ("\u0664\u0660\u0669\u0666", "'\u0664\u0660\u0669\u0666' is not a whole number (digits 0-9 only)."),  # 4096
    ("-5", "'-5' is not a whole number (digits 0-9 only)."),
    ("000", "'000' must be above 0."),
    ("\udcff", "'\\xff' is not a whole number (digits 0-9 only)."),  # the byte 0xff, not Python's '\\udcff'
    ("x" * 5000, "'" + "x" * 39 + "... (5000 characters) is not a whole number (digits 0-9 only)."),
    ("9" * 5000, "'" + "9" * 39 + "... (5000 digits) has too many digits to read; a limit of 30 digits is already "
                 "beyond any input."),
    ("-" + "9" * 5000, "'-" + "9" * 38 + "... (5001 characters) is not a whole number (digits 0-9 only)."),
])
def test_a_limit_variable_is_plain_digits_or_refused_naming_it_cut_short(monkeypatch, raw, says):
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", raw)
    with pytest.raises(runtime.InputError) as err:
        runtime.limits.env_limit("ENSEMBLE_ONNX_MAX_INPUT_BYTES", 10)
    assert str(err.value) == f"environment variable ENSEMBLE_ONNX_MAX_INPUT_BYTES={says}"


@pytest.mark.parametrize(("raw", "limit"), [("4096", 4096), ("0010", 10), ("9" * 4300, 10**4300 - 1)])
def test_a_limit_of_plain_digits_is_read(monkeypatch, raw, limit):
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", raw)
    assert runtime.limits.env_limit("ENSEMBLE_ONNX_MAX_INPUT_BYTES", 10) == limit


# ------------------------------------------ graphs shaped otherwise than convert writes them, under a matching manifest

def _node(model: Any, output: str) -> Any:
    return next(n for n in model.graph.node if output in n.output)


def _swap_member_outputs(model: Any) -> None:
    # Each member's final node now produces the other's output: the names in member_flat are unchanged.
    a, b = _node(model, "nhits/probabilities"), _node(model, "patchtst/probabilities")
    a.output[0], b.output[0] = "patchtst/probabilities", "nhits/probabilities"


def _local_concat(model: Any) -> None:
    # member_flat = evil.Concat(a, b, c, d), a function of the model's own computing Concat(d, c, b, a).
    from onnx import helper

    _node(model, "member_flat").domain = "evil"
    body = [helper.make_node("Concat", ["d", "c", "b", "a"], ["y"], axis=1)]
    model.functions.append(helper.make_function("evil", "Concat", ["a", "b", "c", "d"], ["y"], body,
                                                [helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("evil", 1))


def _unused_opset(model: Any) -> None:
    from onnx import helper

    model.opset_import.append(helper.make_opsetid("evil", 1))


def _xgboost_only_weights() -> np.ndarray:
    w = np.zeros((12, 3), np.float32)
    w[0:3, 0:3] = np.eye(3)
    return w


def _forged_weights_first(model: Any) -> None:
    # onnxruntime computes with this first copy; a reader keeping the last one saw the honest weights.
    from onnx import numpy_helper

    model.graph.initializer.insert(0, numpy_helper.from_array(_xgboost_only_weights(), "weights"))


def _weights_by_a_constant_node(model: Any) -> None:
    from onnx import helper, numpy_helper

    model.graph.node.insert(0, helper.make_node("Constant", [], ["weights"],
                                                value=numpy_helper.from_array(_xgboost_only_weights())))


def _least_probable_label(model: Any) -> None:
    _node(model, "label").op_type = "ArgMin"


@pytest.mark.parametrize(("edit_graph", "says"), [
    (_swap_member_outputs, r"ensemble\.onnx: 'nhits/probabilities' is computed from 'patchtst/[^']*', outside 'nhits/' "
                           r"\(its own graph\)"),
    (_local_concat, r"ensemble\.onnx: defines 1 function\(s\) of its own, which convert never writes \(a node could "
                    r"call one by an operator's name\)"),
    (_unused_opset, r"ensemble\.onnx: imports the operator set\(s\) \{'evil': 1\}, but field 'opsets' of "
                    r"manifest\.json names \{'ai\.onnx': 17, 'ai\.onnx\.ml': 3\}"),
    (_forged_weights_first, r"ensemble\.onnx: names \['weights'\] more than once \(initializers or node outputs\): "
                            r"onnxruntime could compute with another than the one this check reads"),
    (_weights_by_a_constant_node, r"ensemble\.onnx: names \['weights'\] more than once \(initializers or node "
                                  r"outputs\): onnxruntime could compute with another than the one this check reads"),
    (_least_probable_label, r"ensemble\.onnx: 'label' is computed by ArgMin\(probabilities\) axis=1 keepdims=0, not "
                            r"by ArgMax\(probabilities\) axis=1 keepdims=0 as convert writes it"),
])
def test_a_combiner_computing_otherwise_than_its_names_say_is_refused(demo_artifacts, tmp_path, edit_graph, says):
    # Found (attack report 1, H1-H3): each of these loaded under the demo's own manifest, and predicted with other
    # weights, another member order or another member's column under a member's name, or a label that is not
    # the probabilities' (M1).
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: None, edit_graph=edit_graph)
    assert re.fullmatch(re.escape(str(folder)) + "/" + says + "; " + re.escape(REBUILD) + r"\.", _load_refusal(folder))


@pytest.mark.parametrize(("axis", "stored", "says"), [
    (1, "raw_data", None),
    (0, "raw_data", "'nhits/calibrated' is computed by Softmax(nhits/cooled) axis=0, not by Softmax(nhits/cooled) "
                    "axis=1 as convert writes it"),
    (1, "float_data", "'nhits/temperature' is not the float32 tensor of shape [] that convert writes (stored in "
                      "raw_data)"),
])
def test_a_temperature_is_read_only_off_the_softmax_and_tensor_convert_writes(demo_artifacts, tmp_path, axis, stored,
                                                                              says):
    # Found (H4): a Softmax over the batch axis loaded, and a row's probabilities depended on its batch. (L5): a
    # temperature stored otherwise was refused as "not member 'nhits'", which named the wrong problem.
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: m["decision"]["temperature"].update(nhits=2.5),
                     edit_graph=lambda model: _add_temperature(model, "nhits", 2.5, axis, stored))
    if says is None:
        assert runtime.load(folder).describe()["decision"]["temperature"] == {"nhits": 2.5}
    else:
        assert _load_refusal(folder) == f"{folder}/ensemble.onnx: {says}; {REBUILD}."


def _with_policy(threshold: float) -> Callable[[Any], None]:
    """`edit_graph`: label and confidence by the minimum-confidence policy, HOLD (the fallback) under `threshold`
    becoming the most probable other class, built from the node list convert builds from
    (runtime.contract.decision_nodes)."""

    def edit(model: Any) -> None:
        from onnx import helper, numpy_helper

        graph = model.graph
        kept = [n for n in graph.node if not {"label", "confidence"} & set(n.output)]
        del graph.node[:]
        graph.node.extend(kept)
        for op, inputs, output, attributes in contract.decision_nodes(True):
            graph.node.append(helper.make_node(op, list(inputs), [output], **{k: list(v) if isinstance(v, tuple)
                                                                               else v for k, v in attributes.items()}))
        classes = ["SELL", "HOLD", "BUY"]
        for name, (dtype, value) in contract.policy_values(classes, {"HOLD": threshold}, "HOLD").items():
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    return edit


def _min_confidence(minimum: dict[str, float], fallback: str = "HOLD") -> Edit:
    return lambda m: m["decision"].update(min_confidence=minimum, fallback=fallback)


@pytest.mark.parametrize(("edit", "edit_graph", "says"), [
    (_min_confidence({"HOLD": 0.7}), _with_policy(0.7), None),
    (_min_confidence({"HOLD": 0.99}), None, "manifest.json: field 'decision.min_confidence' is {'HOLD': 0.99}, but "
                                            "the graph's label applies no minimum confidence"),
    (lambda m: None, _with_policy(0.7), "manifest.json: field 'decision.min_confidence' is {}, but the graph's label "
                                        "applies a minimum confidence"),
    (_min_confidence({"HOLD": 0.4}), _with_policy(0.7), "manifest.json: field 'decision.min_confidence' is {'HOLD': "
                                                        "0.4}, but the graph's 'policy/fallback_min' holds "
                                                        "0.699999988079071"),
    (_min_confidence({"HOLD": 0.7}, "SELL"), _with_policy(0.7), "manifest.json: field 'decision.fallback' is SELL, but "
                                                                "the graph's 'policy/fallback' holds 1"),
])
def test_the_decision_policy_must_be_the_graphs(demo_artifacts, tmp_path, edit, edit_graph, says):
    # Found (M1): a manifest re-bound with min_confidence {"HOLD": 0.99} loaded and describe() reported it, while
    # the graph answered HOLD at 0.62 by plain argmax.
    folder = rebound(demo_artifacts, tmp_path / "edited", edit, edit_graph=edit_graph)
    if says is not None:
        assert _load_refusal(folder) == f"{folder}/{says}; {REBUILD}."
        return
    ens = runtime.load(folder)  # the policy convert writes loads, and is the one served
    rows = np.random.default_rng(0).normal(size=(200, len(ens.feature_names)))
    p = ens.predict_proba(rows)
    unsure = (p.argmax(axis=1) == 1) & (p[:, 1] < 0.7)  # HOLD on top, under its minimum: the next class instead
    assert 0 < unsure.sum() < len(rows)
    want = np.where(unsure, np.where(p[:, 0] > p[:, 2], 0, 2), p.argmax(axis=1))
    assert [r.action for r in ens.predict(rows)] == [ens.classes[i] for i in want]


def test_a_member_fed_otherwise_than_its_manifest_scaler_says_is_refused(demo_artifacts, tmp_path):
    # The demo's members all read scaled features: a manifest saying xgboost reads the raw ones is not the graph's.
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: m["members"]["xgboost"].update(scaler=None))
    assert _load_refusal(folder) == (f"{folder}/ensemble.onnx: 'xgboost/input' is not an Identity of the raw "
                                     f"features in float32 ('raw/float32'), as field 'members.xgboost.scaler' of "
                                     f"manifest.json says (null); {REBUILD}.")


def _output_twice(model: Any) -> None:
    model.graph.output.insert(2, model.graph.output[1])  # [probabilities, label, label, confidence, ...]


def test_a_graph_naming_an_output_twice_is_refused_naming_it(demo_artifacts, tmp_path):
    # Found (attack report 2, N1): [probabilities, label, label, confidence, member_probabilities] loaded (the
    # comparison deduplicated the names), and predict/score then read outputs by position: IndexError.
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: None, edit_graph=_output_twice)
    assert _load_refusal(folder) == (f"{folder}/ensemble.onnx: lists the output(s) ['label'] more than once; its "
                                     f"outputs must be {list(contract.ENSEMBLE_OUTPUTS)} as manifest.json says.")


def _second_scaler(model: Any) -> None:
    # scaler1: a copy of scaler0's nodes and constants under another prefix, feeding xgboost. Same values, so
    # only the wiring differs; with two scalers of other constants the predictions differ (attack report 2, N2a).
    import copy

    graph = model.graph
    for node in [n for n in graph.node if n.output[0].startswith("scaler0/")]:
        twin = copy.deepcopy(node)
        twin.input[:] = [i.replace("scaler0/", "scaler1/") for i in twin.input]
        twin.output[:] = [o.replace("scaler0/", "scaler1/") for o in twin.output]
        twin.name = twin.name.replace("scaler0/", "scaler1/")
        graph.node.insert(0, twin)
    for init in [i for i in graph.initializer if i.name.startswith("scaler0/")]:
        twin = copy.deepcopy(init)
        twin.name = init.name.replace("scaler0/", "scaler1/")
        graph.initializer.append(twin)
    _node(model, "xgboost/input").input[0] = "scaler1/float32"


def _scaled_twice(model: Any) -> None:
    # scaler0/float32 = Cast(scaler0/div * 100): computed under scaler0/, but not as convert/graph.py scales.
    from onnx import helper, numpy_helper

    _node(model, "scaler0/float32").input[0] = "scaler0/evil"
    model.graph.initializer.append(numpy_helper.from_array(np.array(100.0), "scaler0/k"))
    model.graph.node.insert(0, helper.make_node("Mul", ["scaler0/div", "scaler0/k"], ["scaler0/evil"]))


def _scaled_from_outside(model: Any) -> None:
    # scaler0/sub = Sub(evil/x, scaler0/mean), evil/x = Identity(features): the scaler reads a tensor outside it.
    from onnx import helper

    _node(model, "scaler0/sub").input[0] = "evil/x"
    model.graph.node.insert(0, helper.make_node("Identity", ["features"], ["evil/x"]))


def _scaler_left_out(model: Any) -> None:
    # scaler0/float32 = Cast(features), scaler0's Sub and Div and constants removed: the members the manifest
    # scales read raw features (attack report 3, M2).
    graph = model.graph
    kept = [n for n in graph.node if n.output[0] not in ("scaler0/sub", "scaler0/div")]
    del graph.node[:]
    graph.node.extend(kept)
    kept_inits = [i for i in graph.initializer if not i.name.startswith("scaler0/")]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    _node(model, "scaler0/float32").input[0] = "features"


@pytest.mark.parametrize(("edit_graph", "says"), [
    (_scaler_left_out, "'scaler0/float32' casts the features with neither a Sub nor a Div, but a scaler's output "
                       "always has one of them as convert writes it"),
    (_second_scaler, "'xgboost/input' is not an Identity of 'scaler0/float32' (its scaler's output, as field "
                     "'members.xgboost.scaler' of manifest.json and the member order say)"),
    (_scaled_twice, "'scaler0/float32' is computed by Cast(scaler0/evil) to=1, not by Cast(scaler0/div) to=1 as "
                    "convert writes it"),
    (_scaled_from_outside, "'scaler0/sub' is computed by Sub(evil/x, scaler0/mean), not by Sub(features, "
                           "scaler0/mean) as convert writes it"),
])
def test_a_member_reads_only_its_own_scaler_computed_as_convert_scales(demo_artifacts, tmp_path, edit_graph, says):
    # Found (attack report 2, N2): any `scalerK/float32` was accepted as a member's input, whoever's it was and
    # however it was computed (scaler9/float32 = scaler0/float32 + 100 * ReduceMax(patchtst/probabilities) loaded).
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: None, edit_graph=edit_graph)
    assert _load_refusal(folder) == f"{folder}/ensemble.onnx: {says}; {REBUILD}."


def _default_domain_twice(model: Any) -> None:
    from onnx import helper

    model.opset_import[0].version = 11
    model.opset_import.append(helper.make_opsetid("ai.onnx", 17))  # a reader keeping the last saw 17


def _ml_domain_twice(model: Any) -> None:
    from onnx import helper

    model.opset_import[1].version = 1
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))


@pytest.mark.parametrize(("edit_graph", "domain", "aside"), [
    (_default_domain_twice, "ai.onnx", ' ("" and "ai.onnx" are one)'),
    (_ml_domain_twice, "ai.onnx.ml", ""),
])
def test_an_operator_set_imported_twice_is_refused_naming_it(demo_artifacts, tmp_path, edit_graph, domain,
                                                             aside):
    # Found (attack report 2, N6): ("", 11) then ("ai.onnx", 17) passed "the imports equal the manifest's opsets",
    # the reader's dict keeping the last of the two.
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: None, edit_graph=edit_graph)
    # The aside on "" belongs only to the default domain (attack report 3, L4).
    assert _load_refusal(folder) == (f"{folder}/ensemble.onnx: imports the operator set '{domain}' more than once"
                                     f"{aside}; {REBUILD}.")

