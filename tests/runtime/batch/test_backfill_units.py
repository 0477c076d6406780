"""The backfill's parts, one promise at a time: the layout and its refusals, an Arrow batch to a feature matrix
with every bad cell named, chunked scoring and its overflow refusals, the assembled table, the writer's
split into scores and rejects, the progress line, the atomic files, the readers of each format, and the Ray
engine's pure helpers. Real pyarrow, real onnxruntime on the prebuilt demo build; expected values come from
the runtime's own one-row-at-a-time calls, numpy or the manifest, never from the function under test."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backfill_support import batch_of, layout_of, one_thread, rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")

import runtime  # noqa: E402  (after the skip: these tests need pyarrow)
from runtime.artifacts import ArtifactError, read_files  # noqa: E402
from runtime.batch import backfill  # noqa: E402
from runtime.batch.backfill import REJECT, Layout, Outcome, Progress, Summary  # noqa: E402
from runtime.batch.backfill_io import TableSink  # noqa: E402
from runtime.errors import InputError  # noqa: E402

MANIFEST_CLASSES = ("SELL", "HOLD", "BUY")
MEMBERS = ("xgboost", "lightgbm", "nhits", "patchtst")


@pytest.fixture(scope="module")
def ens(demo_artifacts: Path) -> runtime.Ensemble:
    return one_thread(demo_artifacts)


@pytest.fixture(scope="module")
def features(ens: runtime.Ensemble) -> tuple[str, ...]:
    return ens.feature_names


def one_by_one(ens: runtime.Ensemble, x: np.ndarray) -> np.ndarray:
    """The service's way: each row alone (at one thread a row's bits do not depend on its batch)."""
    return np.concatenate([ens.predict_proba(x[i:i + 1]) for i in range(len(x))])


# ------------------------------------------------------------------------------------------- the layout

def test_the_demo_manifest_is_what_these_tests_assume(ens):
    assert ens.classes == MANIFEST_CLASSES and ens.member_order == MEMBERS and len(ens.feature_names) == 18


@pytest.mark.parametrize(("members", "expect"), [
    (False, ["action", "confidence", "p_SELL", "p_HOLD", "p_BUY"]),
    (True, ["action", "confidence", "p_SELL", "p_HOLD", "p_BUY",
            *(f"p_{m}_{c}" for m in MEMBERS for c in MANIFEST_CLASSES)]),
])
def test_score_columns_are_action_confidence_then_classes_then_members_by_class(ens, members, expect):
    assert layout_of(ens, members=members).score_columns == expect


def test_layout_keeps_every_non_feature_column_in_input_order_by_default(ens):
    columns = ["z", *ens.feature_names[:9], "a", *ens.feature_names[9:], "m"]
    layout = Layout.for_input(ens.manifest, columns, None, True, "in.csv")
    assert layout == Layout(ens.feature_names, MANIFEST_CLASSES, MEMBERS, ("z", "a", "m"), True)


def test_layout_keeps_the_chosen_columns_in_the_chosen_order(ens):
    columns = ["a", "b", "c", *ens.feature_names]
    assert Layout.for_input(ens.manifest, columns, ["c", "a"], False, "w").keep == ("c", "a")
    assert Layout.for_input(ens.manifest, columns, [], False, "w").keep == ()


@pytest.mark.parametrize(("extra", "keep", "message"), [
    (["b", "a", "b", "a", "c"], None, "in.csv: column(s) given more than once: ['a', 'b']."),
    (["venue"], ["venue", "desk", "book"], "in.csv: --keep column(s) ['desk', 'book'] are not in the input (it has "
                                           "COLUMNS)."),
    (["p_BUY", "action", "id"], None, "in.csv: passthrough column(s) ['action', 'p_BUY'] would clash with the "
                                      "output's own; rename them or leave them out with --keep."),
    (["__reject__"], None, "in.csv: passthrough column(s) ['__reject__'] would clash with the output's own; rename "
                           "them or leave them out with --keep."),
])
def test_layout_refuses_a_header_it_cannot_write_naming_the_columns(ens, extra, keep, message):
    columns = [*extra, *ens.feature_names]
    with pytest.raises(InputError) as err:
        Layout.for_input(ens.manifest, columns, keep, False, "in.csv")
    assert str(err.value) == message.replace("COLUMNS", str(columns))


def test_layout_refusals_cut_a_long_header_short(ens):
    # The whole header was echoed: 20,000 columns of 100,000 characters each made a message of gigabytes.
    columns = ["k" * 100_000, *(f"c{i}" for i in range(20_000)), *ens.feature_names]
    with pytest.raises(InputError) as err:
        Layout.for_input(ens.manifest, columns, ["zz"], False, "in.csv")
    assert str(err.value) == ("in.csv: --keep column(s) ['zz'] are not in the input (it has ['" + "k" * 39
                              + "... (100000 characters), " + ", ".join(f"'c{i}'" for i in range(24))
                              + f", ... {20_000 + len(ens.feature_names) + 1 - 25:,} more]).")
    with pytest.raises(InputError) as err:
        Layout.for_input(ens.manifest, [*columns, "k" * 100_000], None, False, "in.csv")
    assert str(err.value) == "in.csv: column(s) given more than once: ['" + "k" * 39 + "... (100000 characters)]."


def test_layout_refuses_a_member_column_name_only_when_members_are_written(ens):
    columns = ["p_nhits_BUY", *ens.feature_names]
    assert Layout.for_input(ens.manifest, columns, None, False, "w").keep == ("p_nhits_BUY",)
    with pytest.raises(InputError, match=r"^w: passthrough column\(s\) \['p_nhits_BUY'\] would clash"):
        Layout.for_input(ens.manifest, columns, None, True, "w")


def test_layout_names_every_missing_feature_in_manifest_order(ens):
    names = list(ens.feature_names)
    columns = [names[5], *names[:3], *names[6:-1]]  # 3, 4 and the last are missing; one repeated name is fine
    with pytest.raises(InputError) as err:
        Layout.for_input(ens.manifest, columns, None, False, "h.parquet")
    assert str(err.value) == f"h.parquet: missing feature column(s) {[names[3], names[4], names[-1]]}."


# --------------------------------------------------------------------------------- one batch, end to end

@pytest.mark.parametrize(("reasons", "expect"), [
    ([None, "x", None, ""], [True, False, True, False]),
    ([], []),
])
def test_unscored_is_the_rows_without_a_reason(reasons, expect):
    got = backfill.unscored(np.array(reasons, dtype=object))
    assert got.dtype == bool and got.tolist() == expect


def test_feature_matrix_takes_every_numeric_type_as_float64(features):
    n = 3
    cols: dict[str, Any] = {f: pa.array([1.0, 2.0, 3.0]) for f in features}
    cols[features[0]] = pa.array([2**53 + 1, -7, 0], type=pa.int64())  # past float precision: the nearest float
    cols[features[1]] = pa.array([2**64 - 1, 1, 2], type=pa.uint64())
    cols[features[2]] = pa.array([0.5, 0.25, -1.5], type=pa.float32())
    cols[features[3]] = pa.array([Decimal("1.25"), Decimal("-2.50"), Decimal("0.00")], type=pa.decimal128(5, 2))
    cols[features[4]] = pa.array(["1e3", "-0.5", "7"], type=pa.string())
    cols[features[5]] = pa.array(["4", "5", "6"], type=pa.large_string())
    cols[features[6]] = pa.array([3, 4, 5], type=pa.int8())
    x, reasons = backfill.feature_matrix(pa.RecordBatch.from_pydict(cols), features, "w")
    want = np.tile([1.0, 2.0, 3.0], (len(features), 1)).T
    want[:, 0] = [2.0**53, -7, 0]
    want[:, 1] = [2.0**64, 1, 2]
    want[:, 2] = [0.5, 0.25, -1.5]
    want[:, 3] = [1.25, -2.5, 0]
    want[:, 4] = [1000, -0.5, 7]
    want[:, 5] = [4, 5, 6]
    want[:, 6] = [3, 4, 5]
    assert x.dtype == np.float64 and x.shape == (n, len(features))
    np.testing.assert_array_equal(x, want)
    assert reasons.tolist() == [None, None, None]


def test_feature_matrix_names_the_first_bad_column_of_each_bad_row(features):
    first, second, third = features[0], features[1], features[2]
    cols: dict[str, Any] = {f: pa.array([0.5] * 7) for f in features}
    cols[first] = pa.array(["1", "n/a", None, "inf", "2", "1_0", "3"], type=pa.string())  # parsed cell by cell
    cols[second] = pa.array([np.nan, 1.0, 1.0, 1.0, None, 1.0, -np.inf])
    cols[third] = pa.array(["1", "2", "x", "4", "5", "6", "nan"], type=pa.large_string())
    x, reasons = backfill.feature_matrix(pa.RecordBatch.from_pydict(cols), features, "w")
    assert reasons.tolist() == [
        None,  # NaN is the Ensemble's to take or refuse (the build's domain), as predict does
        f"column '{first}': 'n/a' is not a number",
        f"column '{first}': missing (null)",
        f"column '{first}': 'inf' is not finite; impute it before scoring",
        f"column '{second}': missing (null)",
        f"column '{first}': '1_0' is not a number",
        f"column '{second}': -inf is not finite; impute it before scoring",
    ]
    assert x[:, 0].tolist()[:1] == [1.0] and x[4, 0] == 2.0 and x[6, 0] == 3.0 and x[3, 1] == 1.0


def test_feature_matrix_reads_a_column_that_is_only_nulls_as_missing(features):
    cols: dict[str, Any] = {f: pa.array([0.5, 0.5]) for f in features}
    cols[features[7]] = pa.array([None, None], type=pa.null())
    _, reasons = backfill.feature_matrix(pa.RecordBatch.from_pydict(cols), features, "w")
    assert reasons.tolist() == [f"column '{features[7]}': missing (null)"] * 2


def test_feature_matrix_of_a_chunked_table_equals_its_batches(ens, features):
    x = rows(ens, 6)
    table = pa.concat_tables([pa.Table.from_batches([batch_of(x[:4], features)]),
                              pa.Table.from_batches([batch_of(x[4:], features)])])
    assert table.column(features[0]).num_chunks == 2
    got, reasons = backfill.feature_matrix(table, features, "w")
    np.testing.assert_array_equal(got, x)
    assert reasons.tolist() == [None] * 6


@pytest.mark.parametrize("arrow_type", [pa.bool_(), pa.timestamp("us"), pa.list_(pa.float64()), pa.binary()])
def test_a_feature_column_that_can_hold_no_number_fails_the_run_by_name(features, arrow_type):
    cols: dict[str, Any] = {f: pa.array([0.5]) for f in features}
    cols[features[2]] = pa.array([None], type=arrow_type)
    with pytest.raises(InputError) as err:
        backfill.feature_matrix(pa.RecordBatch.from_pydict(cols), features, "in.parquet")
    assert str(err.value) == (f"in.parquet: column '{features[2]}' is of type {arrow_type}, not numbers; every "
                              f"feature must be numeric.")


class CountingEnsemble(runtime.Ensemble):
    """The real Ensemble, recording how many rows each graph call is given."""

    calls: list[int]

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(len(x))
        return super()._run(x)


@pytest.fixture(scope="module")
def counting(demo_artifacts) -> CountingEnsemble:
    import onnxruntime as ort

    from runtime.artifacts import verify_files

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    counted = CountingEnsemble(str(demo_artifacts), verify_files(read_files(demo_artifacts), demo_artifacts), options)
    counted.calls = []
    return counted


def test_score_matrix_calls_the_graph_1024_rows_at_a_time(counting, ens):
    x = rows(ens, 1025, seed=4)
    counting.calls = []
    out, reasons = backfill.score_matrix(counting, x)
    assert counting.calls == [1024, 1]
    assert reasons.tolist() == [None] * 1025
    members = ens.member_probabilities(x)  # one call of all rows: at one thread, the bits of any batching
    probs = ens.predict_proba(x)
    np.testing.assert_array_equal(out["probabilities"], probs)
    np.testing.assert_array_equal(out["member_probabilities"], np.stack([members[m] for m in MEMBERS], axis=1))
    np.testing.assert_array_equal(out["label"], probs.argmax(axis=1))
    np.testing.assert_array_equal(out["confidence"], probs.max(axis=1))
    assert {k: v.dtype for k, v in out.items()} == {"probabilities": np.float32, "label": np.int64,
                                                   "confidence": np.float32, "member_probabilities": np.float32}


def test_a_chunk_with_an_overflowing_row_is_scored_row_by_row_and_only_that_row_refused(counting, ens):
    x = rows(ens, 1030, seed=6)
    x[[1026, 1028]] = 1e38  # finite in float64, past what the members' float32 activations hold
    counting.calls = []
    out, reasons = backfill.score_matrix(counting, x)
    assert counting.calls == [1024, 6, 1, 1, 1, 1, 1, 1]
    # Refused by the build's input domain before any member sees it (docs/numerics.md).
    why = reasons[1026]
    assert why.startswith("feature 'rsi_14': 1e+38 is outside [") and why.endswith("(1 row(s) refused)")
    assert reasons.tolist() == [None] * 1026 + [why, None, why, None]
    good = np.array([i for i in range(1030) if i not in (1026, 1028)])
    np.testing.assert_array_equal(out["probabilities"][good], ens.predict_proba(x[good]))
    np.testing.assert_array_equal(out["probabilities"][[1027, 1029]], one_by_one(ens, x[[1027, 1029]]))
    for key in ("probabilities", "label", "confidence", "member_probabilities"):
        assert not out[key][[1026, 1028]].any(), key  # a refused row's outputs stay zero


def test_score_rows_scores_only_the_rows_without_a_reason(ens):
    x = rows(ens, 5, seed=8)
    x[1] = np.nan  # what a bad cell leaves in the matrix: never sent to the graph
    x[3] = 1e38
    reasons = np.array([None, "column 'a': missing (null)", None, None, None], dtype=object)
    out, merged = backfill.score_rows(ens, x, reasons)
    why = merged[3]
    assert why.startswith("feature 'rsi_14': 1e+38 is outside [")  # the build's input domain
    assert merged.tolist() == [None, "column 'a': missing (null)", None, why, None]
    assert reasons.tolist() == [None, "column 'a': missing (null)", None, None, None]  # the caller's, untouched
    np.testing.assert_array_equal(out["probabilities"][[0, 2, 4]], one_by_one(ens, x[[0, 2, 4]]))
    assert not out["probabilities"][[1, 3]].any()
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        "probabilities": (np.float32, (5, 3)), "label": (np.int64, (5,)), "confidence": (np.float32, (5,)),
        "member_probabilities": (np.float32, (5, 4, 3))}


def test_assemble_writes_passthrough_scores_members_and_the_reason_with_nulls_for_refused_rows(ens):
    layout = layout_of(ens, keep=("sym",), members=True)
    keep = pa.RecordBatch.from_pydict({"sym": ["A", "B", "C"], "other": [1, 2, 3]})
    probs = np.array([[0.1, 0.2, 0.7], [0.0, 0.0, 0.0], [0.6, 0.3, 0.1]], np.float32)
    member_probs = np.arange(36, dtype=np.float32).reshape(3, 4, 3) / 100
    outputs = {"probabilities": probs, "label": np.array([2, 0, 0]), "confidence": np.array([0.7, 0, 0.6], np.float32),
               "member_probabilities": member_probs}
    table = backfill.assemble(layout, keep, outputs, np.array([None, "bad", None], dtype=object))
    assert table.column_names == ["sym", *layout.score_columns, REJECT]
    assert table.column("sym").to_pylist() == ["A", "B", "C"]
    assert table.schema.field("action").type == pa.string()
    assert table.column("action").to_pylist() == ["BUY", None, "SELL"]
    assert table.column("confidence").to_pylist() == [np.float32(0.7), None, np.float32(0.6)]
    for k, c in enumerate(MANIFEST_CLASSES):
        assert table.column(f"p_{c}").to_pylist() == [probs[0, k], None, probs[2, k]]
        for m, member in enumerate(MEMBERS):
            assert table.column(f"p_{member}_{c}").to_pylist() == [member_probs[0, m, k], None,
                                                                   member_probs[2, m, k]]
    assert table.column(REJECT).to_pylist() == [None, "bad", None]
    assert table.schema.field(REJECT).type == pa.string()


@pytest.mark.parametrize("n", [0, 2])
def test_assemble_keeps_text_columns_text_for_an_empty_or_clean_batch(ens, n):
    """Ray Data concatenates the actors' tables and the sink casts later batches to the first's schema: an empty
    or all-scored batch must not turn `action` or the reason column into Arrow's null type."""
    outputs = {"probabilities": np.zeros((n, 3), np.float32), "label": np.zeros(n, np.int64),
               "confidence": np.zeros(n, np.float32), "member_probabilities": np.zeros((n, 4, 3), np.float32)}
    table = backfill.assemble(layout_of(ens), pa.RecordBatch.from_pydict({"f": [0.5] * n}), outputs,
                              np.full(n, None, dtype=object))
    assert table.schema.field("action").type == pa.string() and table.schema.field(REJECT).type == pa.string()
    assert table.column("action").to_pylist() == ["SELL"] * n


