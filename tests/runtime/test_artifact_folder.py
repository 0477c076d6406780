"""The runtime's edges, each pinned by a test a small deliberate bug would fail: what `make mutation` found
the runtime tests did not check. Runtime only (numpy + onnxruntime): marked `slim` like test_serving.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import runtime
from runtime.artifacts import REBUILD, _check_onnxruntime
from runtime.errors import InputError
from runtime.features import rows_to_matrix
from runtime.records import at_line, read_records, records_to_matrix

pytestmark = pytest.mark.slim


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


@pytest.fixture(scope="module")
def legacy(demo_artifacts, tmp_path_factory):
    """The demo build as built before manifest.json had a `domain`: no range is checked, so a row far outside
    training reaches the members, and the overflow guard on their outputs is what refuses it."""
    from tests.forge import rebound

    return runtime.load(rebound(demo_artifacts, tmp_path_factory.mktemp("legacy") / "artifacts",
                                lambda manifest: manifest.pop("domain")))


@pytest.fixture
def folder(demo_artifacts, tmp_path):
    return Path(shutil.copytree(demo_artifacts, tmp_path / "artifacts"))


def edit_manifest(folder: Path, **changes) -> Path:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = manifest
        for p in parents:
            target = target[p]
        target[key] = value
    path.write_text(json.dumps(manifest))
    return path


def test_describe_reports_exactly_what_the_manifest_says(ens, demo_artifacts):
    m = json.loads((demo_artifacts / "manifest.json").read_text())
    assert ens.describe() == {
        "path": str(demo_artifacts), "schema_version": m["schema_version"], "classes": m["classes"],
        "feature_names": m["feature_names"], "combine": m["combine"]["method"],
        "members": {n: {"kind": m["members"][n]["kind"], "weight": m["members"][n]["weight"],
                        "source_sha256": m["members"][n]["source"]["sha256"]} for n in m["ensemble"]["members"]},
        "decision": m["decision"], "precision": m["precision"], "files": m["files"], "parity": m["parity"],
        "build_libraries": m["libraries"], "onnxruntime": ort.__version__,
        "build_id": hashlib.sha256(json.dumps(m, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
        "host": ens.describe()["host"]}
    assert list(ens.describe()["members"]) == m["ensemble"]["members"]
    assert set(ens.describe()["host"]) >= {"model", "instruction_sets"}


def test_a_manifest_without_its_precision_and_policy_is_refused_by_field(folder):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["precision"], manifest["decision"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{path}: field '") + "(decision|precision)"):
        runtime.load(folder)


def test_load_keeps_the_path_and_the_callers_session_options(demo_artifacts):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 1
    ens = runtime.load(demo_artifacts, options)
    assert ens.path == str(demo_artifacts)
    assert ens._session.get_session_options().intra_op_num_threads == 1
    assert ens._session.get_session_options().log_severity_level == 1
    assert ens._session.get_providers() == ["CPUExecutionProvider"]
    default = ort.SessionOptions().log_severity_level
    assert runtime.load(demo_artifacts)._session.get_session_options().log_severity_level == default


def test_an_ensemble_graph_onnxruntime_cannot_load_is_named(folder):
    graph = b"not an onnx graph"
    (folder / "ensemble.onnx").write_bytes(graph)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["ensemble.onnx"] = hashlib.sha256(graph).hexdigest()
    path.write_text(json.dumps(manifest))
    # Not even protobuf: refused while reading the graph's own record of its build, before onnxruntime sees it.
    graph_path = folder / "ensemble.onnx"
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{graph_path}: not a readable ONNX model")):
        runtime.load(folder)


@pytest.mark.parametrize(("field", "value"), [("input", "x"), ("outputs", ["probabilities", "label"])])
def test_a_graph_whose_inputs_or_outputs_differ_from_the_manifest_is_named(folder, field, value):
    edit_manifest(folder, **{f"ensemble__{field}": value})
    # The graph carries the manifest it was built for: the edit is refused by field.
    with pytest.raises(runtime.ArtifactError,
                       match=re.escape(f"{folder / 'manifest.json'}: field 'ensemble.{field}' differs")):
        runtime.load(folder)


def test_zero_rows_are_refused_by_name(ens):
    with pytest.raises(runtime.InputError, match="^no rows to score.$"):
        ens.predict_proba(np.zeros((0, len(ens.feature_names))))


# --- read_verified: each refusal names the file or field -----------------------------------------------------

def test_a_path_that_is_no_folder_is_named(tmp_path):
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{tmp_path / 'nowhere'}: not an artifacts folder")):
        runtime.load(tmp_path / "nowhere")


def test_a_symlinked_manifest_is_refused_by_name(folder):
    (folder / "manifest.json").rename(folder.parent / "elsewhere.json")
    (folder / "manifest.json").symlink_to(folder.parent / "elsewhere.json")
    with pytest.raises(runtime.ArtifactError, match="'manifest.json' is not a regular file"):
        runtime.load(folder)


def test_a_symlinked_member_file_is_refused_by_its_manifest_name(folder):
    (folder / "members" / "nhits.onnx").rename(folder.parent / "n.onnx")
    (folder / "members" / "nhits.onnx").symlink_to(folder.parent / "n.onnx")
    with pytest.raises(runtime.ArtifactError, match="'members/nhits.onnx' is not a regular file"):
        runtime.load(folder)


def test_a_linked_folder_on_the_way_to_a_listed_file_is_refused_by_name(folder):
    (folder / "members").rename(folder.parent / "members-elsewhere")
    (folder / "members").symlink_to(folder.parent / "members-elsewhere", target_is_directory=True)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    # Refused when first reached, before any file under the link is read (the fallback without dir_fd reads
    # through the link, then refuses the link as unlisted).
    assert re.fullmatch(re.escape(f"{folder / 'members'}: 'members' (on the way to 'members/") + r"\w+\.onnx'\) is "
                        + re.escape(f"not a folder (a link or a file); {REBUILD}."), str(err.value)), str(err.value)


def test_without_dir_fd_files_are_read_by_path_with_the_same_refusals(folder, monkeypatch, tmp_path):
    import runtime.artifacts

    expected = runtime.load(folder).manifest
    monkeypatch.setattr(runtime.artifacts, "_AT", False)  # what a platform without openat(2) runs
    assert runtime.load(folder).manifest == expected
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(tmp_path / "nowhere")
    assert str(err.value) == f"{tmp_path / 'nowhere'}: not an artifacts folder; {REBUILD}."
    (folder / "members" / "nhits.onnx").rename(folder.parent / "n.onnx")
    (folder / "members" / "nhits.onnx").symlink_to(folder.parent / "n.onnx")
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / 'members' / 'nhits.onnx'}: 'members/nhits.onnx' is not a regular file (a "
                              f"link); {REBUILD}.")


@pytest.mark.parametrize(("text", "match"), [
    ("[1, 2]", r"field '\(top level\)' must be an object, got list"),
    ('{"schema_version": 1}', r"field 'feature_names' is missing"),
])
def test_a_manifest_without_its_fields_names_them(folder, text, match):
    (folder / "manifest.json").write_text(text)
    with pytest.raises(runtime.ArtifactError, match=re.escape(str(folder / "manifest.json")) + ": " + match):
        runtime.load(folder)


@pytest.mark.parametrize("opsets", [{"ai.onnx": 17, "ai.onnx.ml": 3, "com.example": 1}, {"ai.onnx": "17"}])
def test_an_unknown_opset_domain_or_version_is_refused(folder, opsets):
    edit_manifest(folder, opsets=opsets)
    with pytest.raises(runtime.ArtifactError, match="field 'opsets"):
        runtime.load(folder)


LONG = "k" * 100_000


@pytest.mark.parametrize(("edit", "says"), [
    (lambda m: m["decision"]["temperature"].__setitem__(LONG, 1.0),
     "field 'decision.temperature." + "k" * 79 + "... (100021 characters)' names no member"),
    (lambda m: m["decision"]["min_confidence"].__setitem__(LONG, 0.5),
     "field 'decision.min_confidence." + "k" * 76 + "... (100024 characters)' names no class"),
    (lambda m: m["files"].__setitem__("../" + LONG, "0" * 64),
     "file entry '../" + "k" * 36 + "... (100003 characters) points outside the folder"),
    (lambda m: m.__setitem__(LONG, 1), "field '" + "k" * 100 + "... (100000 characters)' differs from the build"),
    (lambda m: m["members"].__setitem__(LONG, m["members"]["xgboost"]),
     "field 'ensemble.members' must name each of members ['" + "k" * 39 + "... (100000 characters), 'lightgbm', "
     "'nhits', 'patchtst', 'xgboost'] once"),
])
def test_a_long_manifest_key_is_cut_short_in_the_refusal(folder, edit, says):
    # Keys become field paths and lists in messages: each of these printed a 100,000-character message.
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert says in str(err.value) and len(str(err.value)) < 500, str(err.value)[:600]


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside.json", "members/../../outside.json"])
def test_a_file_entry_outside_the_folder_is_refused(folder, entry):
    (folder.parent / "outside.json").write_text("{}")
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][entry] = hashlib.sha256(b"{}").hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"file entry '{entry}' points outside the folder")):
        runtime.load(folder)


def test_an_ensemble_file_that_is_not_verified_is_refused(folder):
    edit_manifest(folder, ensemble__file="members/absent.onnx")
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / 'manifest.json'}: field 'ensemble.file'")):
        runtime.load(folder)


# --- the onnxruntime a build needs ----------------------------------------------------------------------------

HERE = ".".join(ort.__version__.split(".")[:2])
NEXT = f"{ort.__version__.split('.')[0]}.{int(ort.__version__.split('.')[1]) + 1}"


@pytest.mark.parametrize("needs", [None, "", HERE, f"{HERE}.9", "1.0"])
def test_an_onnxruntime_at_or_above_the_requirement_serves(needs):
    _check_onnxruntime({"precision": {"weights": "int8", "min_onnxruntime": needs}}, Path("m.json"))
    _check_onnxruntime({}, Path("m.json"))


@pytest.mark.parametrize("needs", [NEXT, "99.0", f"{int(HERE.split('.')[0]) + 1}.0"])
def test_an_onnxruntime_below_the_requirement_is_refused_by_field(needs):
    with pytest.raises(runtime.ArtifactError, match=re.escape(
            f"m.json: field 'precision' says these int8 weights need onnxruntime>={needs}; this host has "
            f"{ort.__version__}. Upgrade onnxruntime, or serve a --precision fp32 build.")):
        _check_onnxruntime({"precision": {"weights": "int8", "min_onnxruntime": needs}}, Path("m.json"))


def test_a_requirement_that_is_no_version_is_refused_by_field(folder):
    edit_manifest(folder, precision={"weights": "int8", "min_onnxruntime": "one.two"})
    with pytest.raises(runtime.ArtifactError, match=re.escape(
            f"{folder / 'manifest.json'}: field 'precision.min_onnxruntime' is 'one.two', not a version")):
        runtime.load(folder)


def test_load_checks_the_requirement_and_names_the_manifest(folder):
    edit_manifest(folder, precision={"weights": "int8", "min_onnxruntime": "99.0"})
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / 'manifest.json'}: field 'precision'")):
        runtime.load(folder)


# --- rows_to_matrix and the records the command line reads -------------------------------------------------

NAMES = ("a", "b", "c")


class Frame:
    """Just enough of a DataFrame: `columns`, `to_numpy` and column selection (what the runtime duck-types)."""

    def __init__(self, columns, values):
        self.columns, self.values = list(columns), np.asarray(values, dtype=object)

    def __getitem__(self, columns):
        return Frame(columns, self.values[:, [self.columns.index(c) for c in columns]])

    def to_numpy(self):
        return self.values


def test_a_frame_is_aligned_by_name_and_passthrough_columns_dropped():
    frame = Frame(["c", "symbol", "a", "b"], [[3.0, "BTC", 1.0, 2.0]])
    out = rows_to_matrix(frame, NAMES, passthrough=("symbol",))
    assert out.dtype == np.float64 and out.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(InputError, match=r"^DataFrame: missing feature\(s\) \['b'\]"):
        rows_to_matrix(Frame(["a", "c"], [[1.0, 3.0]]), NAMES)


def test_an_object_with_columns_but_no_to_numpy_is_not_taken_for_a_frame():
    class ColumnsOnly(list):
        columns = ["a", "b", "c"]
    assert rows_to_matrix(ColumnsOnly([[1, 2, 3]]), NAMES).tolist() == [[1.0, 2.0, 3.0]]


def test_mappings_are_aligned_into_float64_rows_and_faults_name_row_and_feature():
    out = rows_to_matrix([{"c": 3, "b": 2, "a": 1}, {"a": 4, "b": 5, "c": 6, "symbol": "X"}], NAMES,
                         passthrough=("symbol",))
    assert out.dtype == np.float64 and out.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(InputError, match=r"^row 1: missing feature\(s\) \['c'\]"):
        rows_to_matrix([{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2}], NAMES)
    with pytest.raises(InputError, match="^row 1, feature 'b': 'x' is not a number"):
        rows_to_matrix([{"a": 1, "b": 2, "c": 3}, {"a": 1, "b": "x", "c": 3}], NAMES)
    big = rows_to_matrix([{"a": 2**60 + 1, "b": 0.1, "c": -1}], NAMES)
    assert big[0, 0] == float(2**60 + 1) and big[0, 1] == 0.1


@pytest.mark.parametrize("rows", ["a,b,c", b"1,2,3", [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]], [[1, 2, 3], {"a": 1}]])
def test_text_and_mixed_lists_are_refused(rows):
    with pytest.raises(InputError, match="^rows must be a mapping, a list of mappings, a DataFrame or a 2-D array"):
        rows_to_matrix(rows, NAMES)


def test_an_empty_list_is_an_array_of_no_rows():
    with pytest.raises(InputError, match=r"shape \(n, 3\)"):
        rows_to_matrix([], NAMES)


def test_read_records_takes_json_lines_and_csv_with_line_numbers():
    assert read_records('\n{"a": 1, "s": "x"}\n\n{"a": 2.5}\n') == [(2, {"a": 1, "s": "x"}), (4, {"a": 2.5})]
    # CSV cells stay their text (records_to_matrix parses the features; a passthrough column passes unchanged)
    assert read_records("a,s\n1,x\n\n 2.5 ,y\n") == [(2, {"a": "1", "s": "x"}), (4, {"a": " 2.5 ", "s": "y"})]
    assert read_records("a,s\n,\n1,x\n") == [(3, {"a": "1", "s": "x"})]


@pytest.mark.parametrize(("text", "match"), [
    ("", "^no rows in the input.$"), ("\n  \n", "^no rows in the input.$"),
    ('{"a": 1}\n{"a": \n', r"^line 2: not a JSON object \("),
    ('{"a": 1}\n[1, 2]\n', "^line 2: not a JSON object.$"),
    ("a,b\n1,2\n1,2,3\n", "^line 3: 3 cells under a header of 2.$"),
])
def test_unreadable_records_are_refused_by_line(text, match):
    with pytest.raises(InputError, match=match):
        read_records(text)


@pytest.mark.parametrize(("text", "message"), [
    # 'symbol' is no feature: any repeated key is named as a key
    ('{"a": 1, "b": 2, "c": 3, "symbol": "A", "symbol": "B"}\n', "line 1: key 'symbol' given more than once."),
    # Python's own message advised calling sys.set_int_max_str_digits() and called the line no JSON object
    ('{"a": 1}\n{"a": ' + "7" * 5000 + "}\n", "line 2: an integer of more than 4,300 digits, too long to read as "
                                            "a number."),
    ('{"' + "k" * 100_000 + '": 1, "' + "k" * 100_000 + '": 2}\n',
     "line 1: key '" + "k" * 39 + "... (100000 characters) given more than once."),
])
def test_a_json_line_json_cannot_give_as_one_record_is_refused_saying_why(text, message):
    with pytest.raises(InputError) as err:
        read_records(text)
    assert str(err.value) == message


def test_a_long_unknown_key_is_cut_short():
    records = read_records(json.dumps({"a": 1, "b": 2, "c": 3, "k" * 100_000: 1}) + "\n")
    with pytest.raises(InputError) as err:
        records_to_matrix(records, NAMES)
    assert str(err.value) == ("1 row(s) refused, nothing scored:\n  line 1: unknown feature(s) ['" + "k" * 39
                              + "... (100000 characters)]; expected exactly ['a', 'b', 'c'].")


def test_a_line_of_20000_unknown_keys_names_the_first_few_and_how_many_more():
    records = read_records(json.dumps({"a": 1, "b": 2, "c": 3, **{f"k{i}": 1 for i in range(20_000)}}) + "\n")
    with pytest.raises(InputError) as err:
        records_to_matrix(records, NAMES)
    assert str(err.value) == ("1 row(s) refused, nothing scored:\n  line 1: unknown feature(s) ['k0', 'k1', 'k2', "
                              "'k3', 'k4', ... 19,995 more]; expected exactly ['a', 'b', 'c'].")
    header = ",".join(["a", "b", "c", *(f"k{i}" for i in range(20_000)), "k7"])  # counted in linear time
    with pytest.raises(InputError) as err:
        read_records(header + "\n" + ",".join(["1"] * 20_004) + "\n")
    assert str(err.value) == "line 1: the header names column(s) ['k7'] more than once."


def test_records_become_one_matrix_or_one_error_naming_every_bad_line():
    records = read_records("c,a,b,symbol\n3,1,2,X\n6,4,5,Y\n")
    out = records_to_matrix(records, NAMES)
    assert out.dtype == np.float64 and out.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert records_to_matrix([], NAMES).shape == (0, 3)
    bad = read_records("a,b,c\n1,2,3\nx,2,3\n1,2,nan\n")
    with pytest.raises(InputError) as err:
        records_to_matrix(bad, NAMES)
    # The line is the row's one location: "line 3: row 0, ..." named a row 0 that means nothing to the user.
    assert str(err.value) == ("2 row(s) refused, nothing scored:\n  line 3: feature 'a': 'x' is not a number.\n"
                              "  line 4: feature 'c': nan is not finite; impute it before scoring.")
    with pytest.raises(InputError, match="line 2: unknown feature"):
        records_to_matrix(read_records("a,b,c,label\n1,2,3,BUY\n"), NAMES)
    rows = records_to_matrix(read_records("a,b,c,label\n1,2,3,BUY\n"), NAMES, passthrough=("label",))
    assert rows.tolist() == [[1, 2, 3]]


def test_json_lines_are_aligned_by_key_line_by_line_whatever_their_order_or_the_first_lines():
    # predict, compare, drift and evaluate read each JSON line on its own: no line's key order (the first
    # line's included) decides where another line's values go; a missing or an unknown key names its line.
    records = read_records('{"c": 3, "a": 1, "b": 2, "symbol": "X"}\n{"b": 5, "symbol": "Y", "c": 6, "a": 4}\n'
                           '{"a": 7, "b": 8, "c": 9}\n')
    assert records_to_matrix(records, NAMES).tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    text = '{"a": 1, "b": 2, "c": 3}\n{"c": 3, "a": 1}\n{"b": 2, "a": 1, "c": 3, "d": 4}\n'
    with pytest.raises(InputError) as err:
        records_to_matrix(read_records(text), NAMES)
    assert str(err.value) == ("2 row(s) refused, nothing scored:\n  line 2: missing feature(s) ['b'].\n"
                              "  line 3: unknown feature(s) ['d']; expected exactly ['a', 'b', 'c'].")


# --- found by `make mutation`: the overflow refusal, exact messages, an int8 manifest's precision -------------

def test_rows_a_member_overflows_on_are_refused_naming_the_first_its_largest_feature_and_counting_them(legacy):
    ens = legacy
    rows = np.full((4, len(ens.feature_names)), 0.5)
    rows[1, 7] = -1e38  # finite in float64, past what the members' float32 activations hold
    rows[3] = 1e38
    with pytest.raises(InputError) as err:
        ens.predict_proba(rows)
    # The first fault in member order: trees never overflow, N-HiTS comes before PatchTST (both overflow here).
    assert str(err.value) == ("row 1: member 'nhits' produced non-finite probabilities (2 row(s) affected): the "
                              "row's features are too large for its float32 arithmetic (largest: 'volume_ratio' = "
                              "-1e+38), far outside the range the models were trained on.")
    assert err.value.row == 1  # for a caller that knows the row by its own number (a line of a file)
    assert ens.predict_proba(rows[[0, 2]]).shape == (2, 3)  # the other rows score alone
    with pytest.raises(InputError) as err:
        ens.predict([dict(zip(ens.feature_names, r, strict=True)) for r in rows[2:]])
    assert str(err.value).startswith("row 1: member 'nhits' produced non-finite probabilities (1 row(s) affected): "
                                     "the row's features are too large for its float32 arithmetic (largest: "
                                     "'rsi_14' = 1e+38)")


def test_a_row_refusal_is_restated_at_the_records_line_and_any_other_refusal_kept():
    one_row = InputError("row 2: member 'm' produced non-finite probabilities.")
    one_row.row = 2
    records = [(2, {}), (4, {}), (5, {}), (9, {}), (10, {})]
    assert str(at_line(one_row, records)) == "line 5: member 'm' produced non-finite probabilities."
    assert str(at_line(one_row, records, first=2)) == "line 10: member 'm' produced non-finite probabilities."
    whole = InputError("no rows to score.")
    assert at_line(whole, records) is whole


def test_predict_names_the_line_of_a_row_a_member_overflows_on(legacy, tmp_path):
    ens = legacy
    from click.testing import CliRunner

    from convert.cli import main

    rows = np.full((3, len(ens.feature_names)), 0.5)
    rows[2, 5] = 1e38
    text = "\n".join(json.dumps(dict(zip(ens.feature_names, map(float, r), strict=True))) for r in rows)
    (tmp_path / "rows.jsonl").write_text("\n" + text.replace("\n", "\n\n", 1) + "\n")  # rows on lines 2, 4, 5
    result = CliRunner().invoke(main, ["predict", ens.path, "--input", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 1
    assert result.output == ("Error: InputError: line 5: member 'nhits' produced non-finite probabilities (1 row(s) "
                             "affected): the row's features are too large for its float32 arithmetic (largest: "
                             "'bb_position' = 1e+38), far outside the range the models were trained on.\n")


@pytest.mark.parametrize(("x", "message"), [
    (np.zeros((2, 17)), "features must have shape (n, 18) in the order ['rsi_14', 'macd', 'macd_signal']...; got "
                        "shape (2, 17)."),
    (np.zeros(18), "features must have shape (n, 18) in the order ['rsi_14', 'macd', 'macd_signal']...; got "
                   "shape (18,). Wrap a single row as [row]."),
    ([[1.0] * 18, [1.0] * 17], None),
    (np.zeros((1, 18), dtype=bool), "features must be numbers; got an array of dtype bool."),
])
def test_array_refusals_say_exactly_what_is_wrong(ens, x, message):
    with pytest.raises(InputError) as err:
        ens.predict_proba(x)
    if message is None:
        assert str(err.value).startswith("features must be a rectangular 2-D array (")
    else:
        assert str(err.value) == message


def test_a_precision_edited_after_the_build_is_refused_by_field(folder):
    precision = {"weights": "int8", "scheme": "test", "min_agreement": 0.99, "min_onnxruntime": "1.22"}
    edit_manifest(folder, precision=precision)
    with pytest.raises(runtime.ArtifactError, match="field 'precision"):
        runtime.load(folder)


def test_json_lines_may_start_with_spaces():
    assert read_records('  {"a": 1}\n') == [(1, {"a": 1})]


# --- what stands at a listed path, and what else the folder holds ---------------------------------------------

@pytest.mark.parametrize("rel", ["README.md", "manifest.json", "manifest.sig", "members/nhits.onnx"])
def test_a_folder_in_place_of_a_listed_file_is_refused_by_name(folder, rel):
    # Found: os.fdopen raised IsADirectoryError before the fstat check ran ("internal error" from every command).
    (folder / rel).unlink(missing_ok=True)
    (folder / rel).mkdir()
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == f"{folder / rel}: '{rel}' is not a regular file (a folder); {REBUILD}."


@pytest.mark.parametrize("entry", ["", ".", "a\0b", "members/", "members//nhits.onnx", "./README.md"])
def test_a_file_entry_that_is_no_plain_path_inside_the_folder_is_refused(folder, entry):
    # Found: "" and "." crashed unpacking the path's parts, a NUL in os.open: ValueError, not ArtifactError.
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][entry] = hashlib.sha256(b"").hexdigest()
    path.write_text(json.dumps(manifest))  # `files` is bound by hashes, not into the graph: no re-binding needed
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{path}: file entry {entry!r} is not a path inside the folder (names joined by '/', "
                              f"none empty, '.' or '..', no NUL); {REBUILD}.")


def test_a_listed_fifo_is_refused_by_its_kind_without_being_opened(folder):
    import threading

    (folder / "README.md").unlink()
    os.mkfifo(folder / "README.md")
    opened = threading.Event()

    def writer() -> None:  # open(2) of a FIFO for writing returns only once a reader has opened it
        with open(folder / "README.md", "wb"):
            opened.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
        assert str(err.value) == f"{folder / 'README.md'}: 'README.md' is not a regular file (a FIFO); {REBUILD}."
        assert not opened.wait(0.2), "the load opened the FIFO before refusing it"
    finally:
        os.close(os.open(folder / "README.md", os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
        thread.join(5)


def test_a_listed_socket_or_device_is_refused_by_its_kind(folder, monkeypatch):
    import socket
    import stat

    (folder / "README.md").unlink()
    monkeypatch.chdir(folder)  # a socket's path is limited to ~100 bytes: bind it by its relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("README.md")
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
    assert str(err.value) == f"{folder / 'README.md'}: 'README.md' is not a regular file (a socket); {REBUILD}."
    (folder / "README.md").unlink()
    try:
        os.mknod(folder / "README.md", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD (root)")
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / 'README.md'}: 'README.md' is not a regular file (a character device); "
                              f"{REBUILD}.")


def test_folders_nested_past_the_depth_limit_are_refused_naming_the_first_too_deep(folder):
    # Found: os.fwalk recursed once per level: 1,200 nested empty folders raised RecursionError.
    from runtime.artifacts import MAX_FOLDER_DEPTH

    at = os.open(folder, os.O_RDONLY)
    for _ in range(1200):  # by descriptor: the path grows past PATH_MAX
        os.mkdir("d", dir_fd=at)
        inner = os.open("d", os.O_RDONLY, dir_fd=at)
        os.close(at)
        at = inner
    os.close(at)
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            runtime.load(folder)
    finally:  # undone from the top, one level at a time (shutil.rmtree would recurse as deep)
        while (folder / "d" / "d").exists():
            os.rename(folder / "d" / "d", folder / "x")
            os.rmdir(folder / "d")
            os.rename(folder / "x", folder / "d")
        os.rmdir(folder / "d")
    too_deep = folder / "/".join(["d"] * (MAX_FOLDER_DEPTH + 1))
    assert str(err.value) == (f"{too_deep}: a folder nested more than {MAX_FOLDER_DEPTH} deep in the artifacts "
                              f"folder (builds nest one: members/); remove it or {REBUILD}.")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc/self/fd (Linux)")
def test_the_walk_holds_a_bounded_number_of_descriptors(folder):
    # Found: os.fwalk held a descriptor per level: under a low `ulimit -n`, a deep file was OSError EMFILE.
    import resource

    from runtime.artifacts import MAX_FOLDER_DEPTH, read_folder

    deep = folder / "/".join(["d"] * MAX_FOLDER_DEPTH)
    deep.mkdir(parents=True)
    (deep / "junk").write_text("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        with pytest.raises(runtime.ArtifactError) as err:
            read_folder(folder)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(err.value) == f"{deep / 'junk'}: not listed in manifest.json; remove it or {REBUILD}."


@pytest.mark.parametrize("rel", ["manifest.json", "manifest.sig", "model.sig"])
def test_a_manifest_or_signature_past_the_json_limit_is_refused_unread(folder, monkeypatch, rel):
    # Found: both were read whole: a sparse 1 GB manifest.sig cost 1.15 GB, a 3 GB one a MemoryError traceback.
    from runtime.limits import MAX_JSON_BYTES

    manifest = (folder / "manifest.json").read_bytes()
    (folder / rel).touch()
    os.truncate(folder / rel, MAX_JSON_BYTES + 1)  # sparse: refused by its size, before any byte is read
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert str(err.value) == (f"{folder / rel}: {MAX_JSON_BYTES + 1:,} bytes, over the {MAX_JSON_BYTES:,}-byte "
                              f"limit for JSON (ENSEMBLE_ONNX_MAX_JSON_BYTES); {REBUILD}.")
    size = len(manifest) + 1  # over a limit the real manifest.json is under
    os.truncate(folder / rel, size)
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", str(size - 1))
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{folder / rel}: {size:,} bytes, over the "
                                                              f"{size - 1:,}-byte")):
        runtime.load(folder)
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_JSON_BYTES", "1e6")
    with pytest.raises(runtime.ArtifactError, match=re.escape("ENSEMBLE_ONNX_MAX_JSON_BYTES='1e6' is not a whole")):
        runtime.load(folder)


def test_the_json_limit_is_the_one_convert_reads_json_under():
    loaders = pytest.importorskip("convert.loaders")  # the build's modules: absent from the slim venv
    from runtime.limits import MAX_JSON_BYTES

    assert loaders.FILE_LIMITS["json"] is MAX_JSON_BYTES  # the one object: one default, raised by one variable


def _unprivileged(code: str) -> str:
    """`code` run by a Python that file permissions bind (root without CAP_DAC_OVERRIDE/READ_SEARCH, as a
    service account is), with the worktree importable; its stdout."""
    import subprocess
    import sys

    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a mode-000 folder stays readable to this test")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(runtime.__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    return done.stdout


_REFUSAL = ("import sys, runtime\n"
            "from runtime.artifacts import read_folder\n"
            "try:\n"
            "    read_folder(sys.argv[1])\n"
            "except runtime.ArtifactError as exc:\n"
            "    print(exc)\n"
            "else:\n"
            "    print('LOADED')\n")


@pytest.mark.parametrize("where", ["junk", "members"])
def test_a_folder_that_cannot_be_read_is_refused_naming_it(folder, where):
    # Found: os.fwalk skipped an unreadable folder silently (a file in it was never seen as unlisted), and an
    # unreadable members/ was reported as "members/lightgbm.onnx: cannot read it".
    if where == "junk":
        (folder / "junk").mkdir()
        (folder / "junk" / "evil").write_text("x")
    (folder / where).chmod(0)
    try:
        said = _unprivileged(_REFUSAL.replace("sys.argv[1]", repr(str(folder))))
    finally:
        (folder / where).chmod(0o755)
    assert said == f"{folder / where}: cannot read the folder '{where}' (Permission denied).\n"
