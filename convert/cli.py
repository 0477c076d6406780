"""The `ensemble-onnx` command line. Exit 0 on success, 1 when a build, check or input is refused (reason
on stderr), 2 on a usage error.

Heavy imports happen inside the commands: `predict` and `inspect` of an artifacts folder run on a serving
host that has only the runtime (`pip install ensemble-onnx`), and `convert` says what to install when the
build stack is missing.
"""

from __future__ import annotations

import csv
import io
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


def _quiet_broken_pipe(ctx: click.Context) -> None:
    """The reader went away (`predict ... | head -1`): end quietly with 0, as Unix tools do. stdout is pointed
    at /dev/null so that the interpreter's last flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (a test runner's)
        pass
    finally:
        os.close(devnull)
    ctx.exit(0)


class RefusalsExitOne(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed reader is found here, not in the interpreter's exit
            return result
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe(ctx)
        except Exception as exc:
            # Imported at the failure, not at the top: `--help` and `--version` load neither numpy nor onnxruntime.
            from runtime.batch.results import environment_fault
            from runtime.errors import EnsembleOnnxError

            fault = environment_fault(exc, getattr(exc, "filename", None) or "output")
            if fault is not None:  # disk full, a file-size limit ...: the machine's, said as such (exit 3)
                exc = fault

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


def require_build_stack() -> None:
    missing = []
    for module in ("torch", "onnx", "sklearn", "skl2onnx", "onnxmltools", "xgboost", "lightgbm"):
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
    if as_json:  # strict JSON: no NaN or Infinity token a parser would refuse (runtime.results.strict)
        from runtime.batch.results import dumps_strict
        click.echo(dumps_strict(result, indent=2, sort_keys=True))
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


class Aliased(click.Option):
    """An option whose old spellings (`hidden_names`) keep working but are left out of --help: one name per
    thing on every command (docs/cli.md), without breaking a script written against an older one."""

    def __init__(self, *args: Any, hidden_names: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_names = set(hidden_names)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown = self.opts
        self.opts = [o for o in self.opts if o not in self.hidden_names]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


ROWS_HELP = "CSV with a header, JSON lines, or Parquet (.parquet, needs pyarrow); - for stdin."


def rows_in(help: str, required: bool = True, old: tuple[str, ...] = (), default: str | None = None) -> Any:
    """-i/--input: the rows a command reads (a file, or - for stdin), on every command that reads rows."""
    return click.option("-i", "--input", *old, "input_file", cls=Aliased, hidden_names=old,
                        required=required and default is None, default=default, show_default=default is not None,
                        type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=str), help=help)


def out_file(help: str, required: bool = False) -> Any:
    """-o/--out: the file a command writes (runtime.results: atomic, never an input, a build or an existing
    file without --force); --output is the old spelling."""
    return click.option("-o", "--out", "--output", "out_file", cls=Aliased, hidden_names=("--output",),
                        required=required, type=click.Path(dir_okay=False, path_type=Path), help=help)


FORCE = click.option("--force", is_flag=True,
                     help="Replace an existing result file (never an input or a build's file).")
EXPECT_BUILD = click.option("--expect-build-id", metavar="SHA256",
                            help="Refuse any build but this one (the build_id that convert, inspect and verify print).")
QUIET = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout, for machines.")
PUBLIC_KEY = click.option("--public-key", type=KeyPath(),
                          help="An EC public key (PEM): refuse a folder it did not sign, model.sig in the OpenSSF "
                               "model-signing format (needs 'ensemble-onnx[signing]').")
MODELS = click.option("--models", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                      help="The models folder the artifacts were built from.")


@click.group(cls=RefusalsExitOne, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ensemble-onnx")
@click.option("--debug", is_flag=True, help="On a refusal, also print the traceback (of the framework's error).")
def main(debug: bool) -> None:
    """Convert a torch + tree-model ensemble to ONNX behind a parity gate, and score it without torch."""


@main.command()
@click.argument("models", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", "--output", "output", cls=Aliased, hidden_names=("--output",),
              type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts"),
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
@click.option("-i", "--input", "--data", "data", cls=Aliased, hidden_names=("--data",),
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines) added to the parity set.")
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def verify(artifacts: Path, models: Path, data: Path | None, expect_build_id: str | None, public_key: Path | None,
           as_json: bool, quiet: bool) -> None:
    """Re-run the parity gate of an existing ARTIFACTS folder against the model files it was built from:
    sha256 of every source file first, then the numbers, on the artifacts' own ONNX bytes. Exit 1 if either
    fails. What a release pipeline runs before promoting a build."""
    require_build_stack()
    _log_to_stderr(quiet)
    from .verify import verify as run_verify

    if expect_build_id is not None:  # the pin first: the wrong build costs no parity run
        import runtime
        runtime.load(artifacts, expect_build_id=expect_build_id)

    result = run_verify(artifacts, models, data, StepProgress(quiet), public_key)
    _emit(result, as_json, (f"build_id: {result['build_id']}" if quiet else f"verified: {artifacts} comes from "
          f"{models} ({result['sources']} files) and passes parity on {result['parity']['rows']} rows"
          f"{', signed by the given key' if public_key else ''}.\nbuild_id: {result['build_id']}"))


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@MODELS
@click.option("--threads", "thread_counts", type=click.IntRange(min=1), multiple=True,
              help="Thread counts to measure at (repeatable); default 1 and this machine's cores.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("build/bench"),
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
    from runtime.errors import InputError
    from runtime.limits import read_limited
    from runtime.records import decode_input

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
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def inspect(path: Path, expect_build_id: str | None, public_key: Path | None, as_json: bool, quiet: bool) -> None:
    """Show a state_dict's tensors and the architecture read off them, a models folder's plan, or what an
    artifacts folder holds (--expect-build-id and --public-key apply to an artifacts folder)."""
    is_build = path.is_dir() and (path / "manifest.json").exists()
    if (expect_build_id or public_key) and not is_build:
        raise click.UsageError("--expect-build-id and --public-key apply to an artifacts folder.")
    if is_build:
        import runtime
        info: Any = runtime.load(path, expect_build_id=expect_build_id, public_key=public_key).describe()
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
    from .members import MemberSource, nhits, patchtst
    from .members.torch_common import read_metadata, unwrap

    state = load_state_dict(path)
    info: dict[str, Any] = {"file": str(path), "tensors": {k: list(v.shape) for k, v in state.items()}}
    meta = path.with_name(f"{path.stem}_meta.json")
    source = MemberSource(path.stem, "", path, meta if meta.exists() else None)
    bare, unwrapped = unwrap(state)  # a DataParallel / torch.compile prefix, as the build strips it
    for kind, module in (("nhits", nhits), ("patchtst", patchtst)):
        try:
            arch = module.read_architecture(bare, read_metadata(source), source)
        except ConvertError as exc:
            info.setdefault("not", {})[kind] = str(exc)
            continue
        info.update(kind=kind, architecture=arch.values, notes=unwrapped + arch.notes)
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


PASSTHROUGH = ("symbol", "timestamp")  # the columns predict passes through unchanged, beside the features


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-i", "--input", "input_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
              default="-", show_default=True,
              help="Rows as JSON lines or CSV with a header of feature names (any order; 'symbol' and 'timestamp' "
                   "pass through unchanged).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The same as --format jsonl (the default).")
@out_file("Write the predictions to this file (atomically) instead of stdout.")
@FORCE
@EXPECT_BUILD
@PUBLIC_KEY
@QUIET
def predict(artifacts: Path, input_file: str, fmt: str, as_json: bool, out_file: Path | None, force: bool,
            expect_build_id: str | None, public_key: Path | None, quiet: bool) -> None:
    """Score rows with the artifacts alone (no torch, no tree libraries). Refuses the whole input, printing
    nothing, if any row cannot be scored; every row that cannot be read as numbers is named with its line
    number; of rows too large for a member's float32 arithmetic, the first is named and all are counted."""
    import runtime
    from runtime.batch.columns import predict_csv_columns
    from runtime.batch.results import check_target, dumps_strict, write_file
    from runtime.errors import InputError
    from runtime.records import at_line, read_records, records_to_matrix

    if as_json and fmt != "jsonl":
        raise click.UsageError("--json is --format jsonl; leave out one of them.")
    if out_file is not None and str(out_file) == "-":  # -o - is stdout, as everywhere
        out_file = None
    if out_file is not None:
        check_target(out_file, force=force, inputs=[input_file], builds=[artifacts])
    ens = runtime.load(artifacts, expect_build_id=expect_build_id, public_key=public_key)
    rows = read_records(_read_input(input_file))
    try:
        # NaN passes to ens.predict, which scores it where the build's domain takes it and refuses it otherwise.
        predictions = ens.predict(records_to_matrix(rows, ens.feature_names, PASSTHROUGH, missing=True))
    except InputError as exc:  # a row a member overflows on, named by its line like every other bad row
        raise at_line(exc, rows) from None
    # Passed through as read: a CSV cell stays its text ("0700"), a JSON value its JSON value.
    records: list[dict[str, Any]] = [
        {"symbol": r.get("symbol"), **({"timestamp": r["timestamp"]} if "timestamp" in r else {}),
         "action": p.action, "confidence": p.confidence, "probabilities": p.probabilities, "members": p.members}
        for (_, r), p in zip(rows, predictions, strict=True)]
    if fmt == "jsonl":
        text = "".join(dumps_strict(record) + "\n" for record in records)
    else:
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        stamped = any("timestamp" in r for _, r in rows)
        columns = predict_csv_columns(ens.classes, ens.member_order)
        out.writerow(columns[:1] + (["timestamp"] if stamped else []) + columns[1:])
        for r in records:
            out.writerow([_cell(r["symbol"]), *([_cell(r.get("timestamp"))] if stamped else []), r["action"],
                          r["confidence"], *r["probabilities"].values(),
                          *(r["members"][m][c] for m in ens.member_order for c in ens.classes)])
        text = buffer.getvalue()
    if out_file is None:
        click.echo(text, nl=False)
    else:
        write_file(out_file, text.encode("utf-8"), force=force)


