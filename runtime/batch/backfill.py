"""Backfill: score a whole history file with the production build, streaming, on one machine.

    from runtime.batch.backfill import score_file
    summary = score_file("artifacts/", "history.parquet", "scores.parquet", workers=os.cpu_count())

Input is Parquet, CSV (header) or JSON lines, chosen by the file's extension; columns are matched by name.
It is read in record batches (`batch_rows`), so memory is bounded by a few batches whatever the file's size.
Out come the passthrough columns (`keep`, default every non-feature column), `action`, `confidence`, one
`p_<CLASS>` column per class and, with `members=True`, `p_<MEMBER>_<CLASS>` per member, in input order.

A row that cannot be scored (null, non-numeric or infinite feature; NaN where a member defines no missing
value; a member that overflows) stops
the run with an InputError naming the file, row (1-based, among data rows) and column; with
`on_error="skip"` it goes to a rejects file with its reason instead. It is never scored with a made-up value.
Outputs are written atomically (`backfill_io.AtomicOutput`): a run that fails or is killed leaves no output file.

Scoring uses one onnxruntime intra-op thread per process by default and `workers` processes: with one
thread a row's probabilities are bit-identical whatever batch it is scored in (measured; README), so a
backfill agrees with the service's one-row calls bit for bit. The Ray engine (`runtime.batch.ray_engine`) shares
the batch functions below.

pyarrow is imported inside the functions: `import runtime` never loads it (`pip install ensemble-onnx[backfill]`).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import read_files, verify_files
from ..errors import InputError, shortened, shortened_names
from ..records import header_problem, parse_number
from .backfill_io import FORMATS, TableSink, file_format, open_batches, require_pyarrow
from .columns import score_columns
from .results import check_target, commit_together, environment_fault, placed

log = logging.getLogger(__name__)
SCORE_CHUNK = 1024      # rows per onnxruntime call: bounds the intermediates (PatchTST's 2048-wide layer)
REJECT = "__reject__"   # the reason column a scored batch carries between scoring and writing


# ------------------------------------------------------------------------------------------- the layout

@dataclass(frozen=True)
class Layout:
    """What goes in and what comes out: the features, the passthrough columns, the score columns."""

    features: tuple[str, ...]
    classes: tuple[str, ...]
    member_order: tuple[str, ...]
    keep: tuple[str, ...]
    members: bool = False
    # A null feature cell is a missing value (NaN) in Parquet, whose columns are typed and hold no absent key
    # (pandas writes NaN there as null); in CSV and JSON lines it may be a key a line lacks, and is refused.
    nulls_missing: bool = False

    @property
    def score_columns(self) -> list[str]:
        return score_columns(self.classes, self.member_order if self.members else ())

    @classmethod
    def for_input(cls, manifest: dict[str, Any], columns: list[str], keep: list[str] | None, members: bool,
                  where: str) -> Layout:
        """Checks the input's header: every feature present once, `keep` columns present, no name clash."""
        features = tuple(manifest["feature_names"])
        repeated = sorted(c for c, n in collections.Counter(columns).items() if n > 1)  # linear: 20,000 columns
        if repeated:
            raise InputError(f"{where}: column(s) given more than once: {shortened_names(repeated)}.")
        if (problem := header_problem(columns, features, None)) is not None:
            raise InputError(f"{where}: {problem}.")
        chosen = [c for c in columns if c not in features] if keep is None else keep
        if unknown := [c for c in chosen if c not in columns]:
            raise InputError(f"{where}: --keep column(s) {shortened_names(unknown)} are not in the input (it has "
                             f"{shortened_names(columns, 25)}).")
        layout = cls(features, tuple(manifest["classes"]), tuple(manifest["ensemble"]["members"]), tuple(chosen),
                     members, FORMATS.get(Path(where).suffix.lower()) == "parquet")
        if clash := sorted(set(layout.keep) & set(layout.score_columns + [REJECT])):
            raise InputError(f"{where}: passthrough column(s) {clash} would clash with the output's own; "
                             f"rename them or leave them out with --keep.")
        return layout


