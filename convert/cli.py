"""The `ensemble-onnx` command line. Exit 0 on success, 1 when a build, check or input is refused (reason
on stderr), 2 on a usage error.

Heavy imports happen inside the commands: `predict` and `inspect` of an artifacts folder run on a serving
host that has only the runtime (`pip install ensemble-onnx`), and `convert` says what to install when the
build stack is missing.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from . import __version__


class RefusalsExitOne(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            # Imported at the failure, not at the top: `--help` and `--version` load neither numpy nor onnxruntime.
            from runtime.errors import EnsembleOnnxError

            if isinstance(exc, EnsembleOnnxError):  # a refusal: one message and its exit code
                if ctx.params.get("debug"):
                    click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
                refusal = click.ClickException(f"{type(exc).__name__}: {exc}")
                refusal.exit_code = exc.exit_code  # type: ignore[misc]  # click declares it per class; ours is per error
                raise refusal from exc
            # Not a refusal: a bug in ensemble-onnx. Say so plainly, with the traceback, and exit 1.
            click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"internal error: this is a bug in ensemble-onnx {__version__}, not a problem with your "
                       f"files ({type(exc).__name__}: {exc}). Please report it with the traceback above.", err=True)
            ctx.exit(1)


BUILD_STACK = ("onnx", "sklearn", "skl2onnx", "onnxmltools")  # and each member kind's `build_modules`


def require_build_stack() -> None:
    from .members import kind_facts  # imported here: `--help` loads no framework

    missing = []
    for module in dict.fromkeys(kind_facts("build_modules") + BUILD_STACK):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise click.ClickException(f"this command needs the build stack ({', '.join(missing)} missing): "
                                   f"pip install 'ensemble-onnx[convert]'")


def _log_to_stderr(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)


class StepProgress:
    """The progress display: each step of a long command on stderr as it starts, with the time so far
    (`[  4.2s] parity gate: 6373 rows ...`). Silent with -q; stdout stays clean for --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, step: str) -> None:
        if not self.quiet:
            click.secho(f"[{time.monotonic() - self.start:6.1f}s] {step}", err=True, bold=True)


def _emit(result: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif text:
        click.echo(text)


class GateRange(click.FloatRange):
    """click.FloatRange that also refuses nan: every comparison with nan is false, so a gate of nan would
    pass every build (click's range check lets it through for the same reason)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number; a gate of nan would never fail.", param, ctx)
        return number


class KeyPath(click.Path):
    """A key file (exists=True, dir_okay=False), except that a symbolic link that cannot be resolved (a loop, or
    a link to nothing), which click would call missing, is passed on: `runtime.signing` refuses it for what it
    is, as it refuses every other unusable key (exit 1)."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, os.PathLike)) and os.path.islink(value) and not os.path.exists(value):
            return Path(value)
        return super().convert(value, param, ctx)


QUIET = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout, for machines.")
PUBLIC_KEY = click.option("--public-key", type=KeyPath(),
                          help="An EC public key (PEM): refuse a folder it did not sign, model.sig in the OpenSSF "
                               "model-signing format (needs 'ensemble-onnx[signing]').")
MODELS = click.option("--models", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                      help="The models folder the artifacts were built from.")


@click.group(cls=RefusalsExitOne)
@click.version_option(__version__, prog_name="ensemble-onnx")
@click.option("--debug", is_flag=True, help="On a refusal, also print the traceback (of the framework's error).")
def main(debug: bool) -> None:
    """Convert a torch + tree-model ensemble to ONNX behind a parity gate, and score it without torch."""


@main.command()
@click.argument("models", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts"),
              show_default=True, help="Folder to write; replaced whole, only if the parity gate passes.")
@click.option("--only", multiple=True, metavar="KIND",
              help="Convert a subset of the kinds (discovery only); repeatable.")
@click.option("--parity-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines) added to the parity set.")
@click.option("--calibrate", "calibrate_on", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled rows (features plus a 'label' column of class names): fit each member's temperature "
                   "on them and report the calibration error before and after.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Weights of the shipped ensemble.onnx. int8 stores the large Linear layers in 8 bits (faster "
                   "one-row calls, needs onnxruntime>=1.22 to serve) and is gated on label agreement instead of "
                   "the float32 tolerance; the float32 export is still proven exact first.")
@click.option("--min-agreement", type=GateRange(0.5, 1.0),
              help="With --precision int8: the share of parity rows whose label must not change (default 0.99).")
@click.option("--reference-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded training rows (CSV or JSON lines): their per-feature decile bins, min and max go into "
                   "statistics.json for `ensemble-onnx drift` (default: the --calibrate, else --parity-data file).")
@click.option("--sign-key", type=KeyPath(),
              help="An EC private key (PEM; P-256, P-384 or P-521): sign the folder, model.sig inside it in the "
                   "OpenSSF model-signing format (needs 'ensemble-onnx[signing]').")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT even if it holds files its manifest.json does not list; only a folder whose "
                   "manifest.json says it is an ensemble-onnx build, never anything else.")
