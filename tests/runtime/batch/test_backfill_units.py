"""The backfill's parts, one promise at a time: the layout and its refusals, an Arrow batch to a feature matrix
with every bad cell named, chunked scoring and its overflow refusals, the assembled table, the writer's
split into scores and rejects, the progress line, the atomic files, the readers of each format, and the Ray
engine's pure helpers. Real pyarrow, real onnxruntime on the prebuilt demo build; expected values come from
the runtime's own one-row-at-a-time calls, numpy or the manifest, never from the function under test."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")

import runtime  # noqa: E402  (after the skip: these tests need pyarrow)
from runtime.artifacts import ArtifactError, read_files  # noqa: E402
from runtime.batch import backfill, backfill_io, ray_engine  # noqa: E402
from runtime.batch.backfill import REJECT, Layout, Outcome, Progress, Summary  # noqa: E402
from runtime.batch.backfill_io import AtomicOutput, TableSink, file_format, open_batches  # noqa: E402
from runtime.errors import InputError  # noqa: E402

MANIFEST_CLASSES = ("SELL", "HOLD", "BUY")
MEMBERS = ("xgboost", "lightgbm", "nhits", "patchtst")


@pytest.fixture(scope="module")
def ens(demo_artifacts: Path) -> runtime.Ensemble:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return runtime.load(demo_artifacts, options)


@pytest.fixture(scope="module")
def features(ens: runtime.Ensemble) -> tuple[str, ...]:
    return ens.feature_names


def rows(n: int, width: int, seed: int = 1) -> np.ndarray:
    """n rows of features near the demo market's (standard normal: finite, inside what the members hold)."""
    return np.random.default_rng(seed).normal(size=(n, width))


def batch_of(x: np.ndarray, names: tuple[str, ...], **extra: Any) -> Any:
    return pa.RecordBatch.from_pydict({**extra, **{f: x[:, j] for j, f in enumerate(names)}})


def layout_of(ens: runtime.Ensemble, keep: tuple[str, ...] = (), members: bool = False) -> Layout:
    return Layout(ens.feature_names, ens.classes, ens.member_order, keep, members)


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


def test_feature_matrix_of_a_chunked_table_equals_its_batches(features):
    x = rows(6, len(features))
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
    x = rows(1025, len(ens.feature_names), seed=4)
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
    x = rows(1030, len(ens.feature_names), seed=6)
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
    x = rows(5, len(ens.feature_names), seed=8)
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
    x = rows(4, len(ens.feature_names), seed=9)
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
    x = rows(3, len(ens.feature_names), seed=2)
    out, reasons = backfill._worker_score(x, np.array([None, "bad", None], dtype=object))
    assert reasons.tolist() == [None, "bad", None]
    np.testing.assert_array_equal(out["probabilities"][[0, 2]], one_by_one(ens, x[[0, 2]]))


def write_parquet(path: Path, ens: runtime.Ensemble, n: int, seed: int = 3, bad: dict[int, float] | None = None
                  ) -> np.ndarray:
    x = rows(n, len(ens.feature_names), seed)
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
    x = rows(5, len(ens.feature_names), seed=12)
    source.write_text("".join(json.dumps(dict(zip(ens.feature_names, map(float, r), strict=True))) + "\n" for r in x))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(3)] == [2, 2, 1]


def test_score_file_scores_json_lines_by_feature_name_whatever_each_lines_key_order(demo_artifacts, ens, tmp_path):
    # Each line's keys in its own shuffled order: a reader that went by position would score the columns
    # of one line under another's names, a silent wrong answer.
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    x = rows(6, len(ens.feature_names), seed=21)
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
    x = rows(3, len(ens.feature_names), seed=22)
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
    x = rows(2, len(ens.feature_names), seed=23)
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


# ------------------------------------------------------------------------------------ formats and readers

def test_require_pyarrow_returns_it_or_says_how_to_install_it(monkeypatch):
    assert backfill_io.require_pyarrow() is pa
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without the extra gives: ImportError
    with pytest.raises(InputError) as err:
        backfill_io.require_pyarrow()
    assert str(err.value) == ("backfill needs pyarrow: pip install --find-links dist/ 'ensemble-onnx[backfill]' "
                              "(dist/: the folder with the wheel `make dist` builds), or pip install '.[backfill]' in "
                              "a clone of the repository")


@pytest.mark.parametrize(("name", "fmt"), [
    ("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.csv", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
    ("a.json", "jsonl"), ("A.PARQUET", "parquet"), ("b.x.CSV", "csv"),
])
def test_the_format_is_the_extension(name, fmt):
    assert file_format(Path(name)) == fmt


def test_an_unknown_extension_is_refused_listing_the_known():
    with pytest.raises(InputError) as err:
        file_format(Path("d/scores.xlsx"))
    assert str(err.value) == ("d/scores.xlsx: unknown format '.xlsx'; use one of ['.csv', '.json', '.jsonl', "
                              "'.ndjson', '.parquet', '.pq'].")


def test_parquet_is_read_in_batches_of_the_asked_size_with_its_row_count(tmp_path):
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({"id": list(range(7)), "f": [0.5] * 7}), path)
    columns, total, batches = open_batches(path, ("f",), 3)
    assert (columns, total) == (["id", "f"], 7)
    assert [b.num_rows for b in batches] == [3, 3, 1]