# --------------------------------------------------------------------------------- one batch, end to end

def unscored(reasons: np.ndarray) -> np.ndarray:
    """Which rows have no reason against them (yet)."""
    return np.fromiter((r is None for r in reasons), dtype=bool, count=len(reasons))


def feature_matrix(batch: Any, features: tuple[str, ...], where: str,
                   nulls_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow batch -> (float64 [n, F], reasons [n]: None for a good row, else what is wrong and where).

    Numbers are taken as they are; text (CSV, JSON strings) must parse as a number. A null (unless
    `nulls_missing`: then it is NaN, as in a Parquet input), an infinity or text that is not a number makes the
    row bad; the first bad column names the reason. NaN is left to the Ensemble, which holds it to the build's
    domain.
    A feature column of a type that can hold no number at all fails the whole run."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    x = np.empty((n, len(features)), dtype=np.float64)
    reasons = np.full(n, None, dtype=object)
    for j, name in enumerate(features):
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        kind = col.type
        unparsed = np.zeros(n, dtype=bool)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            # safe=False: an integer past 2**53 rounds to the nearest float64 (as numpy and predict do) rather
            # than failing the run with ArrowInvalid.
            values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
            try:
                values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
                # Arrow also reads C's `nan(chars)` ('nan(123)', 'NAN(0x7ff)'), which predict refuses as no
                # number: a cell read as NaN that is not a plain 'nan' (a column of them costs one regex pass)
                # is read again as predict reads it.
                plain = (pc.fill_null(pc.match_substring_regex(col, r"^\s*[+-]?nan\s*$", ignore_case=True), True)
                         .to_numpy(zero_copy_only=False) if not pa.types.is_null(kind) else np.ones(n, dtype=bool))
                odd = np.isnan(values) & ~plain
                for at in np.flatnonzero(odd).tolist():
                    try:
                        parse_number(col[at].as_py())
                    except ValueError:
                        unparsed[at] = True
            except pa.ArrowInvalid:  # some cell is not a number: parse cell by cell to name which
                values = np.full(n, np.nan)
                for i, cell in enumerate(col.to_pylist()):
                    try:
                        values[i] = parse_number(cell) if cell is not None else np.nan
                    except ValueError:
                        unparsed[i] = True
        else:
            raise InputError(f"{where}: column '{name}' is of type {kind}, not numbers; every feature must be numeric.")
        x[:, j] = values
        nulls = col.is_null().to_numpy(zero_copy_only=False) & (not nulls_missing)  # else NaN: to_numpy made it so
        # NaN is no reason here: the Ensemble scores it where the build's domain takes it and refuses it naming
        # the members otherwise (score_matrix), as predict does. A null is refused: it may be an absent key.
        bad = (unparsed | nulls | np.isinf(values)) & unscored(reasons)
        for row in np.flatnonzero(bad):
            value = col[int(row)].as_py()
            shown = shortened(value, 80)  # a cell may hold 100,000 characters: cut short here and in rejects
            reasons[row] = (f"column '{name}': missing (null)" if value is None
                            else f"column '{name}': {shown} is not a number" if unparsed[row]
                            else f"column '{name}': {shown} is not finite; impute it before scoring")
    return x, reasons


def score_matrix(ens: Any, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every row of a validated matrix through the ensemble graph, SCORE_CHUNK rows per call.

    Returns the graph's outputs and, per row, None or why it was refused: a member overflowing to a
    non-finite probability makes `Ensemble` refuse the call, and that chunk is then scored row by row to
    name the rows (one row or many give the same bits at one thread). A refused row's outputs stay zero and
    are never written."""
    n, n_classes, n_members = len(x), len(ens.classes), len(ens.member_order)
    out: dict[str, np.ndarray] = {"probabilities": np.zeros((n, n_classes), np.float32), "label": np.zeros(n, np.int64),
           "confidence": np.zeros(n, np.float32),
           "member_probabilities": np.zeros((n, n_members, n_classes), np.float32)}
    reasons = np.full(n, None, dtype=object)
    for start in range(0, n, SCORE_CHUNK):
        stop = min(start + SCORE_CHUNK, n)
        try:
            spans = [(start, stop, ens.run(x[start:stop]))]
        except InputError:
            spans = []
            for i in range(start, stop):
                try:
                    spans.append((i, i + 1, ens.run(x[i:i + 1])))
                except InputError as exc:
                    # the row is the reason's own row; a reason is no sentence
                    reasons[i] = str(exc).removeprefix("row 0: ").removeprefix("row 0, ").removesuffix(".")
        for lo, hi, result in spans:
            for key, array in out.items():
                array[lo:hi] = result[key]
    return out, reasons


def score_rows(ens: Any, x: np.ndarray, reasons: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores the rows of x that have no reason yet; returns all rows' outputs and every row's reason."""
    good = np.flatnonzero(unscored(reasons))
    scored, refused = score_matrix(ens, x[good])
    out = {k: np.zeros((len(x),) + v.shape[1:], v.dtype) for k, v in scored.items()}
    for key, value in scored.items():
        out[key][good] = value
    merged = reasons.copy()
    merged[good] = refused
    return out, merged


def assemble(layout: Layout, keep: Any, outputs: dict[str, np.ndarray], reasons: np.ndarray) -> Any:
    """Passthrough columns + score columns + the reason column (null for a scored row) as one Arrow table."""
    import pyarrow as pa

    refused = ~unscored(reasons)
    columns: dict[str, Any] = {name: keep.column(name) for name in layout.keep}
    # In the order of layout.score_columns, which names them (one list, which refuses a name given twice).
    n_classes = len(layout.classes)
    scores = [pa.array(np.asarray(layout.classes, dtype=object)[outputs["label"]], type=pa.string(), mask=refused),
              pa.array(outputs["confidence"], mask=refused),
              *(pa.array(outputs["probabilities"][:, k], mask=refused) for k in range(n_classes))]
    if layout.members:
        scores += [pa.array(outputs["member_probabilities"][:, m, k], mask=refused)
                   for m in range(len(layout.member_order)) for k in range(n_classes)]
    columns.update(zip(layout.score_columns, scores, strict=True))
    columns[REJECT] = pa.array(list(reasons), type=pa.string())
    return pa.table(columns)


def score_batch(ens: Any, layout: Layout, batch: Any, where: str) -> Any:
    """One Arrow batch in, one assembled table out (bad rows carry their reason, not a score)."""
    x, reasons = feature_matrix(batch, layout.features, where, layout.nulls_missing)
    return assemble(layout, batch, *score_rows(ens, x, reasons))


# ---------------------------------------------------------------------------------------- the driver

@dataclass
class Summary:
    input: str
    output: str
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    seconds: float = 0.0
    engine: str = "local"
    workers: int = 1
    threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "rows_per_second": self.rows / self.seconds if self.seconds else None}


class Progress:
    """rows, rows/s and (when the total is known) ETA on one line of stderr, only on a terminal."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled = total, enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def __call__(self, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.5 and not final):
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-9)
        line = f"{rows:,} rows  {rate:,.0f} rows/s"
        if self.total:
            eta = (self.total - rows) / rate if rate else 0.0
            line += f"  {100 * rows / self.total:5.1f}%  ETA {eta:,.0f}s"
        sys.stderr.write(f"\r{line}   " + ("\n" if final else ""))
        sys.stderr.flush()


class Outcome:
    """Splits assembled tables into scored rows (to the output) and refused rows (to rejects, or an error)."""

    def __init__(self, where: Path, layout: Layout, sink: TableSink, rejects: TableSink | None,
                 summary: Summary) -> None:
        self.where, self.layout, self.sink, self.rejects, self.summary = where, layout, sink, rejects, summary
        self.schema: Any = None  # the first table's: each column's type in both output files
        self.first_reason = ""  # the first refused row, to name when no row at all could be scored

    def take(self, table: Any) -> None:
        import pyarrow.compute as pc

        first_row = self.summary.rows + 1
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema and table.num_rows:  # an empty table is the sinks' to cast or refuse
            self.check_types(table, first_row)
            # Only all-null columns differ now: cast here, before the split, so that the rejects file too gets
            # the first table's types, even when its first refused row held a null.
            table = table.cast(self.schema)
        bad = table.column(REJECT).is_valid()
        n_bad = pc.sum(bad).as_py() or 0
        if n_bad:
            if self.rejects is None:
                i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
                raise InputError(f"{self.where}: data row {first_row + i}, {table.column(REJECT)[i].as_py()}. Nothing "
                                 f"was written; fix the row, or pass --on-error skip to write such rows to a "
                                 f"rejects file.")
            import pyarrow as pa
            refused = table.filter(bad)
            rows = pa.array(first_row + np.flatnonzero(bad.to_numpy(zero_copy_only=False)), type=pa.int64())
            if not self.first_reason:
                self.first_reason = f"data row {rows[0].as_py()}, {refused.column(REJECT)[0].as_py()}"
            self.rejects.write(pa.table({"row": rows, **{k: refused.column(k) for k in self.layout.keep},
                                         "reason": refused.column(REJECT)}))
        scored = table.filter(pc.invert(bad)).drop_columns([REJECT]) if n_bad else table.drop_columns([REJECT])
        self.sink.write(scored)
        self.summary.rows += table.num_rows
        self.summary.scored += scored.num_rows
        self.summary.rejected += n_bad


    def check_types(self, table: Any, first_row: int) -> None:
        """Refuses a later table whose column has another type than the first's, unless it is nulls only.

        The sinks would cast it to the first's type, which is no copy: a struct is cast by field name (a key
        the first batch lacked is dropped, one it had is added as null), 2.0 becomes 2. JSON lines infer each
        batch's types on their own, so only a refusal keeps every value; it names the input's column and the
        first data row whose value has another type."""
        import pyarrow as pa

        for field in self.schema:
            new = table.schema.field(field.name).type
            if new == field.type or pa.types.is_null(new):  # nulls take any type, losing nothing
                continue
            values = table.column(field.name).to_pylist()
            at = next((i for i, v in enumerate(values) if v is not None and _inferred(v) != field.type), 0)
            if pa.types.is_integer(field.type) and pa.types.is_string(new):
                advice = "write such ids as JSON strings (a big id as \"123...\")"
            elif pa.types.is_nested(field.type) or pa.types.is_nested(new):
                advice = ("make the column's objects have the same keys (null where a row has no value) and "
                          "its lists hold one kind of item, or write the column as JSON text (a string)")
            else:
                advice = "write the column's values as one type (JSON strings, for instance)"
            raise InputError(f"{self.where}: data row {first_row + at}, passthrough column {shortened(field.name)} "
                             f"changed type between batches ({_short(field.type)}, then {_short(new)}): the "
                             f"first batch of --batch-rows rows sets each column's type, and casting a later one "
                             f"would change its values; {advice}, pass --batch-rows large enough for one batch "
                             f"to hold the file, or leave the column out with --keep.")


def _inferred(value: Any) -> Any:
    """The Arrow type this one value would be read as (None where Arrow cannot hold it as one)."""
    import pyarrow as pa

    try:
        return pa.array([value]).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


def _short(kind: Any) -> str:
    text = str(kind)
    return text if len(text) <= 120 else f"{text[:117]}..."


def default_rejects(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def _check_readable_file(input_path: Path) -> None:
    """A FIFO or a device named as the input (`mkfifo in.csv`, `/dev/fd/63` from `<(...)`) is refused naming
    what it is: the readers need a file (CSV is opened twice, Parquet read from its end), and pyarrow said only
    `lseek failed`. The way out is `score -`, which copies stdin to a file first."""
    import stat

    from ..limits import file_kind

    try:
        mode = os.stat(input_path).st_mode
    except OSError:
        return  # missing or unreadable: the reader names it
    if not stat.S_ISREG(mode):
        raise InputError(f"{input_path}: is {file_kind(mode)}, not a regular file, which score reads twice (CSV) or "
                         f"from its end (Parquet); pipe it in instead: score ARTIFACTS - -o OUT < {input_path}.")


def check_paths(input_path: Path, output: Path, rejects: Path | None, artifacts: Path | None = None,
                force: bool = False) -> None:
    """Refuses, before any work, what would lose data (runtime.batch.results.check_target): the output or the
    rejects file being the input, an existing file without --force, a path in an artifacts folder; and the
    output and rejects being one file."""
    _check_readable_file(input_path)
    for flag, target in (("-o", output), ("--rejects", rejects)):
        if target is not None:
            check_target(target, force=force, flag=flag, inputs=[input_path],
                         builds=[artifacts] if artifacts is not None else [])
    if rejects is not None and placed(rejects).resolve() == placed(output).resolve():
        raise InputError(f"{rejects}: the rejects file must differ from the output.")
    file_format(output)
    if rejects is not None:
        file_format(rejects)


def run(input_path: Path, output: Path, layout: Layout, tables: Iterator[Any], force: bool,
        on_error: str, rejects: Path | None, summary: Summary, progress: Progress, group_rows: int = 65536) -> Summary:
    """Drains assembled tables into the output (and rejects) files; commits both together, only if all went
    well: a run leaves both its files or neither."""
    start = time.monotonic()
    if on_error == "skip" and (taken := sorted(set(layout.keep) & {"row", "reason"})):
        # The rejects file's own columns: a passthrough column of that name would overwrite the row number.
        raise InputError(f"{input_path}: passthrough column(s) {taken} would clash with the rejects file's own "
                         f"'row' and 'reason'; rename them or leave them out with --keep.")
    sink = TableSink(output, force, group_rows)
    reject_sink = None
    try:
        if on_error == "skip":
            reject_sink = TableSink(rejects or default_rejects(output), force, group_rows)
        outcome = Outcome(input_path, layout, sink, reject_sink, summary)
        for table in tables:
            outcome.take(table)
            progress(summary.rows)
        progress(summary.rows, final=True)
        if summary.scored == 0:
            raise InputError(f"{input_path}: no row could be scored ({summary.rows:,} read, {summary.rejected:,} "
                             f"refused{'; first: ' + outcome.first_reason if outcome.first_reason else ''}); "
                             f"nothing was written.")
        sink.close()
        outputs = [sink.out]
        if reject_sink is not None:
            if summary.rejected:
                reject_sink.close()
                outputs.append(reject_sink.out)
                summary.rejects_file = str(reject_sink.out.target)
            else:
                reject_sink.abort()
                reject_sink = None
        commit_together(outputs)
    except BaseException as exc:
        sink.abort()
        if reject_sink is not None:
            reject_sink.abort()
        fault = environment_fault(exc, output)
        if fault is not None:
            raise fault from None
        raise
    summary.seconds = time.monotonic() - start
    return summary


def load_from_files(files: dict[str, bytes], threads: int, where: str, expect_build_id: str | None = None,
                    public_key: str | os.PathLike[str] | bytes | None = None) -> Any:
    """Verifies received artifact bytes against their manifest (and the trust options: the pinned build, the
    signing key), then loads them with `threads` intra-op threads (one by default: batch-invariant answers,
    and no oversubscription beside other workers)."""
    import onnxruntime as ort

    from .. import Ensemble

    verified = verify_files(files, where, expect_build_id, public_key)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return Ensemble(where, verified, options)


def capped(requested: int, available: int, what: str) -> int:
    """`requested` threads or workers, at most what the host (or cluster) has, saying so when it cuts: more
    only queue (1,000 onnxruntime threads on 2 cores ran for minutes on 300 rows)."""
    if requested > available:
        log.warning("%s %d capped at %d: this host has %d CPU(s); more would only queue.", what, requested,
                    available, available)
        return available
    return requested


def watch_parent(parent: int) -> None:
    """In a worker: exit as soon as the process that started it is gone (kill -9 included), instead of
    living on with its Ensemble in memory. A thread polling getppid(): the same on every platform, and unlike
    Linux's PR_SET_PDEATHSIG not tied to the parent thread that happened to start the worker."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