@AS_JSON
@QUIET
def convert(models: Path, output: Path, only: tuple[str, ...], parity_data: Path | None, calibrate_on: Path | None,
            precision: str, min_agreement: float | None, reference_data: Path | None, sign_key: Path | None,
            force: bool, as_json: bool, quiet: bool) -> None:
    """Rebuild, export and parity-check every member in MODELS; write the artifacts folder.

    \b
    Next: `ensemble-onnx predict OUTPUT --input rows.csv` to score rows, or
    `ensemble-onnx verify OUTPUT --models MODELS` in the release pipeline."""
    if min_agreement is not None and precision == "fp32":
        raise click.UsageError("--min-agreement applies to a lowered build; add --precision int8 (an fp32 build "
                               "is held to the float32 tolerance and every label).")
    require_build_stack()
    _log_to_stderr(quiet)
    from .build import build
    from .precision import DEFAULT_MIN_AGREEMENT, Precision

    result = build(models, output, list(only) or None, parity_data, calibrate_on, StepProgress(quiet),
                   Precision(precision, DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement),
                   sign_key=sign_key, reference_data=reference_data, force=force)
    _emit(result.manifest, as_json, f"build_id: {result.build_id}")
    if not quiet:
        click.echo(f"next: ensemble-onnx predict {output} --input ROWS.csv", err=True)


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@MODELS
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines) added to the parity set.")
@PUBLIC_KEY
@AS_JSON
@QUIET
def verify(artifacts: Path, models: Path, data: Path | None, public_key: Path | None, as_json: bool,
           quiet: bool) -> None:
    """Re-run the parity gate of an existing ARTIFACTS folder against the model files it was built from:
    sha256 of every source file first, then the numbers, on the artifacts' own ONNX bytes. Exit 1 if either
    fails. What a release pipeline runs before promoting a build."""
    require_build_stack()
    _log_to_stderr(quiet)
    from .verify import verify as run_verify

    result = run_verify(artifacts, models, data, StepProgress(quiet), public_key)
    _emit(result, as_json, (f"build_id: {result['build_id']}" if quiet else f"verified: {artifacts} comes from "
          f"{models} ({result['sources']} files) and passes parity on {result['parity']['rows']} rows"
          f"{', signed by the given key' if public_key else ''}.\nbuild_id: {result['build_id']}"))


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@MODELS
@click.option("--threads", "thread_counts", type=click.IntRange(min=1), multiple=True,
              help="Thread counts to measure at (repeatable); default 1 and this machine's cores.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/bench"),
              show_default=True, help="Where bench.json, bench.md (the table) and bench.png (the plot) go.")
@click.option("--quick", is_flag=True, help="A fast end-to-end run (few calls, one cold start): proves the "
                                            "command works; its figures are not for quoting.")
@AS_JSON
@QUIET
def bench(artifacts: tuple[Path, ...], models: Path, thread_counts: tuple[int, ...], out_dir: Path, quick: bool,
          as_json: bool, quiet: bool) -> None:
    """Time the runtime against the original frameworks on the same rows and threads: one-row p50/p99,
    batch-256 throughput, cold start, peak memory, installed size, each beside this machine's floor.

    Several ARTIFACTS folders built from the same MODELS (say `--precision fp32` and `int8`) are each
    measured against one measurement of the frameworks."""
    require_build_stack()
    _log_to_stderr(quiet)
    from .bench import run_bench
    from .bench_report import table
    _check_bench_out(out_dir, artifacts, models)
    counts = sorted(set(thread_counts or (1, os.cpu_count() or 1)))
    results = run_bench(list(artifacts), models, out_dir, counts, StepProgress(quiet), quick)
    _emit(results, as_json, "\n".join(table(results)) + f"\n\nwritten: {out_dir}/bench.json, bench.md, bench.png")