def test_score_batch_is_the_batch_scored_with_its_passthrough(ens):
    x = rows(ens, 4, seed=9)
    batch = batch_of(x, ens.feature_names, sym=["a", "b", "c", "d"])
    table = backfill.score_batch(ens, layout_of(ens, keep=("sym",)), batch, "w")
    np.testing.assert_array_equal(table.column("p_HOLD").to_numpy(), one_by_one(ens, x)[:, 1])
    assert table.column("sym").to_pylist() == ["a", "b", "c", "d"]


# --------------------------------------------------------------------------------------- the summary

def test_summary_as_dict_has_every_field_and_the_rate():
    s = Summary("in.csv", "out.parquet", rows=10, scored=8, rejected=2, rejects_file="r.csv", seconds=4.0,
                engine="ray", workers=3, threads=2)
    assert s.as_dict() == {"input": "in.csv", "output": "out.parquet", "rows": 10, "scored": 8, "rejected": 2,
                           "rejects_file": "r.csv", "seconds": 4.0, "engine": "ray", "workers": 3, "threads": 2,
                           "rows_per_second": 2.5}
    assert Summary("a", "b", rows=10).as_dict()["rows_per_second"] is None


def test_summary_defaults_are_a_local_run_with_nothing_done():
    assert Summary("a", "b").as_dict() == {"input": "a", "output": "b", "rows": 0, "scored": 0, "rejected": 0,
                                           "rejects_file": None, "seconds": 0.0, "engine": "local", "workers": 1,
                                           "threads": 1, "rows_per_second": None}