def test_csv_features_are_read_as_text_and_an_empty_cell_as_null(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("id,f,g\n1,0.5,x\n2,,y\n3,1e3,\n")
    columns, total, batches = open_batches(path, ("f",), 100)
    assert (columns, total) == (["id", "f", "g"], None)
    table = pa.Table.from_batches(list(batches))
    assert table.schema.field("f").type == pa.string() and table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == ["1", "2", "3"]  # every column as written: see the passthrough test
    assert table.column("f").to_pylist() == ["0.5", None, "1e3"]
    assert table.column("g").to_pylist() == ["x", "y", None]


@pytest.mark.parametrize(("batch_rows", "block"), [(10, 1 << 20), (8192, 8192 * 256)])
def test_csv_is_read_in_blocks_of_256_bytes_a_batch_row_and_at_least_a_mebibyte(tmp_path, batch_rows, block):
    line = "%015d,%047d\n"  # 64 bytes a line
    path = tmp_path / "h.csv"
    path.write_text("id,f" + " " * 59 + "\n" + "".join(line % (i, i) for i in range(40_000)))
    _, _, batches = open_batches(path, ("f",), batch_rows)
    first = next(batches).num_rows
    assert abs(first - block // 64) <= 1, first


@pytest.mark.parametrize(("name", "content", "fmt"), [
    ("h.parquet", b"not parquet at all", "parquet"),
    ("h.csv", b"", "csv"),
])
def test_a_file_its_reader_cannot_open_is_refused_by_name(tmp_path, name, content, fmt):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        open_batches(path, ("f",), 10)
    assert str(err.value).startswith(f"{path}: cannot be read as {fmt} (") and str(err.value).endswith(").")


def test_a_missing_parquet_file_is_refused_by_name(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path}/gone.parquet: cannot be read as parquet \("):
        open_batches(tmp_path / "gone.parquet", ("f",), 10)


def jsonl(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "h.jsonl"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_json_lines_features_become_text_and_other_values_keep_their_types(tmp_path):
    path = jsonl(tmp_path, '\ufeff{"id": 1, "f": 1.5, "g": [1, 2], "s": "a"}\n\n  \n'
                           '{"id": 2, "f": "2", "g": null, "s": 3}\n{"id": 3, "f": null, "g": true, "s": null}\n')
    columns, total, batches = open_batches(path, ("f", "g"), 100)
    assert (columns, total) == (["id", "f", "g", "s"], None)
    (batch,) = list(batches)
    assert batch.schema.field("id").type == pa.int64() and batch.column(0).to_pylist() == [1, 2, 3]
    # a string keeps its quotes: '"2"' parses as no number (refused, as predict refuses it), never as 2
    assert batch.schema.field("f").type == pa.string() and batch.column(1).to_pylist() == ["1.5", '"2"', None]
    assert batch.schema.field("g").type == pa.string() and batch.column(2).to_pylist() == ["[1, 2]", None, "true"]
    assert batch.column(3).to_pylist() == ["a", "3", None]  # a passthrough of mixed types: as text


def test_a_json_lines_feature_that_is_null_in_every_row_is_still_text(tmp_path):
    _, _, batches = open_batches(jsonl(tmp_path, '{"f": null, "id": null}\n{"f": null, "id": null}\n'), ("f",), 10)
    (batch,) = list(batches)
    assert batch.schema.field("f").type == pa.string() and batch.column(0).to_pylist() == [None, None]


def test_json_lines_are_batched_by_row(tmp_path):
    path = jsonl(tmp_path, "".join(json.dumps({"f": i}) + "\n" for i in range(5)))
    _, _, batches = open_batches(path, ("f",), 2)
    assert [b.column(0).to_pylist() for b in batches] == [["0", "1"], ["2", "3"], ["4"]]


def test_an_empty_json_lines_file_is_refused_as_having_no_rows(tmp_path):
    path = jsonl(tmp_path, "\n\n")
    with pytest.raises(InputError) as err:
        open_batches(path, ("f",), 2)
    assert str(err.value) == f"{path}: no rows in the input."


def test_json_lines_are_read_by_key_whatever_each_lines_key_order(tmp_path):
    # A JSON object's keys have no order: a line written {"g", "id", "f"} under a first line {"f", "g", "id"}
    # holds the same row, and its values must land in the columns they are named for.
    path = jsonl(tmp_path, '{"f": 1.5, "g": 2.5, "id": "a"}\n{"g": 20.5, "id": "b", "f": 10.5}\n'
                           '{"id": "c", "f": 100.5, "g": 200.5}\n')
    columns, _, batches = open_batches(path, ("f", "g"), 10)
    (batch,) = list(batches)
    assert columns == batch.schema.names == ["f", "g", "id"]
    assert batch.to_pydict() == {"f": ["1.5", "10.5", "100.5"], "g": ["2.5", "20.5", "200.5"], "id": ["a", "b", "c"]}


def test_a_key_missing_from_a_later_json_line_reads_as_null_like_an_empty_csv_cell(tmp_path):
    path = jsonl(tmp_path, '{"f": 1, "id": "a", "note": "x"}\n{"id": "b"}\n{"f": 3, "id": "c"}\n')
    _, _, batches = open_batches(path, ("f",), 10)
    assert next(batches).to_pydict() == {"f": ["1", None, "3"], "id": ["a", "b", "c"], "note": ["x", None, None]}


def test_a_key_only_a_later_json_line_has_is_refused_unless_keep_leaves_it_out(tmp_path):
    # Every non-feature column passes through by default, and the columns are the first line's: a key first
    # seen on row 3 would be dropped from the output without a word. With --keep the user chose what to keep.
    path = jsonl(tmp_path, '{"f": 1, "id": "a"}\n{"f": 2, "id": "b"}\n{"venue": "X", "f": 3, "id": "c", "z": 0}\n')
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == (f"{path}: line 3: key(s) ['venue', 'z'] are not in the first row, whose keys name the "
                              f"columns ['f', 'id']; add them to the first row (null where a row has none), or "
                              f"choose the passthrough columns with --keep.")
    _, _, batches = open_batches(path, ("f",), 10, keep=["id"])
    assert next(batches).to_pydict() == {"f": ["1", "2", "3"], "id": ["a", "b", "c"]}


@pytest.mark.parametrize(("content", "message"), [
    (b'{"f": 1}\n[1]\n', "line 2: not a JSON object."),
    (b"[1]\n", "line 1: not a JSON object."),
    (b'\n[1]\n', "line 2: not a JSON object."),  # the first line that holds a row, named by its line
    (b'{"f": 1}\n{"f": \n', "line 2: not a JSON object (Expecting value)."),
    (b'{"f": 1, "f": 2}\n', "line 1: key 'f' given more than once."),
    (b'\n{"f": 1}\n{"f": 1, "f": 2}\n', "line 3: key 'f' given more than once."),
    ('{"f": 1}\n\ufeff{"f": 1}\n'.encode(),
     "line 2: not a JSON object (Unexpected UTF-8 BOM (decode using utf-8-sig))."),
    (b'{"f": 1}\n\n{"f": "\xe9"}\n', "line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8."),
    (b'{"f": 1}\nXXXX{"f": 1}\n', "line 2: not a JSON object (Expecting value)."),  # only row 1 loses a prefix (a BOM)
    (b"[" * 100_000 + b"\n", "line 1: not a JSON object (nested too deeply to parse)."),
])
def test_json_lines_refusals_name_the_line(tmp_path, content, message):
    path = jsonl(tmp_path, content)
    with pytest.raises(InputError) as err:
        _, _, batches = open_batches(path, ("f",), 10)
        list(batches)
    assert str(err.value) == f"{path}: {message}"


# --------------------------------------------------------------------------------------- atomic files

@pytest.fixture(params=["O_TMPFILE", "partial file"])
def how(request, monkeypatch) -> str:
    """Both ways to write: Linux's unnamed file, and the hidden partial file of a platform without it."""
    if request.param == "partial file":
        monkeypatch.delattr(os, "O_TMPFILE")
    return request.param


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_atomic_file_appears_only_when_committed(tmp_path, how):
    out = AtomicOutput(tmp_path / "o.csv", False)
    out.file.write(b"hello")
    assert names(tmp_path) == ([] if how == "O_TMPFILE" else [out.temp_name.name])
    if how == "partial file":
        assert out.temp_name.name.startswith(".o.csv.partial-") and out.temp_name.parent == tmp_path
    out.commit()
    assert names(tmp_path) == ["o.csv"] and (tmp_path / "o.csv").read_bytes() == b"hello"
    umask = os.umask(0)
    os.umask(umask)
    # open(2) applies the umask to the unnamed file; the partial file is chmod-ed to exactly 0o644
    assert stat.S_IMODE((tmp_path / "o.csv").stat().st_mode) == (0o644 & ~umask if how == "O_TMPFILE" else 0o644)
    assert out.file.closed


def test_an_aborted_atomic_file_leaves_nothing(tmp_path, how):
    out = AtomicOutput(tmp_path / "o.csv", False)
    out.file.write(b"hello")
    out.abort()
    assert names(tmp_path) == [] and out.file.closed
    out.abort()  # twice is harmless


def test_an_existing_target_is_refused_unless_forced_then_replaced_whole(tmp_path, how):
    target = tmp_path / "o.csv"
    target.write_bytes(b"old")
    with pytest.raises(InputError) as err:
        AtomicOutput(target, False)
    assert str(err.value) == f"{target}: already exists; pass --force to replace it."
    out = AtomicOutput(target, True)
    out.file.write(b"new")
    assert target.read_bytes() == b"old"
    out.commit()
    assert target.read_bytes() == b"new" and names(tmp_path) == ["o.csv"]


def test_a_forced_replace_stages_its_file_beside_the_target_not_in_the_temp_folder(tmp_path):
    """A link cannot cross filesystems: the staged name must be in the target's own folder (here a tmpfs)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp folder")
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        target = folder / "o.csv"
        target.write_bytes(b"old")
        out = AtomicOutput(target, True)
        out.file.write(b"new")
        out.commit()
        assert target.read_bytes() == b"new" and names(folder) == ["o.csv"]
    finally:
        shutil.rmtree(folder)


def test_a_target_that_appears_while_writing_is_refused_and_kept(tmp_path, how):
    target = tmp_path / "o.csv"
    out = AtomicOutput(target, False)
    out.file.write(b"mine")
    target.write_bytes(b"theirs")
    with pytest.raises(InputError) as err:
        out.commit()
    assert str(err.value) == (f"{target}: appeared while this run wrote it; nothing was written. Pass --force to "
                              f"replace it.")
    assert target.read_bytes() == b"theirs" and names(tmp_path) == ["o.csv"]


def test_an_atomic_file_in_a_missing_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError) as err:
        AtomicOutput(tmp_path / "no" / "o.csv", False)
    assert str(err.value) == f"{tmp_path}/no/o.csv: cannot write in {tmp_path}/no (No such file or directory)."


def test_an_atomic_file_in_the_working_folder(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    out = AtomicOutput(Path("o.csv"), False)
    out.file.write(b"x")
    out.commit()
    assert (tmp_path / "o.csv").read_bytes() == b"x"


# ------------------------------------------------------------------------------------------ table sinks

def sample(ids: list[int]) -> Any:
    return pa.table({"id": pa.array(ids, pa.int64()), "p": pa.array([i / 4 for i in ids], pa.float32()),
                     "t": pa.array([i * 1_000_000 for i in ids], pa.timestamp("us"))})


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_a_sink_appends_tables_in_its_format(tmp_path, suffix):
    path = tmp_path / f"o{suffix}"
    sink = TableSink(path, False)
    sink.write(sample([1, 2]))
    sink.write(sample([3]))
    assert sink.rows == 3 and not path.exists()
    sink.commit()
    if suffix == ".parquet":
        assert pq.read_table(path).equals(pa.concat_tables([sample([1, 2]), sample([3])]))
    elif suffix == ".csv":
        assert path.read_text().splitlines() == ['"id","p","t"', "1,0.25,1970-01-01 00:00:01.000000",
                                                 "2,0.5,1970-01-01 00:00:02.000000",
                                                 "3,0.75,1970-01-01 00:00:03.000000"]
    else:
        assert path.read_text().splitlines() == [
            '{"id": 1, "p": 0.25, "t": "1970-01-01 00:00:01"}', '{"id": 2, "p": 0.5, "t": "1970-01-01 00:00:02"}',
            '{"id": 3, "p": 0.75, "t": "1970-01-01 00:00:03"}']


def test_a_later_batch_is_cast_to_the_first_batchs_types(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(pa.table({"id": pa.array([1], pa.int64())}))
    sink.write(pa.table({"id": pa.array([None], pa.null())}))  # a CSV block of empty cells
    sink.commit()
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("id").type == pa.int64() and table.column("id").to_pylist() == [1, None]


def test_a_later_batch_that_cannot_be_cast_is_refused_naming_the_file(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(pa.table({"id": pa.array([1], pa.int64())}))
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": pa.array(["x"], pa.string())}))
    assert str(err.value).startswith(f"{tmp_path}/o.parquet: passthrough column(s) 'id' (int64, then string) changed "
                                     f"type in a later batch (")
    assert str(err.value).endswith("; write such a column as JSON strings (a big id as \"123...\"), or leave it out "
                                   "with --keep.")
    sink.abort()
    assert names(tmp_path) == []


def test_an_id_past_64_bits_first_met_in_a_later_batch_is_refused_naming_the_column(demo_artifacts, ens, tmp_path):
    # The first batch's ids were int64 when the file was opened; the later one holds text: refused, not cut.
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, 2, 35, id=[1, 2**70]))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=1)
    assert str(err.value).startswith(f"{source}: data row 2, passthrough column 'id' changed type between batches "
                                     f"(int64, then string): ")
    assert 'write such ids as JSON strings (a big id as "123...")' in str(err.value)
    assert not out.exists()
    source.write_text(feature_lines(ens, 2, 35, id=["1", str(2**70)]))  # as strings: every batch text
    backfill.score_file(demo_artifacts, source, out, batch_rows=1)
    assert pq.read_table(out).column("id").to_pylist() == ["1", str(2**70)]


def test_csv_refuses_nested_passthrough_by_name(tmp_path):
    sink = TableSink(tmp_path / "o.csv", False)
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "tags": [[1, 2]], "meta": [{"a": 1}]}))
    assert str(err.value) == (f"{tmp_path}/o.csv: passthrough column(s) ['tags', 'meta'] hold lists or objects, "
                              f"which CSV cannot; write .parquet or .jsonl, or leave them out with --keep.")


def test_csv_refuses_bytes_that_are_not_text_by_name(tmp_path):
    sink = TableSink(tmp_path / "o.csv", False)
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "raw": pa.array([b"\xff\xfe"], pa.binary())}))
    assert str(err.value).startswith(f"{tmp_path}/o.csv: CSV cannot hold passthrough column(s) ['raw'] (")
    assert str(err.value).endswith("); write .parquet, or leave them out with --keep.")
    sink.abort()
    assert names(tmp_path) == []


def test_a_sink_with_nothing_written_refuses_to_commit(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    with pytest.raises(InputError) as err:
        sink.commit()
    assert str(err.value) == f"{tmp_path}/o.parquet: nothing to write."


def test_an_aborted_parquet_sink_closes_its_writer(tmp_path):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(sample([1]))
    sink.abort()
    assert not sink.writer.is_open


def test_an_abort_after_the_file_itself_failed_still_removes_it_quietly(tmp_path, how):
    sink = TableSink(tmp_path / "o.parquet", False)
    sink.write(sample([1]))
    sink.out.file.close()  # as a failed disk leaves it: the writer's own close cannot write its footer
    sink.abort()
    assert names(tmp_path) == []


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_an_aborted_sink_leaves_nothing(tmp_path, suffix, how):
    sink = TableSink(tmp_path / f"o{suffix}", False)
    sink.write(sample([1]))
    sink.abort()
    assert names(tmp_path) == [] and sink.out.file.closed


# ------------------------------------------------------------------------------ the Ray engine's helpers

@pytest.mark.parametrize(("workers", "cores", "cluster", "shares"), [
    (2, 16, True, (1.0, 1.0)),
    (64, 1, True, (1.0, 1.0)),
    (2, 2, False, (1.0, 0.5)),
    (1, 1, False, (0.5, 0.5)),
    (4, 16, False, (1.0, 1.0)),
    (8, 4, False, (1.0, 0.375)),
    (3, 1, False, (0.5, 0.5 / 3)),
])
def test_cpu_shares_leave_each_side_its_part(workers, cores, cluster, shares):
    assert ray_engine.cpu_shares(workers, cores, cluster) == shares


class Wrapped(Exception):
    """Like Ray's RayTaskError: the user's exception in `.cause`."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("task failed")
        self.cause = cause


def chained(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("user code failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("raised", "expect"), [
    (InputError("in.csv: row 2, bad"), InputError("in.csv: row 2, bad")),
    (Wrapped(ArtifactError("sent/ensemble.onnx: sha256 differs")), ArtifactError("sent/ensemble.onnx: sha256 differs")),
    (chained(InputError("x", "y")), InputError("x", "y")),
    (Wrapped(chained(Wrapped(ArtifactError("deep")))), ArtifactError("deep")),
    (Wrapped(None), None),
    ("ray", InputError("in.csv: row 2, bad")),
    (chained(ValueError("other")), None),
    (ValueError("plain"), None),
])
def test_refusal_unwraps_the_actors_input_or_artifact_error(raised, expect):
    if raised == "ray":  # what Ray raises on the driver: a RayTaskError that is also an InputError, Ray's text
        exceptions = pytest.importorskip("ray.exceptions")
        raised = exceptions.RayTaskError("fn", "Traceback: ...", InputError("in.csv: row 2, bad")).as_instanceof_cause()
        assert isinstance(raised, InputError) and str(raised) != "in.csv: row 2, bad"
    got = ray_engine._refusal(raised)
    if expect is None:
        assert got is None
    else:
        assert type(got) is type(expect) and got.args == expect.args and got is not raised


def test_refusal_prefers_rays_cause_to_python_s_and_stops_on_a_cycle():
    both = Wrapped(InputError("from ray"))
    both.__cause__ = ArtifactError("from python")
    assert ray_engine._refusal(both).args == ("from ray",)
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert ray_engine._refusal(a) is None


# ------------------------------------------------------------------- the Ray engine: refusals before Ray starts

def test_the_ray_engine_without_ray_says_how_to_install_it(demo_artifacts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(demo_artifacts, tmp_path / "in.parquet", tmp_path / "o.parquet")
    assert str(err.value) == ("--engine ray needs Ray Data: pip install --find-links dist/ 'ensemble-onnx[ray]' "
                              "(dist/: the folder with the wheel `make dist` builds), or pip install '.[ray]' in a "
                              "clone of the repository")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError, match=r"^backfill needs pyarrow: "):
        ray_engine.score_file_ray(demo_artifacts, tmp_path / "in.parquet", tmp_path / "o.parquet")


@pytest.mark.parametrize(("name", "on_error", "message"), [
    # fail mode checks no rejects file, so the default rejects name of o.parquet is a fine input (refused later
    # only for being JSON lines); skip mode refuses it as the input.
    ("o.rejects.jsonl", "fail", "SRC: --engine ray reads Parquet and CSV; score JSON lines with the local engine."),
    ("o.rejects.parquet", "skip", "--rejects SRC: is an input of this run (SRC); write the result to another file."),
])
def test_the_ray_engine_refuses_before_starting_ray(demo_artifacts, tmp_path, name, on_error, message):
    pytest.importorskip("ray")
    source = tmp_path / name
    source.write_text("{}\n")
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(demo_artifacts, source, tmp_path / "o.parquet", on_error=on_error)
    assert str(err.value) == message.replace("SRC", str(source))


def test_the_ray_engine_refuses_to_write_into_the_artifacts_folder(artifacts_copy, tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(InputError, match="is inside the artifacts folder"):
        ray_engine.score_file_ray(artifacts_copy, tmp_path / "in.parquet", artifacts_copy / "o.parquet")


def test_the_ray_engine_refuses_a_tampered_build_and_a_bad_header_on_the_driver(artifacts_copy, ens, tmp_path):
    pytest.importorskip("ray")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1], ens.feature_names[0]: [0.5]}), source)
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(artifacts_copy, source, tmp_path / "o.parquet")
    assert str(err.value) == f"{source}: missing feature column(s) {list(ens.feature_names[1:])}."
    graph = artifacts_copy / "ensemble.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + bytes([graph.read_bytes()[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="ensemble.onnx"):
        ray_engine.score_file_ray(artifacts_copy, source, tmp_path / "o.parquet")


@pytest.mark.slow
def test_the_ray_engine_scores_csv_like_the_local_engine_and_reports_an_actors_refusal_as_its_own(
        demo_artifacts, ens, tmp_path):
    """Found: an actor's refusal reached the command line as Ray's UserCodeException text (Ray does not pickle
    __cause__), and named the artifacts folder where the local engine names the input file. One local Ray for
    both runs (score_file_ray uses a Ray already started, and leaves it running)."""
    ray = pytest.importorskip("ray")
    x = rows(40, len(ens.feature_names), seed=21)
    source = tmp_path / "in.csv"
    pcsv.write_csv(pa.Table.from_batches([batch_of(x, ens.feature_names, sym=[f"S{i}" for i in range(40)])]), source)
    lines = source.read_text().splitlines(keepends=True)
    cells = lines[3].split(",")
    cells[1] = '""'  # row 3: an empty cell is a null, not text
    lines[3] = ",".join(cells)
    lines[7] = lines[7].replace(lines[7].split(",")[2], '"abc"', 1)  # row 7: text that is not a number
    source.write_text("".join(lines))
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({**{f: [0.5, 0.5] for f in ens.feature_names}, ens.feature_names[3]: [True, False]}),
                   typed)
    flags: dict[str, Any] = {"members": True, "batch_rows": 16, "on_error": "skip"}
    local = backfill.score_file(demo_artifacts, source, tmp_path / "local.parquet", **flags)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = ray_engine.score_file_ray(demo_artifacts, source, tmp_path / "ray.parquet", workers=1, **flags)
        with pytest.raises(InputError) as err:
            ray_engine.score_file_ray(demo_artifacts, typed, tmp_path / "typed.csv", workers=1)
    finally:
        ray.shutdown()
    assert pq.read_table(tmp_path / "ray.rejects.parquet").column("reason").to_pylist() == [
        f"column '{ens.feature_names[0]}': missing (null)", f"column '{ens.feature_names[1]}': 'abc' is not a number"]
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    assert {**summary.as_dict(), "seconds": 0, "rows_per_second": 0, "output": "", "rejects_file": ""} == {
        **local.as_dict(), "engine": "ray", "seconds": 0, "rows_per_second": 0, "output": "", "rejects_file": ""}
    assert type(err.value) is InputError and str(err.value) == (
        f"{typed}: column '{ens.feature_names[3]}' is of type bool, not numbers; every feature must be numeric.")
    assert not (tmp_path / "typed.csv").exists()


