"""Every command keeps the promises predict keeps (issue 24, issue 26 items 4 and 6): result files written by
one writer, trust options everywhere, passthrough unchanged, strict JSON, workers that die with their
parent, environment faults named, bounded inputs, one vocabulary. Real demo build, real processes."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from convert.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[3]
COMMANDS = ("convert", "verify", "bench", "inspect", "predict", "compare", "drift", "evaluate", "score")


def invoke(*args: object, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return runtime.load(demo_artifacts)


@pytest.fixture(scope="module")
def market(ens):
    from convert.demo import DemoSpec, market_data

    return market_data(DemoSpec(seed=3), held_out=400)


def csv_rows(ens, x: np.ndarray, labels=None, extra: dict[str, list[str]] | None = None) -> str:
    extra = dict(extra or {})
    if labels is not None:
        extra["label"] = [ens.classes[int(k)] for k in labels]
    lines = [",".join([*ens.feature_names, *extra])]
    lines += [",".join([*(repr(float(v)) for v in row), *(col[i] for col in extra.values())])
              for i, row in enumerate(x)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def files(ens, market, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    x, y = market
    (folder / "rows.csv").write_text(csv_rows(ens, x[:60], y[:60]))
    columns = {n: x[:300, j] for j, n in enumerate(ens.feature_names)}
    pq.write_table(pa.table({"symbol": [f"S{i}" for i in range(300)], **columns}), folder / "rows.parquet")
    return folder


# ---------------------------------------------------------------------------------- one writer (24 #1, #2)

@pytest.mark.parametrize("command", ["compare", "evaluate"])
@pytest.mark.parametrize(("target", "flags", "problem"), [
    ("INPUT", ["--force"], "is an input of this run"),
    ("BUILD/manifest.json", ["--force"], "is inside the artifacts folder"),
    ("BUILD/report.html", [], "is inside the artifacts folder"),
    ("EXISTING", [], "already exists; pass --force"),
])
def test_a_report_never_overwrites_an_input_a_build_or_a_file(artifacts_copy, files, tmp_path, command, target,
                                                              flags, problem):
    rows = tmp_path / "rows.csv"
    rows.write_text((files / "rows.csv").read_text())
    (tmp_path / "existing.html").write_text("keep")
    path = (target.replace("INPUT", str(rows)).replace("BUILD", str(artifacts_copy))
            .replace("EXISTING", str(tmp_path / "existing.html")))
    before = {p: p.read_bytes() for p in (rows, artifacts_copy / "manifest.json", tmp_path / "existing.html")}
    builds = [artifacts_copy, artifacts_copy] if command == "compare" else [artifacts_copy]
    result = invoke(command, *builds, "--input", rows, "--report", path, *flags)
    assert result.exit_code == 1 and problem in result.stderr, result.output
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in artifacts_copy.iterdir()) == sorted(
        p.name for p in artifacts_copy.iterdir() if p.name != "report.html")
    runtime.load(artifacts_copy)  # still loads


def test_score_keeps_the_previous_output_when_the_rejects_path_is_a_folder(demo_artifacts, files, tmp_path):
    """24 #1: --force with a folder at the default rejects path replaced the 20,000-row output with the new
    rows, reported an IsADirectoryError as an internal error and left a .partial file."""
    out = tmp_path / "o.parquet"
    out.write_bytes(b"previous output")
    (tmp_path / "o.rejects.parquet").mkdir()
    result = invoke("score", demo_artifacts, "-i", files / "rows.parquet", "-o", out, "--on-error", "skip",
                    "--force", "-q")
    assert result.exit_code == 1 and "o.rejects.parquet: is a folder" in result.stderr
    assert "internal error" not in result.output
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "o.rejects.parquet"]


def test_all_rows_refused_names_the_first_reason(demo_artifacts, ens, market, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join([",".join(ens.feature_names)] + [",".join(["x"] * len(ens.feature_names))] * 5) + "\n")
    result = invoke("score", demo_artifacts, "-i", rows, "-o", tmp_path / "o.csv", "--on-error", "skip", "-q")
    assert result.exit_code == 1
    assert f"no row could be scored (5 read, 5 refused; first: data row 1, column '{ens.feature_names[0]}': " \
           f"'x' is not a number)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


# ------------------------------------------------------------------------------------ passthrough (24 #3)

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_predict_passes_symbol_and_timestamp_through_unchanged(demo_artifacts, ens, market, fmt):
    symbols = ["0700", "007", "1e3", "NaN", "inf"]
    stamps = ["2026-03-02T10:00:00Z", "1700000000", "", "x", "0"]
    text = csv_rows(ens, market[0][:5], extra={"symbol": symbols, "timestamp": stamps})
    result = invoke("predict", demo_artifacts, "--format", fmt, input=text)
    assert result.exit_code == 0, result.output
    if fmt == "jsonl":
        records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
                   for line in result.stdout.splitlines()]
        assert [r["symbol"] for r in records] == symbols
        assert [r["timestamp"] for r in records] == stamps
    else:
        import csv
        import io
        lines = list(csv.reader(io.StringIO(result.stdout)))
        assert lines[0][:3] == ["symbol", "timestamp", "action"]
        assert [line[0] for line in lines[1:]] == symbols and [line[1] for line in lines[1:]] == stamps


def test_score_json_lines_are_strict_json(demo_artifacts, ens, market, tmp_path):
    x = market[0][:3]
    columns = {n: x[:, j] for j, n in enumerate(ens.feature_names)}
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"note": [float("nan"), float("inf"), 1.5], "blob": [b"\x00\xff", b"ok", None],
                             **columns}), source)
    result = invoke("score", demo_artifacts, source, "-o", tmp_path / "o.jsonl", "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
            for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["note"] for r in rows] == [None, None, 1.5]
    assert [r["blob"] for r in rows] == ["AP8=", "b2s=", None]


# ---------------------------------------------------------------------------------------- trust (24 #4)

def stale_signature(folder: Path) -> None:
    """A manifest.sig that signs another build (the manifest changed after signing)."""
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from runtime.signing import sign

    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    manifest = json.loads((folder / "manifest.json").read_bytes())
    manifest["classes"] = list(reversed(manifest["classes"]))
    (folder / "manifest.sig").write_bytes(sign(manifest, key))


def test_a_signature_of_another_build_is_refused_without_a_key(artifacts_copy):
    stale_signature(artifacts_copy)
    with pytest.raises(runtime.ArtifactError, match=r"manifest.sig: signs build .* not this folder's build"):
        runtime.load(artifacts_copy)


def trust_call(command: str, build: Path, files: Path, tmp_path: Path) -> list[object]:
    rows = files / "rows.csv"
    return {"predict": ["predict", build, "-i", rows],
            "score": ["score", build, "-i", files / "rows.parquet", "-o", tmp_path / "o.csv"],
            "compare": ["compare", build, build, "-i", rows],
            "drift": ["drift", build, "-i", rows],
            "evaluate": ["evaluate", build, "-i", rows],
            "inspect": ["inspect", build]}[command]


@pytest.mark.parametrize("command", ["predict", "score", "compare", "drift", "evaluate", "inspect"])
def test_every_command_that_loads_a_build_pins_it(demo_artifacts, files, tmp_path, command):
    wrong = "0" * 64
    pins = ["--expect-build-id", wrong] * (2 if command == "compare" else 1)
    result = invoke(*trust_call(command, demo_artifacts, files, tmp_path), *pins)
    assert result.exit_code == 1 and f"not the expected build {wrong}" in result.stderr, result.output
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("command", ["predict", "score", "compare", "drift", "evaluate", "inspect"])
def test_every_command_that_loads_a_build_checks_its_signature(demo_artifacts, files, tmp_path, command):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "key.pub"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = invoke(*trust_call(command, demo_artifacts, files, tmp_path), "--public-key", key)
    assert result.exit_code == 1 and "the folder is not signed" in result.stderr, result.output


def test_a_worker_verifies_with_the_drivers_trust_options(demo_artifacts):
    from runtime.artifacts import read_files
    from runtime.batch import backfill

    with pytest.raises(runtime.ArtifactError, match="not the expected build"):
        backfill._worker_init(read_files(demo_artifacts), 1, "sent", os.getppid(), "0" * 64, None)


# ------------------------------------------------------------------------- processes and faults (24 #5, #6)

def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its entry waits to be reaped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_their_parent(demo_artifacts, ens, tmp_path, sig):
    """24 #5: kill -9 (or -TERM) of score --workers 2 left both workers and the resource tracker running."""
    from convert.demo import DemoSpec, market_data

    x = market_data(DemoSpec(seed=4), held_out=20000)[0]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(ens.feature_names)}), source)
    parent = subprocess.Popen([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), str(source),
                               "-o", str(tmp_path / "o.parquet"), "--workers", "2", "--batch-rows", "200", "-q"],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    for _ in range(600):  # until the pool has started its workers (the run cannot end before they answer)
        workers = children(parent.pid)
        if len(workers) >= 3 or parent.poll() is not None:  # two workers and the resource tracker
            break
        time.sleep(0.1)
    assert parent.poll() is None and len(workers) >= 2, "the workers never started"
    parent.send_signal(sig)
    parent.wait()
    for _ in range(1800):  # polled, not timed: a worker still importing on a busy host gets minutes to notice
        if not any(alive(w) for w in workers):
            break
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"processes outlived their parent: {left}"
    assert not (tmp_path / "o.parquet").exists()