def _cell(value: Any) -> str:
    """A passthrough value as a CSV cell: text as it is, anything else as strict JSON writes it."""
    from runtime.batch.results import dumps_strict

    return "" if value is None else value if isinstance(value, str) else dumps_strict(value)


# ------------------------------------------------------------------ releasing and watching a build (issue 16)


def _write_report(path: Path | None, html: str, force: bool) -> None:
    """The HTML report through runtime.results (checked before any work by _check_report)."""
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


@main.command()
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
@click.option("--expect-build-id", "expect_build_ids", metavar="SHA256", multiple=True,
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
    result = run_compare(builds[0], builds[1], read_rows(input_file))
    failures = gate(result, max_flip_rate, max_share_shift)
    result["gates"] = {"max_flip_rate": max_flip_rate, "max_share_shift": max_share_shift, "failures": failures,
                       "passed": not failures}
    if not quiet:
        click.echo("\n".join(text(result)), err=True)
    _emit(result, as_json)
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


@main.command()
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
    from runtime.errors import CannotRunError
    from runtime.monitor.drift import table
    from runtime.monitor.report import read_rows
    from runtime.records import records_to_matrix

    ens = runtime.load(artifacts, expect_build_id=expect_build_id, public_key=public_key)
    x = records_to_matrix(read_rows(input_file), ens.feature_names, passthrough=("symbol", "label", "timestamp"))
    report = ens.drift(x)
    if not quiet:
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
            # Not "drift found" (exit 1): the check could not run (exit 3), which a pipeline must tell apart.
            raise CannotRunError(f"--fail-psi: {artifacts} has no training bins to compute PSI against; "
                                 f"rebuild with `ensemble-onnx convert --reference-data ROWS`.")


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


@main.command()
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
    result = run_evaluate(ens, read_rows(input_file), window)
    if not quiet:
        click.echo("\n".join(text(result)), err=True)
    _emit(result, as_json)
    _write_report(report_file, html(result), force)


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("input_path", metavar="[INPUT]", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-i", "--input", "input_option", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The history file: Parquet, CSV or JSON lines (by extension); also accepted as the argument INPUT.")
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
              help="local: worker processes on this machine. ray: Ray Data (pip install 'ensemble-onnx[ray]').")
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
    _log_to_stderr(quiet)  # the caps on --threads and --workers say so on stderr
    columns = None if keep is None else [c.strip() for c in keep.split(",") if c.strip()]
    workers = workers or os.cpu_count() or 1
    common = dict(keep=columns, members=members, on_error=on_error, rejects=rejects, threads=threads,
                  workers=workers, batch_rows=batch_rows, force=force, progress=not quiet and not as_json,
                  expect_build_id=expect_build_id, public_key=public_key)
    if engine == "ray":
        from runtime.batch.ray_engine import score_file_ray
        summary = score_file_ray(artifacts, source, out_file, address=address, **common)  # type: ignore[arg-type]
    else:
        from runtime.batch.backfill import score_file
        summary = score_file(artifacts, source, out_file, **common)  # type: ignore[arg-type]
    result = summary.as_dict()
    _emit(result, as_json, None if quiet else
          f"scored {summary.scored:,} of {summary.rows:,} rows into {out_file} in {summary.seconds:.1f}s "
          f"({result['rows_per_second'] or 0:,.0f} rows/s, {summary.engine}, {summary.workers} worker(s) x "
          f"{summary.threads} thread(s))" + (f"; {summary.rejected:,} refused -> {summary.rejects_file}"
                                               if summary.rejected else ""))


if __name__ == "__main__":
    main()
