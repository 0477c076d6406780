"""NaN in score, compare, evaluate and drift: held to the rule predict holds it to (docs/numerics.md), on a
real LightGBM member trained with NaNs and a logistic regression that defines no missing value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import runtime
from convert.cli import main
from tests.variants import by_id, cached_folder

FEATURES = [f"f{i}" for i in range(8)]


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _build(root: Path, variant: str, *extra: object) -> tuple[Path, Path]:
    models = cached_folder(by_id(variant), root)
    out = root / f"{variant}.art"
    result = cli("convert", models, "-o", out, "-q", *extra)
    assert result.exit_code == 0, result.output
    return models, out


@pytest.fixture(scope="module")
def lgbm(tmp_path_factory) -> tuple[Path, Path]:
    """LightGBM trained with NaNs alone in its build, with training bins (for drift)."""
    root = tmp_path_factory.mktemp("nan_lgbm")
    reference = root / "reference.csv"
    x = np.random.default_rng(1).standard_normal((400, 8))
    pcsv.write_csv(pa.table({f: x[:, j] for j, f in enumerate(FEATURES)}), reference)
    return _build(root, "lightgbm-nan_in_training-txt", "--reference-data", reference)


@pytest.fixture(scope="module")
def logreg(tmp_path_factory) -> Path:
    """A logistic regression: defines no missing value."""
    return _build(tmp_path_factory.mktemp("nan_logreg"), "sklearn-LogisticRegression-k4-pkl")[1]


@pytest.fixture(scope="module")
def nan_rows() -> np.ndarray:
    x = np.random.default_rng(7).standard_normal((40, 8))
    x[::2, 3] = np.nan
    x[1::5, 0] = np.nan
    x[9] = np.nan
    return x


def _want(models: Path, x: np.ndarray) -> np.ndarray:
    import lightgbm

    return lightgbm.Booster(model_file=str(models / "lightgbm.txt")).predict(x)


def _table(x: np.ndarray, **extra: list) -> pa.Table:
    return pa.table({**extra, **{f: x[:, j] for j, f in enumerate(FEATURES)}})


def _csv(path: Path, x: np.ndarray) -> Path:
    """NaN as pandas and numpy write it in a CSV: the text 'nan' / 'NaN'."""
    lines = [",".join(["symbol", *FEATURES])]
    lines += [",".join([str(i), *("NaN" if np.isnan(v) and i % 2 else repr(float(v)) for v in row)])
              for i, row in enumerate(x)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("source", "out"), [("in.csv", "o.csv"), ("in.parquet", "o.parquet"),
                                             ("in.csv", "o.parquet")])
def test_score_takes_nan_as_lightgbm(lgbm, nan_rows, tmp_path, source, out):
    models, artifacts = lgbm
    src = tmp_path / source
    if source.endswith(".csv"):
        _csv(src, nan_rows)
    else:
        pq.write_table(_table(nan_rows, id=list(range(len(nan_rows)))), src)
    result = cli("score", artifacts, src, "-o", tmp_path / out, "-q", "--workers", "1")
    assert result.exit_code == 0, result.output
    got = (pcsv.read_csv(tmp_path / out) if out.endswith(".csv") else pq.read_table(tmp_path / out))
    probs = np.column_stack([got.column(f"p_{c}").to_numpy() for c in ("SELL", "HOLD", "BUY")])
    assert got.num_rows == len(nan_rows)
    np.testing.assert_allclose(probs, _want(models, nan_rows), atol=1e-5, rtol=0)


def test_score_refuses_nan_naming_row_feature_member(logreg, nan_rows, tmp_path):
    src = _csv(tmp_path / "in.csv", nan_rows)
    result = cli("score", logreg, src, "-o", tmp_path / "o.csv", "--workers", "1")
    assert result.exit_code == 1
    assert (f"{src}: data row 1, feature 'f3': nan (a missing value) cannot be scored: member(s) 'sklearn' "
            f"define no missing value") in result.output
    assert not (tmp_path / "o.csv").exists()
    result = cli("score", logreg, src, "-o", tmp_path / "o.csv", "--workers", "1", "--on-error", "skip", "-q")
    assert result.exit_code == 0, result.output
    rejects = pcsv.read_csv(tmp_path / "o.rejects.csv").to_pylist()
    assert [r["row"] for r in rejects] == [i + 1 for i, row in enumerate(nan_rows) if np.isnan(row).any()]
    assert [r["reason"][:14] for r in rejects[:2]] == ["feature 'f3': ", "feature 'f0': "]
    assert rejects[1]["reason"].startswith("feature 'f0': nan (a missing value) cannot be scored: member(s) "
                                           "'sklearn'")


def _pandas_parquet(path: Path, x: np.ndarray) -> Path:
    """As a quant saves it: DataFrame.to_parquet, which writes each NaN as a null (Table.from_pandas)."""
    import pandas as pd

    pd.DataFrame(x, columns=FEATURES).assign(symbol=[f"S{i}" for i in range(len(x))]).to_parquet(path)
    assert pq.read_table(path).column("f3").null_count == int(np.isnan(x[:, 3]).sum()) > 0  # null, not NaN
    return path


def test_score_takes_a_null_in_parquet_as_the_missing_value_it_is(lgbm, nan_rows, tmp_path):
    models, artifacts = lgbm
    src = _pandas_parquet(tmp_path / "in.parquet", nan_rows)
    result = cli("score", artifacts, src, "-o", tmp_path / "o.parquet", "-q", "--workers", "1")
    assert result.exit_code == 0, result.output
    got = pq.read_table(tmp_path / "o.parquet")
    probs = np.column_stack([got.column(f"p_{c}").to_numpy() for c in ("SELL", "HOLD", "BUY")])
    assert got.column("symbol").to_pylist() == [f"S{i}" for i in range(len(nan_rows))]
    np.testing.assert_allclose(probs, _want(models, nan_rows), atol=1e-5, rtol=0)


def test_a_null_in_parquet_is_refused_where_nan_is_naming_the_members(logreg, nan_rows, tmp_path):
    src = _pandas_parquet(tmp_path / "in.parquet", nan_rows)
    result = cli("score", logreg, src, "-o", tmp_path / "o.csv", "--workers", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{src}: data row 1, feature 'f3': nan (a missing value) cannot be scored: member(s) 'sklearn' "
            f"define no missing value") in result.output
    assert not (tmp_path / "o.csv").exists()


def test_a_null_in_json_lines_stays_refused_as_a_key_a_line_may_lack(lgbm, nan_rows, tmp_path):
    """JSON lines: a null may be a key the line lacks (a producer's bug), so it is not taken as missing."""
    _, artifacts = lgbm
    src = tmp_path / "in.jsonl"
    lines = [{f: None if np.isnan(v) else float(v) for f, v in zip(FEATURES, row, strict=True)} for row in nan_rows]
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli("score", artifacts, src, "-o", tmp_path / "o.jsonl", "--workers", "1")
    assert result.exit_code == 1 and "data row 1, column 'f3': missing (null)" in result.output


def test_compare_takes_nan(lgbm, nan_rows, tmp_path):
    models, artifacts = lgbm
    result = cli("compare", artifacts, artifacts, "-i", _csv(tmp_path / "in.csv", nan_rows), "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == len(nan_rows) and report["flip_rate"] == 0.0
    want = _want(models, nan_rows)
    np.testing.assert_allclose(report["confidence"]["old"]["mean"], want.max(axis=1).mean(), atol=1e-5)
    shares = np.bincount(want.argmax(axis=1), minlength=3) / len(want)
    assert [report["share"][c]["old"] for c in ("SELL", "HOLD", "BUY")] == pytest.approx(shares.tolist())


def test_evaluate_takes_nan(lgbm, nan_rows, tmp_path):
    models, artifacts = lgbm
    labels = np.array(["SELL", "HOLD", "BUY"])[_want(models, nan_rows).argmax(axis=1)]
    src = tmp_path / "in.parquet"
    pq.write_table(_table(nan_rows, label=labels.tolist()), src)
    result = cli("evaluate", artifacts, "-i", src, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overall"]["accuracy"] == 1.0


@pytest.mark.parametrize("command", ["compare", "evaluate", "drift"])
def test_monitoring_reads_a_null_in_parquet_as_the_missing_value(lgbm, logreg, nan_rows, tmp_path, command):
    """pandas' to_parquet writes NaN as null: compare, evaluate and drift read it as score does, as NaN, held to
    the build's rule (taken by the LightGBM build, refused naming the member by the logistic regression)."""
    models, artifacts = lgbm
    labels = np.array(["SELL", "HOLD", "BUY"])[_want(models, nan_rows).argmax(axis=1)]
    src = _pandas_parquet(tmp_path / "in.parquet", nan_rows)
    pq.write_table(pq.read_table(src).append_column("label", pa.array(labels.tolist())), src)
    taken = cli(command, *((artifacts, artifacts) if command == "compare" else (artifacts,)), "-i", src, "--json")
    assert taken.exit_code == 0, taken.output
    report = json.loads(taken.stdout)
    if command == "compare":
        assert report["rows"] == len(nan_rows) and report["flip_rate"] == 0.0
    elif command == "evaluate":
        assert report["overall"]["accuracy"] == 1.0
    else:
        assert report["features"]["f3"]["missing"] == int(np.isnan(nan_rows[:, 3]).sum())
    refused = cli(command, *((logreg, logreg) if command == "compare" else (logreg,)), "-i", src, "-q")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "feature 'f3': nan (a missing value) cannot be scored: member(s) 'sklearn'" in refused.output


@pytest.mark.parametrize("command", ["compare", "evaluate", "drift"])
def test_monitoring_refuses_nan_naming_line_feature_member(logreg, nan_rows, tmp_path, command):
    src = tmp_path / "in.jsonl"
    rows = [{**dict(zip(FEATURES, map(float, r), strict=True)), "label": "BUY"} for r in nan_rows[:3]]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # Python's json writes NaN
    args = (logreg, logreg) if command == "compare" else (logreg,)
    result = cli(command, *args, "-i", src, "-q")
    assert result.exit_code == 1
    assert ("line 1: feature 'f3': nan (a missing value) cannot be scored: member(s) 'sklearn' define no missing "
            "value") in result.output, result.output


def test_drift_counts_missing_and_leaves_it_out(lgbm, tmp_path):
    _, artifacts = lgbm
    x = np.random.default_rng(3).standard_normal((300, 8)) + 0.3
    x[::3, 2] = np.nan
    result = cli("drift", artifacts, "-i", _csv(tmp_path / "in.csv", x), "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    present = ~np.isnan(x[:, 2])
    assert [report["features"][f]["missing"] for f in FEATURES] == [0, 0, 100, 0, 0, 0, 0, 0]
    # f2's figures are those of its 200 present values alone
    alone = runtime.load(artifacts).drift(x[present])["features"]["f2"]
    assert {**report["features"]["f2"], "missing": 0} == pytest.approx(alone)
    assert report["features"]["f0"] == pytest.approx(runtime.load(artifacts).drift(
        np.nan_to_num(x, nan=0.0))["features"]["f0"])


def test_drift_of_a_feature_with_no_value(lgbm):
    ens = runtime.load(lgbm[1])
    x = np.random.default_rng(4).standard_normal((50, 8))
    x[:, 5] = np.nan
    report = ens.drift(x)
    assert report["features"]["f5"]["status"] == "warn" and report["features"]["f5"]["missing"] == 50
    assert report["warn"] == ["f5"] and report["status"] == "warn"
    assert report["features"]["f5"]["psi"] is None and report["features"]["f5"]["out_of_range"] is None
    assert report["features"]["f0"]["psi"] is not None


def test_drift_refuses_nan_the_build_cannot_take(logreg):
    ens = runtime.load(logreg)
    x = np.zeros((3, 8))
    x[2, 6] = np.nan
    with pytest.raises(runtime.InputError, match=r"^row 2, feature 'f6': nan \(a missing value\) cannot be scored: "
                                                 r"member\(s\) 'sklearn'"):
        ens.drift(x)
    ens.drift(np.full((3, 8), 1e30))  # a value past the range is what drift measures, not refused


def test_drift_table_shows_missing_counts(lgbm, tmp_path):
    x = np.random.default_rng(8).standard_normal((30, 8))
    x[:7, 4] = np.nan
    result = cli("drift", lgbm[1], "-i", _csv(tmp_path / "in.csv", x))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("feature"))
    assert lines[head].split()[-1] == "missing"
    assert [line.split()[-1] for line in lines[head + 1:head + 9]] == ["0", "0", "0", "0", "7", "0", "0", "0"]


def test_compare_names_the_build_that_cannot_take_nan(lgbm, nan_rows, tmp_path):
    forest = _build(tmp_path, "sklearn-RandomForestClassifier-pkl")[1]
    result = cli("compare", lgbm[1], forest, "-i", _csv(tmp_path / "in.csv", nan_rows), "-q")
    assert result.exit_code == 1
    assert f"{forest}: line 2: feature 'f3': nan (a missing value) cannot be scored: member(s) 'sklearn'" in \
        result.output, result.output