def _read_input(name: str) -> str:
    """The rows as UTF-8 text from a file or stdin; InputError for a closed stdin, an unreadable file, an input
    past ENSEMBLE_ONNX_MAX_INPUT_BYTES or bytes that are not UTF-8."""
    from runtime.features import InputError, decode_input, read_limited

    if name == "-":
        stream = sys.stdin.buffer if sys.stdin is not None and hasattr(sys.stdin, "buffer") else None
        if stream is None or stream.closed:
            raise InputError("stdin is closed; pipe the rows in or pass --input FILE.")
        try:
            data = read_limited(stream, "stdin")
        except InputError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
            raise InputError(f"cannot read stdin ({exc}); pipe the rows in or pass --input FILE.") from None
        return decode_input(data, "stdin")
    try:
        with open(name, "rb") as fh:
            data = read_limited(fh, name)
    except OSError as exc:
        raise InputError(f"{name}: cannot read the input ({exc.strerror}).") from None
    return decode_input(data, name)


def _check_bench_out(out_dir: Path, artifacts: tuple[Path, ...], models: Path) -> None:
    """bench's files in an artifacts or models folder would break it (an unlisted file fails verification;
    new files change what discovery sees)."""
    from .bench_host import out_refusal
    from .discover import STAMPED
    from .errors import OutputError

    refused = out_refusal(out_dir, [(a, "an artifacts folder") for a in artifacts] + [(models, "the models folder")])
    if refused:
        raise OutputError(refused)
    target = out_dir.resolve()
    if target.is_dir():
        names = [p.name for p in target.iterdir()]
        if "manifest.json" in names:
            raise OutputError(f"--out {out_dir}: holds a manifest.json (an artifacts folder); bench's files "
                              f"would make it fail verification. Name another folder.")
        if "ensemble.json" in names or any(STAMPED.match(n) for n in names):
            raise OutputError(f"--out {out_dir}: holds model files (a models folder); name another folder.")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def inspect(path: Path, as_json: bool) -> None:
    """Show a state_dict's tensors and the architecture read off them, a models folder's plan, or what an
    artifacts folder holds."""
    if path.is_dir() and (path / "manifest.json").exists():
        import runtime
        info: Any = runtime.load(path).describe()
    elif path.is_dir():
        require_build_stack()
        from .discover import make_plan
        info = {"plan": make_plan(path).describe(), "files": sorted(p.name for p in path.iterdir())}
    else:
        require_build_stack()
        info = _inspect_weights(path)
    _emit(info, as_json, _as_text(info))


def _inspect_weights(path: Path) -> dict[str, Any]:
    from .errors import ConvertError
    from .loaders import load_state_dict
    from .members import MemberSource, all_kinds
    from .members.torch_common import read_metadata

    state = load_state_dict(path)
    info: dict[str, Any] = {"file": str(path), "tensors": {k: list(v.shape) for k, v in state.items()}}
    meta = path.with_name(f"{path.stem}_meta.json")
    source = MemberSource(path.stem, "", path, meta if meta.exists() else None)
    for kind in all_kinds():
        if kind.read_architecture is None:
            continue
        try:
            arch = kind.read_architecture(state, read_metadata(source), source)
        except ConvertError as exc:
            info.setdefault("not", {})[kind.name] = str(exc)
            continue
        info.update(kind=kind.name, architecture=arch.values, notes=arch.notes)
        break
    return info


def _as_text(info: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(info, dict):
        return "\n".join(f"{pad}{k}:\n{_as_text(v, indent + 1)}" if isinstance(v, (dict, list)) and v
                         else f"{pad}{k}: {v}" for k, v in info.items())
    if isinstance(info, list):
        return "\n".join(f"{pad}{v}" for v in info)
    return f"{pad}{info}"


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str), default="-",
              show_default=True,
              help="Rows as JSON lines or CSV with a header of feature names (any order; 'symbol' passes through).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--expect-build-id", metavar="SHA256", help="Refuse any build but this one (the build_id that "
                                                          "convert, inspect and verify print).")
@PUBLIC_KEY
def predict(artifacts: Path, input_file: str, fmt: str, expect_build_id: str | None, public_key: Path | None) -> None:
    """Score rows with the artifacts alone (no torch, no tree libraries). Refuses the whole input, printing
    nothing, if any row cannot be scored; every row that cannot be read as numbers is named with its line
    number; of rows too large for a member's float32 arithmetic, the first is named and all are counted."""
    import runtime
    from runtime.contract import predict_csv_columns
    from runtime.features import InputError, at_line, read_records, records_to_matrix

    ens = runtime.load(artifacts, expect_build_id=expect_build_id, public_key=public_key)
    rows = read_records(_read_input(input_file))
    try:
        predictions = ens.predict(records_to_matrix(rows, ens.feature_names))
    except InputError as exc:  # a row a member overflows on, named by its line like every other bad row
        raise at_line(exc, rows) from None
    records: list[dict[str, Any]] = [
        {"symbol": r.get("symbol"), "action": p.action, "confidence": p.confidence,
         "probabilities": p.probabilities, "members": p.members}
        for (_, r), p in zip(rows, predictions, strict=True)]
    if fmt == "jsonl":
        for record in records:
            click.echo(json.dumps(record))
        return
    out = csv.writer(sys.stdout)
    out.writerow(predict_csv_columns(ens.classes, ens.member_order))
    for r in records:
        out.writerow([r["symbol"] or "", r["action"], r["confidence"], *r["probabilities"].values(),
                      *(r["members"][m][c] for m in ens.member_order for c in ens.classes)])


