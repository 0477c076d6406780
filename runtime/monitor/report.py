"""What the monitoring commands (compare, drift, evaluate) read and draw: rows from CSV, JSON lines or
Parquet, and a self-contained HTML page (inline SVG and styled tables: no plotting library, no network).
"""

from __future__ import annotations

import collections
import html
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError, shortened_names
from ..limits import env_limit, read_limited
from ..records import parse_number, read_records

Records = list[tuple[int, dict[str, Any]]]  # (line or row number, record), as runtime.features reads them


# compare, drift and evaluate hold their rows as records: at most this many (ENSEMBLE_ONNX_MAX_ROWS raises
# it), counted before they are read where the file says (Parquet), so a small file of millions of rows ends
# with a message, not with the memory (a 400 KB Parquet file of 5 million rows took 2.85 GB). CSV and JSON
# lines are held to ENSEMBLE_ONNX_MAX_INPUT_BYTES as well.
MAX_ROWS = 1_000_000
PARQUET = (".parquet", ".pq")
PARQUET_MAGIC = b"PAR1"  # a Parquet file's first four bytes


def read_rows(path: str | os.PathLike[str], features: Sequence[str] = ()) -> Records:
    """CSV with a header or JSON lines (runtime.records.read_records), from a file or stdin ("-"); Parquet
    when pyarrow is installed, read a batch at a time. Decimal columns become floats, as score reads them, and
    a null in a Parquet column of `features` is NaN, the missing value (`score` reads it so: docs/backfill.md)."""
    path = os.fspath(path)
    limit = env_limit("ENSEMBLE_ONNX_MAX_ROWS", MAX_ROWS)
    where = "stdin" if path == "-" else path
    if path.lower().endswith(PARQUET):  # any case, as score takes its suffix (backfill_io.file_format)
        records = _parquet_records(path, limit, set(features))
    else:
        try:
            if path == "-":
                if sys.stdin is None or not hasattr(sys.stdin, "buffer") or sys.stdin.buffer.closed:
                    raise InputError("stdin is closed; pipe the rows in or name a file.")
                data = read_limited(sys.stdin.buffer, "stdin")
            else:
                with open(path, "rb") as fh:
                    data = read_limited(fh, path)
        except OSError as exc:
            raise InputError(f"{where}: cannot read it ({exc}).") from None
        if path == "-" and data.startswith(PARQUET_MAGIC):  # Parquet piped in, as score reads it from stdin
            records = _parquet_records(where, limit, set(features), data)
            return _some(records, where)
        try:  # a byte-order mark is not part of a column name
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}: cannot read it ({exc}).") from None
        try:
            records = read_records(text)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        if len(records) > limit:
            raise InputError(_too_many(where, len(records), limit))
    return _some(records, where)


def _some(records: Records, where: str) -> Records:
    if not records:  # a header alone, a zero-row Parquet: every figure would divide by zero
        raise InputError(f"{where}: no rows in the input.")
    return records


def _too_many(path: str, rows: int, limit: int) -> str:
    return (f"{path}: {rows:,} rows, more than the {limit:,} this command holds in memory; pass a sample, score "
            f"the whole file with `ensemble-onnx score`, or raise ENSEMBLE_ONNX_MAX_ROWS.")