# ------------------------------------------------------------------------------------ the progress line

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def terminal(monkeypatch) -> Any:
    """`terminal()` inside a test (pytest's capture resets sys.stderr between setup and call): stderr becomes a
    terminal that keeps what is written, and time.monotonic a clock the test moves."""

    def attach(frozen: bool = True) -> tuple[Terminal, Clock]:
        screen, clock = Terminal(), Clock()
        monkeypatch.setattr(sys, "stderr", screen)
        if frozen:  # not where a process pool may run: its waits read the clock
            monkeypatch.setattr(time, "monotonic", clock)
        return screen, clock
    return attach


def test_progress_prints_rows_rate_share_and_eta_at_most_twice_a_second(terminal):
    screen, clock = terminal()
    progress = Progress(4000, True)
    clock.now += 0.25
    progress(100)
    assert screen.getvalue() == ""  # under half a second since the start
    clock.now += 0.25
    progress(250)
    assert screen.getvalue() == "\r250 rows  500 rows/s    6.2%  ETA 8s   "
    clock.now += 0.375
    progress(300)
    assert screen.getvalue().count("\r") == 1  # under half a second since the last line
    clock.now += 1.125
    progress(1000)
    assert screen.getvalue().endswith("\r1,000 rows  500 rows/s   25.0%  ETA 6s   ")
    progress(1200, final=True)
    assert screen.getvalue().endswith("\r1,200 rows  600 rows/s   30.0%  ETA 5s   \n")


