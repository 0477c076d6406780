"""The operator's commands: score (backfill), compare, drift, evaluate. Runtime only (plus pyarrow or Ray where
the rows or the engine need them)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from . import (
    AS_JSON,
    EXPECT_BUILD,
    FORCE,
    PUBLIC_KEY,
    QUIET,
    ROWS_HELP,
    GateRange,
    check_build_ids,
    emit,
    log_to_stderr,
    out_file,
    rows_in,
)

# ------------------------------------------------------------------ releasing and watching a build (issue 16)


def _write_report(path: Path | None, html: str, force: bool) -> None:
    """The HTML report through runtime.batch.results (checked before any work by _check_report)."""
    if path is not None:
        from runtime.batch.results import write_file

        try:
            write_file(path, html.encode("utf-8"), force=force)
        except OSError as exc:  # a folder that vanished, a read-only one
            raise click.ClickException(f"{path}: cannot write the report ({exc.strerror}).") from None
        click.echo(f"report: {path}", err=True)


def _check_report(path: Path | None, force: bool, inputs: list[str], builds: list[Path]) -> None:
    if path is not None:
        from runtime.batch.results import check_target

        check_target(path, force=force, flag="--report", inputs=inputs, builds=builds)


@click.command()
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@rows_in("Recorded feature rows both builds score. " + ROWS_HELP, old=("--data",))
@click.option("--max-flip-rate", type=GateRange(0.0, 1.0),
              help="Gate: exit 1 if more than this share of rows change action.")
@click.option("--max-share-shift", type=GateRange(0.0, 1.0),
              help="Gate: exit 1 if any class's share of actions moves by more than this (absolute, 0.05 = 5 points).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page (transition heat map, confidence histograms).")
@FORCE
@click.option("--expect-build-id", "expect_build_ids", metavar="SHA256", multiple=True, callback=check_build_ids,
              help="Refuse any builds but these: given twice, OLD's build id then NEW's.")
@PUBLIC_KEY
@AS_JSON
@QUIET
def compare(old: Path, new: Path, input_file: str, max_flip_rate: float | None, max_share_shift: float | None,
            report_file: Path | None, force: bool, expect_build_ids: tuple[str, ...], public_key: Path | None,
            as_json: bool, quiet: bool) -> None:
    """Score the rows in --input with the OLD and NEW artifacts and show how the actions move: the transition
    matrix, flip rates, class shares, confidence, and each member's probability move. The table goes to
    stderr, --json to stdout; exit 1 past a gate, naming the figures that failed."""
    import runtime
    from runtime.monitor.compare import compare as run_compare
    from runtime.monitor.compare import gate, html, text
    from runtime.monitor.report import read_rows

    if len(expect_build_ids) not in (0, 2):
        raise click.UsageError("--expect-build-id: give it twice, OLD's build id then NEW's.")
    _check_report(report_file, force, [input_file], [old, new])
    pins = expect_build_ids or (None, None)
    builds = [runtime.load(folder, expect_build_id=pin, public_key=public_key)
              for folder, pin in zip((old, new), pins, strict=True)]
    features = [*builds[0].feature_names, *builds[1].feature_names]
    result = run_compare(builds[0], builds[1], read_rows(input_file, features))
    failures = gate(result, max_flip_rate, max_share_shift)
    result["gates"] = {"max_flip_rate": max_flip_rate, "max_share_shift": max_share_shift, "failures": failures,
                       "passed": not failures}
    if not quiet:
        click.echo("\n".join(text(result)), err=True)
    emit(result, as_json)
    _write_report(report_file, html(result, failures), force)
    if failures:
        raise click.ClickException("gate failed: " + "; ".join(failures))


def _cpu() -> str:
    """The CPU model and the vector instruction sets this host offers, for measured figures."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform
        return platform.processor() or "unknown CPU"
    model = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), "unknown CPU")
    flags = next((x.split(":", 1)[1].split() for x in info if x.startswith("flags")), [])
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} cores, {' '.join(f for f in wanted if f in flags)}"