def _parquet_records(path: str, limit: int, features: set[str], data: bytes | None = None) -> Records:
    """A Parquet file's rows (`data`: its bytes, read from stdin; `path` then names it)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq  # optional: a serving host reads CSV and JSON lines without it
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    records: Records = []
    try:
        pf = pq.ParquetFile(path if data is None else pa.BufferReader(data), pre_buffer=False)
        if pf.metadata.num_rows > limit:
            raise InputError(_too_many(path, pf.metadata.num_rows, limit))
        # a row holds one of two same-named columns: which, no one could say (linear: 20,000 columns)
        if repeated := sorted(c for c, n in collections.Counter(pf.schema_arrow.names).items() if n > 1):
            raise InputError(f"{path}: column(s) given more than once: {shortened_names(repeated)}.")
        for batch in pf.iter_batches(batch_size=65536):
            decimals = [i for i, f in enumerate(batch.schema) if pa.types.is_decimal(f.type)]
            for i in decimals:  # as score reads them (safe=False: the nearest float64)
                batch = batch.set_column(i, batch.schema.field(i).name,
                                         batch.column(i).cast(pa.float64(), safe=False))
            missing = [i for i, f in enumerate(batch.schema) if f.name in features and batch.column(i).null_count
                       and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type) or pa.types.is_null(f.type))]
            for i in missing:  # a null in a typed column is no absent key: the missing value, as score reads it
                batch = batch.set_column(i, batch.schema.field(i).name,
                                         pc.fill_null(batch.column(i).cast(pa.float64(), safe=False), float("nan")))
            texts = [f.name for f in batch.schema if f.name in features
                     and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
            rows = batch.to_pylist()
            for row in rows if texts else ():  # text in a typed column is read as score reads it: a number where
                for name in texts:             # it parses (else refused as no number), a null the missing value
                    row[name] = float("nan") if row[name] is None else _number(row[name])
            records.extend(enumerate(rows, len(records) + 1))
            if len(records) > limit:
                raise InputError(_too_many(path, len(records), limit))
    except (OSError, ValueError, pa.ArrowException) as exc:  # ArrowInvalid is a ValueError, IO errors OSErrors
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a readable Parquet file ({str(exc)[:200]}).") from None
    return records


def _number(cell: str) -> float | str:
    try:
        return parse_number(cell)
    except ValueError:
        return cell


def esc(value: Any) -> str:
    return html.escape(str(value))


def page(title: str, sections: Sequence[str]) -> str:
    """One HTML document, styles inline, nothing fetched."""
    style = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
             ".fail{color:#b00;font-weight:bold}.ok{color:#070}h2{margin-top:1.5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body><h1>{esc(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def heat_map(row_labels: Sequence[str], col_labels: Sequence[str], counts: Sequence[Sequence[int]],
             corner: str) -> str:
    """A table whose cells are shaded by their share of the row's total (count and share printed)."""
    head = f"<th>{esc(corner)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in col_labels)
    body = []
    for label, row in zip(row_labels, counts, strict=True):
        total = sum(row) or 1
        cells = "".join(f"<td style='background:rgba(31,119,180,{c / total:.3f})'>{c}<br><small>{c / total:.1%}"
                        f"</small></td>" for c in row)
        body.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def histogram(series: Mapping[str, Sequence[float]], edges: Sequence[float], width: int = 480,
              height: int = 180) -> str:
    """Side-by-side bars of shares per bin, one colour per series, as inline SVG."""
    n_bins, n_series = len(edges) - 1, len(series)
    top = max((max(v) for v in series.values() if len(v)), default=1.0) or 1.0
    slot = (width - 40) / n_bins
    bars, labels = [], []
    for s, (name, values) in enumerate(series.items()):
        for b, v in enumerate(values):
            h = (height - 30) * v / top
            x = 30 + b * slot + s * slot / (n_series + 0.5)
            bars.append(f"<rect x='{x:.1f}' y='{height - 20 - h:.1f}' width='{slot / (n_series + 0.5):.1f}' "
                        f"height='{h:.1f}' fill='{COLORS[s % len(COLORS)]}'><title>{esc(name)} "
                        f"[{edges[b]:g}, {edges[b + 1]:g}): {v:.1%}</title></rect>")
        labels.append(f"<text x='{40 + s * 120}' y='12' fill='{COLORS[s % len(COLORS)]}'>{esc(name)}</text>")
    ticks = "".join(f"<text x='{30 + b * slot:.1f}' y='{height - 5}' font-size='10'>{edges[b]:g}</text>"
                    for b in range(0, n_bins + 1, max(1, n_bins // 5)))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='12'>"
            f"{''.join(labels)}{''.join(bars)}{ticks}</svg>")


def line_chart(x_labels: Sequence[str], series: Mapping[str, Sequence[float | None]], width: int = 640,
               height: int = 220) -> str:
    """Lines over ordered points (say accuracy per window) on a 0..1 scale, as inline SVG."""
    n = max(len(x_labels), 1)
    step = (width - 60) / max(n - 1, 1)

    def y(v: float) -> float:
        return 20 + (height - 50) * (1.0 - v)

    parts = [f"<line x1='40' y1='{y(v):.1f}' x2='{width - 10}' y2='{y(v):.1f}' stroke='#ddd'/>"
             f"<text x='5' y='{y(v) + 4:.1f}' font-size='10'>{v:.1f}</text>" for v in (0.0, 0.5, 1.0)]
    for s, (name, values) in enumerate(series.items()):
        color = COLORS[s % len(COLORS)]
        points = [(40 + i * step, y(v)) for i, v in enumerate(values) if v is not None]
        if len(points) > 1:
            parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='"
                         + " ".join(f"{px:.1f},{py:.1f}" for px, py in points) + "'/>")
        parts += [f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3' fill='{color}'/>" for px, py in points]
        parts.append(f"<text x='{50 + s * 140}' y='12' fill='{color}'>{esc(name)}</text>")
    parts += [f"<text x='{40 + i * step:.1f}' y='{height - 8}' font-size='9' text-anchor='middle'>{esc(label)}</text>"
              for i, label in enumerate(x_labels)]
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='12'>"
            + "".join(parts) + "</svg>")