@pytest.mark.parametrize(("total", "rows", "elapsed", "line"), [
    (None, 12345, 2.0, "\r12,345 rows  6,172 rows/s   \n"),
    (10, 0, 1.0, "\r0 rows  0 rows/s    0.0%  ETA 0s   \n"),
    (None, 3, 0.0, "\r3 rows  3,000,000,000 rows/s   \n"),  # no time at all: the rate is bounded, not a crash
])
def test_progress_final_line(terminal, total, rows, elapsed, line):
    screen, clock = terminal()
    progress = Progress(total, True)
    clock.now += elapsed
    progress(rows, final=True)
    assert screen.getvalue() == line


def test_progress_is_silent_when_off_or_not_on_a_terminal(terminal, monkeypatch):
    screen, clock = terminal()
    clock.now += 5
    Progress(10, False)(5, final=True)
    assert screen.getvalue() == ""
    monkeypatch.setattr(Terminal, "isatty", lambda self: False)
    Progress(10, True)(5, final=True)
    assert screen.getvalue() == ""


# ---------------------------------------------------------------------------- the run: scores and rejects

def scored_table(ids: list[int], reasons: list[str | None]) -> Any:
    """An assembled table as score_batch gives it: passthrough `id`, scores (nulls where refused), reasons."""
    refused = [r is not None for r in reasons]
    return pa.table({"id": ids, "action": pa.array(["BUY"] * len(ids), mask=np.array(refused, bool)),
                     "p_BUY": pa.array([0.5] * len(ids), mask=np.array(refused, bool)),
                     REJECT: pa.array(reasons, type=pa.string())})