# Worker processes: each verifies the bytes it was sent and keeps its Ensemble for the whole run.
_WORKER: dict[str, Any] = {}


def _worker_init(files: dict[str, bytes], threads: int, where: str, parent: int, expect_build_id: str | None,
                 public_key: bytes | None) -> None:
    watch_parent(parent)
    _WORKER["ens"] = load_from_files(files, threads, where, expect_build_id, public_key)


def _worker_score(x: np.ndarray, reasons: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return score_rows(_WORKER["ens"], x, reasons)


def key_bytes(public_key: str | os.PathLike[str] | bytes | None) -> bytes | None:
    """The public key's PEM bytes, to send to workers (a Ray actor on another node has no such path). Read
    after the driver verified the folder with it, so the file is a readable key."""
    if public_key is None or isinstance(public_key, bytes):
        return public_key
    with open(public_key, "rb") as fh:
        return fh.read(64 << 10)


def score_file(artifacts: str | os.PathLike[str], input_path: str | os.PathLike[str],
               output: str | os.PathLike[str], *, keep: list[str] | None = None, members: bool = False,
               on_error: str = "fail", rejects: str | os.PathLike[str] | None = None, threads: int = 1,
               workers: int = 1, batch_rows: int = 65536, force: bool = False, progress: bool = False,
               expect_build_id: str | None = None,
               public_key: str | os.PathLike[str] | bytes | None = None) -> Summary:
    """Score INPUT with the artifacts into OUTPUT on this machine; see the module docstring."""
    require_pyarrow()
    input_path, output = Path(input_path), Path(output)
    rejects_path = Path(rejects) if rejects is not None else None
    if on_error not in ("fail", "skip"):
        raise InputError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
    check_batch_rows(batch_rows)
    check_paths(input_path, output, (rejects_path or default_rejects(output)) if on_error == "skip" else None,
                Path(artifacts), force)
    files = read_files(artifacts, expect_build_id, public_key)
    key = key_bytes(public_key)
    cores = os.cpu_count() or 1
    threads = capped(threads, cores, "--threads")
    ens = load_from_files(files, threads, str(artifacts), expect_build_id, key)
    columns, total, batches = open_batches(input_path, ens.feature_names, batch_rows, keep)
    layout = Layout.for_input(ens.manifest, columns, keep, members, str(input_path))
    # More processes than cores only queue: each holds its own Ensemble and up to two batches in flight
    # (--workers 1000 on a long file asked for 2,000 pending batches, ~19 GB at the default batch size).
    workers = capped(max(1, workers), cores, "--workers")
    summary = Summary(str(input_path), str(output), workers=workers, threads=threads)
    where = str(input_path)

    def local() -> Iterator[Any]:
        for batch in batches:
            yield score_batch(ens, layout, batch, where)

    def pooled() -> Iterator[Any]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent holds onnxruntime's thread pools, which a fork would copy mid-state.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init,
                                 initargs=(files, threads, str(artifacts), os.getpid(), expect_build_id, key)) as pool:
            pending: collections.deque[tuple[Any, Any]] = collections.deque()
            for batch in batches:
                x, reasons = feature_matrix(batch, layout.features, where, layout.nulls_missing)
                pending.append((batch, pool.submit(_worker_score, x, reasons)))
                if len(pending) >= 2 * workers:  # bounded: at most two batches per worker in flight
                    yield _finish(layout, *pending.popleft())
            while pending:
                yield _finish(layout, *pending.popleft())

    tables = pooled() if workers > 1 else local()
    return run(input_path, output, layout, tables, force, on_error, rejects_path, summary,
               Progress(total, progress), batch_rows)


MAX_BATCH_ROWS = 1 << 24  # 16,777,216 rows: past this a batch is no longer "a few batches of memory"


def check_batch_rows(batch_rows: int) -> None:
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or not 1 <= batch_rows <= MAX_BATCH_ROWS:
        raise InputError(f"batch_rows must be a whole number from 1 to {MAX_BATCH_ROWS:,}, not "
                         f"{shortened(batch_rows)}.")


def _finish(layout: Layout, batch: Any, future: Any) -> Any:
    return assemble(layout, batch, *future.result())
