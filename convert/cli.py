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
import sys
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
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def convert(models: Path, output: Path, only: tuple[str, ...], parity_data: Path | None, as_json: bool,
            quiet: bool) -> None:
    """Rebuild, export and parity-check every member in MODELS; write the artifacts folder."""
    require_build_stack()
    _log_to_stderr(quiet)
    from .build import build

    result = build(models, output, list(only) or None, parity_data)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2, sort_keys=True))


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
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        click.echo(_as_text(info))


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
@click.option("--input", "input_file", type=click.File("r"), default="-", show_default=True,
              help="Rows as JSON lines or CSV with a header of feature names (any order; 'symbol' passes through).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
def predict(artifacts: Path, input_file: Any, fmt: str) -> None:
    """Score rows with the artifacts alone (no torch, no tree libraries). Refuses the whole input, printing
    nothing, if any row cannot be scored; every bad row is named with its line number."""
    import runtime
    from runtime.features import read_records, records_to_matrix

    ens = runtime.load(artifacts)
    rows = read_records(input_file.read())
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