def small_layout(keep: tuple[str, ...] = ("id",)) -> Layout:
    return Layout(("f",), ("BUY",), ("m",), keep)


def test_run_writes_scored_rows_and_rejects_numbered_across_batches(tmp_path):
    out, rejects = tmp_path / "o.parquet", tmp_path / "bad.csv"
    summary = Summary("in", str(out))
    tables = [scored_table([10, 11, 12], [None, "r1", None]), scored_table([13, 14], [None, None]),
              scored_table([15, 16, 17], ["r5", None, "r7"])]
    t0 = time.monotonic()
    got = backfill.run(Path("in"), out, small_layout(), iter(tables), False, "skip", rejects, summary,
                       Progress(None, False))
    elapsed = time.monotonic() - t0
    assert got is summary
    assert (summary.rows, summary.scored, summary.rejected, summary.rejects_file) == (8, 5, 3, str(rejects))
    assert 0 <= summary.seconds <= elapsed
    written = pq.read_table(out)
    assert written.column_names == ["id", "action", "p_BUY"]
    assert written.column("id").to_pylist() == [10, 12, 13, 14, 16]
    assert pcsv.read_csv(rejects).to_pylist() == [{"row": 2, "id": 11, "reason": "r1"},
                                                  {"row": 6, "id": 15, "reason": "r5"},
                                                  {"row": 8, "id": 17, "reason": "r7"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "o.parquet"]


def test_run_with_force_replaces_both_files(tmp_path):
    out, rejects = tmp_path / "o.csv", tmp_path / "r.csv"
    out.write_text("old\n")
    rejects.write_text("old\n")
    backfill.run(Path("in"), out, small_layout(), iter([scored_table([1, 2], ["why", None])]), True, "skip", rejects,
                 Summary("in", str(out)), Progress(None, False))
    assert pcsv.read_csv(out).column("id").to_pylist() == [2]
    assert pcsv.read_csv(rejects).to_pylist() == [{"row": 1, "id": 1, "reason": "why"}]


def test_run_with_no_refused_row_leaves_no_rejects_file(tmp_path):
    out = tmp_path / "o.jsonl"
    summary = backfill.run(Path("in"), out, small_layout(), iter([scored_table([1, 2], [None, None])]), False,
                           "skip", None, Summary("in", str(out)), Progress(None, False))
    assert summary.rejects_file is None and (summary.rows, summary.scored, summary.rejected) == (2, 2, 0)
    assert [json.loads(s) for s in out.read_text().splitlines()] == [{"id": 1, "action": "BUY", "p_BUY": 0.5},
                                                                      {"id": 2, "action": "BUY", "p_BUY": 0.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


def test_run_skip_writes_the_default_rejects_file_beside_the_output(tmp_path):
    out = tmp_path / "o.parquet"
    summary = backfill.run(Path("in"), out, small_layout(), iter([scored_table([1, 2], ["why", None])]), False,
                           "skip", None, Summary("in", str(out)), Progress(None, False))
    assert summary.rejects_file == str(tmp_path / "o.rejects.parquet")
    assert pq.read_table(summary.rejects_file).to_pylist() == [{"row": 1, "id": 1, "reason": "why"}]


def test_run_fails_on_the_first_refused_row_naming_it_and_writes_nothing(tmp_path):
    out = tmp_path / "o.parquet"
    tables = iter([scored_table([1, 2], [None, None]), scored_table([3, 4, 5], [None, "column 'f': missing (null)",
                                                                                  "other"])])
    with pytest.raises(InputError) as err:
        backfill.run(Path("in.csv"), out, small_layout(), tables, False, "fail", None, Summary("in", str(out)),
                     Progress(None, False))
    assert str(err.value) == ("in.csv: data row 4, column 'f': missing (null). Nothing was written; fix the row, or "
                              "pass --on-error skip to write such rows to a rejects file.")
    assert list(tmp_path.iterdir()) == []


def test_run_with_no_scorable_row_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError) as err:
        backfill.run(Path("in.csv"), out, small_layout(), iter([scored_table([1, 2], ["a", "b"])]), False, "skip",
                     None, Summary("in", str(out)), Progress(None, False))
    assert str(err.value) == ("in.csv: no row could be scored (2 read, 2 refused; first: data row 1, a); nothing was "
                              "written.")
    assert list(tmp_path.iterdir()) == []


def test_run_that_fails_midway_removes_both_files(tmp_path):
    out = tmp_path / "o.parquet"

    def tables():
        yield scored_table([1, 2], ["a", None])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill.run(Path("in"), out, small_layout(), tables(), False, "skip", None, Summary("in", str(out)),
                     Progress(None, False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [("reason", "id", "row"), ("row",)])
def test_skip_refuses_passthrough_named_like_the_rejects_columns(tmp_path, keep):
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError) as err:
        backfill.run(Path("in.csv"), out, small_layout(keep), iter([]), False, "skip", None, Summary("in", str(out)),
                     Progress(None, False))
    taken = sorted(set(keep) & {"row", "reason"})
    assert str(err.value) == (f"in.csv: passthrough column(s) {taken} would clash with the rejects file's own 'row' "
                              f"and 'reason'; rename them or leave them out with --keep.")
    assert list(tmp_path.iterdir()) == []


def test_fail_mode_may_pass_through_columns_named_row_and_reason(tmp_path):
    out = tmp_path / "o.csv"
    table = pa.table({"row": [7], "reason": ["x"], REJECT: pa.array([None], pa.string())})
    summary = backfill.run(Path("in"), out, small_layout(("row", "reason")), iter([table]), False, "fail", None,
                           Summary("in", str(out)), Progress(None, False))
    assert summary.scored == 1 and pcsv.read_csv(out).to_pylist() == [{"row": 7, "reason": "x"}]


def test_run_reports_progress_after_each_table_and_once_more_at_the_end(terminal, tmp_path):
    screen, clock = terminal()
    out = tmp_path / "o.parquet"

    def tables():
        for i in range(2):
            clock.now += 1.0
            yield scored_table([i], [None])

    backfill.run(Path("in"), out, small_layout(), tables(), False, "fail", None, Summary("in", str(out)),
                 Progress(2, True))
    assert screen.getvalue() == ("\r1 rows  1 rows/s   50.0%  ETA 1s   \r2 rows  1 rows/s  100.0%  ETA 0s   "
                                 "\r2 rows  1 rows/s  100.0%  ETA 0s   \n")


def test_outcome_counts_an_empty_table_as_nothing(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    summary = Summary("in", "o")
    Outcome(Path("in"), small_layout(), sink, None, summary).take(scored_table([], []))
    assert (summary.rows, summary.scored, summary.rejected) == (0, 0, 0) and sink.rows == 0
    sink.abort()


# -------------------------------------------------------------------------------------- paths refused

def test_default_rejects_sits_beside_the_output():
    assert backfill.default_rejects(Path("/d/scores.v2.csv")) == Path("/d/scores.v2.rejects.csv")


def test_check_paths_lets_distinct_files_through(tmp_path):
    (tmp_path / "in.csv").write_text("a\n")
    backfill.check_paths(tmp_path / "in.csv", tmp_path / "o.parquet", None)
    backfill.check_paths(tmp_path / "in.csv", tmp_path / "o.parquet", tmp_path / "r.csv", tmp_path / "artifacts")
    backfill.check_paths(tmp_path / "in.csv", tmp_path / "o.parquet", None, tmp_path / "artifacts")


IN_BUILD = "an unlisted file there stops the build from loading; write the result elsewhere."


@pytest.mark.parametrize(("output", "rejects", "message"), [
    ("arts/o.parquet", None, "-o TMP/arts/o.parquet: is inside the artifacts folder TMP/arts: " + IN_BUILD),
    ("o.parquet", "arts/sub/r.csv", "--rejects TMP/arts/sub/r.csv: is inside the artifacts folder TMP/arts: "
                                    + IN_BUILD),
    ("in.csv", None, "-o TMP/in.csv: is an input of this run (TMP/in.csv); write the result to another file."),
    ("o.parquet", "in.csv", "--rejects TMP/in.csv: is an input of this run (TMP/in.csv); write the result to "
                            "another file."),
    ("link.csv", None, "-o TMP/link.csv: is an input of this run (TMP/in.csv); write the result to another file."),
    ("hard.csv", None, "-o TMP/hard.csv: is an input of this run (TMP/in.csv); write the result to another file."),
    ("o.parquet", "o.parquet", "TMP/o.parquet: the rejects file must differ from the output."),
    ("o.txt", None, "TMP/o.txt: unknown format '.txt'; use one of ['.csv', '.json', '.jsonl', '.ndjson', '.parquet', "
                    "'.pq']."),
])
def test_check_paths_refuses_what_would_lose_data(tmp_path, output, rejects, message):
    (tmp_path / "arts" / "sub").mkdir(parents=True)
    source = tmp_path / "in.csv"
    source.write_text("a\n")
    (tmp_path / "link.csv").symlink_to(source)
    os.link(source, tmp_path / "hard.csv")
    with pytest.raises(InputError) as err:
        backfill.check_paths(source, tmp_path / output, tmp_path / rejects if rejects else None, tmp_path / "arts")
    assert str(err.value) == message.replace("TMP", str(tmp_path))


# ------------------------------------------------------------------------------- loading and the driver

def test_load_from_files_runs_the_asked_threads_and_one_inter_op_thread(demo_artifacts):
    loaded = backfill.load_from_files(read_files(demo_artifacts), 2, "sent")
    options = loaded._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert loaded.path == "sent" and loaded.feature_names == runtime.load(demo_artifacts).feature_names


def test_load_from_files_refuses_tampered_bytes_naming_where_they_came_from(demo_artifacts):
    files = read_files(demo_artifacts)
    files["ensemble.onnx"] = files["ensemble.onnx"][:-1] + bytes([files["ensemble.onnx"][-1] ^ 1])
    with pytest.raises(ArtifactError, match="^sent/ensemble.onnx: "):
        backfill.load_from_files(files, 1, "sent")


def test_a_worker_scores_with_the_ensemble_it_verified(demo_artifacts, ens, monkeypatch):
    monkeypatch.setattr(backfill, "_WORKER", {})
    backfill._worker_init(read_files(demo_artifacts), 1, "sent", os.getppid(), None, None)
    assert backfill._WORKER["ens"].path == "sent"
    x = rows(ens, 3, seed=2)
    out, reasons = backfill._worker_score(x, np.array([None, "bad", None], dtype=object))
    assert reasons.tolist() == [None, "bad", None]
    np.testing.assert_array_equal(out["probabilities"][[0, 2]], one_by_one(ens, x[[0, 2]]))


def write_parquet(path: Path, ens: runtime.Ensemble, n: int, seed: int = 3, bad: dict[int, float] | None = None
                  ) -> np.ndarray:
    x = rows(ens, n, seed)
    for row, value in (bad or {}).items():
        x[row, 0] = value
    pq.write_table(pa.Table.from_batches([batch_of(x, ens.feature_names, id=list(range(n)))]), path)
    return x


def test_score_file_defaults_one_local_worker_one_thread_no_members(demo_artifacts, ens, tmp_path, terminal):
    screen, _ = terminal(frozen=False)
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    x = write_parquet(source, ens, 5)
    summary = backfill.score_file(demo_artifacts, source, out)
    assert (summary.input, summary.output, summary.engine, summary.workers, summary.threads) == (
        str(source), str(out), "local", 1, 1)
    assert (summary.rows, summary.scored, summary.rejected, summary.rejects_file) == (5, 5, 0, None)
    table = pq.read_table(out)
    assert table.column_names == ["id", "action", "confidence", "p_SELL", "p_HOLD", "p_BUY"]
    np.testing.assert_array_equal(table.column("p_BUY").to_numpy(), one_by_one(ens, x)[:, 2])
    assert screen.getvalue() == ""  # no progress unless asked, even on a terminal


def test_score_file_refuses_an_existing_output_unless_forced(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_parquet(source, ens, 2)
    out.write_bytes(b"keep")
    with pytest.raises(InputError, match="out.parquet: already exists; pass --force"):
        backfill.score_file(demo_artifacts, source, out)
    assert out.read_bytes() == b"keep"


def test_score_file_fails_on_a_bad_row_unless_told_to_skip(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_parquet(source, ens, 3, bad={1: np.inf})
    with pytest.raises(InputError, match=rf"^{source}: data row 2, column '{ens.feature_names[0]}': inf is not finite"):
        backfill.score_file(demo_artifacts, source, out)
    summary = backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=tmp_path / "r.jsonl",
                                  keep=[], members=True)
    assert summary.rejects_file == str(tmp_path / "r.jsonl") and summary.rejected == 1
    assert [json.loads(s)["row"] for s in (tmp_path / "r.jsonl").read_text().splitlines()] == [2]
    assert pq.read_schema(out).names[:3] == ["action", "confidence", "p_SELL"] and "p_nhits_BUY" in pq.read_schema(
        out).names


def test_score_file_refuses_an_unknown_error_mode(demo_artifacts, tmp_path):
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, tmp_path / "in.parquet", tmp_path / "o.parquet", on_error="ignore")
    assert str(err.value) == "on_error must be 'fail' or 'skip', not 'ignore'."


def test_score_file_checks_the_rejects_file_only_when_skipping(demo_artifacts, ens, tmp_path):
    source = tmp_path / "o.rejects.parquet"  # the default rejects name of o.parquet: harmless when failing
    write_parquet(source, ens, 2)
    assert backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet").scored == 2


def test_score_file_never_writes_into_the_artifacts_folder(artifacts_copy, tmp_path):
    with pytest.raises(InputError, match="is inside the artifacts folder"):
        backfill.score_file(artifacts_copy, tmp_path / "in.parquet", artifacts_copy / "o.parquet")


def test_score_file_reads_batches_of_the_asked_size(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    x = rows(ens, 5, seed=12)
    source.write_text("".join(json.dumps(dict(zip(ens.feature_names, map(float, r), strict=True))) + "\n" for r in x))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(3)] == [2, 2, 1]


def test_score_file_scores_json_lines_by_feature_name_whatever_each_lines_key_order(demo_artifacts, ens, tmp_path):
    # Each line's keys in its own shuffled order: a reader that went by position would score the columns
    # of one line under another's names, a silent wrong answer.
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    x = rows(ens, 6, seed=21)
    order = np.random.default_rng(5)
    lines = []
    for i, r in enumerate(x):
        record = {"id": i, **dict(zip(ens.feature_names, map(float, r), strict=True))}
        keys = list(record) if i == 0 else [list(record)[k] for k in order.permutation(len(record))]
        lines.append(json.dumps({k: record[k] for k in keys}))
    source.write_text("\n".join(lines) + "\n")
    backfill.score_file(demo_artifacts, source, out)
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(6))
    np.testing.assert_array_equal(np.stack([table.column(f"p_{c}").to_numpy() for c in ens.classes], 1),
                                  one_by_one(ens, x))


def test_score_file_names_a_json_line_without_a_feature_or_sends_it_to_rejects(demo_artifacts, ens, tmp_path):
    source, out, rejects = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    x = rows(ens, 3, seed=22)
    records = [{"id": i, **dict(zip(ens.feature_names, map(float, r), strict=True))} for i, r in enumerate(x)]
    del records[1][ens.feature_names[3]]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out)
    assert str(err.value).startswith(f"{source}: data row 2, column '{ens.feature_names[3]}': missing (null). "
                                     f"Nothing was written")
    summary = backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=rejects)
    assert (summary.scored, summary.rejected) == (2, 1)
    assert [json.loads(s) for s in rejects.read_text().splitlines()] == [
        {"row": 2, "id": 1, "reason": f"column '{ens.feature_names[3]}': missing (null)"}]


