"""`ensemble-onnx score`: a history file scored with the production build, streaming, on one machine and on
Ray. Real pyarrow files, real onnxruntime, a real local Ray; the expected numbers come from `runtime.load`'s
own predict_proba on the same rows, never from the code under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from domain_rows import bounds

import runtime

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")

from runtime.artifacts import ArtifactError, read_files, verify_files  # noqa: E402
from runtime.batch import backfill  # noqa: E402  (after the skip: these tests need pyarrow)

REPO = Path(__file__).resolve().parents[3]


def history(ens: runtime.Ensemble, n: int, seed: int = 5) -> pa.Table:
    """Symbols x minutes of features on the demo market's scales, columns in a shuffled order."""
    from convert.demo import DemoSpec, market_data

    x, _ = market_data(DemoSpec(seed=seed), held_out=n)
    columns = {"symbol": [f"SYM{i % 13}" for i in range(n)],
               "timestamp": pa.array(np.arange(n, dtype="int64") * 60_000_000, type=pa.timestamp("us"))}
    for j in reversed(range(len(ens.feature_names))):
        columns[ens.feature_names[j]] = x[:, j]
    return pa.table(columns)


def one_thread(artifacts):
    """The runtime as score's workers run it: one onnxruntime intra-op thread (bit-identical answers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return runtime.load(artifacts, options)


@pytest.fixture(scope="module")
def ens(demo_artifacts):
    return one_thread(demo_artifacts)


@pytest.fixture(scope="module")
def table(ens):
    return history(ens, 3000)


@pytest.fixture(scope="module")
def parquet_in(table, tmp_path_factory):
    path = tmp_path_factory.mktemp("history") / "history.parquet"
    pq.write_table(table, path, row_group_size=700)
    return path


def features_of(ens, t: pa.Table) -> np.ndarray:
    return np.column_stack([t.column(f).to_numpy() for f in ens.feature_names])


def cli(*args: str):
    from convert.cli import main
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(("suffix", "workers"), [(".parquet", 1), (".csv", 1), (".jsonl", 1), (".parquet", 2)])
def test_scores_are_the_runtimes_own_in_input_order(ens, demo_artifacts, table, tmp_path, suffix, workers):
    source = tmp_path / f"in{suffix}"
    {".parquet": lambda: pq.write_table(table, source), ".csv": lambda: pcsv.write_csv(table, source),
     ".jsonl": lambda: source.write_text("".join(json.dumps({**r, "timestamp": str(r["timestamp"])}) + "\n"
                                                  for r in table.to_pylist()))}[suffix]()
    out = tmp_path / f"out{suffix}"
    summary = backfill.score_file(demo_artifacts, source, out, members=True, workers=workers, batch_rows=512)
    got = pq.read_table(out) if suffix == ".parquet" else (
        pcsv.read_csv(out) if suffix == ".csv"
        else pa.Table.from_pylist([json.loads(s) for s in out.read_text().splitlines()]))
    want = ens.predict_proba(features_of(ens, table))
    members = ens.member_probabilities(features_of(ens, table))
    assert summary.rows == summary.scored == len(table)
    assert got.column_names[:2] == ["symbol", "timestamp"] and "rsi_14" not in got.column_names
    assert got.column("symbol").to_pylist() == table.column("symbol").to_pylist()
    probs = np.column_stack([got.column(f"p_{c}").to_numpy() for c in ens.classes]).astype(np.float32)
    np.testing.assert_array_equal(probs, want)  # text formats print float32 shortest-repr: exact round trip
    assert got.column("action").to_pylist() == [ens.classes[i] for i in want.argmax(axis=1)]
    np.testing.assert_array_equal(got.column("p_nhits_BUY").to_numpy().astype(np.float32), members["nhits"][:, 2])
    # Action and confidence as a service's predict() gives them, row for row.
    served = ens.predict(features_of(ens, table))
    assert got.column("action").to_pylist() == [p.action for p in served]
    np.testing.assert_array_equal(got.column("confidence").to_numpy().astype(np.float32),
                                  np.array([p.confidence for p in served], dtype=np.float32))


def test_a_rows_probabilities_do_not_depend_on_its_batch(ens, table):
    """At one intra-op thread (what score's workers and Ray's actors run) a row gets the same bits alone
    as in any batch: a backfill agrees exactly with one-row calls of a service that runs one thread."""
    x = features_of(ens, table)[:1100]
    whole = ens.predict_proba(x)
    for batch in (1, 7, 256, 1024):
        parts = np.concatenate([ens.predict_proba(x[i:i + batch]) for i in range(0, len(x), batch)])
        assert (parts.view(np.uint32) == whole.view(np.uint32)).all(), f"batch {batch} differs"


def test_keep_chooses_the_passthrough_columns(demo_artifacts, parquet_in, tmp_path):
    out = tmp_path / "o.parquet"
    assert cli("score", demo_artifacts, parquet_in, "-o", out, "--keep", "timestamp", "--workers", "1",
               "-q").exit_code == 0
    assert pq.read_schema(out).names == ["timestamp", "action", "confidence", "p_SELL", "p_HOLD", "p_BUY"]
    result = cli("score", demo_artifacts, parquet_in, "-o", tmp_path / "x.parquet", "--keep", "venue")
    assert result.exit_code == 1 and "venue" in result.output and not (tmp_path / "x.parquet").exists()


def with_bad_rows(table: pa.Table) -> pa.Table:
    """Row 5 (1-based) has a null macd (in Parquet the missing value, which the demo's torch members cannot
    take), row 9 an infinite rsi_14, row 12 text in atr_14 (as in a CSV)."""
    macd = table.column("macd").to_pylist()
    rsi = table.column("rsi_14").to_numpy().copy()
    atr = [repr(v) for v in table.column("atr_14").to_pylist()]
    macd[4], rsi[8], atr[11] = None, np.inf, "n/a"
    return (table.set_column(table.schema.get_field_index("macd"), "macd", pa.array(macd, pa.float64()))
            .set_column(table.schema.get_field_index("rsi_14"), "rsi_14", pa.array(rsi))
            .set_column(table.schema.get_field_index("atr_14"), "atr_14", pa.array(atr)))


def test_a_bad_row_fails_the_run_naming_file_row_and_column(demo_artifacts, table, tmp_path):
    source = tmp_path / "bad.parquet"
    pq.write_table(with_bad_rows(table), source)
    out = tmp_path / "o.parquet"
    result = cli("score", demo_artifacts, source, "-o", out, "--workers", "1")
    assert result.exit_code == 1
    assert (f"{source}: data row 5, feature 'macd': nan (a missing value) cannot be scored: member(s) 'nhits', "
            f"'patchtst' define no missing value") in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_on_error_skip_writes_refused_rows_to_rejects_with_their_reason(demo_artifacts, ens, table, tmp_path):
    source = tmp_path / "bad.parquet"
    pq.write_table(with_bad_rows(table), source)
    out = tmp_path / "o.parquet"
    result = cli("score", demo_artifacts, source, "-o", out, "--on-error", "skip", "--workers", "1", "--batch-rows",
                 "7")
    assert result.exit_code == 0, result.output
    rejects = pq.read_table(tmp_path / "o.rejects.parquet").to_pylist()
    assert [(r["row"], r["symbol"]) for r in rejects] == [(5, "SYM4"), (9, "SYM8"), (12, "SYM11")]
    assert [r["reason"] for r in rejects] == ["feature 'macd': nan (a missing value) cannot be scored: member(s) "
                                              "'nhits', 'patchtst' define no missing value; impute it before scoring "
                                              "(1 row(s) refused)",
                                              "column 'rsi_14': inf is not finite; impute it before scoring",
                                              "column 'atr_14': 'n/a' is not a number"]
    scored = pq.read_table(out)
    keep = np.setdiff1d(np.arange(len(table)), [4, 8, 11])
    assert scored.num_rows == len(table) - 3
    np.testing.assert_array_equal(scored.column("p_BUY").to_numpy(),
                                  ens.predict_proba(features_of(ens, table.take(keep)))[:, 2])


def _precious_output(parquet_in: Path, tmp_path: Path) -> Path:
    target = tmp_path / "o.parquet"
    target.write_bytes(b"precious")
    return target


# (the file -o names, given the input and a scratch folder), flags, exit code, what the refusal says
@pytest.mark.parametrize(("target_of", "flags", "code", "message"), [
    pytest.param(_precious_output, [], 1, "already exists; pass --force", id="out"),
    pytest.param(lambda parquet_in, tmp_path: parquet_in, ["--force"], 1, "is an input of this run", id="input"),
])
def test_refuses_to_overwrite_what_it_did_not_write(demo_artifacts, parquet_in, tmp_path, target_of, flags, code,
                                                    message):
    target = target_of(parquet_in, tmp_path)
    before = target.read_bytes()
    result = cli("score", demo_artifacts, parquet_in, "-o", target, "--workers", "1", *flags)
    assert result.exit_code == code and message in result.output
    assert target.read_bytes() == before


def test_force_replaces_an_existing_output(demo_artifacts, parquet_in, tmp_path):
    out = tmp_path / "o.parquet"
    out.write_bytes(b"old")
    assert cli("score", demo_artifacts, parquet_in, "-o", out, "--workers", "1", "--force", "-q").exit_code == 0
    assert pq.read_metadata(out).num_rows == 3000


def test_a_killed_run_leaves_no_output(demo_artifacts, ens, tmp_path):
    source = tmp_path / "big.parquet"
    pq.write_table(history(ens, 60_000), source, row_group_size=500)
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "convert.cli", "score", str(demo_artifacts), str(source), "-o",
                             str(out), "--workers", "1", "--batch-rows", "500", "-q"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # until it holds its (unnamed) output file
        links = []
        for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                pass
        if any(link.startswith(str(out.parent)) for link in links):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.5)  # well into writing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.parent.iterdir()) == []


def test_artifacts_sent_as_bytes_are_verified_before_any_row(demo_artifacts, ens, table):
    """What a Ray actor or worker process receives: the folder's files as bytes, checked like the folder."""
    files = read_files(demo_artifacts)
    verified = verify_files(files, "sent")
    manifest = verified.manifest
    assert manifest["feature_names"] == list(ens.feature_names) and set(verified.files) == set(manifest["files"])
    layout = backfill.Layout.for_input(manifest, table.column_names, None, False, "t")
    from runtime.batch.ray_engine import RayScorer

    got = RayScorer(files, layout, 1, "sent", "t")(table.slice(0, 50))
    np.testing.assert_array_equal(got.column("p_HOLD").to_numpy(),
                                  ens.predict_proba(features_of(ens, table.slice(0, 50)))[:, 1])
    tampered = dict(files)
    graph = manifest["ensemble"]["file"]
    tampered[graph] = files[graph][:-1] + bytes([files[graph][-1] ^ 1])
    with pytest.raises(ArtifactError, match=f"sent/{graph}: "):
        RayScorer(tampered, layout, 1, "sent", "t")
    with pytest.raises(ArtifactError, match="not listed"):
        verify_files({**files, "extra.onnx": b"x"}, "sent")