def test_an_actor_refuses_a_bad_batch_naming_the_input_file(demo_artifacts, ens):
    pytest.importorskip("ray")
    layout = layout_of(ens)
    scorer = ray_engine.RayScorer(read_files(demo_artifacts), layout, 1, "sent", "in.parquet")
    batch = pa.RecordBatch.from_pydict({f: pa.array([None], pa.bool_()) for f in ens.feature_names})
    with pytest.raises(InputError) as err:
        scorer(batch)
    message = (f"in.parquet: column '{ens.feature_names[0]}' is of type bool, not numbers; every feature must be "
               f"numeric.")
    assert err.value.args == (message,) and vars(err.value)["sent_args"] == (message,)


def test_refusal_rebuilds_an_actors_refusal_from_its_own_args_not_rays_annotated_ones():
    sent = InputError("in.csv: column 'f' is of type bool")
    vars(sent)["sent_args"] = sent.args
    sent.args = ("in.csv: column 'f' is of type bool\nFailed to apply UDF transform after 1/1 attempts.",)
    got = ray_engine._refusal(sent)
    assert type(got) is InputError and got.args == ("in.csv: column 'f' is of type bool",)


def test_csv_names_a_passthrough_column_with_no_text_form(tmp_path):
    """An interval column is neither nested nor binary: the refusal named no column at all before."""
    sink = TableSink(tmp_path / "o.csv", False)
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    with pytest.raises(InputError) as err:
        sink.write(pa.table({"id": [1], "span": interval}))
    assert str(err.value).startswith(f"{tmp_path}/o.csv: CSV cannot hold passthrough column(s) ['span'] (")
    sink.abort()
    assert names(tmp_path) == []


