"""The build is its own root of trust: no edit to an artifacts folder changes what is served.

The typed manifest (every nested field checked, named by path), the manifest bound to ensemble.onnx's
metadata, the build id a service pins, external data refused, `verify` field by field, and a fuzzer that
flips bytes of a real demo build and requires each result to be refused or to score bit-identically. Signed
builds: tests/runtime/test_signing.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from domain_rows import centre
from forge import set_path
from onnx import external_data_helper, helper, numpy_helper

import runtime
from convert.cli import main
from runtime import contract, protowire
from runtime.artifacts import read_folder


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def rebind(folder: Path, manifest: dict) -> dict:
    """What a careful forger does: embed the edited manifest in ensemble.onnx too and re-hash it, so the
    folder is consistent again. Only a pinned build id or a signature can tell."""
    model = onnx.load_from_string((folder / "ensemble.onnx").read_bytes())
    bound = contract.bound_part(manifest)
    helper.set_model_props(model, {contract.META_MANIFEST: contract.canonical(bound).decode(),
                                   contract.META_DIGEST: contract.manifest_digest(bound)})
    data = model.SerializeToString()
    (folder / "ensemble.onnx").write_bytes(data)
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(data).hexdigest()
    write_manifest(folder, manifest)
    return manifest


@pytest.fixture(scope="session")
def rows(demo_artifacts) -> np.ndarray:
    """Fixed rows on the features' own scales (the parity set's recorded ranges would do as well)."""
    from convert.demo import DemoSpec, market_data

    x, _ = market_data(DemoSpec())
    return np.ascontiguousarray(x[:48], dtype=np.float64)


def scores(ens: runtime.Ensemble, rows: np.ndarray) -> tuple[bytes, ...]:
    out = ens._run(rows)
    return tuple(out[name].tobytes() for name in contract.ENSEMBLE_OUTPUTS) + (
        json.dumps({k: v for k, v in ens.describe().items() if k != "path"}, sort_keys=True, default=str).encode(),)


# --------------------------------------------------------------------------------- the typed manifest


@pytest.mark.parametrize(("path", "value", "named", "says"), [
    ("members.nhits.weight", KeyError, "members.nhits.weight", "is missing"),
    ("members.nhits.weight", "0.3", "members.nhits.weight", "must be a number"),
    ("members.nhits.weight", True, "members.nhits.weight", "must be a number"),
    ("members.xgboost.source", None, "members.xgboost.source", "must be an object"),
    ("members.lightgbm.onnx.sha256", 7, "members.lightgbm.onnx.sha256", "must be a string"),
    ("members.patchtst.hyperparameters", [], "members.patchtst.hyperparameters", "must be an object"),
    ("files", ["ensemble.onnx"], "files", "must be an object"),
    ("files/ensemble.onnx", None, "files.ensemble.onnx", "must be a string"),
    ("classes", "SELL", "classes", "must be a list"),
    ("classes", ["SELL", "SELL", "BUY"], "classes", "must be a non-empty list of distinct names"),
    ("feature_names", [], "feature_names", "must be a non-empty list of distinct names"),
    ("feature_names", ["rsi_14", 3], "feature_names[1]", "must be a string"),
    ("ensemble.members", ["nhits"], "ensemble.members", "must name each of members"),
    ("ensemble.outputs", "probabilities", "ensemble.outputs", "must be a list"),
    ("ensemble.file", KeyError, "ensemble.file", "is missing"),
    ("combine", {}, "combine.method", "is missing"),
    ("decision.fallback", "MAYBE", "decision.fallback", "is 'MAYBE', not a class"),
    ("decision.min_confidence", {"STRONG_BUY": 0.6}, "decision.min_confidence.STRONG_BUY", "names no class"),
    ("decision.temperature", {"nhits": "hot"}, "decision.temperature.nhits", "must be a number"),
    ("precision.weights", 8, "precision.weights", "must be a string"),
    ("opsets", {"ai.onnx": "17"}, "opsets.ai.onnx", "must be an integer"),
    ("schema_version", 2, "schema_version", "is 2, not one this runtime reads"),
    ("schema_version", KeyError, "schema_version", "is missing"),
])
def test_a_malformed_manifest_is_refused_naming_the_field(artifacts_copy, path, value, named, says):
    manifest = read_manifest(artifacts_copy)
    set_path(manifest, path.replace(".", "/") if "/" not in path else path, value)
    write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"field '{named}' {says}")) as caught:
        runtime.load(artifacts_copy)
    assert "manifest.json" in str(caught.value)


@pytest.mark.parametrize("top", [[], "manifest", 3, None])
def test_a_manifest_that_is_no_object_is_refused(artifacts_copy, top):
    (artifacts_copy / "manifest.json").write_text(json.dumps(top))
    with pytest.raises(runtime.ArtifactError, match="top level"):
        runtime.load(artifacts_copy)


@pytest.mark.parametrize(("classes", "fallback"), [(["down", "up"], "down"), ([f"c{i}" for i in range(7)], "c3"),
                                                   (["SELL", "HOLD", "BUY"], None)])
def test_the_typed_manifest_takes_any_number_of_classes_and_any_fallback(demo_artifacts, classes, fallback):
    manifest = read_manifest(demo_artifacts)
    manifest["classes"] = classes
    manifest["decision"].update(fallback=fallback, min_confidence={classes[-1]: 0.5})
    manifest["files"]["statistics.json"] = "0" * 64          # a file a newer build adds
    manifest["statistics"] = {"file": "statistics.json"}      # and a field this version does not know
    typed = contract.parse_manifest(manifest)
    assert typed.classes == classes and typed.decision is not None and typed.decision.fallback == fallback


def test_the_builder_writes_what_the_typed_manifest_reads(demo_artifacts):
    manifest = read_manifest(demo_artifacts)
    assert contract.parse_manifest(manifest).to_json() == manifest


# ------------------------------------------------------------------- the manifest bound to the graph

@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m.update(classes=m["classes"][::-1]), "classes[0]"),
    (lambda m: m["feature_names"].insert(0, m["feature_names"].pop(1)), "feature_names[0]"),
    (lambda m: m["members"]["nhits"].update(weight=0.5), "members.nhits.weight"),
    (lambda m: m["members"]["xgboost"]["source"].update(sha256="f" + m["members"]["xgboost"]["source"]["sha256"][1:]),
     "members.xgboost.source.sha256"),
    (lambda m: m["decision"].update(min_confidence={"BUY": 0.6}), "decision.min_confidence.BUY"),
    (lambda m: m["decision"].update(fallback="SELL"), "decision.fallback"),
    (lambda m: m["decision"]["temperature"].update(nhits=2.0), "decision.temperature.nhits"),
    (lambda m: m.update(precision={"weights": "int8", "min_onnxruntime": "1.22"}), "precision.min_onnxruntime"),
    (lambda m: m["ensemble"].update(members=m["ensemble"]["members"][::-1]), "ensemble.members[0]"),
    (lambda m: m["ensemble"].update(outputs=m["ensemble"]["outputs"][::-1]), "ensemble.outputs[0]"),
    (lambda m: m["parity"].update(rows=1), "parity.rows"),
    (lambda m: m["libraries"].update(torch="9.9"), "libraries.torch"),
    (lambda m: m.update(note="hand-edited"), "note"),
    (lambda m: m["members"]["nhits"]["hyperparameters"].clear(), "members.nhits.hyperparameters"),
])
def test_an_edited_manifest_is_refused_naming_the_field(artifacts_copy, edit, field):
    manifest = read_manifest(artifacts_copy)
    edit(manifest)
    write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"field '{field}")) as caught:
        runtime.load(artifacts_copy)
    assert "differs from the build ensemble.onnx was made for" in str(caught.value)


@pytest.mark.parametrize("layout", [{"indent": None}, {"indent": 4}, {"indent": "\t", "sort_keys": False},
                                    {"separators": (",", ":")}])
def test_whitespace_and_key_order_change_nothing(artifacts_copy, demo_artifacts, rows, layout):
    manifest = read_manifest(artifacts_copy)
    (artifacts_copy / "manifest.json").write_text(json.dumps(dict(reversed(list(manifest.items()))), **layout))
    assert scores(runtime.load(artifacts_copy), rows) == scores(runtime.load(demo_artifacts), rows)


def test_a_graph_without_a_build_contract_is_refused(artifacts_copy):
    model = onnx.load_from_string((artifacts_copy / "ensemble.onnx").read_bytes())
    del model.metadata_props[:]
    data = model.SerializeToString()
    (artifacts_copy / "ensemble.onnx").write_bytes(data)
    manifest = read_manifest(artifacts_copy)
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(data).hexdigest()
    write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError, match="carries no build contract"):
        runtime.load(artifacts_copy)


def test_the_graph_metadata_read_off_the_bytes_is_what_onnxruntime_reads(demo_artifacts):
    data = (demo_artifacts / "ensemble.onnx").read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert protowire.metadata(data) == session.get_modelmeta().custom_metadata_map
    assert json.loads(protowire.metadata(data)[contract.META_MANIFEST]) == contract.bound_part(
        read_manifest(demo_artifacts))


# ---------------------------------------------------------------------------------------- build id

def test_build_id_covers_the_whole_manifest_and_is_pinned(artifacts_copy):
    manifest = read_manifest(artifacts_copy)
    want = hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    ens = runtime.load(artifacts_copy, expect_build_id=want)
    assert ens.describe()["build_id"] == ens.build_id == want
    with pytest.raises(runtime.ArtifactError, match=f"build {want}, not the expected build 00"):
        runtime.load(artifacts_copy, expect_build_id="00" * 32)


def test_a_consistent_forgery_loads_only_unpinned(artifacts_copy):
    """Reversed classes re-embedded in the graph: every hash agrees, but the build id is another one."""
    pinned = runtime.load(artifacts_copy).build_id
    manifest = read_manifest(artifacts_copy)
    manifest["classes"] = manifest["classes"][::-1]
    rebind(artifacts_copy, manifest)
    assert runtime.load(artifacts_copy).classes[0] == "BUY"  # the folder is consistent ...
    with pytest.raises(runtime.ArtifactError, match="not the expected build"):
        runtime.load(artifacts_copy, expect_build_id=pinned)  # ... and not the build a release promoted


def test_cli_prints_and_pins_the_build_id(artifacts_copy, tmp_path):
    build_id = runtime.load(artifacts_copy).build_id
    inspected = invoke("inspect", artifacts_copy, "--json")
    assert json.loads(inspected.stdout)["build_id"] == build_id
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps(centre(runtime.load(artifacts_copy))) + "\n")  # a row the build takes
    assert invoke("predict", artifacts_copy, "--input", rows_file, "--expect-build-id", build_id).exit_code == 0
    refused = invoke("predict", artifacts_copy, "--input", rows_file, "--expect-build-id", "ab" * 32)
    assert refused.exit_code == 1 and "not the expected build" in refused.output


# ----------------------------------------------------------------------------------- verify, by field

@pytest.mark.parametrize(("edit", "says"), [  # the graph's own values first (tests/convert/test_verify_graph.py)
    (lambda m: m.update(classes=m["classes"][::-1]), "classes: the artifacts have"),
    (lambda m: m["members"]["nhits"].update(weight=0.5), "field 'members.nhits.weight' is 0.5, but the graph"),
    (lambda m: m["ensemble"]["members"].reverse(), "(field 'ensemble.members' of manifest.json)"),
    (lambda m: m["decision"].update(fallback="SELL"), "decision.fallback: the artifacts have"),
    (lambda m: m["decision"]["min_confidence"].update(BUY=0.9), "field 'decision.min_confidence' is {'BUY': 0.9}"),
    (lambda m: m["precision"].update(scheme="mine"), "precision: the artifacts have"),
])
def test_verify_refuses_a_consistent_forgery_by_field(demo_models, artifacts_copy, edit, says):
    manifest = read_manifest(artifacts_copy)
    edit(manifest)
    rebind(artifacts_copy, manifest)
    result = invoke("verify", artifacts_copy, "--models", demo_models)
    assert result.exit_code == 1 and says in result.output, result.output


# ---------------------------------------------------------------------------------- external data

def _external(tensor: onnx.TensorProto) -> onnx.TensorProto:
    external_data_helper.set_external_data(tensor, location="w.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    return tensor


def _tiny(initializer: bool = True, sparse: bool = False, attribute: bool = False, subgraph: bool = False):
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    inits, sparse_inits = [], []
    if initializer:
        inits.append(_external(w))
    else:
        inits.append(w)
    if sparse:
        values = _external(numpy_helper.from_array(np.ones(1, np.float32), "s_values"))
        indices = numpy_helper.from_array(np.zeros(1, np.int64), "s_i")
        sparse_inits.append(helper.make_sparse_tensor(values, indices, [2]))
    if attribute:
        nodes.append(helper.make_node("Constant", [], ["c"], value=_external(numpy_helper.from_array(
            np.ones(2, np.float32), "c_value"))))
    if subgraph:
        branch = helper.make_graph([helper.make_node("Identity", ["inner"], ["z"])], "branch", [],
                                   [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2])],
                                   [_external(numpy_helper.from_array(np.ones(2, np.float32), "inner"))])
        nodes.append(helper.make_node("If", ["cond"], ["z_out"], then_branch=branch, else_branch=branch))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], inits,
                              sparse_initializer=sparse_inits)
    return helper.make_model(graph)


@pytest.mark.parametrize(("where", "found"), [
    ({}, ["w"]),
    ({"initializer": False}, []),
    ({"initializer": False, "sparse": True}, ["s_values"]),
    ({"initializer": False, "attribute": True}, ["c_value"]),
    ({"initializer": False, "subgraph": True}, ["inner", "inner"]),
])
def test_the_wire_walker_finds_external_data_wherever_it_sits(where, found):
    assert protowire.external_tensors(_tiny(**where).SerializeToString()) == found


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out) + bytes([n])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_the_wire_walker_reads_past_long_runs_and_repeated_fields():
    """A tree-like attribute of 5000 unpacked ints and 300 short strings, with a tensor hidden after them in
    the same attribute; and a tensor whose data_location is written twice (protobuf keeps the last)."""
    hidden = helper.make_attribute("nodes_ids", list(range(5000)))
    hidden.strings.extend([b"BRANCH_LEQ", b"LEAF"] * 150)
    hidden.floats.extend([0.5] * 700)
    tensor_field = _field(5, _external(numpy_helper.from_array(np.ones(2, np.float32), "hidden")).SerializeToString())
    # Written by hand: protobuf itself would serialize field 5 (t) before the runs (fields 7, 8, 9).
    model = _field(7, _field(1, _field(5, hidden.SerializeToString() + tensor_field)))
    assert protowire.external_tensors(model) == ["hidden"]
    tensor = numpy_helper.from_array(np.ones(2, np.float32), "twice").SerializeToString()
    for suffix, external in ((b"\x70\x00", False), (b"\x70\x00\x70\x01", True), (b"\x70\x01\x70\x00", True)):
        assert (protowire._tensor_external(tensor + suffix, (0, len(tensor) + len(suffix))) is not None) == external


@pytest.mark.parametrize("junk", [b"\x0a\xff", b"\x3b", b"\x08", b"\x80" * 12])
def test_the_wire_walker_refuses_what_is_no_protobuf(junk):
    with pytest.raises(ValueError):
        protowire.external_tensors(junk)


def test_external_data_is_refused_not_read_from_the_current_directory(artifacts_copy, tmp_path, monkeypatch):
    """onnx.save with save_as_external_data: the weights go to w.bin, listed and hashed in the folder. From
    bytes, onnxruntime reads whatever w.bin the process's current directory holds."""
    model = onnx.load(artifacts_copy / "ensemble.onnx")
    external = tmp_path / "external"
    external.mkdir()
    onnx.save_model(model, external / "ensemble.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=1024)
    graph = (external / "ensemble.onnx").read_bytes()
    monkeypatch.chdir(external)  # the hole: onnxruntime resolves w.bin from here
    ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    for name in ("ensemble.onnx", "w.bin"):
        shutil.copy(external / name, artifacts_copy / name)
    manifest = read_manifest(artifacts_copy)
    manifest["files"].update({n: hashlib.sha256((artifacts_copy / n).read_bytes()).hexdigest()
                              for n in ("ensemble.onnx", "w.bin")})
    write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError, match="keep their data in external files"):
        runtime.load(artifacts_copy)