MEMORY_PROBE = """
import sys
from runtime.batch.backfill import score_file
score_file(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, batch_rows=1000)
print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] // 1024)
"""


@pytest.mark.slow
def test_memory_stays_flat_on_an_input_many_times_the_budget(demo_artifacts, ens, tmp_path):
    """Peak RSS scoring 36,000 rows (an 8 KiB passthrough payload each: 300 MB in memory) stays within a
    128 MiB budget of the peak scoring 1,000 rows: the file streams through, batch by batch. (Alone the growth
    is ~10 MiB; on a loaded host pyarrow's mimalloc pool was seen holding ~80 MiB of freed batches.)"""
    budget_mib = 128

    def write(n: int, path: Path) -> int:
        t = history(ens, n, seed=7)  # the demo's own market: every row inside the build's input domain
        payload = pa.array([os.urandom(4096).hex() for _ in range(n)])  # incompressible, 8 KiB a row
        pq.write_table(t.append_column("payload", payload), path, row_group_size=1000, compression="none")
        return t.nbytes + payload.nbytes

    def peak(source: Path) -> int:
        out = source.with_suffix(".scored.parquet")
        run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(demo_artifacts), str(source), str(out)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert pq.read_metadata(out).num_rows == pq.read_metadata(source).num_rows
        out.unlink()
        return int(run.stdout.split()[-1])

    write(1000, small := tmp_path / "small.parquet")
    big_bytes = write(36_000, big := tmp_path / "big.parquet")
    assert big_bytes > 2 * budget_mib * 2**20
    assert peak(big) - peak(small) < budget_mib, "memory grew with the input"