# ------------------------------------------------- JSON lines values Arrow or the writers cannot hold as typed

def feature_lines(ens: runtime.Ensemble, n: int, seed: int, **extra: list[Any]) -> str:
    """n JSON lines of finite features, each line also holding extra[key][i]."""
    x = rows(n, len(ens.feature_names), seed=seed)
    return "".join(json.dumps({**{k: v[i] for k, v in extra.items()},
                               **dict(zip(ens.feature_names, map(float, r), strict=True))}) + "\n"
                   for i, r in enumerate(x))


def read_back(path: Path) -> dict[str, list[Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pydict()
    if path.suffix == ".csv":  # every column as text: what the file holds, not what a reader infers
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types={"id": pa.string(), "meta": pa.string()})).to_pydict()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {k: [r[k] for r in records] for k in records[0]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_an_id_column_of_integers_past_64_bits_passes_through_as_their_exact_digits(demo_artifacts, ens, tmp_path,
                                                                                      suffix):
    # pa.array raises OverflowError (not ArrowInvalid) for 2**63 and up: the run died with a traceback.
    ids = [1, 2**70, int("9" * 400)]
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, 3, 31, id=ids))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["id"] == [str(i) for i in ids]  # the JSON text of each: every digit kept


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("meta", [{}, [{}], {"a": {}}])
def test_a_column_of_empty_objects_passes_through_as_json_text_whatever_the_output(demo_artifacts, ens, tmp_path,
                                                                                   suffix, meta):
    # `{}` reads as a struct with no fields, which Parquet cannot write (ArrowNotImplementedError, a traceback)
    # and CSV refused: it is kept as its JSON text, the same in every output format.
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, 2, 32, meta=[meta, meta]))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["meta"] == [json.dumps(meta)] * 2


