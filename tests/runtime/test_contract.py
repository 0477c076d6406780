"""What the trust modules promise, one by one: the typed manifest and its digests (`runtime/contract.py`), the
protobuf wire walker that reads metadata and finds external data (`runtime/protowire.py`), signed builds
(`runtime/signing.py`), the host CPU report (`runtime/host.py`) and the error root (`runtime/errors.py`).

Every expected value is written by hand here: protobuf bytes by a ten-line encoder, digests by hashlib over
JSON written out with `json.dumps`, signatures checked with `cryptography` directly. Nothing here trains or
loads a model, so each test runs in milliseconds and counts in the mutation run.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from forge import set_path

from runtime import contract, host, protowire
from runtime.contract import FieldError
from runtime.errors import EnsembleOnnxError

# ----------------------------------------------------------------------------------------- errors


def test_every_refusal_shares_one_root_that_exits_1():
    from runtime import ArtifactError, InputError
    from runtime.signing import SignatureError

    assert EnsembleOnnxError.exit_code == 1
    for family in (ArtifactError, InputError, FieldError, SignatureError):
        assert issubclass(family, EnsembleOnnxError) and family.exit_code == 1


# ------------------------------------------------------------------------------- the typed manifest


def _manifest() -> dict[str, Any]:
    """A small valid manifest written out by hand: two members, two features, three classes."""
    def record(name: str) -> dict[str, str]:
        return {"file": name, "sha256": "ab" * 32}

    return {
        "schema_version": 1,
        "feature_names": ["rsi", "macd"],
        "classes": ["SELL", "HOLD", "BUY"],
        "combine": {"method": "weighted", "source": None},
        "members": {
            "tree": {"kind": "xgboost", "weight": 0.5, "hyperparameters": {"trees": 3},
                     "source": record("tree.json"), "onnx": record("members/tree.onnx"), "metadata": None,
                     "scaler": None},
            "net": {"kind": "nhits", "weight": 1, "hyperparameters": {},
                    "source": record("net.pth"), "onnx": record("members/net.onnx"),
                    "metadata": record("net_meta.json"), "scaler": record("scaler.pkl")},
        },
        "ensemble": {"file": "ensemble.onnx", "input": "features", "outputs": ["probabilities", "label"],
                     "members": ["tree", "net"]},
        "opsets": {"ai.onnx": 17},
        "files": {"ensemble.onnx": "cd" * 32},
        "decision": {"temperature": {"net": 2}, "min_confidence": {"BUY": 0.6}, "fallback": "HOLD",
                     "calibration": None},
        "precision": {"weights": "int8", "scheme": "block32", "min_agreement": 0.99, "min_onnxruntime": "1.22",
                      "quantized_nodes": ["MatMul_0"], "build_host": {"model": "a cpu"}},
        "libraries": {"numpy": "2.0"},
        "parity": {"rows": 10},
    }


def test_a_valid_manifest_parses_to_typed_records_with_every_value():
    typed = contract.parse_manifest(_manifest())
    assert typed.schema_version == 1 and typed.feature_names == ["rsi", "macd"]
    assert typed.classes == ["SELL", "HOLD", "BUY"]
    assert typed.combine == contract.Combine("weighted", None)
    net = typed.members["net"]
    assert net == contract.MemberRecord(
        kind="nhits", weight=1.0, hyperparameters={}, source=contract.FileRecord("net.pth", "ab" * 32),
        onnx=contract.FileRecord("members/net.onnx", "ab" * 32),
        metadata=contract.FileRecord("net_meta.json", "ab" * 32), scaler=contract.FileRecord("scaler.pkl", "ab" * 32))
    assert type(net.weight) is float  # an integer weight is read as the number it is
    assert typed.members["tree"].metadata is None and typed.members["tree"].hyperparameters == {"trees": 3}
    assert typed.ensemble == contract.EnsembleRecord("ensemble.onnx", "features", ["probabilities", "label"],
                                                     ["tree", "net"])
    assert typed.opsets == {"ai.onnx": 17} and typed.files == {"ensemble.onnx": "cd" * 32}
    assert typed.decision == contract.DecisionRecord({"net": 2.0}, {"BUY": 0.6}, "HOLD", None)
    assert type(typed.decision.temperature["net"]) is float
    assert typed.precision == contract.PrecisionRecord("int8", "block32", 0.99, "1.22", ["MatMul_0"],
                                                       {"model": "a cpu"})
    assert typed.libraries == {"numpy": "2.0"} and typed.parity == {"rows": 10}


def test_optional_parts_may_be_absent_and_read_as_their_defaults():
    manifest = _manifest()
    for key in ("decision", "precision", "libraries", "parity"):
        del manifest[key]
    del manifest["combine"]["source"]
    del manifest["members"]["tree"]["metadata"], manifest["members"]["tree"]["scaler"]
    typed = contract.parse_manifest(manifest)
    assert (typed.decision, typed.precision, typed.libraries, typed.parity) == (None, None, None, None)
    assert typed.combine.source is None and typed.members["tree"].scaler is None


@pytest.mark.parametrize("absent", ["decision", "precision", "libraries", "members/net/metadata", "combine/source",
                                    "decision/fallback", "decision/temperature", "precision/scheme"])
def test_an_absent_optional_field_leaves_every_later_field_read(absent):
    manifest = _manifest()
    _edit(absent, KeyError)(manifest)
    typed, full = contract.parse_manifest(manifest), contract.parse_manifest(_manifest())
    *parents, last = absent.split("/")
    assert typed.parity == full.parity == {"rows": 10} and typed.members["tree"] == full.members["tree"]
    record, record_full = typed, full
    for key in parents:
        record, record_full = (record[key], record_full[key]) if isinstance(record, dict) else (
            getattr(record, key), getattr(record_full, key))
    for name in (f.name for f in dataclasses.fields(record) if f.name != last):
        assert getattr(record, name) == getattr(record_full, name)


def test_an_empty_decision_and_precision_take_their_field_defaults():
    manifest = _manifest()
    manifest["decision"], manifest["precision"] = {}, {}
    typed = contract.parse_manifest(manifest)
    assert typed.decision == contract.DecisionRecord({}, {}, None, None)
    assert typed.precision == contract.PrecisionRecord("fp32", None, None, None, None, None)


def _edit(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: set_path(manifest, path, value)


@pytest.mark.parametrize(("path", "value", "message"), [
    ("schema_version", KeyError, "field 'schema_version' is missing"),
    ("schema_version", True, "field 'schema_version' must be an integer, got True"),
    ("schema_version", 2, "field 'schema_version' is 2, not one this runtime reads ((1,)); upgrade ensemble-onnx "
                          "or rebuild with this version"),
    ("schema_version", 1.0, "field 'schema_version' must be an integer, got 1.0"),
    ("combine", ["weighted"], "field 'combine' must be an object, got list"),
    ("combine/method", KeyError, "field 'combine.method' is missing"),
    ("combine/method", 3, "field 'combine.method' must be a string, got 3"),
    ("combine/source", "stacker.pkl", "field 'combine.source' must be an object, got str"),
    ("combine/source", {"file": "s.pkl"}, "field 'combine.source.sha256' is missing"),
    ("members", [], "field 'members' must be an object, got list"),
    ("members/net/weight", "1", "field 'members.net.weight' must be a number, got '1'"),
    ("members/net/weight", False, "field 'members.net.weight' must be a number, got False"),
    ("members/net/weight", None, "field 'members.net.weight' must be a number, got None"),
    ("members/net/metadata", 5, "field 'members.net.metadata' must be an object, got int"),
    ("members/tree/hyperparameters", "trees=3", "field 'members.tree.hyperparameters' must be an object, got str"),
    ("feature_names", ("rsi", "macd"), "field 'feature_names' must be a list, got tuple"),
    ("feature_names", ["rsi", None], "field 'feature_names[1]' must be a string, got None"),
    ("feature_names", [], "field 'feature_names' must be a non-empty list of distinct names"),
    ("feature_names", ["rsi", "rsi"], "field 'feature_names' must be a non-empty list of distinct names"),
    ("classes", [], "field 'classes' must be a non-empty list of distinct names"),
    ("classes", ["BUY", "SELL", "BUY"], "field 'classes' must be a non-empty list of distinct names"),
    ("opsets/ai.onnx", True, "field 'opsets.ai.onnx' must be an integer, got True"),
    ("opsets/ai.onnx", 17.0, "field 'opsets.ai.onnx' must be an integer, got 17.0"),
    ("files", {"ensemble.onnx": b"cd"}, "field 'files.ensemble.onnx' must be a string, got b'cd'"),
    ("ensemble/outputs", [1], "field 'ensemble.outputs[0]' must be a string, got 1"),
    ("ensemble/members", ["tree"], "field 'ensemble.members' must name each of members ['net', 'tree'] once"),
    ("ensemble/members", ["tree", "net", "net"], "field 'ensemble.members' must name each of members "
                                                 "['net', 'tree'] once"),
    ("ensemble/members", ["tree", "cnn"], "field 'ensemble.members' must name each of members ['net', 'tree'] once"),
    ("decision/min_confidence", {"HOLD": 0.5, "STRONG": 0.9},
     "field 'decision.min_confidence.STRONG' names no class of ['SELL', 'HOLD', 'BUY']"),
    ("decision/fallback", "MAYBE", "field 'decision.fallback' is 'MAYBE', not a class of ['SELL', 'HOLD', 'BUY']"),
    ("decision/temperature", {"net": 1.5, "cnn": 2.0}, "field 'decision.temperature.cnn' names no member"),
    ("decision/temperature", {"net": "hot"}, "field 'decision.temperature.net' must be a number, got 'hot'"),
    ("precision/quantized_nodes", "MatMul_0", "field 'precision.quantized_nodes' must be a list, got str"),
    ("precision/min_agreement", "0.99", "field 'precision.min_agreement' must be a number, got '0.99'"),
    # Values only the converter's own are loaded (each of these loaded before):
    ("combine/method", "average", "field 'combine.method' is 'average'; only 'weighted' or 'stacking' load"),
    ("combine/method", "Weighted", "field 'combine.method' is 'Weighted'; only 'weighted' or 'stacking' load"),
    ("combine/source", {"file": "s.pkl", "sha256": "ab" * 32},
     "field 'combine.source' must be null for 'weighted' (only a stacker has a file)"),
    ("combine", {"method": "stacking", "source": None},
     "field 'combine.source' is missing: a 'stacking' combine names its stacker's file"),
    ("combine", {"method": "stacking"}, "field 'combine.source' is missing: a 'stacking' combine names its stacker's "
                                        "file"),
    # A temperature only in the range convert writes (0.01 to 100): 1e-50 is above 0 but 0 in the graph's float32,
    # and every row was then refused as having features too large (attack report 1, M2).
    ("decision/temperature", {"net": 0}, "field 'decision.temperature.net' must be a number from 0.01 to 100.0, got "
                                         "0.0"),
    ("decision/temperature", {"net": -2}, "field 'decision.temperature.net' must be a number from 0.01 to 100.0, got "
                                          "-2.0"),
    ("decision/temperature", {"net": float("nan")}, "field 'decision.temperature.net' must be a number from 0.01 to "
                                                    "100.0, got nan"),
    ("decision/temperature", {"net": float("inf")}, "field 'decision.temperature.net' must be a number from 0.01 to "
                                                    "100.0, got inf"),
    ("decision/temperature", {"net": 1e-50}, "field 'decision.temperature.net' must be a number from 0.01 to 100.0, "
                                             "got 1e-50"),
    ("decision/temperature", {"net": 0.0099}, "field 'decision.temperature.net' must be a number from 0.01 to 100.0, "
                                              "got 0.0099"),
    ("decision/temperature", {"net": 100.5}, "field 'decision.temperature.net' must be a number from 0.01 to 100.0, "
                                             "got 100.5"),
    ("decision/min_confidence", {"BUY": 1.5}, "field 'decision.min_confidence.BUY' must be a probability from 0 to "
                                              "1, got 1.5"),
    ("decision/min_confidence", {"BUY": -0.1}, "field 'decision.min_confidence.BUY' must be a probability from 0 to "
                                               "1, got -0.1"),
    ("decision/min_confidence", {"BUY": float("nan")}, "field 'decision.min_confidence.BUY' must be a probability "
                                                       "from 0 to 1, got nan"),
    ("members/net/weight", -1, "field 'members.net.weight' must be a finite number from 0 up, got -1.0"),
    ("members/net/weight", float("inf"), "field 'members.net.weight' must be a finite number from 0 up, got inf"),
    ("members/net/weight", float("nan"), "field 'members.net.weight' must be a finite number from 0 up, got nan"),
    # The graph holds weights in float32: there 1e-50 is 0 (an all-1e-50 combine predicted SELL at 0 for every row,
    # attack report 1, H5) and 1e39 infinite.
    ("members/net/weight", 1e-50, "field 'members.net.weight' is 1e-50, which the graph's float32 holds as 0.0; a "
                                  "weight is 0 or from about 1.4e-45 to 3.4e38"),
    ("members/net/weight", 1e39, "field 'members.net.weight' is 1e+39, which the graph's float32 holds as inf; a "
                                 "weight is 0 or from about 1.4e-45 to 3.4e38"),
    # A huge value is echoed cut short, with its size (a 3,000-digit integer parses from JSON):
    ("schema_version", 10**3000, "field 'schema_version' is 1" + "0" * 39 + "... (3001 digits), not one this "
                                 "runtime reads ((1,)); upgrade ensemble-onnx or rebuild with this version"),
    ("schema_version", "9" * 5000, "field 'schema_version' is '" + "9" * 39 + "... (5000 digits), not one this "
                                   "runtime reads ((1,)); upgrade ensemble-onnx or rebuild with this version"),
    ("combine/method", -(10**3000), "field 'combine.method' must be a string, got -" + "1" + "0" * 38 + "... (3001 "
                                    "digits)"),
    ("members/net/weight", "x" * 5000, "field 'members.net.weight' must be a number, got '" + "x" * 39 + "... (5000 "
                                       "characters)"),
    ("combine/method", "x" * 5000, "field 'combine.method' is '" + "x" * 39 + "... (5000 characters); only "
                                   "'weighted' or 'stacking' load"),
    ("decision/fallback", "M" * 5000, "field 'decision.fallback' is '" + "M" * 39 + "... (5000 characters), not a "
                                      "class of ['SELL', 'HOLD', 'BUY']"),
    # A lone surrogate loaded, then predict --format csv, score and compare --report crashed with
    # UnicodeEncodeError (attack report 3, H4).
    ("feature_names", ["\ud800x", "macd"], "field 'feature_names' holds '\\ud800x', which is not valid Unicode text "
                                          "(a lone surrogate cannot be written as UTF-8)"),
    ("classes", ["\udc00", "HOLD", "BUY"], "field 'classes' holds '\\udc00', which is not valid Unicode text (a "
                                          "lone surrogate cannot be written as UTF-8)"),
])
def test_a_bad_field_is_refused_by_its_path(path, value, message):
    manifest = _manifest()
    _edit(path, value)(manifest)
    with pytest.raises(FieldError) as caught:
        contract.parse_manifest(manifest)
    assert str(caught.value) == message
    assert caught.value.path == message.split("'")[1]


@pytest.mark.parametrize(("classes", "predict_clash", "score_clash"), [
    (["action", "HOLD", "BUY"], ["action"], []),
    (["x", "net_x", "y"], ["net_x"], ["p_net_x"]),
])
def test_classes_whose_output_columns_collide_load_but_no_writer_writes_them(classes, predict_clash, score_clash):
    # Attack report 3, H3: predict --format csv wrote two 'action' columns, score --members one p_net_x for two.
    # The commands' column names are not the artifact contract's: the manifest parses, each writer refuses.
    from runtime.batch.columns import output_column_clashes, predict_csv_columns, score_columns
    from runtime.errors import ArtifactError

    manifest = _manifest()
    manifest["classes"] = classes
    manifest["decision"] = None
    assert contract.parse_manifest(manifest).classes == classes
    members = ["tree", "net"]
    for writer, clash, name in ((predict_csv_columns, predict_clash, "predict --format csv"),
                                (score_columns, score_clash, "score")):
        if not clash:
            assert len(set(writer(classes, members))) == len(writer(classes, members))
            continue
        with pytest.raises(ArtifactError, match=rf"^classes .* with members \['tree', 'net'\] name the output "
                                                rf"column\(s\) {re.escape(str(clash))} more than once, which "
                                                rf"{re.escape(name)} cannot write; rename a class or a member"):
            writer(classes, members)
    assert output_column_clashes(classes, members) == sorted(predict_clash + score_clash)


def test_the_writers_name_their_columns_from_one_list():
    from runtime.batch.backfill import Layout
    from runtime.batch.columns import predict_csv_columns

    layout = Layout(("f",), ("x", "y"), ("m",), (), members=True)
    assert layout.score_columns == ["action", "confidence", "p_x", "p_y", "p_m_x", "p_m_y"]
    assert predict_csv_columns(["x", "y"], ["m"]) == ["symbol", "action", "confidence", "x", "y", "m_x", "m_y"]


def test_a_member_name_that_is_not_unicode_text_is_refused():
    manifest = _manifest()
    manifest["members"]["\udc00"] = manifest["members"].pop("net")
    manifest["ensemble"]["members"] = ["tree", "\udc00"]
    manifest["decision"]["temperature"] = {}
    with pytest.raises(FieldError, match=r"^field 'ensemble\.members' holds '\\udc00', which is not valid Unicode "
                                         r"text \(a lone surrogate cannot be written as UTF-8\)$"):
        contract.parse_manifest(manifest)


@pytest.mark.parametrize("edits", [
    {"combine": {"method": "stacking", "source": {"file": "stacker.pkl", "sha256": "ab" * 32}}},
    {"members/net/weight": 0},  # one member weighted out: the other still carries the sum
    {"members/net/weight": 0, "members/tree/weight": 0, "combine": {"method": "stacking",  # weights unused
                                                                     "source": {"file": "s.pkl", "sha256": "ab" * 32}}},
    {"decision/min_confidence": {"BUY": 1, "SELL": 0}},
    {"decision/temperature": {"net": 0.01, "tree": 100}},
])
def test_the_values_the_converter_writes_or_could_still_load(edits):
    manifest = _manifest()
    for path, value in edits.items():
        _edit(path, value)(manifest)
    contract.parse_manifest(manifest)


@pytest.mark.parametrize("value", [1e-45, 3.4e38])  # float32's smallest (subnormal) and about its largest
def test_a_weight_float32_holds_loads(value):
    manifest = _manifest()
    _edit("members/net/weight", value)(manifest)
    assert contract.parse_manifest(manifest).members["net"].weight == value


def test_a_weighted_combine_of_members_that_all_weigh_0_is_refused():
    manifest = _manifest()
    _edit("members/net/weight", 0)(manifest)
    _edit("members/tree/weight", 0.0)(manifest)
    with pytest.raises(FieldError) as caught:
        contract.parse_manifest(manifest)
    assert str(caught.value) == "field 'members' weigh 0 each: a weighted combine of them would be 0 for every class"


@pytest.mark.parametrize(("value", "shown"), [
    (17, "17"), (-(10**38), "-1" + "0" * 38), (10**40, "1" + "0" * 39 + "... (41 digits)"),
    (-(10**40), "-1" + "0" * 38 + "... (41 digits)"),  # 40 characters, the sign one of them
    pytest.param(10**5000, "an integer of about 5001 digits", id="10**5000"),  # str() raises past 4,300 digits
    ("9" * 41, "'" + "9" * 39 + "... (41 digits)"), ("1_000", "'1_000'"),
    ("a" * 41, "'" + "a" * 39 + "... (41 characters)"), (1.5, "1.5"), (None, "None"), (True, "True"),
    ([0] * 20, "[" + "0, " * 13 + "... (60 characters)"),
])
def test_a_value_in_a_message_is_cut_to_40_characters_and_its_size(value, shown):
    from runtime.errors import shortened

    assert shortened(value) == shown
    if isinstance(value, str):  # unquoted, for a string a message shows as words
        assert shortened(value, quoted=False) == (value if len(value) <= 40 else f"{value[:40]}{shown[40:]}")


@pytest.mark.parametrize(("top", "named"), [([], "list"), ("manifest", "str"), (None, "NoneType"), (3, "int")])
def test_a_manifest_that_is_no_object_is_refused_at_the_top_level(top, named):
    with pytest.raises(FieldError) as caught:
        contract.parse_manifest(top)
    assert str(caught.value) == f"field '(top level)' must be an object, got {named}"
    assert caught.value.path == "(top level)"


def test_a_field_error_is_a_value_error_of_the_family():
    error = FieldError("members.net.weight", "is missing")
    assert isinstance(error, ValueError) and isinstance(error, EnsembleOnnxError)
    assert (str(error), error.path) == ("field 'members.net.weight' is missing", "members.net.weight")


@pytest.mark.parametrize(("value", "tp", "message"), [
    ("yes", bool, "field 'x' must be true or false, got 'yes'"),
    (1, bool, "field 'x' must be true or false, got 1"),
    (3, bytes, "field 'x' must be bytes, got 3"),
    (True, int, "field 'x' must be an integer, got True"),
    (2.5, int, "field 'x' must be an integer, got 2.5"),
    (b"s", str, "field 'x' must be a string, got b's'"),
])
def test_a_leaf_of_the_wrong_type_is_named_in_words(value, tp, message):
    with pytest.raises(FieldError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        contract._check(value, tp, "x")


@pytest.mark.parametrize(("value", "tp", "want"), [
    (True, bool, True), (0, int, 0), (3, float, 3.0), ("s", str, "s"), (None, str | None, None),
    ("s", str | None, "s"), ([1, 2.5], list[float], [1.0, 2.5]), ({"a": 1}, dict[str, int], {"a": 1}),
    ({"k": [1]}, Any, {"k": [1]}), (None, Any, None),
])
def test_a_leaf_of_the_right_type_is_kept(value, tp, want):
    got = contract._check(value, tp, "x")
    assert got == want and type(got) is type(want)


def test_an_optional_field_given_as_null_must_still_be_allowed_null():
    with pytest.raises(FieldError, match="^field 'x' must be a string, got None$"):
        contract._check(None, str, "x")
    with pytest.raises(FieldError, match="^field 'x' must be a number, got None$"):
        contract._check(None, float, "x")


def test_to_json_leaves_out_unset_precision_fields_and_nothing_else():
    manifest = _manifest()
    manifest["precision"] = {"weights": "fp32"}
    manifest["decision"]["fallback"] = None
    out = contract.parse_manifest(manifest).to_json()
    assert out["precision"] == {"weights": "fp32"}
    assert out["decision"] == {"temperature": {"net": 2.0}, "min_confidence": {"BUY": 0.6}, "fallback": None,
                               "calibration": None}
    assert out["members"]["tree"]["metadata"] is None and out["combine"] == {"method": "weighted", "source": None}
    del manifest["precision"]
    assert contract.parse_manifest(manifest).to_json()["precision"] is None


def test_to_json_gives_back_the_manifest_it_was_parsed_from():
    manifest = _manifest()
    manifest["members"]["net"]["weight"] = 1.0
    manifest["decision"]["temperature"]["net"] = 2.0
    assert contract.parse_manifest(manifest).to_json() == manifest


def test_the_demo_build_parses(demo_artifacts):
    manifest = json.loads((demo_artifacts / "manifest.json").read_text())
    typed = contract.parse_manifest(manifest)
    assert typed.ensemble.members == manifest["ensemble"]["members"] and typed.files == manifest["files"]


# ------------------------------------------------------------------------------------------ digests


def test_canonical_is_sorted_compact_ascii_json():
    assert contract.canonical({"b": [1, 2.5], "a": {"z": "é", "y": None}}) == (
        b'{"a":{"y":null,"z":"\\u00e9"},"b":[1,2.5]}')


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_canonical_refuses_what_json_cannot_say(value):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        contract.canonical({"x": value})


def test_the_manifest_digest_covers_everything_but_files_and_the_build_id_everything():
    manifest = {"schema_version": 1, "files": {"a": "00"}, "classes": ["x"]}
    assert contract.bound_part(manifest) == {"schema_version": 1, "classes": ["x"]}
    assert contract.manifest_digest(manifest) == hashlib.sha256(b'{"classes":["x"],"schema_version":1}').hexdigest()
    assert contract.build_id(manifest) == hashlib.sha256(
        b'{"classes":["x"],"files":{"a":"00"},"schema_version":1}').hexdigest()
    assert manifest == {"schema_version": 1, "files": {"a": "00"}, "classes": ["x"]}  # not changed in place


@pytest.mark.parametrize(("want", "got", "where"), [
    ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, None),
    ({"a": 1}, {"a": 1.0}, "a"),
    ({"a": 1}, {"a": True}, "a"),
    ({"a": None}, {"a": 0}, "a"),
    ({"a": 1}, {"a": 1, "b": 2}, "b"),
    ({"a": 1, "b": 2}, {"b": 2}, "a"),
    ({"z": 1, "b": {"c": [1, {"d": "x"}]}}, {"z": 2, "b": {"c": [1, {"d": "y"}]}}, "b.c[1].d"),
    ({"m": [1, 2]}, {"m": [1, 2, 3]}, "m"),
    ({"m": [1, 2]}, {"m": [2, 1]}, "m[0]"),
    ({"m": [[1], [2]]}, {"m": [[1], [3]]}, "m[1][0]"),
    ({"m": {"n": 1}}, {"m": [1]}, "m"),
    ([1, 2], [1, 3], "[1]"),
    ([1], [1, 2], "(top level)"),
    (1, 2, "(top level)"),
    ("x", "x", None),
    ([], [], None),
    ({}, {}, None),
])
def test_first_difference_names_the_first_field_in_sorted_order(want, got, where):
    assert contract.first_difference(want, got) == where


def test_first_difference_prefixes_the_path_it_is_given():
    assert contract.first_difference({"a": 1}, {"a": 2}, "members") == "members.a"
    assert contract.first_difference([1], [2], "outputs") == "outputs[0]"


# -------------------------------------------------------------------------------- the wire walker


def _varint(n: int) -> bytes:
    n %= 1 << 64  # a negative int64 is written as its two's complement: ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def vint(number: int, value: int) -> bytes:
    return _tag(number, 0) + _varint(value)


def fixed64(number: int, value: int) -> bytes:
    return _tag(number, 1) + value.to_bytes(8, "little")


def fixed32(number: int, value: int) -> bytes:
    return _tag(number, 5) + value.to_bytes(4, "little")


def ld(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


RUN = protowire.RUN


@pytest.mark.parametrize(("buf", "want"), [
    (vint(1, 150), [(1, 0, 150)]),
    (vint(1, 2**64 - 1), [(1, 0, 2**64 - 1)]),
    (fixed64(2, 0x0102030405060708), [(2, 1, 0x0102030405060708)]),
    (fixed32(3, 0x01020304), [(3, 5, 0x01020304)]),
    (ld(4, b"abc") + vint(5, 1), [(4, 2, (2, 5)), (5, 0, 1)]),
    (ld(4, b""), [(4, 2, (2, 2))]),
    (vint(16, 1) + vint(16, 2), [(16, 0, 1), (16, 0, 2)]),             # two-byte tags are never a run
    (vint(1, 1) + vint(1, 300) + vint(1, -1) + ld(2, b"x"), [(1, 0, RUN), (2, 2, (18, 19))]),
    (vint(1, 1) + vint(2, 1) + vint(1, 1), [(1, 0, 1), (2, 0, 1), (1, 0, 1)]),
    (fixed32(3, 1) * 3 + vint(1, 5), [(3, 5, RUN), (1, 0, 5)]),
    (fixed32(3, 1) * 2 + fixed32(4, 1) + fixed32(3, 1), [(3, 5, RUN), (4, 5, 1), (3, 5, 1)]),
    (fixed64(2, 7) * 2 + fixed32(3, 1), [(2, 1, RUN), (3, 5, 1)]),
    (fixed32(3, 9) + fixed64(3, 9), [(3, 5, 9), (3, 1, 9)]),           # the same number, another wire type
    (fixed64(2, 5) + vint(1, 1), [(2, 1, 5), (1, 0, 1)]),
    (vint(1, 5) + vint(1, 6) + b"\x88\x08\x07", [(1, 0, RUN), (129, 0, 7)]),  # field 129's tag ends in 0x08
    (vint(1, 1) * 257 + b"\x88\x08\x07", [(1, 0, RUN), (129, 0, 7)]),  # ... and starts the run's second window
    (b"".join(vint(1, i) for i in range(3000)) + vint(2, 7), [(1, 0, RUN), (2, 0, 7)]),
    (vint(1, -1) * 400 + vint(2, 7), [(1, 0, RUN), (2, 0, 7)]),         # ten-byte varints, past the first window
    (fixed32(3, 1) * 700 + vint(2, 7), [(3, 5, RUN), (2, 0, 7)]),
    (fixed64(2, 1) * 300 + vint(2, 7), [(2, 1, RUN), (2, 0, 7)]),
    (vint(1, 3) * 2 + fixed32(1, 9), [(1, 0, RUN), (1, 5, 9)]),
])
def test_fields_reads_every_wire_type_and_reports_a_run_once(buf, want):
    assert list(protowire.fields(buf)) == want


def test_a_run_ends_where_its_message_ends():
    inner = vint(1, 4) * 3
    buf = inner + vint(1, 4) * 3 + vint(2, 9)
    assert list(protowire.fields(buf, 0, len(inner))) == [(1, 0, RUN)]
    assert list(protowire.fields(buf, len(inner))) == [(1, 0, RUN), (2, 0, 9)]
    inner32 = fixed32(3, 4) * 3
    buf32 = inner32 + fixed32(3, 4) * 3
    assert list(protowire.fields(buf32, 0, len(inner32))) == [(3, 5, RUN)]


def test_a_run_stops_at_its_last_full_value_when_the_message_ends_in_the_middle_of_one():
    buf = fixed32(3, 1) * 2 + b"\x1d\x00"
    with pytest.raises(ValueError, match=r"^field 3 runs past its message \(byte 15 of 12\)$"):
        list(protowire.fields(buf))
    with pytest.raises(ValueError, match=r"^truncated or overlong varint$"):
        list(protowire.fields(vint(1, 1) * 2 + b"\x08\x80"))


def test_an_overlong_varint_inside_a_run_is_refused_not_skipped():
    with pytest.raises(ValueError, match=r"^truncated or overlong varint$"):
        list(protowire.fields(vint(1, 1) * 2 + b"\x08" + b"\x80" * 10 + b"\x01" + vint(2, 1)))


@pytest.mark.parametrize(("buf", "message"), [
    (b"\x0a\xff", "truncated or overlong varint"),
    (b"\x08", "truncated or overlong varint"),
    (b"\x08" + b"\x80" * 10 + b"\x01", "truncated or overlong varint"),
    (b"\x0b", "wire type 3 of field 1 at byte 1"),
    (b"\x08\x01\x14", "wire type 4 of field 2 at byte 3"),
    (b"\x0e", "wire type 6 of field 1 at byte 1"),
    (b"\x0f", "wire type 7 of field 1 at byte 1"),
    (b"\x00\x00", "field 0 runs past its message (byte 2 of 2)"),
    (b"\x0a\x05ab", "field 1 runs past its message (byte 7 of 4)"),
    (b"\x11\x01\x02", "field 2 runs past its message (byte 9 of 3)"),
    (b"\x1d\x01", "field 3 runs past its message (byte 5 of 2)"),
])
def test_fields_refuses_what_is_no_protobuf_by_byte(buf, message):
    with pytest.raises(ValueError) as caught:
        list(protowire.fields(buf))
    assert str(caught.value) == message


def test_fields_with_want_yields_only_those_and_skips_runs_of_short_strings():
    buf = ld(7, b"ab") * 300 + ld(7, b"c" * 127) + ld(7, b"d" * 128) + ld(7, b"e") + vint(1, 9) + ld(7, b"f")
    assert list(protowire.fields(buf, want=frozenset({1}))) == [(1, 0, 9)]
    assert [n for n, _, _ in protowire.fields(buf)] == [7] * 303 + [1, 7]
    inner = ld(7, b"ab") * 3
    nested = inner + ld(7, b"ab") * 3 + vint(1, 9)
    assert list(protowire.fields(nested, 0, len(inner), want=frozenset({1}))) == []
    assert list(protowire.fields(nested, len(inner), want=frozenset({1}))) == [(1, 0, 9)]


def test_a_run_of_short_strings_that_is_wanted_is_read_field_by_field():
    buf = ld(7, b"ab") * 3 + ld(8, b"c")
    assert list(protowire.fields(buf, want=frozenset({7}))) == [(7, 2, (2, 4)), (7, 2, (6, 8)), (7, 2, (10, 12))]


def test_a_run_of_two_byte_tags_or_lengths_is_read_field_by_field():
    strings = ld(16, b"ab") * 3 + vint(1, 9)
    assert list(protowire.fields(strings, want=frozenset({1}))) == [(1, 0, 9)]
    assert [n for n, _, _ in protowire.fields(strings, want=frozenset({16}))] == [16] * 3
    long = ld(7, b"a" * 200) * 2 + vint(1, 9)
    assert list(protowire.fields(long, want=frozenset({1}))) == [(1, 0, 9)]
    short_then_long = ld(7, b"ab") + ld(7, b"c" * 200) + vint(1, 9)
    assert list(protowire.fields(short_then_long, want=frozenset({1}))) == [(1, 0, 9)]


# ONNX messages, by field number (onnx.proto3), written out by hand.

def tensor(name: bytes = b"w", location: int | None = None, external_data: bool = False) -> bytes:
    out = ld(1, b"\x02") + ld(8, name) if name else ld(1, b"\x02")
    if external_data:
        out += ld(13, ld(1, b"location") + ld(2, b"w.bin"))
    if location is not None:
        out += vint(14, location)
    return out


def attribute(*fields: bytes) -> bytes:
    return ld(1, b"attr") + b"".join(fields)


def node(*attributes: bytes) -> bytes:
    return ld(1, b"x") + ld(2, b"y") + ld(4, b"Op") + b"".join(ld(5, a) for a in attributes)


def graph(nodes: tuple[bytes, ...] = (), initializers: tuple[bytes, ...] = (), sparse: tuple[bytes, ...] = ()) -> bytes:
    return (b"".join(ld(1, n) for n in nodes) + ld(2, b"g") + b"".join(ld(5, t) for t in initializers)
            + b"".join(ld(15, s) for s in sparse))


def sparse_tensor(values: bytes, indices: bytes) -> bytes:
    return ld(1, values) + ld(2, indices) + vint(3, 2)


def model(g: bytes | None = None, functions: tuple[bytes, ...] = (), metadata: tuple[bytes, ...] = ()) -> bytes:
    out = vint(1, 8) + ld(2, b"test")
    if g is not None:
        out += ld(7, g)
    out += b"".join(ld(14, m) for m in metadata)
    return out + b"".join(ld(25, b"".join(ld(7, n) for n in f)) for f in functions)


def entry(key: bytes | None, value: bytes | None) -> bytes:
    return (ld(1, key) if key is not None else b"") + (ld(2, value) if value is not None else b"")


EXT = tensor(b"ext", location=1)


@pytest.mark.parametrize(("built", "found"), [
    (model(graph(initializers=(tensor(b"plain"),))), []),
    (model(graph(initializers=(tensor(b"plain", location=0),))), []),
    (model(graph(initializers=(tensor(b"plain"), EXT))), ["ext"]),
    (model(graph(initializers=(tensor(b"by_record", external_data=True),))), ["by_record"]),
    (model(graph(initializers=(tensor(b"", location=1),))), ["(unnamed)"]),
    (model(graph(initializers=(tensor(b"w\xff", location=1),))), ["w\ufffd"]),
    (model(graph(initializers=(tensor(b"odd", location=2),))), ["odd"]),
    (model(graph(sparse=(sparse_tensor(tensor(b"v", location=1), tensor(b"i")),))), ["v"]),
    (model(graph(sparse=(sparse_tensor(tensor(b"v"), tensor(b"i", location=1)),))), ["i"]),
    (model(graph(sparse=(vint(1, 0) + ld(2, tensor(b"i", location=1)),))), ["i"]),
    (model(graph((node(attribute(ld(5, EXT))),))), ["ext"]),
    (model(graph((node(attribute(ld(10, tensor(b"a")), ld(10, EXT))),))), ["ext"]),
    (model(graph((node(attribute(ld(22, sparse_tensor(EXT, tensor(b"i"))))),))), ["ext"]),
    (model(graph((node(attribute(ld(23, sparse_tensor(tensor(b"v"), EXT)))),))), ["ext"]),
    (model(graph((node(attribute(ld(6, graph(initializers=(EXT,))))),))), ["ext"]),
    (model(graph((node(attribute(ld(11, graph(sparse=(sparse_tensor(EXT, EXT),))))),))), ["ext", "ext"]),
    (model(graph((node(attribute(vint(5, 1), ld(10, EXT))),))), ["ext"]),          # a varint where a tensor goes
    (model(graph(initializers=(EXT,), sparse=(sparse_tensor(tensor(b"v", location=1), tensor(b"i")),))),
     ["ext", "v"]),
    (model(graph((node(attribute(ld(5, EXT), ld(22, sparse_tensor(tensor(b"v", location=1), tensor(b"i"))),
                             ld(6, graph(initializers=(tensor(b"g", location=1),))), ld(10, EXT))),))),
     ["ext", "v", "g", "ext"]),
    (model(graph((node(attribute(ld(3, EXT), ld(8, EXT))),))), []),                  # strings, not tensors
    (model(graph((node(attribute(fixed32(2, 0), ld(5, EXT))),))), ["ext"]),
    (model(vint(5, 1) + graph(initializers=(EXT,))), ["ext"]),
    (model(graph((node(attribute(ld(5, tensor(b"n1", location=1)))),),
                 initializers=(tensor(b"i1", location=1),))), ["i1", "n1"]),
    (model(graph((node(), node(attribute(ld(1, b"x")), attribute(ld(5, EXT)))),)), ["ext"]),
    (model(functions=((node(attribute(ld(5, EXT))),),)), ["ext"]),
    (model(graph(initializers=(tensor(b"g", location=1),)), functions=((node(attribute(ld(5, EXT))),),)),
     ["g", "ext"]),
    (model(graph(initializers=(tensor(b"a", location=1),))) + ld(7, graph(initializers=(tensor(b"b", location=1),))),
     ["a", "b"]),
    (vint(7, 3) + model(graph(initializers=(EXT,))), ["ext"]),
    (vint(25, 3) + model(functions=((node(attribute(ld(5, EXT))),),)), ["ext"]),
])
def test_external_tensors_are_found_wherever_they_sit(built, found):
    assert protowire.external_tensors(built) == found


def test_a_node_field_given_as_a_varint_hides_nothing():
    g = vint(1, 0) + ld(1, ld(1, b"x") + vint(5, 0) + ld(5, attribute(ld(5, EXT))))
    assert protowire.external_tensors(model(g)) == ["ext"]
    tensor_with_odd_name = vint(8, 3) + vint(14, 1)
    assert protowire.external_tensors(model(graph(initializers=(tensor_with_odd_name,)))) == ["(unnamed)"]


def _nested(depth: int, innermost: bytes = EXT) -> bytes:
    """A graph whose one node's attribute holds a graph, `depth` times, the last holding `innermost`."""
    g = graph(initializers=(innermost,))
    for _ in range(depth):
        g = graph((node(attribute(ld(6, g))),))
    return g