def test_a_file_size_limit_is_named_not_an_internal_error(demo_artifacts, files, tmp_path):
    """24 #6: EFBIG (and ENOSPC, through the same path) said as the machine's fault, exit 3, nothing left."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "o.csv"
    done = subprocess.run([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), "-i",
                           str(files / "rows.parquet"), "-o", str(out), "--workers", "1", "-q"],
                          env=env(), capture_output=True, text=True, preexec_fn=limit)
    assert done.returncode == 3, done.stderr
    assert "the file-size limit was reached (EFBIG)" in done.stderr and "internal error" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_corrupt_parquet_page_is_refused_naming_the_file(demo_artifacts, ens, market, tmp_path):
    x = market[0]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(ens.feature_names)}), source, row_group_size=100,
                   compression="snappy")
    data = bytearray(source.read_bytes())
    at = pq.ParquetFile(source).metadata.row_group(2).column(0).data_page_offset
    data[at:at + 16] = b"\xff" * 16  # over a page header: "Deserializing page header failed"
    source.write_bytes(bytes(data))
    result = invoke("score", demo_artifacts, source, "-o", tmp_path / "o.csv", "-q")
    assert result.exit_code == 1, result.output
    assert f"{source}: cannot be read as parquet" in result.stderr and "internal error" not in result.output
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("value", ["99999999999999999999", "16777217", "0"])
def test_an_absurd_batch_size_is_a_usage_error(demo_artifacts, files, tmp_path, value):
    result = invoke("score", demo_artifacts, files / "rows.parquet", "-o", tmp_path / "o.csv", "--batch-rows", value)
    assert result.exit_code == 2 and "--batch-rows" in result.stderr


def test_threads_past_the_host_are_capped_with_a_message(demo_artifacts, files, tmp_path):
    cores = os.cpu_count() or 1
    result = invoke("score", demo_artifacts, files / "rows.parquet", "-o", tmp_path / "o.csv", "--threads", "1000",
                    "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    assert f"--threads 1000 capped at {cores}" in result.stderr
    assert json.loads(result.stdout)["threads"] == cores


def test_drift_without_training_bins_cannot_run_exit_3(demo_artifacts, files):
    """24 #9: exit 1 means drift was found; a build with no bins to compare with is another outcome."""
    result = invoke("drift", demo_artifacts, "-i", files / "rows.csv", "--fail-psi", "0.25", "-q")
    assert result.exit_code == 3 and "has no training bins" in result.stderr, result.output