def test_a_json_lines_feature_given_as_a_string_is_refused_by_row_and_column_as_predict_refuses_it(
        demo_artifacts, ens, tmp_path):
    source, out, rejects = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    records = [json.loads(line) for line in feature_lines(ens, 3, 33, id=[0, 1, 2]).splitlines()]
    records[1]["rsi_14"] = "1.5"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out)
    assert str(err.value).startswith(f"{source}: data row 2, column 'rsi_14': '\"1.5\"' is not a number. Nothing was")
    summary = backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=rejects)
    assert (summary.scored, summary.rejected) == (2, 1)
    assert [json.loads(s) for s in rejects.read_text().splitlines()] == [
        {"row": 2, "id": 1, "reason": "column 'rsi_14': '\"1.5\"' is not a number"}]


def test_a_long_feature_value_is_cut_short_in_the_refusal_and_the_rejects_file(demo_artifacts, ens, tmp_path):
    source, out, rejects = tmp_path / "in.jsonl", tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    records = [json.loads(line) for line in feature_lines(ens, 2, 34, id=[0, 1]).splitlines()]
    records[1]["macd"] = "x" * 100_000
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out)
    assert len(str(err.value)) < 400 and "(100002 characters)" in str(err.value), str(err.value)[:400]
    backfill.score_file(demo_artifacts, source, out, on_error="skip", rejects=rejects)
    (reject,) = [json.loads(s) for s in rejects.read_text().splitlines()]
    assert reject["reason"] == "column 'macd': '\"" + "x" * 78 + "... (100002 characters) is not a number"