# --------------------------------------------------------------------------------------- the fuzzer

def _flips(folder: Path, rel: str, positions, baseline: tuple[bytes, ...], rows: np.ndarray) -> list[str]:
    """Flip the low bit of each position in turn; every result must be refused or score identically."""
    path = folder / rel
    original = path.read_bytes()
    escaped = []
    try:
        for pos in positions:
            changed = bytearray(original)
            changed[pos] ^= 0x01
            path.write_bytes(changed)
            try:
                ens = runtime.load(folder)
            except runtime.ArtifactError:
                continue
            if scores(ens, rows) != baseline:
                escaped.append(f"{rel} byte {pos}: {original[pos:pos + 1]!r} -> {bytes(changed[pos:pos + 1])!r}")
    finally:
        path.write_bytes(original)
    return escaped


@pytest.mark.slow
def test_no_flip_of_any_manifest_byte_loads_and_scores_differently(artifacts_copy, rows):
    baseline = scores(runtime.load(artifacts_copy), rows)
    size = (artifacts_copy / "manifest.json").stat().st_size
    assert _flips(artifacts_copy, "manifest.json", range(size), baseline, rows) == []


@pytest.mark.slow
def test_no_sampled_flip_of_any_other_file_loads_and_scores_differently(artifacts_copy, rows):
    baseline = scores(runtime.load(artifacts_copy), rows)
    rng = np.random.default_rng(14)
    escaped = []
    for rel in read_manifest(artifacts_copy)["files"]:
        size = (artifacts_copy / rel).stat().st_size
        sample = sorted({0, size - 1, *rng.integers(0, size, 24).tolist()})
        escaped += _flips(artifacts_copy, rel, sample, baseline, rows)
    assert escaped == []


def test_read_folder_returns_the_verified_bytes(demo_artifacts):
    folder = read_folder(demo_artifacts)
    for rel, digest in folder.manifest["files"].items():
        assert hashlib.sha256(folder.files[rel]).hexdigest() == digest
