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
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forge import REBUILD, rebound, write_manifest

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
    for member in manifest["members"].values():  # `_crafted_graph` feeds every member float32
        member.pop("input_dtype", None)
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


@pytest.mark.parametrize(("probability_columns", "member_columns", "labels", "computed"), [
    (3, 3, None, None),  # what it declares: served
    (4, 3, None, "'probabilities' of shape [3, 4] for 3 row(s), not the [3, 3]"),
    (2, 3, None, "'probabilities' of shape [3, 2] for 3 row(s), not the [3, 3]"),
    (3, 4, None, "'member_probabilities' of shape [4, 4, 3] for 3 row(s), not the [3, 4, 3]"),
    (3, 2, None, "'member_probabilities' of shape [2, 4, 3] for 3 row(s), not the [3, 4, 3]"),
    (3, 3, 1, "'label' of shape [1] for 3 row(s), not the [3]")])
def test_a_graph_computing_other_shapes_than_it_declares_is_never_served_short(
        artifacts_copy, probability_columns, member_columns, labels, computed):
    # onnxruntime only warns when an output's shape differs from the declared one, and the load check sees only
    # the declared one: every call compares what the graph computed with what it declares, and refuses to serve a
    # column or a row too many or too few (a label for one row of three was refused at load until the combiner
    # check moved to verify).
    manifest = _as_stacking(artifacts_copy)
    graph = _crafted_graph(len(manifest["feature_names"]), probability_columns, member_columns, labels)
    (artifacts_copy / "ensemble.onnx").write_bytes(graph)
    bound = contract.bound_part(manifest)  # bound to the manifest as it is: a consistent forgery
    _with_graph_props(artifacts_copy, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                       contract.META_DIGEST: contract.manifest_digest(bound)})
    ens = runtime.load(artifacts_copy)
    x = np.full((3, len(ens.feature_names)), 0.25)
    if computed is None:
        assert [p.action for p in ens.predict(x)] == ["SELL"] * 3
        assert ens.predict(x)[0].members["nhits"] == {"SELL": 0.25, "HOLD": 0.25, "BUY": 0.25}
        return
    for call in (ens.predict, ens.predict_proba, ens.run, ens.member_probabilities):
        with pytest.raises(runtime.ArtifactError) as err:
            call(x)
        assert str(err.value) == (f"{artifacts_copy}/ensemble.onnx: computed {computed} it declares; {REBUILD}.")
    if labels is not None:  # a large call: refused on its first chunk, before any concatenation
        with pytest.raises(runtime.ArtifactError, match=re.escape("'label' of shape [1] for 4096 row(s)")):
            ens.predict_proba(np.full((5000, len(ens.feature_names)), 0.25))


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


def _output_twice(model: Any) -> None:
    model.graph.output.insert(2, model.graph.output[1])  # [probabilities, label, label, confidence, ...]


def test_a_graph_naming_an_output_twice_is_refused_naming_it(demo_artifacts, tmp_path):
    # Found (attack report 2, N1): [probabilities, label, label, confidence, member_probabilities] loaded (the
    # comparison deduplicated the names), and predict/score then read outputs by position: IndexError.
    folder = rebound(demo_artifacts, tmp_path / "edited", lambda m: None, edit_graph=_output_twice)
    assert _load_refusal(folder) == (f"{folder}/ensemble.onnx: lists the output(s) ['label'] more than once; its "
                                     f"outputs must be {list(contract.ENSEMBLE_OUTPUTS)} as manifest.json says.")


