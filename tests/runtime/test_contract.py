"""What the contract promises, one by one: the typed manifest and its digests (`runtime/contract.py`) and the
error root (`runtime/errors.py`). The wire walker, the signing units and the host report: test_protowire.py,
test_signing_units.py, test_host.py.

Every expected value is written by hand here: digests by hashlib over JSON written out with `json.dumps`.
Nothing here trains or loads a model, so each test runs in milliseconds and counts in the mutation run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from forge import set_path

from runtime import contract
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


def test_an_integer_past_floats_range_is_a_field_error_not_an_overflow():
    with pytest.raises(contract.FieldError) as info:
        contract._check(10**400, float, "decision.min_confidence.BUY")
    assert str(info.value) == ("field 'decision.min_confidence.BUY' must be a finite number, got an integer of 401 "
                               "digits")