def test_score_file_refuses_a_json_key_first_seen_on_a_later_line_unless_kept_out(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    x = rows(ens, 2, seed=23)
    records = [{"id": i, **dict(zip(ens.feature_names, map(float, r), strict=True))} for i, r in enumerate(x)]
    records[1]["venue"] = "XNAS"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=rf"^{source}: line 2: key\(s\) \['venue'\] are not in the first row"):
        backfill.score_file(demo_artifacts, source, out)
    assert not out.exists()
    assert backfill.score_file(demo_artifacts, source, out, keep=["id"]).scored == 2
    assert [json.loads(s)["id"] for s in out.read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_score_file_names_the_input_for_a_feature_column_of_another_type(demo_artifacts, ens, tmp_path, workers):
    source = tmp_path / "in.parquet"
    columns = {name: pa.array([0.5, 1.5]) for name in ens.feature_names}
    columns[ens.feature_names[4]] = pa.array([True, False])
    pq.write_table(pa.table(columns), source)
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet", workers=workers)
    assert str(err.value) == (f"{source}: column '{ens.feature_names[4]}' is of type bool, not numbers; every feature "
                              f"must be numeric.")


def test_score_file_names_the_input_for_a_missing_feature(demo_artifacts, ens, tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({name: pa.array([0.5]) for name in ens.feature_names[1:]}), source)
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet")
    assert str(err.value) == f"{source}: missing feature column(s) ['{ens.feature_names[0]}']."


def test_score_file_reports_the_threads_it_ran(demo_artifacts, ens, tmp_path):
    source = tmp_path / "in.parquet"
    write_parquet(source, ens, 2)
    assert backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet", threads=2).threads == 2


def test_score_file_reads_65536_rows_a_batch_by_default(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.parquet", tmp_path / "o.parquet"
    write_parquet(source, ens, 65_537)
    backfill.score_file(demo_artifacts, source, out)
    meta = pq.ParquetFile(out).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [65_536, 1]
