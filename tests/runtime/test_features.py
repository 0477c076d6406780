"""What callers hand in (`runtime/features.py`, `runtime/records.py`): arrays, frames and mappings aligned into
rows, the records the command line reads from JSON lines and CSV, and the refusals of each, exact, down to the
overflow a member's float32 arithmetic cannot hold. Runtime only (numpy + onnxruntime): marked `slim` like
test_serving.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runtime
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
    # a CSV header whose first name starts with '[' is CSV once that name is quoted (the refusal's way out)
    assert read_records('"[a]",s\n1,x\n') == [(2, {"[a]": "1", "s": "x"})]


@pytest.mark.parametrize(("text", "match"), [
    ("", "^no rows in the input.$"), ("\n  \n", "^no rows in the input.$"),
    ('{"a": 1}\n{"a": \n', r"^line 2: not a JSON object \("),
    ('{"a": 1}\n[1, 2]\n', "^line 2: not a JSON object.$"),
    ("[1, 2, 3]\n", r"^line 1: not a JSON object\. A JSON array is not JSON lines \(one object a line\); "
                     r"a CSV header whose first name starts with .\[. is read as JSON: quote that name\.$"),
    ("[1, 2\n", r"^line 1: not a JSON object \(Expecting ',' delimiter\)\. A JSON array is not JSON lines "),
    ("[\n", r"^line 1: not a JSON object \(Expecting value\)\. A JSON array is not JSON lines "),
    ("[a],b\n1,2\n", r"^line 1: not a JSON object \(Expecting value\)\. .* quote that name\.$"),  # CSV: the way out
    ('{"a": 1}\n[1]\n', "^line 2: not a JSON object.$"),  # the hint is for the first line alone
    ('"abc"\n', r"^no rows in the input: line 1 is read as a CSV header \('abc'\) and no data row follows it.$"),
    (",".join(f"column_{i}" for i in range(50)) + "\n", r"^no rows in the input: line 1 is read as a CSV header "
                                                        r"\('column_0,column_1,.*\(\d+ characters\)\)"),
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


def test_json_lines_may_start_with_spaces():
    assert read_records('  {"a": 1}\n') == [(1, {"a": 1})]

