"""Referees `runtime/monitor/report.py` without training anything: reading rows from CSV, JSON lines and Parquet
(and the input limit of the commands that read rows whole), and the HTML page, tables, heat map and SVG charts
that compare and evaluate draw. Every expected figure is arithmetic written out here (SVG coordinates,
shares), never a value the code under test produced."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.errors import InputError
from runtime.monitor.report import esc, heat_map, histogram, line_chart, page, read_rows
from runtime.monitor.report import table as html_table

# ------------------------------------------------------------------------------------------ read_rows

@pytest.mark.parametrize(("name", "content", "records"), [
    # CSV cells stay the text they are (a feature parses it; a passthrough column passes it on unchanged)
    ("rows.csv", "\ufeffa,b\n1,x\n\n2.5,y\n", [(2, {"a": "1", "b": "x"}), (4, {"a": "2.5", "b": "y"})]),
    ("rows.jsonl", '{"a": 1}\n{"a": 2, "b": "x"}\n', [(1, {"a": 1}), (2, {"a": 2, "b": "x"})]),
])
def test_csv_and_json_lines_are_read_with_their_line_numbers(tmp_path, name, content, records):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_rows(path) == records
    assert read_rows(str(path)) == records


@pytest.mark.parametrize("suffix", [".parquet", ".pq", ".PARQUET", ".Pq"])
def test_parquet_is_read_row_by_row_from_one(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    pq.write_table(pa.table({"a": [1.5, 2.5], "symbol": ["BTC", "ETH"]}), path)
    assert read_rows(path) == [(1, {"a": 1.5, "symbol": "BTC"}), (2, {"a": 2.5, "symbol": "ETH"})]


def test_parquet_piped_into_stdin_is_read_as_parquet(tmp_path, monkeypatch):
    # score reads Parquet from "-"; compare, drift and evaluate read it too (they decoded it as UTF-8 text).
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": [1.5, None], "symbol": ["BTC", None]}), path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    rows = read_rows("-", ["a"])
    assert rows[0] == (1, {"a": 1.5, "symbol": "BTC"})
    assert rows[1][1]["symbol"] is None and rows[1][1]["a"] != rows[1][1]["a"]  # NaN: the missing value


@pytest.mark.parametrize(("cells", "expect"), [
    (["1.5", "-2e-3"], [1.5, -0.002]),   # read as numbers, as score reads a text column in Parquet
    (["1.5", None], [1.5, "nan"]),       # a null is the missing value there too
    (["1_0", "x"], ["1_0", "x"]),        # text that is no number stays text: refused later as no number
])
def test_a_parquet_text_feature_column_is_read_as_score_reads_it(tmp_path, cells, expect):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"a": pa.array(cells, pa.string()), "note": pa.array(cells, pa.string())}), path)
    rows = read_rows(path, ["a"])
    assert ["nan" if r["a"] != r["a"] else str(r["a"]) for _, r in rows] == [str(e) for e in expect]
    assert [r["note"] for _, r in rows] == cells  # a passthrough column stays as it was


def test_a_parquet_column_given_twice_is_refused_naming_it(tmp_path):
    # score refuses it; compare, drift and evaluate took one of the two, unsaid
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table([[1.5], [2.5], ["BTC"]], names=["a", "a", "symbol"]), path)
    with pytest.raises(InputError) as info:
        read_rows(path, ["a"])
    assert str(info.value) == f"{path}: column(s) given more than once: ['a']."


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    # None in sys.modules is how Python itself marks a module as not importable: the import raises ImportError.
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "rows.parquet"
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: reading Parquet needs pyarrow: pip install pyarrow"


def unreadable(tmp_path: Path, name: str, data: bytes | None) -> Path:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize(("name", "data", "problem"), [
    ("gone.csv", None, "cannot read it ([Errno 2] No such file or directory: '{path}')."),
    ("latin.csv", b"a\n\xe9\n", "cannot read it ('utf-8' codec can't decode byte 0xe9 in position 2: "
                                "invalid continuation byte)."),
    ("bad.jsonl", b'{"a": 1}\n[1]\n', "line 2: not a JSON object."),
    ("empty.csv", b"", "no rows in the input."),
    ("header.csv", b"a,b\n", "no rows in the input: line 1 is read as a CSV header ('a,b') and no data row "
                             "follows it."),
    ("gone.parquet", None, "not a readable Parquet file ([Errno 2] Failed to open local file '{path}'. Detail: "
                           "[errno 2] No such file or directory)."),
    ("text.parquet", b"a,b\n1,2\n", "not a readable Parquet file (Parquet magic bytes not found in footer. Either the "
                                    "file is corrupted or this is not a parquet file.)."),
])
def test_an_unreadable_input_is_refused_naming_the_file(tmp_path, name, data, problem):
    path = unreadable(tmp_path, name, data)
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: " + problem.format(path=path)


def test_a_parquet_file_with_no_rows_is_refused(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), path)
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: no rows in the input."


# -------------------------------------------------------------------------------------------- the page

def test_text_is_escaped_for_html():
    assert esc("a'b\"<c>&") == "a&#x27;b&quot;&lt;c&gt;&amp;"
    assert esc(2.5) == "2.5" and esc(None) == "None"


def test_the_page_is_one_self_contained_document():
    assert page("Compare <old> & new", ["<p>one</p>", "<p>two</p>"]) == (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Compare &lt;old&gt; &amp; new</title><style>"
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}"
        ".fail{color:#b00;font-weight:bold}.ok{color:#070}h2{margin-top:1.5em}"
        "</style></head><body><h1>Compare &lt;old&gt; &amp; new</h1>\n<p>one</p>\n<p>two</p>\n</body></html>\n")


def test_a_table_escapes_its_header_and_cells():
    assert html_table(["x", "<y>"], [[1, "a&b"], [2.5, None]]) == (
        "<table><tr><th>x</th><th>&lt;y&gt;</th></tr>"
        "<tr><td>1</td><td>a&amp;b</td></tr><tr><td>2.5</td><td>None</td></tr></table>")
    assert html_table(["only"], []) == "<table><tr><th>only</th></tr></table>"


def test_the_heat_map_shades_each_cell_by_its_share_of_the_row():
    def cell(count: int, share: str, percent: str) -> str:
        return f"<td style='background:rgba(31,119,180,{share})'>{count}<br><small>{percent}</small></td>"

    assert heat_map(["SELL", "<H>"], ["SELL", "HOLD", "BUY"], [[3, 1, 0], [0, 0, 0]], "old \\ new") == (
        "<table><tr><th>old \\ new</th><th>SELL</th><th>HOLD</th><th>BUY</th></tr>"
        "<tr><th>SELL</th>" + cell(3, "0.750", "75.0%") + cell(1, "0.250", "25.0%") + cell(0, "0.000", "0.0%")
        + "</tr><tr><th>&lt;H&gt;</th>" + cell(0, "0.000", "0.0%") * 3 + "</tr></table>")


def test_a_heat_map_needs_one_label_per_row():
    with pytest.raises(ValueError, match="zip"):
        heat_map(["SELL", "HOLD"], ["SELL"], [[1]], "x")


def test_the_histogram_draws_a_bar_per_series_and_bin():
    # Defaults 480 x 180: slot (480 - 40) / 2 = 220, bar width 220 / 2.5 = 88, the top share 0.4 is 150 high.
    # Bar x = 30 + bin * 220 + series * 88; y = 180 - 20 - height.
    def bar(x: str, y: str, h: str, color: str, title: str) -> str:
        return (f"<rect x='{x}' y='{y}' width='88.0' height='{h}' fill='{color}'><title>{title}</title></rect>")

    svg = histogram({"old": [0.2, 0.1], "<new>": [0.0, 0.4]}, [0.0, 0.5, 1.25])
    assert svg == (
        "<svg xmlns='http://www.w3.org/2000/svg' width='480' height='180' font-size='12'>"
        "<text x='40' y='12' fill='#1f77b4'>old</text><text x='160' y='12' fill='#ff7f0e'>&lt;new&gt;</text>"
        + bar("30.0", "85.0", "75.0", "#1f77b4", "old [0, 0.5): 20.0%")
        + bar("250.0", "122.5", "37.5", "#1f77b4", "old [0.5, 1.25): 10.0%")
        + bar("118.0", "160.0", "0.0", "#ff7f0e", "&lt;new&gt; [0, 0.5): 0.0%")
        + bar("338.0", "10.0", "150.0", "#ff7f0e", "&lt;new&gt; [0.5, 1.25): 40.0%")
        + "<text x='30.0' y='175' font-size='10'>0</text><text x='250.0' y='175' font-size='10'>0.5</text>"
          "<text x='470.0' y='175' font-size='10'>1.25</text></svg>")


def test_the_histogram_takes_its_size_and_cycles_four_colours():
    # 100 x 60: slot (100 - 40) / 1 = 60; five series: bar width 60 / 5.5; all shares 0 (no division by 0).
    svg = histogram({f"s{i}": [0.0] for i in range(5)}, [0.0, 1.0], width=100, height=60)
    assert svg.startswith("<svg xmlns='http://www.w3.org/2000/svg' width='100' height='60' font-size='12'>")
    fills = re.findall(r"<rect x='([\d.]+)' y='([\d.]+)' width='([\d.]+)' height='([\d.]+)' fill='([^']+)'", svg)
    assert fills == [(x, "40.0", "10.9", "0.0", color) for x, color in [
        ("30.0", "#1f77b4"), ("40.9", "#ff7f0e"), ("51.8", "#2ca02c"), ("62.7", "#d62728"), ("73.6", "#1f77b4")]]
    assert re.findall(r"<text x='(\d+)' y='12' fill='([^']+)'>", svg)[4] == ("520", "#1f77b4")
    assert re.findall(r"font-size='10'>([^<]+)<", svg) == ["0", "1"]
    assert "y='55' font-size='10'" in svg


def test_the_histogram_ticks_at_most_six_edges():
    # Ten bins: a tick every second edge (0, 2, ..., 10), 44 px apart.
    svg = histogram({"a": [0.1] * 10}, [float(e) for e in range(11)])
    ticks = re.findall(r"<text x='([\d.]+)' y='175' font-size='10'>([^<]+)</text>", svg)
    assert ticks == [(f"{30 + e * 44:.1f}", str(e)) for e in range(0, 11, 2)]


def test_a_histogram_of_series_without_values_draws_no_bars():
    svg = histogram({"a": []}, [0.0, 1.0])
    assert "<rect" not in svg and "<text x='40' y='12' fill='#1f77b4'>a</text>" in svg


def test_the_line_chart_plots_each_series_and_skips_missing_points():
    # Defaults 640 x 220: y(v) = 20 + 170 (1 - v); three labels, step (640 - 60) / 2 = 290 from x = 40.
    svg = line_chart(["w1", "<w2>", "w3"], {"accuracy": [0.5, None, 1.0], "f1": [0.25]})
    grid = "".join(f"<line x1='40' y1='{y:.1f}' x2='630' y2='{y:.1f}' stroke='#ddd'/>"
                   f"<text x='5' y='{y + 4:.1f}' font-size='10'>{v}</text>"
                   for v, y in (("0.0", 190.0), ("0.5", 105.0), ("1.0", 20.0)))
    assert svg == (
        "<svg xmlns='http://www.w3.org/2000/svg' width='640' height='220' font-size='12'>" + grid
        + "<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='40.0,105.0 620.0,20.0'/>"
          "<circle cx='40.0' cy='105.0' r='3' fill='#1f77b4'/><circle cx='620.0' cy='20.0' r='3' fill='#1f77b4'/>"
          "<text x='50' y='12' fill='#1f77b4'>accuracy</text>"
          "<circle cx='40.0' cy='147.5' r='3' fill='#ff7f0e'/>"
          "<text x='190' y='12' fill='#ff7f0e'>f1</text>"
          "<text x='40.0' y='212' font-size='9' text-anchor='middle'>w1</text>"
          "<text x='330.0' y='212' font-size='9' text-anchor='middle'>&lt;w2&gt;</text>"
          "<text x='620.0' y='212' font-size='9' text-anchor='middle'>w3</text></svg>")


def test_the_line_chart_takes_its_size_and_cycles_four_colours():
    # 160 x 70: y(v) = 20 + 20 (1 - v); two labels, step (160 - 60) / 1 = 100.
    svg = line_chart(["a", "b"], {f"s{i}": [0.0, 1.0] for i in range(5)}, width=160, height=70)
    assert svg.startswith("<svg xmlns='http://www.w3.org/2000/svg' width='160' height='70' font-size='12'>")
    assert "<line x1='40' y1='40.0' x2='150' y2='40.0' stroke='#ddd'/>" in svg
    lines = re.findall(r"<polyline fill='none' stroke='([^']+)' stroke-width='2' points='([^']+)'/>", svg)
    assert lines == [(c, "40.0,40.0 140.0,20.0") for c in ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#1f77b4"]]
    assert re.findall(r"<text x='([\d.]+)' y='62' font-size='9'", svg) == ["40.0", "140.0"]


def test_a_line_chart_with_one_label_starts_at_the_axis():
    # One label: no step between points, (640 - 60) / 1 for a second value should one come.
    svg = line_chart(["only"], {"a": [0.0, 1.0]})
    assert "points='40.0,190.0 620.0,20.0'" in svg
    assert "<text x='40.0' y='212' font-size='9' text-anchor='middle'>only</text>" in svg



@pytest.mark.parametrize("command", [["drift", "--input"], ["evaluate", "--data"]])
def test_commands_that_read_rows_whole_stop_past_the_input_limit(demo_artifacts, monkeypatch, command):
    from click.testing import CliRunner

    from convert.cli import main
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", "4096")
    result = CliRunner().invoke(main, [command[0], str(demo_artifacts), command[1], "/dev/zero"])
    assert result.exit_code == 1 and "/dev/zero: more than 4,096 bytes of rows" in result.output, result.output


def test_a_huge_input_limit_reserves_nothing(demo_artifacts, monkeypatch, tmp_path):
    """read(limit + 1) used to reserve the whole limit up front: OverflowError or MemoryError for a huge value."""
    from click.testing import CliRunner

    from convert.cli import main
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_INPUT_BYTES", str(10**30))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    result = CliRunner().invoke(main, ["predict", str(demo_artifacts), "--input", str(rows)])
    assert result.exit_code == 1 and "missing" in result.output and "internal error" not in result.output, result.output