def test_a_later_key_under_a_header_of_20000_keys_names_the_first_few_and_how_many_more(tmp_path):
    header = {f"k{i}": i for i in range(20_000)}
    path = jsonl(tmp_path, json.dumps({"f": 1, **header}) + "\n" + json.dumps({"f": 2, "new": 1, **header}) + "\n")
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == (f"{path}: line 2: key(s) ['new'] are not in the first row, whose keys name the "
                              f"columns ['f', 'k0', 'k1', 'k2', 'k3', ... 19,996 more]; add them to the first row "
                              f"(null where a row has none), or choose the passthrough columns with --keep.")


def test_an_integer_past_4300_digits_in_a_json_line_is_named_as_that(tmp_path):
    path = jsonl(tmp_path, '{"f": 1}\n{"f": ' + "7" * 5000 + "}\n")
    with pytest.raises(InputError) as err:
        list(open_batches(path, ("f",), 10)[2])
    assert str(err.value) == f"{path}: line 2: an integer of more than 4,300 digits, too long to read as a number."


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_score_says_no_rows_for_a_json_lines_file_with_none(demo_artifacts, tmp_path, content):
    source = jsonl(tmp_path, content)
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, tmp_path / "o.parquet")
    assert str(err.value) == f"{source}: no rows in the input."


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
@pytest.mark.parametrize("metas", [
    [{}, {"a": 1}, {"a": 1}],              # the attack: {} came back as {"a": null}
    [{"a": 1}, {}, {"a": 2}],
    [{"a": 1}, {"b": 2}, {"a": 3}],          # each gained the other's key as null
    [{"a": {"x": 1}}, {"a": {}}, {"a": {"x": 2}}],  # the same one level down
    [[{"a": 1}], [{"b": 2}, {"a": 1}], []],  # objects in lists
])
def test_objects_with_different_keys_pass_through_as_their_json_text_never_widened(demo_artifacts, ens, tmp_path,
                                                                                   suffix, metas):
    source, out = tmp_path / "in.jsonl", tmp_path / f"o{suffix}"
    source.write_text(feature_lines(ens, len(metas), 35, meta=metas))
    backfill.score_file(demo_artifacts, source, out)
    assert read_back(out)["meta"] == [None if m is None else json.dumps(m) for m in metas]


