"""The release engineer's commands: convert, verify, inspect, bench. The build stack is imported inside each
command (after `require_build_stack`), so `inspect` of an artifacts folder still runs on a serving host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from . import (
    AS_JSON,
    EXPECT_BUILD,
    MODELS,
    PUBLIC_KEY,
    QUIET,
    Aliased,
    GateRange,
    KeyPath,
    StepProgress,
    emit,
    log_to_stderr,
    require_build_stack,
)


@click.command()
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
    progress = StepProgress(quiet)
    require_build_stack(progress)
    log_to_stderr(quiet)
    from ..build import build
    from ..precision import DEFAULT_MIN_AGREEMENT, Precision

    result = build(models, output, list(only) or None, parity_data, calibrate_on, progress,
                   Precision(precision, DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement),
                   sign_key=sign_key, reference_data=reference_data, force=force)
    emit(result.manifest, as_json, f"build_id: {result.build_id}")
    if not quiet:
        click.echo(f"next: ensemble-onnx predict {output} --input ROWS.csv", err=True)


@click.command()
@click.argument("artifacts", type=click.Path(exists=True, file_okay=False, path_type=Path))
@MODELS
@click.option("-i", "--input", "--data", "data", cls=Aliased, hidden_names=("--data",),
              type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
              help="Recorded features (CSV with a header, or JSON lines; - for stdin) added to the parity set.")
@EXPECT_BUILD
@PUBLIC_KEY
@AS_JSON
@QUIET
def verify(artifacts: Path, models: Path, data: Path | None, expect_build_id: str | None, public_key: Path | None,
           as_json: bool, quiet: bool) -> None:
    """Re-run the parity gate of an existing ARTIFACTS folder against the model files it was built from:
    sha256 of every source file first, then the numbers, on the artifacts' own ONNX bytes. Exit 1 if either
    fails. What a release pipeline runs before promoting a build."""
    progress = StepProgress(quiet)
    require_build_stack(progress)
    log_to_stderr(quiet)
    from ..verify import verify as run_verify

    # The pin is checked on the folder's first read, before the sources: the wrong build costs no parity run.
    result = run_verify(artifacts, models, data, progress, public_key, expect_build_id)
    emit(result, as_json, (f"build_id: {result['build_id']}" if quiet else f"verified: {artifacts} comes from "
          f"{models} ({result['sources']} files) and passes parity on {result['parity']['rows']} rows"
          f"{', signed by the given key' if public_key else ''}.\nbuild_id: {result['build_id']}"))


@click.command()
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
    progress = StepProgress(quiet)
    require_build_stack(progress)
    log_to_stderr(quiet)
    from ..bench.report import table
    from ..bench.run import run_bench
    _check_bench_out(out_dir, artifacts, models)
    counts = sorted(set(thread_counts or (1, os.cpu_count() or 1)))
    results = run_bench(list(artifacts), models, out_dir, counts, progress, quick)
    emit(results, as_json, "\n".join(table(results)) + f"\n\nwritten: {out_dir}/bench.json, bench.md, bench.png")



def _check_bench_out(out_dir: Path, artifacts: tuple[Path, ...], models: Path) -> None:
    """bench's files in an artifacts or models folder would break it (an unlisted file fails verification;
    new files change what discovery sees)."""
    from runtime.bench.host import out_refusal

    from ..discover import STAMPED
    from ..errors import OutputError

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


@click.command()
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
    elif path.is_dir():  # a models folder: the plan needs the build stack, seconds to load; said on stderr
        progress = StepProgress(quiet=False)
        require_build_stack(progress)
        progress(f"reading the plan of {path}")
        from ..discover import make_plan
        info = {"plan": make_plan(path).describe(), "files": sorted(p.name for p in path.iterdir())}
    else:
        require_build_stack()
        info = _inspect_weights(path)
    emit(info, as_json, _as_text(info))


def _inspect_weights(path: Path) -> dict[str, Any]:
    from ..errors import ConvertError
    from ..loaders import load_state_dict
    from ..members import MemberSource, all_kinds
    from ..members.torch_common import read_metadata, unwrap

    state = load_state_dict(path)
    info: dict[str, Any] = {"file": str(path), "tensors": {k: list(v.shape) for k, v in state.items()}}
    meta = path.with_name(f"{path.stem}_meta.json")
    source = MemberSource(path.stem, "", path, meta if meta.exists() else None)
    bare, unwrapped = unwrap(state)  # a DataParallel / torch.compile prefix, as the build strips it
    for kind in all_kinds():
        if kind.read_architecture is None:
            continue
        try:
            arch = kind.read_architecture(bare, read_metadata(source), source)
        except ConvertError as exc:
            info.setdefault("not", {})[kind.name] = str(exc)
            continue
        info.update(kind=kind.name, architecture=arch.values, notes=unwrapped + arch.notes)
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

