"""The service's command: predict. Runtime only (numpy + onnxruntime + click): it runs on a serving host."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click

from . import EXPECT_BUILD, FORCE, PUBLIC_KEY, QUIET, out_file


def _read_input(name: str) -> str:
    from runtime.records import read_input

    return read_input(name)



PASSTHROUGH = ("symbol", "timestamp")  # the columns predict passes through unchanged, beside the features


@click.command()
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
        x = records_to_matrix(rows, ens.feature_names, PASSTHROUGH, missing=True)
        predictions = ens.predict(x)
    except InputError as exc:  # a row a member overflows on, named by its line like every other bad row
        raise at_line(exc, rows) from None
    outside = ens.outside_training_range(x)  # flagged in the JSON line, never refused (docs/cli.md)
    # Passed through as read: a CSV cell stays its text ("0700"), a JSON value its JSON value.
    records: list[dict[str, Any]] = [
        {"symbol": r.get("symbol"), **({"timestamp": r["timestamp"]} if "timestamp" in r else {}),
         "action": p.action, "confidence": p.confidence, "probabilities": p.probabilities, "members": p.members,
         **({"outside_training_range": names} if names else {})}
        for (_, r), p, names in zip(rows, predictions, outside, strict=True)]
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