# ------------------------------------------------------------------ releasing and watching a build (issue 16)

ROWS_HELP = "CSV with a header, JSON lines, or Parquet (.parquet, needs pyarrow)."


def _write_report(path: Path | None, html: str) -> None:
    if path is not None:
        try:
            path.write_text(html, encoding="utf-8")
        except OSError as exc:  # a folder that does not exist, a read-only one
            raise click.ClickException(f"{path}: cannot write the report ({exc.strerror}).") from None
        click.echo(f"report: {path}", err=True)


@main.command()
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded feature rows both builds score. " + ROWS_HELP)
@click.option("--max-flip-rate", type=GateRange(0.0, 1.0),
              help="Gate: exit 1 if more than this share of rows change action.")
@click.option("--max-share-shift", type=GateRange(0.0, 1.0),
              help="Gate: exit 1 if any class's share of actions moves by more than this (absolute, 0.05 = 5 points).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page (transition heat map, confidence histograms).")
@AS_JSON
def compare(old: Path, new: Path, data: Path, max_flip_rate: float | None, max_share_shift: float | None,
            report_file: Path | None, as_json: bool) -> None:
    """Score the rows in --data with the OLD and NEW artifacts and show how the actions move: the transition
    matrix, flip rates, class shares, confidence, and each member's probability move. The table goes to
    stderr, --json to stdout; exit 1 past a gate, naming the figures that failed."""
    import runtime
    from runtime.compare import compare as run_compare
    from runtime.compare import gate, html, text
    from runtime.report import read_rows

    result = run_compare(runtime.load(old), runtime.load(new), read_rows(data))
    failures = gate(result, max_flip_rate, max_share_shift)
    result["gates"] = {"max_flip_rate": max_flip_rate, "max_share_shift": max_share_shift, "failures": failures,
                       "passed": not failures}
    click.echo("\n".join(text(result)), err=True)
    _emit(result, as_json)
    _write_report(report_file, html(result, failures))
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


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--input", "input_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Live feature rows. " + ROWS_HELP)
@click.option("--fail-psi", type=GateRange(min=0.0),
              help="Exit 1 if any feature's PSI reaches this (0.25 is the usual 'significant shift').")
@click.option("--measure", is_flag=True, help="Also time drift() against predict() per row at batch sizes 1, 64 "
                                              "and 1024 on these rows, naming this CPU.")
@AS_JSON
def drift(artifacts: Path, input_file: Path, fail_psi: float | None, measure: bool, as_json: bool) -> None:
    """Compare live feature rows with what the build was trained on (its statistics.json): per feature PSI
    against the training deciles (or a z-score summary), the share outside the training range, and a status
    ok / warn / drift. The table goes to stderr, --json to stdout."""
    import runtime
    from runtime.drift import table
    from runtime.features import records_to_matrix
    from runtime.report import read_rows

    ens = runtime.load(artifacts)
    x = records_to_matrix(read_rows(input_file), ens.feature_names, passthrough=("symbol", "label", "timestamp"))
    report = ens.drift(x)
    click.echo("\n".join(table(report)), err=True)
    if measure:
        report["cost"] = _measure_drift(ens, x)
        click.echo(f"cost per row on {report['cost']['cpu']}:", err=True)
        for batch, f in report["cost"]["batches"].items():
            click.echo(f"  batch {batch:>5}: drift {f['drift_us_per_row']:9.2f} us, predict "
                       f"{f['predict_us_per_row']:9.2f} us ({f['drift_over_predict']:.1%} of predict)", err=True)
    _emit(report, as_json)
    if fail_psi is not None:
        past = {n: f["psi"] for n, f in report["features"].items() if f.get("psi") is not None and f["psi"] >= fail_psi}
        if past:
            raise click.ClickException(f"PSI at or past --fail-psi {fail_psi}: "
                                       + ", ".join(f"{n} {v:.3f}" for n, v in past.items()))
        if not any(f.get("psi") is not None for f in report["features"].values()):
            raise click.ClickException(f"--fail-psi: {artifacts} has no training bins to compute PSI against; "
                                       f"rebuild with `ensemble-onnx convert --reference-data ROWS`.")