@pytest.mark.slow
def test_ray_engine_gives_the_local_engines_rows(demo_artifacts, table, tmp_path):
    """One local Ray (2 actors on this machine), the same file with a bad row: identical output and rejects."""
    pytest.importorskip("ray")
    source = tmp_path / "bad.parquet"
    pq.write_table(with_bad_rows(table), source, row_group_size=400)
    local, ray_out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    flags = ["--members", "--on-error", "skip", "--batch-rows", "300", "-q"]  # batches across row groups
    assert cli("score", demo_artifacts, source, "-o", local, "--workers", "1", *flags).exit_code == 0
    result = cli("score", demo_artifacts, source, "-o", ray_out, "--engine", "ray", "--workers", "2", *flags)
    assert result.exit_code == 0, result.output
    # bit for bit, as the README says: the same bytes, row groups included, however each engine batched
    assert ray_out.read_bytes() == local.read_bytes()
    assert (tmp_path / "ray.rejects.parquet").read_bytes() == (tmp_path / "local.rejects.parquet").read_bytes()


def test_import_runtime_pulls_in_neither_pyarrow_nor_ray():
    code = "import runtime, sys, json; print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                           cwd=REPO).stdout))
    assert not {"pyarrow", "ray", "pandas", "click"} & loaded


def test_demo_history_is_the_demo_market(demo_artifacts, tmp_path):
    """The history generator draws from the market the demo models were trained on, over symbols x minutes,
    inside the range the demo build's gate proved (`make backfill-demo` scores it whole, with no rejects)."""
    from benchmarks.backfill import market_parameters, write_history
    from convert.demo import DemoSpec, market_data

    spec = DemoSpec()
    loadings, centers, scales = market_parameters(spec)
    rng = np.random.default_rng(spec.seed)
    signal = rng.standard_normal(spec.n_rows)
    rng.uniform(-1.0, 1.0, spec.n_features)
    noise = rng.standard_normal((spec.n_rows, spec.n_features))
    x, _ = market_data(spec)
    np.testing.assert_array_equal(x, centers + scales * (signal[:, None] * loadings + 0.7 * noise))
    path = tmp_path / "h.parquet"
    assert write_history(path, symbols=3, minutes=500) == 1500
    t = pq.read_table(path)
    assert t.column_names == ["symbol", "timestamp", *spec.feature_names]
    assert t.column("symbol").to_pylist()[499:501] == ["SYM0000", "SYM0001"]
    got = np.column_stack([t.column(f).to_numpy() for f in spec.feature_names])
    # each feature on its own training scale and center (they span 1e-3 to 250): within a training std
    assert (np.abs(got.mean(axis=0) - x.mean(axis=0)) < x.std(axis=0)).all()
    assert ((got.std(axis=0) > 0.3 * x.std(axis=0)) & (got.std(axis=0) < 3 * x.std(axis=0))).all()
    demo = runtime.load(demo_artifacts)
    lo, hi = bounds(demo)
    assert demo.feature_names == tuple(spec.feature_names) and ((got >= lo) & (got <= hi)).all()