@pytest.mark.parametrize("command", ["drift", "compare", "evaluate"])
def test_a_small_file_of_many_rows_stops_at_the_documented_limit(demo_artifacts, files, monkeypatch, command):
    monkeypatch.setenv("ENSEMBLE_ONNX_MAX_ROWS", "299")
    builds = [demo_artifacts] * (2 if command == "compare" else 1)
    result = invoke(command, *builds, "-i", files / "rows.parquet")
    assert result.exit_code == 1, result.output
    assert "300 rows, more than the 299 this command holds in memory" in result.stderr


def test_decimal_parquet_features_are_read_as_score_reads_them(demo_artifacts, ens, market, tmp_path):
    import decimal
    x = np.round(market[0][:20], 6)
    source = tmp_path / "d.parquet"
    pq.write_table(pa.table({n: pa.array([decimal.Decimal(repr(float(v))) for v in x[:, j]], pa.decimal128(18, 6))
                             for j, n in enumerate(ens.feature_names)}), source)
    result = invoke("drift", demo_artifacts, "-i", source, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 20


# --------------------------------------------------------------------------- pipes and headers (26 #4)

def test_a_closed_reader_ends_predict_quietly(demo_artifacts, ens, market, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text(csv_rows(ens, np.tile(market[0], (5, 1))))  # 2,000 rows: more than a pipe buffer
    predict = subprocess.Popen([sys.executable, "-m", "convert.cli", "predict", str(demo_artifacts), "-i", str(rows)],
                               env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert predict.stdout is not None and predict.stderr is not None
    first = predict.stdout.readline()
    predict.stdout.close()  # what `| head -1` does
    code = predict.wait()
    error = predict.stderr.read().decode()
    assert json.loads(first)["action"] in ens.classes
    assert code == 0 and error == ""


@pytest.mark.parametrize(("header_of", "expect"), [
    (lambda names: [n.replace("rsi_14", "rsi14") for n in names],
     ["missing feature column(s) ['rsi_14']", "unknown column(s) ['rsi14']", "did you mean 'rsi14' for 'rsi_14'?"]),
    (lambda names: [";".join(names)], ["the file is split on ';', not commas"]),
])
def test_a_header_problem_is_said_once(demo_artifacts, ens, market, header_of, expect):
    text = csv_rows(ens, market[0][:50]).splitlines()
    header = header_of(list(ens.feature_names))
    body = text[1:] if len(header) > 1 else [line.replace(",", ";") for line in text[1:]]
    result = invoke("predict", demo_artifacts, input="\n".join([",".join(header), *body]) + "\n")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(e in result.stderr for e in expect), result.stderr


def test_numeric_class_names_from_csv_stay_text():
    from runtime.records import read_records
    records = read_records("a,label\n1.5,0\n2.5,1\n")
    assert [r["label"] for _, r in records] == ["0", "1"]


# ------------------------------------------------------------------------------ one vocabulary (26 #6)

@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_h(command):
    result = invoke(command, "-h")
    assert result.exit_code == 0 and result.output.startswith("Usage:")


# ------------------------------------------------------------------------------ one entry point, split by audience

@pytest.mark.parametrize(("command", "module"), [
    ("convert", "build"), ("verify", "build"), ("inspect", "build"), ("bench", "build"), ("predict", "serve"),
    ("score", "operate"), ("compare", "operate"), ("drift", "operate"), ("evaluate", "operate"),
])
def test_each_command_lives_in_its_audiences_module_and_is_listed_as_its_help_says(command, module):
    """`ensemble-onnx --help` lists the commands from a static table (importing none of them): each entry must
    name the command's module and shorten to what click makes of the command's own help, at every width."""
    from convert.cli import COMMANDS as TABLE

    assert set(TABLE) == set(COMMANDS)
    real = main.get_command(None, command)
    assert TABLE[command][0] == module and real.callback.__module__ == f"convert.cli.{module}"
    table = click.Command(command, help=TABLE[command][1])
    for limit in (20, 45, 66, 200):
        assert table.get_short_help_str(limit) == real.get_short_help_str(limit)
    assert f"  {command} " in invoke("--help").output


def test_an_unknown_command_is_a_usage_error():
    result = invoke("predcit", "x")
    assert result.exit_code == 2 and "No such command 'predcit'" in result.output


@pytest.mark.parametrize(("args", "loaded", "not_loaded"), [
    (["--help"], set(), {"convert.cli.build", "convert.cli.serve", "convert.cli.operate"}),
    (["predict", "{artifacts}", "-i", "{rows}"], {"convert.cli.serve"},
     {"convert.cli.build", "convert.cli.operate", "torch", "onnx", "sklearn", "xgboost", "lightgbm", "convert.build"}),
    (["drift", "{artifacts}", "-i", "{rows}", "-q"], {"convert.cli.operate"},
     {"convert.cli.build", "convert.cli.serve", "torch", "onnx", "sklearn"}),
])
def test_a_command_imports_its_own_module_only(demo_artifacts, ens, market, tmp_path, args, loaded, not_loaded):
    (tmp_path / "rows.csv").write_text(csv_rows(ens, market[0][:5]))
    code = ("import json, sys, atexit\n"
            "atexit.register(lambda: sys.stderr.write('MODULES=' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            "from convert.cli import main\nmain()\n")
    argv = [a.format(artifacts=demo_artifacts, rows=tmp_path / "rows.csv") for a in args]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stderr.rsplit("MODULES=", 1)[1]))
    assert loaded <= modules and not (not_loaded & modules), (loaded - modules, not_loaded & modules)


@pytest.mark.parametrize(("command", "names"), [
    ("predict", ["-i, --input", "-o, --out", "-q, --quiet", "--json", "--expect-build-id", "--public-key"]),
    ("score", ["-i, --input", "-o, --out", "-q, --quiet", "--json", "--expect-build-id", "--public-key"]),
    ("compare", ["-i, --input", "-q, --quiet", "--json", "--expect-build-id", "--public-key", "--force"]),
    ("drift", ["-i, --input", "-q, --quiet", "--json", "--expect-build-id", "--public-key"]),
    ("evaluate", ["-i, --input", "-q, --quiet", "--json", "--expect-build-id", "--public-key", "--force"]),
    ("verify", ["-i, --input", "-q, --quiet", "--json", "--expect-build-id", "--public-key"]),
    ("convert", ["-o, --out", "-q, --quiet", "--json"]),
    ("bench", ["-o, --out", "-q, --quiet", "--json"]),
    ("inspect", ["-q, --quiet", "--json", "--expect-build-id", "--public-key"]),
])
def test_one_name_for_one_thing(command, names):
    shown = invoke(command, "--help").output
    assert all(n in shown for n in names), [n for n in names if n not in shown]
    assert "--data" not in shown and "--output" not in shown  # old spellings work, unlisted


def test_old_spellings_keep_working(demo_artifacts, files, tmp_path):
    assert invoke("evaluate", demo_artifacts, "--data", files / "rows.csv", "-q").exit_code == 0
    assert invoke("compare", demo_artifacts, demo_artifacts, "--data", files / "rows.csv", "-q").exit_code == 0
    result = invoke("score", demo_artifacts, files / "rows.parquet", "--output", tmp_path / "o.csv", "-q")
    assert result.exit_code == 0 and (tmp_path / "o.csv").exists()


def test_rows_from_stdin_wherever_rows_are_read(demo_artifacts, files):
    text = (files / "rows.csv").read_text()
    for args in (["drift", demo_artifacts], ["evaluate", demo_artifacts], ["compare", demo_artifacts, demo_artifacts]):
        result = invoke(*args, "-i", "-", "--json", "-q", input=text)
        assert result.exit_code == 0, (args, result.output)


def test_predict_writes_its_file_atomically_and_never_into_the_build(demo_artifacts, ens, market, tmp_path):
    rows, out = tmp_path / "rows.csv", tmp_path / "p.jsonl"
    rows.write_text(csv_rows(ens, market[0][:60]))
    result = invoke("predict", demo_artifacts, "-i", rows, "-o", out)
    assert result.exit_code == 0 and result.stdout == "", result.output
    assert len(out.read_text().splitlines()) == 60
    assert invoke("predict", demo_artifacts, "-i", rows, "-o", out).exit_code == 1
    result = invoke("predict", demo_artifacts, "-i", rows, "-o", demo_artifacts / "p.jsonl")
    assert result.exit_code == 1 and "inside the artifacts folder" in result.stderr


# ---------------------------------------------------------------------------------------- convert (24 #8)

def test_a_second_convert_to_one_output_is_refused_by_name(tmp_path):
    from convert import manifest as mf
    from convert.errors import OutputError

    out = tmp_path / "artifacts"
    with mf.output_lock(out):
        with pytest.raises(OutputError, match=f"-o {out}: another convert is writing this output now"):
            with mf.output_lock(out):
                pass
    with mf.output_lock(out):  # released with the first
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_killed_converts_lock_does_not_outlive_it(tmp_path):
    from convert import manifest as mf

    out = tmp_path / "artifacts"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from convert import manifest as mf\n"
                               f"with mf.output_lock(__import__('pathlib').Path({str(out)!r})):\n"
                               "    print('held', flush=True); time.sleep(600)"],
                              env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    with mf.output_lock(out):  # the kernel dropped the flock with the process
        pass


def test_the_next_convert_cleans_only_the_staging_convert_named(tmp_path):
    from convert import manifest as mf

    out = tmp_path / "artifacts"
    out.mkdir()
    staging = tmp_path / ".artifacts.new-ab12cd34"
    (staging / "members").mkdir(parents=True)
    (staging / "members" / "big.onnx").write_bytes(bytes(1000))
    kept = [tmp_path / ".artifacts.new-mine", tmp_path / ".other.new-ab12cd34", tmp_path / "artifacts.new-ab12cd34"]
    for path in kept:
        path.mkdir()
    (tmp_path / ".artifacts.new-zz12cd34").symlink_to(tmp_path / "artifacts.new-ab12cd34")
    with mf.output_lock(out):
        pass
    assert not staging.exists()
    assert all(path.is_dir() for path in kept) and (tmp_path / ".artifacts.new-zz12cd34").is_symlink()


def test_a_previous_build_in_an_old_folder_is_kept_while_the_output_is_missing(tmp_path):
    from convert import manifest as mf

    retired = tmp_path / ".artifacts.old-ab12cd34"
    (retired / "artifacts").mkdir(parents=True)
    with mf.output_lock(tmp_path / "artifacts"):
        pass
    assert (retired / "artifacts").is_dir()


def test_an_output_inside_a_build_is_refused(artifacts_copy):
    from convert import manifest as mf
    from convert.errors import OutputError

    with pytest.raises(OutputError, match="is inside .*, an artifacts folder"):
        mf.check_output(artifacts_copy / "sub")
    with pytest.raises(OutputError, match="is inside .*, an artifacts folder"):
        mf.check_output(artifacts_copy / "members" / "deeper" / "sub")


# ------------------------------------------------------------------------------------- row groups (24 #9)

@pytest.mark.parametrize("splits", [[1000], [10, 990], [333, 333, 334], [1] * 7 + [993]])
def test_parquet_bytes_do_not_depend_on_how_rows_were_batched(tmp_path, splits):
    from runtime.batch.backfill_io import TableSink

    table = pa.table({"a": np.arange(1000, dtype=np.float64), "s": [f"x{i}" for i in range(1000)]})
    expect = tmp_path / "one.parquet"
    sink = TableSink(expect, False, group_rows=256)
    sink.write(table)
    sink.commit()
    out = tmp_path / "split.parquet"
    sink = TableSink(out, False, group_rows=256)
    start = 0
    for n in splits:
        sink.write(table.slice(start, n))
        start += n
    sink.commit()
    assert out.read_bytes() == expect.read_bytes()
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(4)] == [256, 256, 256, 232]