def _check_window(value: str | None) -> str | None:
    """A bad --window is a usage error (exit 2), found before any row is read."""
    from runtime.evaluate import parse_window
    from runtime.features import InputError

    try:
        if value is not None:
            parse_window(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Features, the realised 'label' (a class name) and optionally a 'timestamp'. " + ROWS_HELP)
@click.option("--window", callback=lambda ctx, param, value: _check_window(value),
              help="Also per time window of the timestamps: 1d, 6h, 15m, 1w ...")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page (confusion heat map, figures per window).")
@AS_JSON
def evaluate(artifacts: Path, data: Path, window: str | None, report_file: Path | None, as_json: bool) -> None:
    """Score labelled rows and report accuracy, per-class precision and recall, the confusion matrix, the
    calibration error (ECE) and the action mix, overall and per --window. Table on stderr, --json on stdout."""
    import runtime
    from runtime.evaluate import evaluate as run_evaluate
    from runtime.evaluate import html, text
    from runtime.report import read_rows

    result = run_evaluate(runtime.load(artifacts), read_rows(data), window)
    click.echo("\n".join(text(result)), err=True)
    _emit(result, as_json)
    _write_report(report_file, html(result))


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The scored file: .parquet, .csv or .jsonl (by extension). Written whole or not at all.")
@click.option("--keep", metavar="COL,COL", help="Passthrough columns copied to the output (default: every "
              "column that is not a feature). --keep '' keeps none.")
@click.option("--members", is_flag=True, help="Also each member's probabilities (p_<MEMBER>_<CLASS>).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A row that cannot be scored fails the run (naming file, row and column), or goes to the "
                   "rejects file with its reason.")
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="With --on-error skip: where refused rows go (default OUTPUT's name + .rejects).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine. ray: Ray Data (pip install 'ensemble-onnx[ray]').")
@click.option("--workers", type=click.IntRange(min=1), help="Scoring processes (local) or actors (ray), one "
              "intra-op thread each by default; default: this machine's cores.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads per worker. 1 gives batch-invariant, bit-identical answers.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Rows read per record batch: memory is bounded by a few batches per worker.")
@click.option("--address", help="With --engine ray: an existing cluster (ray://host:10001 or auto); "
                                "default: a local Ray sized for this machine.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT (never the input).")
@AS_JSON
@QUIET
def score(artifacts: Path, input_path: Path, output: Path, keep: str | None, members: bool, on_error: str,
          rejects: Path | None, engine: str, workers: int | None, threads: int, batch_rows: int,
          address: str | None, force: bool, as_json: bool, quiet: bool) -> None:
    """Backfill: score a whole history file (Parquet, CSV or JSON lines) with the artifacts, streaming.

    \b
    Out: the passthrough columns, action, confidence, p_<CLASS> per class (and p_<MEMBER>_<CLASS> with
    --members), in input order. Progress with rows/s and ETA on a terminal; -q silences it."""
    if address and engine != "ray":
        raise click.UsageError("--address applies to --engine ray.")
    if rejects and on_error != "skip":
        raise click.UsageError("--rejects applies to --on-error skip.")
    columns = None if keep is None else [c.strip() for c in keep.split(",") if c.strip()]
    workers = workers or os.cpu_count() or 1
    common = dict(keep=columns, members=members, on_error=on_error, rejects=rejects, threads=threads,
                  workers=workers, batch_rows=batch_rows, force=force, progress=not quiet and not as_json)
    if engine == "ray":
        from runtime.ray_engine import score_file_ray
        summary = score_file_ray(artifacts, input_path, output, address=address, **common)  # type: ignore[arg-type]
    else:
        from runtime.backfill import score_file
        summary = score_file(artifacts, input_path, output, **common)  # type: ignore[arg-type]
    result = summary.as_dict()
    _emit(result, as_json, None if quiet else
          f"scored {summary.scored:,} of {summary.rows:,} rows into {output} in {summary.seconds:.1f}s "
          f"({result['rows_per_second'] or 0:,.0f} rows/s, {summary.engine}, {summary.workers} worker(s) x "
          f"{summary.threads} thread(s))" + (f"; {summary.rejected:,} refused -> {summary.rejects_file}"
                                               if summary.rejected else ""))

if __name__ == "__main__":
    main()