def test_subgraphs_nested_to_the_limit_are_walked_and_one_deeper_refused():
    assert protowire.MAX_GRAPH_DEPTH == 40
    assert protowire.external_tensors(model(_nested(40))) == ["ext"]
    with pytest.raises(ValueError, match=r"^subgraphs nested more than 40 deep$"):
        protowire.external_tensors(model(_nested(41)))


def test_a_function_body_counts_its_subgraphs_from_zero():
    body = (node(attribute(ld(6, _nested(39)))),)  # the attribute's graph is at depth 1, the innermost at 40
    assert protowire.external_tensors(model(functions=(body,))) == ["ext"]
    with pytest.raises(ValueError, match=r"^subgraphs nested more than 40 deep$"):
        protowire.external_tensors(model(functions=((node(attribute(ld(6, _nested(40)))),),)))


@pytest.mark.parametrize(("entries", "want"), [
    ((), {}),
    ((entry(b"k", b"v"), entry(b"x", b"")), {"k": "v", "x": ""}),
    ((entry(b"k", None),), {"k": ""}),
    ((entry(None, b"v"),), {"": "v"}),
    ((entry(b"k", b"1"), entry(b"k", b"2")), {"k": "2"}),
    ((vint(3, 1) + entry(b"k", b"v"),), {"k": "v"}),
    ((entry("é".encode(), "ü".encode()),), {"é": "ü"}),
])
def test_metadata_reads_every_entry_of_the_model(entries, want):
    assert protowire.metadata(model(graph(), metadata=entries)) == want