def test_objects_with_the_same_keys_stay_a_struct_column_in_parquet(demo_artifacts, ens, tmp_path):
    import pyarrow.parquet as pq

    metas = [{"a": 1, "b": [{"x": 1}]}, {"b": [], "a": None}, None, {"a": 2, "b": [{"x": None}, {"x": 3}]}]
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, len(metas), 36, meta=metas))
    backfill.score_file(demo_artifacts, source, out)
    column = pq.read_table(out).column("meta")
    assert str(column.type) == "struct<a: int64, b: list<element: struct<x: int64>>>"
    assert column.to_pylist() == metas


def test_csv_passthrough_columns_are_read_as_the_text_written_and_only_an_empty_cell_as_null(tmp_path):
    # pyarrow's inference read `007` as 7, `1e3` as 1000 and `NA`, `null`, `N/A` as null (attack report 3, H2).
    path = tmp_path / "h.csv"
    path.write_text('symbol,code,f\nNA,007,0.5\nnull,0012,NA\nN/A,1e3,\n,,""\n')
    columns, _, batches = open_batches(path, ("f",), 100)
    table = pa.Table.from_batches(list(batches))
    assert columns == ["symbol", "code", "f"] and set(table.schema.types) == {pa.string()}
    assert table.to_pydict() == {"symbol": ["NA", "null", "N/A", None], "code": ["007", "0012", "1e3", None],
                                 "f": ["0.5", "NA", None, None]}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_csv_passthrough_text_reaches_every_output_format_unchanged(demo_artifacts, ens, tmp_path, suffix):
    x = rows(4, len(ens.feature_names), seed=37)
    source, out = tmp_path / "in.csv", tmp_path / f"o{suffix}"
    source.write_text(",".join(["symbol", "code", *ens.feature_names]) + "\n" + "".join(
        f"{s},{c}," + ",".join(map(repr, map(float, r))) + "\n"
        for s, c, r in zip(["NA", "null", "N/A", "x"], ["007", "0012", "1e3", "12"], x, strict=True)))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    if suffix == ".csv":  # the file's own text: what a reader would infer is no test of what was written
        got = [line.split(",")[:2] for line in out.read_text().splitlines()[1:]]
        assert got == [['"NA"', '"007"'], ['"null"', '"0012"'], ['"N/A"', '"1e3"'], ['"x"', '"12"']]
    else:
        back = read_back(out) if suffix == ".parquet" else {
            k: [json.loads(line)[k] for line in out.read_text().splitlines()] for k in ("symbol", "code")}
        assert back["symbol"] == ["NA", "null", "N/A", "x"] and back["code"] == ["007", "0012", "1e3", "12"]


