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
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__

# Exceptions that mean "refused": shown as one message, exit 1. Looked up only if their module is loaded,
# so that handling them never imports the build stack or onnxruntime.
REFUSALS = (("convert.errors", "ConvertError"), ("runtime.artifacts", "ArtifactError"),
            ("runtime.features", "InputError"))


class RefusalsExitOne(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            refused = tuple(getattr(sys.modules[m], c) for m, c in REFUSALS if m in sys.modules)
            if refused and isinstance(exc, refused):
                raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
            raise


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
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif text:
        click.echo(text)


QUIET = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout, for machines.")
MODELS = click.option("--models", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                      help="The models folder the artifacts were built from.")


@click.group(cls=RefusalsExitOne)
@click.version_option(__version__, prog_name="ensemble-onnx")
def main() -> None:
    """Convert a torch + tree-model ensemble to ONNX behind a parity gate, and score it without torch."""


@main.command()
@click.argument("models", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts"),
              show_default=True, help="Folder to write; replaced whole, only if the parity gate passes.")
@click.option("--only", multiple=True, metavar="KIND", help="Convert a subset of the kinds (discovery only); repeatable.")
@click.option("--parity-data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines) added to the parity set.")
@click.option("--calibrate", "calibrate_on", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled rows (features plus a 'label' column of class names): fit each member's temperature "
                   "on them and report the calibration error before and after.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Weights of the shipped ensemble.onnx. int8 stores the large Linear layers in 8 bits (faster "
                   "one-row calls, needs onnxruntime>=1.22 to serve) and is gated on label agreement instead of "
                   "the float32 tolerance; the float32 export is still proven exact first.")
@click.option("--min-agreement", type=click.FloatRange(0.5, 1.0),
              help="With --precision int8: the share of parity rows whose label must not change (default 0.99).")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT even if it holds files its manifest.json does not list; only a folder whose "
                   "manifest.json says it is an ensemble-onnx build, never anything else.")
@AS_JSON
@QUIET
def convert(models: Path, output: Path, only: tuple[str, ...], parity_data: Path | None, calibrate_on: Path | None,
            precision: str, min_agreement: float | None, force: bool, as_json: bool, quiet: bool) -> None:
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
                   force=force)
    _emit(result.manifest, as_json)
    if not quiet:
        click.echo(f"next: ensemble-onnx predict {output} --input ROWS.csv", err=True)


@main.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@MODELS
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines) added to the parity set.")
@AS_JSON
@QUIET
def verify(artifacts: Path, models: Path, data: Path | None, as_json: bool, quiet: bool) -> None:
    """Re-run the parity gate of an existing ARTIFACTS folder against the model files it was built from:
    sha256 of every source file first, then the numbers, on the artifacts' own ONNX bytes. Exit 1 if either
    fails. What a release pipeline runs before promoting a build."""
    require_build_stack()
    _log_to_stderr(quiet)
    from .verify import verify as run_verify

    result = run_verify(artifacts, models, data, StepProgress(quiet))
    _emit(result, as_json, None if quiet else f"verified: {artifacts} comes from {models} "
          f"({result['sources']} files) and passes parity on {result['parity']['rows']} rows.")


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
    from .bench import run_bench, table
    _check_bench_out(out_dir, artifacts, models)
    counts = sorted(set(thread_counts or (1, os.cpu_count() or 1)))
    results = run_bench(list(artifacts), models, out_dir, counts, StepProgress(quiet), quick)
    _emit(results, as_json, "\n".join(table(results)) + f"\n\nwritten: {out_dir}/bench.json, bench.md, bench.png")


def _read_input(name: str) -> str:
    """The rows as UTF-8 text from a file or stdin; InputError for a closed stdin, an unreadable file or bytes
    that are not UTF-8."""
    from runtime.features import InputError, decode_input

    if name == "-":
        stream = sys.stdin.buffer if sys.stdin is not None and hasattr(sys.stdin, "buffer") else None
        if stream is None or stream.closed:
            raise InputError("stdin is closed; pipe the rows in or pass --input FILE.")
        try:
            data = stream.read()
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read stdin ({exc}); pipe the rows in or pass --input FILE.") from None
        return decode_input(data, "stdin")
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{name}: cannot read the input ({exc.strerror}).") from None
    return decode_input(data, name)


def _check_bench_out(out_dir: Path, artifacts: tuple[Path, ...], models: Path) -> None:
    """bench's files in an artifacts or models folder would break it (an unlisted file fails verification;
    new files change what discovery sees)."""
    from .discover import STAMPED
    from .errors import OutputError

    target = out_dir.resolve()
    for folder, what in [(a, "an artifacts folder") for a in artifacts] + [(models, "the models folder")]:
        if target == folder.resolve():
            raise OutputError(f"--out {out_dir}: is {what}; bench's files would break it. Name another folder.")
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
    from .members import MemberSource, nhits, patchtst
    from .members.torch_common import read_metadata

    state = load_state_dict(path)
    info: dict[str, Any] = {"file": str(path), "tensors": {k: list(v.shape) for k, v in state.items()}}
    meta = path.with_name(f"{path.stem}_meta.json")
    source = MemberSource(path.stem, "", path, meta if meta.exists() else None)
    for kind, module in (("nhits", nhits), ("patchtst", patchtst)):
        try:
            arch = module.read_architecture(state, read_metadata(source), source)
        except ConvertError as exc:
            info.setdefault("not", {})[kind] = str(exc)
            continue
        info.update(kind=kind, architecture=arch.values, notes=arch.notes)
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
def predict(artifacts: Path, input_file: str, fmt: str) -> None:
    """Score rows with the artifacts alone (no torch, no tree libraries). Refuses the whole input, printing
    nothing, if any row cannot be scored; every bad row is named with its line number."""
    import runtime
    from runtime.features import read_records, records_to_matrix

    ens = runtime.load(artifacts)
    rows = read_records(_read_input(input_file))
    predictions = ens.predict(records_to_matrix(rows, ens.feature_names))
    records = [{"symbol": r.get("symbol"), "action": p.action, "confidence": p.confidence,
                "probabilities": p.probabilities, "members": p.members} for (_, r), p in zip(rows, predictions)]
    if fmt == "jsonl":
        for record in records:
            click.echo(json.dumps(record))
        return
    out = csv.writer(sys.stdout)
    out.writerow(["symbol", "action", "confidence", *ens.classes,
                  *(f"{m}_{c}" for m in ens.member_order for c in ens.classes)])
    for r in records:
        out.writerow([r["symbol"] or "", r["action"], r["confidence"], *r["probabilities"].values(),
                      *(r["members"][m][c] for m in ens.member_order for c in ens.classes)])


if __name__ == "__main__":
    main()