def test_metadata_reads_only_the_model_s_own_entries():
    nested = graph() + ld(14, entry(b"graph", b"doc"))
    assert protowire.metadata(vint(14, 3) + model(nested, metadata=(entry(b"k", b"v"),))) == {"k": "v"}


def test_metadata_that_is_no_text_is_refused():
    with pytest.raises(UnicodeDecodeError):
        protowire.metadata(model(metadata=(entry(b"k", b"\xff"),)))


def test_the_hand_written_messages_are_what_onnx_reads():
    onnx = pytest.importorskip("onnx")
    parsed = onnx.ModelProto.FromString(model(graph((node(attribute(ld(5, EXT))),), initializers=(EXT,)),
                                              metadata=(entry(b"k", b"v"),)))
    assert parsed.metadata_props[0].key == "k" and parsed.graph.initializer[0].name == "ext"
    assert parsed.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert parsed.graph.node[0].attribute[0].t.name == "ext"


# -------------------------------------------------------------------------------------- signing


@pytest.fixture(scope="module")
def crypto() -> Any:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return serialization, ed25519, ec


def _pem_private(key: Any, serialization: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key: Any, serialization: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys(crypto) -> dict[str, Any]:
    serialization, ed25519, ec = crypto
    release, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    curve = ec.generate_private_key(ec.SECP256R1())
    return {"release": release, "private": _pem_private(release, serialization),
            "public": _pem_public(release, serialization), "other_public": _pem_public(other, serialization),
            "other_private": _pem_private(other, serialization),
            "ec_private": _pem_private(curve, serialization), "ec_public": _pem_public(curve, serialization)}


MANIFEST = {"schema_version": 1, "classes": ["SELL", "BUY"], "files": {"ensemble.onnx": "00" * 32}}
MANIFEST_ID = hashlib.sha256(json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_sign_writes_the_record_of_the_build_its_key_and_a_signature_over_the_canonical_manifest(keys, crypto):
    from runtime.signing import sign

    serialization, _, _ = crypto
    data = sign(MANIFEST, keys["private"])
    record = json.loads(data)
    raw_public = keys["release"].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert set(record) == {"algorithm", "build_id", "key_sha256", "signature"}
    assert record["algorithm"] == "ed25519" and record["build_id"] == MANIFEST_ID
    assert record["key_sha256"] == hashlib.sha256(raw_public).hexdigest()
    signed_bytes = json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()
    keys["release"].public_key().verify(base64.b64decode(record["signature"]), signed_bytes)  # raises if not
    assert data == (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def test_a_signature_verifies_under_its_key_given_as_a_path_or_as_bytes(keys, tmp_path):
    from runtime.signing import sign, verify

    private, public = tmp_path / "release.pem", tmp_path / "release.pub.pem"
    private.write_bytes(keys["private"])
    public.write_bytes(keys["public"])
    data = sign(MANIFEST, private)
    assert verify(MANIFEST, data, public) is None
    assert verify(copy.deepcopy(MANIFEST), data, keys["public"]) is None
    assert verify(MANIFEST, sign(MANIFEST, str(private)), str(public)) is None


def _record(data: bytes, **changes: object) -> bytes:
    record = json.loads(data)
    record.update(changes)
    return json.dumps(record).encode()


def _refusal(manifest: dict[str, Any], signature: bytes | None, public_key: Any) -> str:
    from runtime.signing import SignatureError, verify

    with pytest.raises(SignatureError) as caught:
        verify(manifest, signature, public_key)
    return str(caught.value)


def test_an_unsigned_folder_is_refused_when_a_key_is_given(keys):
    assert _refusal(MANIFEST, None, keys["public"]) == (
        "the folder is not signed (no model.sig) and a public key was given.")


def test_another_key_s_signature_is_refused_naming_the_key(keys, tmp_path):
    from runtime.signing import sign

    public = tmp_path / "release.pub.pem"
    public.write_bytes(keys["public"])
    assert _refusal(MANIFEST, sign(MANIFEST, keys["other_private"]), public) == (
        f"manifest.sig: the signature does not match {public}: the folder was signed by another key.")
    assert _refusal(MANIFEST, sign(MANIFEST, keys["private"]), keys["other_public"]) == (
        "manifest.sig: the signature does not match the given key: the folder was signed by another key.")


def test_a_manifest_changed_after_signing_is_refused_naming_the_signed_build(keys):
    from runtime.signing import sign

    changed = {**MANIFEST, "classes": ["BUY", "SELL"]}
    assert _refusal(changed, sign(MANIFEST, keys["private"]), keys["public"]) == (
        f"manifest.sig: the signature does not match manifest.json (signed for build '{MANIFEST_ID}'; the manifest "
        f"changed after signing).")


def test_a_signature_that_is_not_the_manifest_s_is_refused(keys):
    from runtime.signing import sign

    data = sign(MANIFEST, keys["private"])
    forged = base64.b64encode(keys["release"].sign(b"another manifest")).decode()
    assert _refusal(MANIFEST, _record(data, signature=forged), keys["public"]) == (
        "manifest.sig: the signature does not match manifest.json under the given key (signed by another key, or "
        "the manifest changed after signing).")


def test_a_signature_with_characters_outside_base64_is_refused_not_cleaned(keys):
    from runtime.signing import sign

    data = sign(MANIFEST, keys["private"])
    signature = json.loads(data)["signature"]
    refused = _refusal(MANIFEST, _record(data, signature=signature[:8] + "*" + signature[8:]), keys["public"])
    assert refused.startswith("manifest.sig: not a signature record (")


@pytest.mark.parametrize(("record", "says"), [
    (b"not json", "manifest.sig: not a signature record (not JSON: Expecting value: line 1 column 1 (char 0))."),
    (b"{}", "manifest.sig: not a signature record (field 'algorithm' is missing)."),
    (b'{"signature": ""}', "manifest.sig: not a signature record (field 'algorithm' is missing)."),
    (b"[]", "manifest.sig: not a signature record (a JSON array, not an object)."),
    (b'{"signature": 5, "algorithm": "ed25519"}', "manifest.sig: not a signature record (field 'signature' is a "
                                                   "JSON number, not a string)."),
    (b'{"signature": "", "algorithm": "rsa", "key_sha256": "", "build_id": ""}',
     "manifest.sig: algorithm 'rsa'; this runtime checks ed25519."),
    (b'{"signature": "", "algorithm": "rsa", "algorithm": "ed25519"}',
     "manifest.sig: not a signature record (field 'algorithm' is written twice)."),
])
def test_a_signature_file_that_is_no_record_is_refused(keys, record, says):
    assert _refusal(MANIFEST, record, keys["public"]) == says


def test_keys_that_are_not_ed25519_are_refused_by_their_kind(keys, tmp_path):
    from runtime.signing import RESIGN, SignatureError, sign

    assert _refusal(MANIFEST, b"{}", keys["ec_public"]) == (
        f"the given key: an elliptic-curve key on secp256r1; manifest.sig (the signature format before model.sig) is "
        f"checked with the Ed25519 key that signed it. {RESIGN}")
    private = tmp_path / "ec.pem"
    private.write_bytes(keys["ec_private"])
    with pytest.raises(SignatureError) as caught:
        sign(MANIFEST, private)
    assert str(caught.value) == (f"{private}: an ECPrivateKey; signing takes an Ed25519 key (openssl genpkey "
                                 f"-algorithm ed25519 -out KEY.pem).")


def test_what_is_not_a_pem_key_is_refused_with_the_reason(keys, crypto):
    from runtime.signing import SignatureError, sign

    serialization, _, _ = crypto
    refused = _refusal(MANIFEST, b"{}", b"not a key")
    assert refused.startswith("the given key: not a PEM public key (") and refused.endswith(").")
    assert _refusal(MANIFEST, b"{}", keys["private"]).startswith("the given key: not a PEM public key (")
    encrypted = keys["release"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"secret"))
    for key in (b"not a key", encrypted, keys["public"]):
        with pytest.raises(SignatureError) as caught:
            sign(MANIFEST, key)
        assert str(caught.value).startswith("the given key: not an unencrypted PEM private key (")


def test_a_key_path_that_is_no_regular_file_is_refused_without_blocking(crypto, tmp_path):
    from runtime.signing import sign

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    open_before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    for where in (tmp_path, fifo):
        assert _refusal(MANIFEST, b"{}", where) == (
            f"{where}: the key is not a regular file (a folder, FIFO or device); name the PEM file.")
    if open_before is not None:
        assert len(os.listdir("/proc/self/fd")) == open_before  # the refused key's descriptor is closed
    missing = tmp_path / "missing.pem"
    assert _refusal(MANIFEST, b"{}", missing) == f"{missing}: cannot read the key (No such file or directory)."
    from runtime.signing import SignatureError

    with pytest.raises(SignatureError, match="cannot read the key"):
        sign(MANIFEST, missing)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only: /proc/self/mem fails its read")
def test_a_key_file_that_fails_its_read_is_refused(crypto):
    assert _refusal(MANIFEST, b"{}", "/proc/self/mem") == "/proc/self/mem: cannot read the key (Input/output error)."


def test_a_key_file_of_the_size_limit_is_read_whole_and_one_byte_more_is_refused(keys, tmp_path):
    from runtime.signing import MAX_KEY_BYTES, sign, verify

    assert MAX_KEY_BYTES == 64 * 1024
    padded = tmp_path / "padded.pub.pem"
    # Text before the PEM armour is ignored by the reader.
    pem = keys["public"].rstrip(b"\n")  # so that the limit's last byte is the armour's last '-'
    padded.write_bytes(b"#" * (MAX_KEY_BYTES - len(pem) - 1) + b"\n" + pem)
    assert padded.stat().st_size == MAX_KEY_BYTES
    assert verify(MANIFEST, sign(MANIFEST, keys["private"]), padded) is None
    padded.write_bytes(b"#" + padded.read_bytes())
    assert _refusal(MANIFEST, b"{}", padded) == (
        f"{padded}: {MAX_KEY_BYTES + 1} bytes is not a PEM key (limit {MAX_KEY_BYTES}).")


def test_without_cryptography_a_key_is_refused_with_the_install_hint(monkeypatch):
    from runtime.signing import INSTALL_HINT, sign

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)  # as on a host without the extra
    assert INSTALL_HINT == ("signed builds need the `cryptography` package: pip install --find-links dist/ "
                            "'ensemble-onnx[signing]' (dist/: the folder with the wheel `make dist` builds), or pip "
                            "install '.[signing]' in a clone of the repository")
    assert _refusal(MANIFEST, None, b"key") == INSTALL_HINT
    from runtime.signing import SignatureError

    with pytest.raises(SignatureError) as caught:
        sign(MANIFEST, b"key")
    assert str(caught.value) == INSTALL_HINT


# ------------------------------------------------------------------------------------------ the host


def _host(monkeypatch, tmp_path: Path, text: bytes | None) -> dict[str, Any]:
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_bytes(text)
    monkeypatch.setattr(host, "CPUINFO", path)
    return host.cpu()


X86 = b"""
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu sse avx512_vnni fma avx2 amx_int8 avx512f
address sizes\t: 46 bits: physical
flags\t\t: ignored, the first value counts

processor\t: 1
model name\t: another cpu
flags\t\t: fpu
"""


def test_the_first_processor_block_of_cpuinfo_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "CPUINFO", tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_bytes(X86 + b"bogus\xff: \xfe\n")
    assert host._cpuinfo() == {"processor": "0", "vendor_id": "GenuineIntel",
                               "model name": "Intel(R) Xeon(R) CPU @ 2.20GHz",
                               "flags": "fpu sse avx512_vnni fma avx2 amx_int8 avx512f",
                               "address sizes": "46 bits: physical"}
    (tmp_path / "cpuinfo").write_bytes(b"model name: x\x80y\n")
    assert host._cpuinfo() == {"model name": "x\ufffdy"}


@pytest.mark.parametrize(("text", "want"), [
    (X86, {"model": "Intel(R) Xeon(R) CPU @ 2.20GHz",
           "instruction_sets": ["AVX2", "FMA", "AVX-512F", "AVX-512 VNNI", "AMX-INT8"], "int8_fast": True}),
    (b"processor: 0\nmodel name: old\nflags: sse avx2 fma\n", {"model": "old", "instruction_sets": ["AVX2", "FMA"],
                                                               "int8_fast": False}),
    (b"processor: 0\nModel name: Neoverse-N1\nFeatures: fp asimd asimddp\n",
     {"model": "Neoverse-N1", "instruction_sets": ["NEON", "NEON dot product"], "int8_fast": True}),
    (b"processor: 0\nCPU part: 0xd0c\nFeatures: fp i8mm sve\n",
     {"model": "0xd0c", "instruction_sets": ["NEON I8MM", "SVE"], "int8_fast": True}),
    (b"processor: 0\nmodel name: zen\nflags: avx_vnni avx512bw avx512_bf16 avx512_fp16 amx_tile amx_bf16\n",
     {"model": "zen", "instruction_sets": ["AVX-512BW", "AVX-VNNI", "AVX-512 BF16", "AVX-512 FP16", "AMX",
                                           "AMX-BF16"], "int8_fast": True}),
    (b"processor: 0\nmodel name: flagless\n", {"model": "flagless", "instruction_sets": [], "int8_fast": None}),
    (b"processor: 0\nmodel name: \nflags: \n", {"model": platform.processor() or "unknown", "instruction_sets": [],
                                                 "int8_fast": None}),
])
def test_cpu_reports_the_model_and_the_instruction_sets_int8_needs(monkeypatch, tmp_path, text, want):
    assert _host(monkeypatch, tmp_path, text) == {**want, "cores": os.cpu_count()}


def test_a_host_without_cpuinfo_reports_what_python_knows(monkeypatch, tmp_path):
    monkeypatch.setattr(platform, "processor", lambda: "")  # a host Python cannot name either
    assert _host(monkeypatch, tmp_path, None) == {"model": "unknown", "cores": os.cpu_count(),
                                                  "instruction_sets": [], "int8_fast": None}
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert _host(monkeypatch, tmp_path, None)["model"] == "arm"
    assert host._cpuinfo() == {}


def test_this_host_is_reported_from_its_own_cpuinfo():
    report = host.cpu()
    assert set(report) == {"model", "cores", "instruction_sets", "int8_fast"} and report["cores"] == os.cpu_count()
    assert report["model"] and report["model"] != "unknown" or not Path("/proc/cpuinfo").exists()


@pytest.mark.parametrize(("report", "note"), [
    ({"model": "fast", "int8_fast": True}, None),
    ({"model": "slow", "int8_fast": False},
     "slow has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): onnxruntime's 8-bit kernels emulate "
     "them, and an int8 build can be slower than fp32 here. Benchmark both on the serving host (`ensemble-onnx "
     "bench FP32 INT8 --models ...`)."),
    ({"model": "odd", "int8_fast": None}, "cannot tell whether odd has the instructions that make 8-bit weights pay."),
    ({"model": "bare"}, "cannot tell whether bare has the instructions that make 8-bit weights pay."),
    ({}, "cannot tell whether None has the instructions that make 8-bit weights pay."),
    ({"int8_fast": False}, "None has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): onnxruntime's "
     "8-bit kernels emulate them, and an int8 build can be slower than fp32 here. Benchmark both on the serving "
     "host (`ensemble-onnx bench FP32 INT8 --models ...`)."),
])
def test_int8_note_warns_where_8_bit_weights_do_not_pay(report, note):
    assert host.int8_note(report) == note


def test_an_integer_past_floats_range_is_a_field_error_not_an_overflow():
    with pytest.raises(contract.FieldError) as info:
        contract._check(10**400, float, "decision.min_confidence.BUY")
    assert str(info.value) == ("field 'decision.min_confidence.BUY' must be a finite number, got an integer of 401 "
                               "digits")