def test_a_link_where_the_lock_goes_is_refused_not_followed(tmp_path):
    from convert import manifest as mf
    from convert.errors import OutputError

    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / ".artifacts.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="cannot take the lock"):
        with mf.output_lock(tmp_path / "artifacts"):
            pass
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_predict_out_dash_is_stdout(demo_artifacts, ens, market, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", demo_artifacts, "-o", "-", input=csv_rows(ens, market[0][:3]))
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert list(tmp_path.iterdir()) == []


def test_the_lock_leaves_no_folder_it_made_for_itself(tmp_path):
    from convert import manifest as mf

    with mf.output_lock(tmp_path / "new" / "deeper" / "artifacts"):
        assert (tmp_path / "new" / "deeper" / ".artifacts.lock").exists()
    assert list(tmp_path.iterdir()) == []


def bundle_of(manifest_digest: str, build: str) -> bytes:
    """An OpenSSF model-signing bundle's shape (unsigned here: only what it claims is read without a key)."""
    import base64
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "artifacts", "digest": {"sha256": "0" * 64},
                              "annotations": {"ensemble_onnx.build_id": build}}],
                 "predicate": {"resources": [{"name": "manifest.json", "algorithm": "sha256",
                                              "digest": manifest_digest}]}}
    return json.dumps({"dsseEnvelope": {"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                                        "signatures": []}}).encode()


@pytest.mark.parametrize(("digest_of", "build_of", "refused"), [
    (lambda raw: __import__("hashlib").sha256(raw).hexdigest(), lambda b: b, False),
    (lambda raw: "1" * 64, lambda b: b, True),
    (lambda raw: __import__("hashlib").sha256(raw).hexdigest(), lambda b: "2" * 64, True),
])
def test_a_bundle_that_claims_another_manifest_is_refused_without_a_key(demo_artifacts, digest_of, build_of, refused):
    from runtime.artifacts import _refuse_stale_signature
    from runtime.contract import build_id

    raw = (demo_artifacts / "manifest.json").read_bytes()
    identity = build_id(json.loads(raw))
    bundle = bundle_of(digest_of(raw), build_of(identity))
    if refused:
        with pytest.raises(runtime.ArtifactError, match="model.sig: signs another manifest.json"):
            _refuse_stale_signature(None, raw, identity, demo_artifacts, bundle)
    else:
        _refuse_stale_signature(None, raw, identity, demo_artifacts, bundle)
    _refuse_stale_signature(None, raw, identity, demo_artifacts, b"not json")  # unreadable: the key's to judge


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a tmpfs in a user namespace")
def test_a_full_disk_is_named_not_an_internal_error(demo_artifacts, files, tmp_path):
    """24 #6: ENOSPC, on a real 16 KiB filesystem (a tmpfs in a private user and mount namespace; skipped where
    the host allows none)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=16k tmpfs {disk} || exit 99\n"
              f"{sys.executable} -m convert.cli score {demo_artifacts} -i {files / 'rows.parquet'} -o {disk}/o.csv "
              f"--workers 1 -q\necho rc=$?\nls -A {disk}\n")
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=env(),
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no unshare on this host")
    if done.returncode == 99 or "rc=" not in done.stdout:
        pytest.skip(f"this host allows no user namespace mount: {done.stderr[-200:]}")
    assert done.stdout.splitlines() == ["rc=3"], done.stdout + done.stderr  # nothing left on the disk
    assert "no space left on the device (ENOSPC)" in done.stderr and "internal error" not in done.stderr


@pytest.mark.parametrize(("classes", "args", "clash"), [
    (["SELL", "HOLD", "action"], ["predict", "--format", "csv"], "['action']"),
    (["SELL", "HOLD", "nhits_SELL"], ["predict", "--format", "csv"], "['nhits_SELL']"),
    (["SELL", "HOLD", "nhits_SELL"], ["score", "--members"], "['p_nhits_SELL']"),
])
def test_a_build_whose_names_give_a_column_twice_loads_but_no_writer_writes_it(
        demo_artifacts, ens, market, tmp_path, classes, args, clash):
    """Output column names are the commands', not the artifact contract's: a (forged) build whose class and
    member names would give one column twice loads, and the writer that would repeat it refuses, writing
    nothing (convert refuses such names at planning, so only a forgery gets here)."""
    from forge import rebound

    build = rebound(demo_artifacts, tmp_path / "forged", lambda m: m.update(classes=classes))
    assert runtime.load(build).classes == tuple(classes)
    rows = tmp_path / "rows.csv"
    rows.write_text(csv_rows(ens, market[0][:5]))
    out = tmp_path / "out.csv"
    command, *flags = args
    result = invoke(command, build, "-i", rows, "-o", out, *flags)
    assert result.exit_code == 1, result.output
    writer = "predict --format csv" if command == "predict" else "score"
    assert f"name the output column(s) {clash} more than once, which {writer} cannot write" in result.stderr
    assert "Traceback" not in result.output and not out.exists()