OBJECTS_THAT_CHANGE = [
    [{"a": 1}, {"a": 1}, {"a": 1, "b": 2}, {"a": 1, "b": 2}],  # b was dropped from rows 3-4
    [{"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1}, {"a": 1}],  # "b": null was added to rows 3-4
    [{"a": [{"k": 1}]}, {"a": [{"k": 1}]}, {"a": [{"k": 1, "z": []}]}, {"a": [{"k": 1, "z": []}]}],  # z dropped
]


@pytest.mark.parametrize("objects", OBJECTS_THAT_CHANGE)
def test_objects_whose_keys_change_in_a_later_batch_are_refused_naming_input_column_and_row(
        demo_artifacts, ens, tmp_path, objects):
    # The sink cast a later batch's struct to the first's by field name: keys dropped or added as nulls,
    # silently (attack report 3, H1).
    source, out = tmp_path / "in.jsonl", tmp_path / "o.parquet"
    source.write_text(feature_lines(ens, 4, 36, obj=objects))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    message = str(err.value)
    assert message.startswith(f"{source}: data row 3, passthrough column 'obj' changed type between batches (")
    assert "make the column's objects have the same keys" in message and "big id" not in message
    assert not out.exists()
    backfill.score_file(demo_artifacts, source, out, batch_rows=4)  # one batch: the JSON text of each, whole
    assert [json.loads(v) for v in pq.read_table(out).column("obj").to_pylist()] == objects


def test_a_column_null_in_the_first_batch_and_objects_later_is_refused_without_big_id_advice(
        demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text(feature_lines(ens, 4, 38, obj=[None, None, None, {"a": 1}]))
    with pytest.raises(InputError) as err:
        backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert str(err.value).startswith(f"{source}: data row 4, passthrough column 'obj' changed type between "
                                     f"batches (null, then struct<a: int64>): the first batch of --batch-rows rows")
    assert "big id" not in str(err.value) and not out.exists()


def test_a_column_null_in_a_later_batch_takes_the_first_batchs_type(demo_artifacts, ens, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text(feature_lines(ens, 4, 39, obj=[{"a": 1}, {"a": 2}, None, None]))
    backfill.score_file(demo_artifacts, source, out, batch_rows=2)
    assert [json.loads(line)["obj"] for line in out.read_text().splitlines()] == [{"a": 1}, {"a": 2}, None, None]


def test_a_csv_block_past_the_first_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    # open_csv reads the first block (at least a mebibyte); a later one raised ArrowInvalid while iterating.
    path = tmp_path / "h.csv"
    path.write_bytes(b"sym,f\n" + b"abc,0.5\n" * 200_000 + b"Z\xfcrich,0.5\n")
    _, _, batches = open_batches(path, ("f",), 10)
    with pytest.raises(InputError) as err:
        list(batches)
    assert str(err.value).startswith(f"{path}: cannot be read as csv (")
    assert str(err.value).endswith("; save the file as UTF-8.")


def test_rejects_take_the_first_batchs_types_when_their_first_refused_row_is_null(demo_artifacts, ens, tmp_path):
    # The rejects file's first table held the column as nulls only: a later refused object could not be cast.
    lines = [json.loads(line) for line in feature_lines(ens, 3, 40, obj=[{"a": 1}, None, {"a": 2}]).splitlines()]
    for record in lines[1:]:
        record[ens.feature_names[0]] = None
    source, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = backfill.score_file(demo_artifacts, source, out, batch_rows=1, on_error="skip")
    assert summary.rejected == 2
    rejects = [json.loads(line) for line in Path(summary.rejects_file).read_text().splitlines()]
    assert [(r["row"], r["obj"]) for r in rejects] == [(2, None), (3, {"a": 2})]