def _measure_drift(ens: Any, x: Any) -> dict[str, Any]:
    """Cost per row of drift() beside predict_proba() on the same rows and batch sizes (median of repeats)."""
    import numpy as np

    figures = {}
    for batch in (1, 64, 1024):
        rows = x[np.arange(batch) % len(x)]
        timed = {}
        for name, fn in (("drift", ens.drift), ("predict", ens.predict_proba)):
            fn(rows)  # warm
            repeats = max(3, 2048 // batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(rows)
                times.append(time.perf_counter() - start)
            timed[name] = float(np.median(times)) / batch * 1e6
        figures[str(batch)] = {"drift_us_per_row": timed["drift"], "predict_us_per_row": timed["predict"],
                               "drift_over_predict": timed["drift"] / timed["predict"]}
    return {"cpu": _cpu(), "batches": figures}


@click.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@rows_in("Live feature rows. " + ROWS_HELP)
@click.option("--fail-psi", type=GateRange(min=0.0),
              help="Exit 1 if any feature's PSI reaches this (0.25 is the usual 'significant shift'); exit 3 if "
                   "the build has no training bins to compute PSI against.")
@click.option("--measure", is_flag=True, help="Also time drift() against predict() per row at batch sizes 1, 64 "
                                              "and 1024 on these rows, naming this CPU.")
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def drift(artifacts: Path, input_file: str, fail_psi: float | None, measure: bool, expect_build_id: str | None,
          public_key: Path | None, as_json: bool, quiet: bool) -> None:
    """Compare live feature rows with what the build was trained on (its statistics.json): per feature PSI
    against the training deciles (or a z-score summary), the share outside the training range, and a status
    ok / warn / drift. The table goes to stderr, --json to stdout."""
    import runtime
    from runtime.errors import CannotRunError, InputError
    from runtime.monitor.drift import table
    from runtime.monitor.report import read_rows
    from runtime.records import at_line, records_to_matrix

    ens = runtime.load(artifacts, expect_build_id=expect_build_id, public_key=public_key)
    records = read_rows(input_file, ens.feature_names)
    # NaN passes to ens.drift, which takes it where predict does (counted, left out of the figures).
    x = records_to_matrix(records, ens.feature_names, ("symbol", "label", "timestamp"), missing=True)
    try:
        report = ens.drift(x)
    except InputError as exc:  # a NaN the build cannot take: named at its line, as predict names it
        raise at_line(exc, records) from None
    if not quiet:
        click.echo("\n".join(table(report)), err=True)
    if measure:
        report["cost"] = _measure_drift(ens, x)
        click.echo(f"cost per row on {report['cost']['cpu']}:", err=True)
        for batch, f in report["cost"]["batches"].items():
            click.echo(f"  batch {batch:>5}: drift {f['drift_us_per_row']:9.2f} us, predict "
                       f"{f['predict_us_per_row']:9.2f} us ({f['drift_over_predict']:.1%} of predict)", err=True)
    emit(report, as_json)
    if fail_psi is not None:
        binned = {n: f for n, f in report["features"].items() if f.get("psi") is not None}
        if not binned:
            # Not "drift found" (exit 1): the check could not run (exit 3), which a pipeline must tell apart.
            raise CannotRunError(f"--fail-psi: {artifacts} has no training bins to compute PSI against; "
                                 f"rebuild with `ensemble-onnx convert --reference-data ROWS`.")
        # A PSI counts only past what noise alone reaches in a batch this size (psi_limit): below it a batch
        # drawn from the training data itself would reach --fail-psi as often as not.
        past = {n: f["psi"] for n, f in binned.items() if f["psi"] >= max(fail_psi, f.get("psi_limit") or 0.0)}
        if past:
            raise click.ClickException(f"PSI at or past --fail-psi {fail_psi}: "
                                       + ", ".join(f"{n} {v:.3f}" for n, v in past.items()))
        unsure = [n for n, f in binned.items() if f["psi"] >= fail_psi]
        if unsure:  # past the gate, but within noise: too few rows to tell, which is not "no drift" either
            limit = max(binned[n]["psi_limit"] for n in unsure)
            raise CannotRunError(f"--fail-psi {fail_psi}: {report['rows']} rows are too few to tell a PSI that "
                                 f"size from noise (noise alone reaches {limit:.3f} here) for "
                                 f"{', '.join(unsure[:5])}{' ...' if len(unsure) > 5 else ''}; score a larger "
                                 f"batch.")


def _check_window(value: str | None) -> str | None:
    """A bad --window is a usage error (exit 2), found before any row is read."""
    from runtime.errors import InputError
    from runtime.monitor.evaluate import parse_window

    try:
        if value is not None:
            parse_window(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@rows_in("Features, the realised 'label' (a class name) and optionally a 'timestamp'. " + ROWS_HELP,
         old=("--data",))
@click.option("--window", callback=lambda ctx, param, value: _check_window(value),
              help="Also per time window of the timestamps: 1d, 6h, 15m, 1w ...")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page (confusion heat map, figures per window).")
@FORCE
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def evaluate(artifacts: Path, input_file: str, window: str | None, report_file: Path | None, force: bool,
             expect_build_id: str | None, public_key: Path | None, as_json: bool, quiet: bool) -> None:
    """Score labelled rows and report accuracy, per-class precision and recall, the confusion matrix, the
    calibration error (ECE) and the action mix, overall and per --window. Table on stderr, --json on stdout."""
    import runtime
    from runtime.monitor.evaluate import evaluate as run_evaluate
    from runtime.monitor.evaluate import html, text
    from runtime.monitor.report import read_rows

    _check_report(report_file, force, [input_file], [artifacts])
    ens = runtime.load(artifacts, expect_build_id=expect_build_id, public_key=public_key)
    result = run_evaluate(ens, read_rows(input_file, ens.feature_names), window)
    if not quiet:
        click.echo("\n".join(text(result)), err=True)
    emit(result, as_json)
    _write_report(report_file, html(result), force)


@click.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_path", metavar="[INPUT]", required=False,
                type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("-i", "--input", "input_option",
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="The history file: Parquet, CSV or JSON lines (by extension; - for stdin, by content); also "
                   "accepted as the argument INPUT.")
@out_file("The scored file: .parquet, .csv or .jsonl (by extension). Written whole or not at all.", required=True)
@click.option("--keep", metavar="COL,COL", help="Passthrough columns copied to the output (default: every "
              "column that is not a feature). --keep '' keeps none.")
@click.option("--members", is_flag=True, help="Also each member's probabilities (p_<MEMBER>_<CLASS>).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A row that cannot be scored fails the run (naming file, row and column), or goes to the "
                   "rejects file with its reason.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="With --on-error skip: where refused rows go (default OUTPUT's name + .rejects).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine. ray: Ray Data (the [ray] extra).")
@click.option("--workers", type=click.IntRange(min=1), help="Scoring processes (local) or actors (ray), one "
              "intra-op thread each by default; default and at most: this machine's (or cluster's) cores.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads per worker, at most this machine's cores. 1 gives "
                   "batch-invariant, bit-identical answers.")
@click.option("--batch-rows", type=click.IntRange(min=1, max=1 << 24), default=65536, show_default=True,
              help="Rows read per record batch (and per Parquet row group): memory is bounded by a few batches "
                   "per worker.")
@click.option("--address", help="With --engine ray: an existing cluster (ray://host:10001 or auto); "
                                "default: a local Ray sized for this machine.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT (and rejects file); never the input.")
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def score(artifacts: Path, input_path: Path | None, input_option: Path | None, out_file: Path, keep: str | None,
          members: bool, on_error: str, rejects: Path | None, engine: str, workers: int | None, threads: int,
          batch_rows: int, address: str | None, force: bool, expect_build_id: str | None, public_key: Path | None,
          as_json: bool, quiet: bool) -> None:
    """Backfill: score a whole history file (Parquet, CSV or JSON lines) with the artifacts, streaming.

    \b
    Out: the passthrough columns, action, confidence, p_<CLASS> per class (and p_<MEMBER>_<CLASS> with
    --members), in input order. Progress with rows/s and ETA on a terminal; -q silences it."""
    if (input_path is None) == (input_option is None):
        raise click.UsageError("name the history file once: -i INPUT (or the argument INPUT).")
    source = input_path or input_option
    assert source is not None
    if address and engine != "ray":
        raise click.UsageError("--address applies to --engine ray.")
    if rejects and on_error != "skip":
        raise click.UsageError("--rejects applies to --on-error skip.")
    log_to_stderr(quiet)  # the caps on --threads and --workers say so on stderr
    columns = None if keep is None else [c.strip() for c in keep.split(",") if c.strip()]
    workers = workers or os.cpu_count() or 1
    common = dict(keep=columns, members=members, on_error=on_error, rejects=rejects, threads=threads,
                  workers=workers, batch_rows=batch_rows, force=force, progress=not quiet and not as_json,
                  expect_build_id=expect_build_id, public_key=public_key)
    # A plain `kill` or a closed terminal ends the run through its cleanup: the spooled copy of stdin and a
    # hidden partial output (where the filesystem has no O_TMPFILE) are removed, as on any failure.
    with _exit_on_termination():
        if str(source) == "-":
            summary = _score_stdin(artifacts, out_file, engine, address, common)
        else:
            summary = _score(artifacts, source, out_file, engine, address, common)
    result = summary.as_dict()
    emit(result, as_json, None if quiet else
          f"scored {summary.scored:,} of {summary.rows:,} rows into {out_file} in {summary.seconds:.1f}s "
          f"({result['rows_per_second'] or 0:,.0f} rows/s, {summary.engine}, {summary.workers} worker(s) x "
          f"{summary.threads} thread(s))" + (f"; {summary.rejected:,} refused -> {summary.rejects_file}"
                                               if summary.rejected else ""))



def _score(artifacts: Path, source: Path, out_file: Path, engine: str, address: str | None,
           common: dict[str, Any]) -> Any:
    if engine == "ray":
        from runtime.batch.ray_engine import score_file_ray
        return score_file_ray(artifacts, source, out_file, address=address, **common)
    from runtime.batch.backfill import score_file
    return score_file(artifacts, source, out_file, **common)


def _score_stdin(artifacts: Path, out_file: Path, engine: str, address: str | None, common: dict[str, Any]) -> Any:
    """`score -`: stdin spooled to a private temporary file (runtime.batch.backfill_io.spool_stdin), scored as a
    file, and removed; messages and the summary name it `stdin`."""
    import tempfile

    from runtime.errors import CannotRunError

    try:
        spool = tempfile.TemporaryDirectory(prefix="ensemble-onnx-stdin-")
    except OSError as exc:  # no writable temporary folder at all
        raise CannotRunError(f"stdin: no temporary folder to copy it to ({exc}); set TMPDIR to a writable "
                             f"folder, or name the file.") from None
    with spool as folder:
        summary = _score_spooled(artifacts, out_file, engine, address, common, Path(folder))
    summary.input = "stdin"
    return summary


def _score_spooled(artifacts: Path, out_file: Path, engine: str, address: str | None, common: dict[str, Any],
                   folder: Path) -> Any:
    import sys

    from runtime.batch.backfill_io import spool_stdin
    from runtime.errors import CannotRunError, InputError

    try:
        source = spool_stdin(getattr(sys.stdin, "buffer", None), folder)
    except InputError:  # closed or empty: said as such
        raise
    except (OSError, ValueError) as exc:  # a full disk while spooling, a stream closed under us
        raise CannotRunError(f"stdin: cannot spool it to {folder} ({exc}).") from None
    try:
        return _score(artifacts, source, out_file, engine, address, common)
    except (InputError, CannotRunError) as exc:  # the spooled file's name means nothing to the caller
        raise type(exc)(str(exc).replace(str(source), "stdin")) from None


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit (128 + the signal, the shell's code) while the block runs, so that its
    `finally` and `with` exits run: Python's default for both ends the process where it stands, which left the
    spooled copy of stdin (the whole input) in the temporary folder. Only `kill -9` is beyond any cleanup."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def leave(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    # Only a signal left at its default: one ignored (`nohup` ignores SIGHUP) or handled by the caller stays so.
    wanted = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
              if s is not None and signal.getsignal(s) is signal.SIG_DFL]
    before = {s: signal.signal(s, leave) for s in wanted}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
