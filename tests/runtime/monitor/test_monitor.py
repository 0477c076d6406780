"""Releasing and watching a build: `compare` two demo builds trained with different seeds, `drift` of live
rows against the training statistics a build records, and `evaluate` against a hand computation.

Real builds (the demo ensemble converted by `convert`), real onnxruntime; expected figures come from
`predict` or from arithmetic written out here, never from the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import spec_with

import runtime
from convert.cli import main
from runtime.drift import parse_statistics
from runtime.monitor.compare import IncomparableError, class_order
from runtime.monitor.evaluate import evaluate_arrays, parse_window

CLASSES = ("SELL", "HOLD", "BUY")


def write_csv(path: Path, names: list[str], x: np.ndarray, extra: dict[str, list[str]] | None = None) -> Path:
    extra = extra or {}
    lines = [",".join([*names, *extra])]
    lines += [",".join([*(repr(float(v)) for v in row),
                        *(col[i] for col in extra.values())]) for i, row in enumerate(x)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def seed8(models_cache, demo_spec, tmp_path_factory):
    """A second build, trained with another seed, with its training rows given as --reference-data (so its
    statistics.json has decile bins); the demo build has only the scaler's mean and scale."""
    from convert.build import build
    from convert.demo import market_data

    spec = spec_with(demo_spec, seed=8)
    folder = tmp_path_factory.mktemp("seed8")
    train = write_csv(folder / "train.csv", spec.feature_names, market_data(spec)[0])
    build(models_cache(spec), folder / "artifacts", reference_data=train)
    return spec, folder / "artifacts"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------------------ compare

def test_compare_prints_the_matrix_json_and_html(demo_artifacts, demo_spec, seed8, tmp_path):
    from convert.demo import market_data

    x = market_data(demo_spec, held_out=300)[0]
    rows = write_csv(tmp_path / "rows.csv", demo_spec.feature_names, x)
    report = tmp_path / "compare.html"
    result = invoke("compare", demo_artifacts, seed8[1], "--data", rows, "--json", "--report", report)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # The transition counts, recounted from each build's own predict().
    old = [p.action for p in runtime.load(demo_artifacts).predict(x)]
    new = [p.action for p in runtime.load(seed8[1]).predict(x)]
    pairs = Counter(zip(old, new, strict=True))
    assert out["transitions"]["counts"] == [[pairs[(a, b)] for b in CLASSES] for a in CLASSES]
    assert out["flip_rate"] == pytest.approx(sum(a != b for a, b in zip(old, new, strict=True)) / 300)
    assert out["share"]["HOLD"]["shift"] == pytest.approx((new.count("HOLD") - old.count("HOLD")) / 300)
    assert set(out["members"]) == {"xgboost", "lightgbm", "nhits", "patchtst"}
    assert "old \\ new" in result.stderr and all(c in result.stderr for c in CLASSES)
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "rgba(" in page
    assert "<script" not in page and "src=" not in page  # self-contained: nothing fetched


@pytest.mark.parametrize(("gates", "against_self", "exit_code", "named"), [
    (("--max-flip-rate", "0", "--max-share-shift", "0"), True, 0, None),
    (("--max-flip-rate", "0.01"), False, 1, "--max-flip-rate"),
    (("--max-share-shift", "0.01"), False, 1, "--max-share-shift"),
])
def test_compare_gates(demo_artifacts, demo_spec, seed8, tmp_path, gates, against_self, exit_code, named):
    from convert.demo import market_data

    rows = write_csv(tmp_path / "rows.csv", demo_spec.feature_names, market_data(demo_spec, held_out=200)[0])
    new = demo_artifacts if against_self else seed8[1]
    result = invoke("compare", demo_artifacts, new, "--data", rows, "--json", *gates)
    assert result.exit_code == exit_code, result.output
    out = json.loads(result.stdout)
    assert out["gates"]["passed"] is (exit_code == 0)
    # The report's table always says "flip rate" and "share"; the refusal is the line that names the gate.
    failed = [line for line in result.stderr.splitlines() if "gate failed" in line]
    if named is None:
        assert failed == [] and out["gates"]["failures"] == [], result.stderr
    else:
        assert len(failed) == 1 and named in failed[0], result.stderr
        assert out["gates"]["failures"] and all(named in f for f in out["gates"]["failures"]), out["gates"]
        other = ({"--max-flip-rate", "--max-share-shift"} - {named}).pop()
        assert other not in failed[0], failed[0]  # only the gate that was set and passed


def test_compare_reads_parquet_and_names_a_missing_feature(demo_artifacts, demo_spec, seed8, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from convert.demo import market_data

    x = market_data(demo_spec, held_out=50)[0]
    columns = {n: x[:, j] for j, n in enumerate(demo_spec.feature_names)}
    pq.write_table(pa.table({"symbol": ["BTC"] * 50, **columns}), tmp_path / "rows.parquet")
    result = invoke("compare", demo_artifacts, seed8[1], "--data", tmp_path / "rows.parquet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 50
    del columns["macd"]
    pq.write_table(pa.table(columns), tmp_path / "short.parquet")
    result = invoke("compare", demo_artifacts, seed8[1], "--data", tmp_path / "short.parquet")
    assert result.exit_code == 1 and "macd" in result.stderr and "Traceback" not in result.output


def test_compare_lists_members_found_in_one_build_only(demo_artifacts, demo_models, demo_spec, tmp_path):
    from convert.build import build
    from convert.demo import market_data

    build(demo_models, tmp_path / "three", only=["xgboost", "lightgbm", "nhits"])
    rows = write_csv(tmp_path / "rows.csv", demo_spec.feature_names, market_data(demo_spec, held_out=100)[0])
    result = invoke("compare", demo_artifacts, tmp_path / "three", "--data", rows, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["members_only_old"], out["members_only_new"]) == (["patchtst"], [])
    assert set(out["members"]) == {"xgboost", "lightgbm", "nhits"}
    # Same models, same scaler: each shared member's probabilities do not move at all.
    assert all(m["max_abs_move"] == 0.0 for m in out["members"].values())
    assert "members only in old: patchtst" in result.stderr


@pytest.mark.slim  # runtime only: also runs in the plain `pip install .` venv
@pytest.mark.parametrize(("old", "new", "expect"), [
    (CLASSES, CLASSES, [0, 1, 2]),
    (CLASSES, ("BUY", "SELL", "HOLD"), [1, 2, 0]),    # same names, another order: aligned by name
    (CLASSES, ("DOWN", "UP"), None),                  # different class sets: refused
    (CLASSES, ("SELL", "HOLD", "BUY", "SHORT"), None),
])
def test_class_sets_are_aligned_by_name_or_refused(old, new, expect):
    if expect is None:
        with pytest.raises(IncomparableError, match="different class sets"):
            class_order(old, new, "old/", "new/")
    else:
        assert class_order(old, new, "old/", "new/") == expect


# -------------------------------------------------------------------------------------------------- drift

def shifted(x: np.ndarray, move: int, widen: int) -> np.ndarray:
    """Column `move` moved by 4 standard deviations, column `widen` spread 3 times as wide about its mean."""
    x = x.copy()
    x[:, move] += 4.0 * x[:, move].std()
    x[:, widen] = x[:, widen].mean() + 3.0 * (x[:, widen] - x[:, widen].mean())
    return x


@pytest.fixture(params=["bins", "scaler moments"])
def build_and_spec(request, demo_artifacts, demo_spec, seed8):
    """A build with decile bins (PSI decides) and one with only the scaler's mean and scale (z-scores decide)."""
    return seed8 if request.param == "bins" else (demo_spec, demo_artifacts)


def test_drift_is_quiet_on_rows_drawn_like_the_training_data(build_and_spec):
    from convert.demo import market_data

    spec, artifacts = build_and_spec
    report = runtime.load(artifacts).drift(market_data(spec, held_out=2000)[0])
    assert (report["status"], report["drift"], report["warn"]) == ("ok", [], [])


@pytest.mark.parametrize(("move", "widen"), [(1, 7), (12, 3)])
def test_drift_names_exactly_the_features_that_moved(build_and_spec, move, widen):
    from convert.demo import market_data

    spec, artifacts = build_and_spec
    report = runtime.load(artifacts).drift(shifted(market_data(spec, held_out=2000)[0], move, widen))
    names = spec.feature_names
    assert report["status"] == "drift"
    assert report["drift"] == [n for n in names if n in (names[move], names[widen])]
    assert report["warn"] == []


def test_drift_command_fails_past_fail_psi_and_names_the_feature(seed8, tmp_path):
    from convert.demo import market_data

    spec, artifacts = seed8
    x = market_data(spec, held_out=1000)[0]
    clean = write_csv(tmp_path / "clean.csv", spec.feature_names, x)
    moved = write_csv(tmp_path / "moved.csv", spec.feature_names, shifted(x, 2, 5))
    result = invoke("drift", artifacts, "--input", clean, "--fail-psi", "0.25", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "ok"
    result = invoke("drift", artifacts, "--input", moved, "--fail-psi", "0.25")
    assert result.exit_code == 1
    assert spec.feature_names[2] in result.stderr.split("--fail-psi")[-1]
    assert spec.feature_names[5] in result.stderr.split("--fail-psi")[-1]


def test_predict_flags_features_outside_the_training_range(seed8, tmp_path):
    """Issue 26: a row past the training maximum of one feature is scored (the build's domain holds it) and its
    JSON line names that feature; a row inside the training range carries no flag."""
    from convert.demo import market_data

    spec, artifacts = seed8
    x = market_data(spec, held_out=2)[0][:2]
    stats = json.loads((artifacts / "statistics.json").read_text())["features"]
    name = spec.feature_names[4]
    x[1, 4] = stats[name]["max"] + (stats[name]["max"] - stats[name]["min"])
    x[0] = np.clip(x[0], [stats[n]["min"] for n in spec.feature_names], [stats[n]["max"] for n in spec.feature_names])
    rows = write_csv(tmp_path / "rows.csv", spec.feature_names, x)
    result = invoke("predict", artifacts, "--input", rows)
    assert result.exit_code == 0, result.output
    inside, past = (json.loads(line) for line in result.stdout.splitlines())
    assert "outside_training_range" not in inside and past["outside_training_range"] == [name]
    ens = runtime.load(artifacts)
    assert ens.outside_training_range(x) == [[], [name]]


def test_drift_command_does_not_fail_a_small_clean_batch_on_noise(seed8, tmp_path):
    """Issue 26: 64 rows from the training distribution must not exit 1 under --fail-psi 0.25. Their raw PSI
    reaches it (the premise), inside what noise reaches at 64 rows: 'too few rows to tell', exit 3."""
    from convert.demo import market_data

    spec, artifacts = seed8
    x = market_data(spec, held_out=64)[0][:64]
    clean = write_csv(tmp_path / "small.csv", spec.feature_names, x)
    report = json.loads(invoke("drift", artifacts, "--input", clean, "--json", "-q").stdout)
    assert max(f["psi"] for f in report["features"].values()) >= 0.25
    result = invoke("drift", artifacts, "--input", clean, "--fail-psi", "0.25", "-q")
    assert result.exit_code == 3, result.output
    assert "64 rows are too few to tell" in result.stderr


def test_statistics_json_is_verified_and_holds_the_reference_bins(seed8, artifacts_copy, demo_models):
    spec, artifacts = seed8
    stats = json.loads((artifacts / "statistics.json").read_text())
    assert stats["reference"]["rows"] == spec.n_rows == sum(stats["features"]["macd"]["bins"]["counts"])
    assert len(stats["features"]["macd"]["bins"]["counts"]) == 10
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert "statistics.json" in manifest["files"]
    # The demo build has no reference rows: the shared scaler's moments, no bins.
    from convert.scaler import load_scaler

    scaler = load_scaler(next(demo_models.glob("scaler_*")))
    demo = json.loads((artifacts_copy / "statistics.json").read_text())
    assert scaler.mean is not None and demo["features"]["macd"]["mean"] == scaler.mean[1]
    assert "bins" not in demo["features"]["macd"]
    (artifacts_copy / "statistics.json").write_text(json.dumps(demo).replace('"mean"', '"meen"', 1))
    with pytest.raises(runtime.ArtifactError, match="statistics.json"):
        runtime.load(artifacts_copy)


@pytest.mark.slim  # runtime only: also runs in the plain `pip install .` venv
def test_a_build_without_statistics_is_refused_by_name():
    with pytest.raises(runtime.ArtifactError, match="--reference-data"):
        parse_statistics(None, ("a",), "old-build/")


def test_raw_feature_members_take_their_moments_from_the_reference_rows(tmp_path):
    from convert.statistics import statistics_bytes

    x = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 40.0], [6.0, 20.0]])
    rows = write_csv(tmp_path / "ref.csv", ["a", "b"], x, {"label": ["SELL"] * 4})
    first = statistics_bytes(["a", "b"], [None, None], {}, rows)
    assert first == statistics_bytes(["a", "b"], [None, None], {}, rows)  # deterministic bytes
    stats = json.loads(first)["features"]
    # a: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5; b: mean 20, variance (100+100+400+0)/4 = 150
    assert stats["a"]["mean"] == 3.0 and stats["a"]["scale"] == pytest.approx(3.5 ** 0.5)
    assert stats["b"]["mean"] == 20.0 and stats["b"]["scale"] == pytest.approx(150 ** 0.5)
    assert (stats["a"]["min"], stats["a"]["max"], stats["a"]["moments_from"]) == (1.0, 6.0, "reference rows")


# ----------------------------------------------------------------------------------------------- evaluate

T0 = 1772445600.0  # 2026-03-02T10:00:00Z


@pytest.mark.slim  # runtime only: also runs in the plain `pip install .` venv
def test_evaluate_matches_a_hand_computation_overall_and_per_window():
    S, H, B = 0, 1, 2
    labels = np.array([H, H, B, S, H, B])
    actions = np.array([H, B, B, S, H, H])
    probabilities = np.array([[0.08, 0.82, 0.10], [0.18, 0.20, 0.62], [0.03, 0.04, 0.93],
                              [0.74, 0.16, 0.10], [0.30, 0.66, 0.04], [0.10, 0.55, 0.35]])
    stamps = T0 + np.array([300, 1200, 3599, 3600, 5400, 6300])  # rows 0-2 in 10:00-11:00, rows 3-5 in 11:00-12:00
    result = evaluate_arrays(labels, actions, probabilities, CLASSES, stamps, 3600)
    o = result["overall"]
    assert o["accuracy"] == pytest.approx(4 / 6)
    assert o["confusion"] == [[1, 0, 0], [0, 2, 1], [0, 1, 1]]  # rows: label, columns: action
    assert o["precision"] == pytest.approx({"SELL": 1.0, "HOLD": 2 / 3, "BUY": 1 / 2})
    assert o["recall"] == pytest.approx({"SELL": 1.0, "HOLD": 2 / 3, "BUY": 1 / 2})
    assert o["action_mix"] == pytest.approx({"SELL": 1 / 6, "HOLD": 3 / 6, "BUY": 2 / 6})
    # ECE, bins of 0.1 on the top probability: .55 wrong | .62 wrong + .66 right | .74 right | .82 right | .93 right
    assert o["ece"] == pytest.approx((0.55 + 2 * abs(0.5 - 0.64) + 0.26 + 0.18 + 0.07) / 6)
    first, second = result["windows"]
    assert (first["start"], second["start"]) == ("2026-03-02T10:00:00+00:00", "2026-03-02T11:00:00+00:00")
    assert (first["rows"], first["accuracy"], second["accuracy"]) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert first["confusion"] == [[0, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert second["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert first["precision"] == {"SELL": None, "HOLD": 1.0, "BUY": 0.5}
    assert first["recall"] == {"SELL": None, "HOLD": 0.5, "BUY": 1.0}
    assert first["ece"] == pytest.approx((0.18 + 0.62 + 0.07) / 3)
    assert second["ece"] == pytest.approx((0.26 + 0.34 + 0.55) / 3)
    assert second["action_mix"] == pytest.approx({"SELL": 1 / 3, "HOLD": 2 / 3, "BUY": 0.0})


@pytest.mark.slim  # runtime only: also runs in the plain `pip install .` venv
@pytest.mark.parametrize(("text", "seconds"), [("1d", 86400), ("6h", 21600), ("15m", 900), ("15min", 900),
                                               ("30s", 30), ("1w", 604800), ("0d", None), ("1y", None), ("d", None)])
def test_windows(text, seconds):
    if seconds is None:
        with pytest.raises(runtime.InputError, match="window"):
            parse_window(text)
    else:
        assert parse_window(text) == seconds


def test_evaluate_command_on_a_labelled_file_per_day(demo_artifacts, demo_spec, tmp_path):
    from convert.demo import market_data

    x = market_data(demo_spec, held_out=8)[0]
    actions = [p.action for p in runtime.load(demo_artifacts).predict(x)]
    other = {"SELL": "HOLD", "HOLD": "BUY", "BUY": "SELL"}
    # Day one: every label is the action served (4/4 right); day two: only the first (1/4 right).
    labels = actions[:5] + [other[a] for a in actions[5:]]
    stamps = ["2026-03-01T09:00:00Z", "2026-03-01 13:30:00", "2026-03-01T23:59:59+00:00", "2026-03-01T00:00:00",
              "2026-03-02T08:00:00Z", "2026-03-02T09:00:00Z", "2026-03-02T10:00:00Z", "2026-03-02T11:00:00Z"]
    data = write_csv(tmp_path / "labelled.csv", demo_spec.feature_names, x, {"label": labels, "timestamp": stamps})
    report = tmp_path / "evaluate.html"
    result = invoke("evaluate", demo_artifacts, "--data", data, "--window", "1d", "--json", "--report", report)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["overall"]["accuracy"] == pytest.approx(5 / 8)
    assert [(w["start"][:10], w["rows"], w["accuracy"]) for w in out["windows"]] == [
        ("2026-03-01", 4, 1.0), ("2026-03-02", 4, 0.25)]
    pairs = Counter(zip(labels, actions, strict=True))
    assert out["overall"]["confusion"] == [[pairs[(a, b)] for b in CLASSES] for a in CLASSES]
    assert "<svg" in report.read_text() and "accuracy" in result.stderr


def test_evaluate_refuses_unlabelled_rows_by_line(demo_artifacts, demo_spec, tmp_path):
    from convert.demo import market_data

    x = market_data(demo_spec, held_out=3)[0]
    data = write_csv(tmp_path / "bad.csv", demo_spec.feature_names, x, {"label": ["HOLD", "MAYBE", "BUY"]})
    result = invoke("evaluate", demo_artifacts, "--data", data)
    assert result.exit_code == 1 and "line(s) [3]" in result.stderr and "label" in result.stderr


@pytest.mark.slim  # runtime only: also runs in the plain `pip install .` venv
def test_the_monitoring_modules_import_nothing_heavy():
    code = ("import json, sys, runtime, runtime.monitor.compare, runtime.monitor.evaluate, runtime.monitor.report, "
            "runtime.monitor.drift; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    heavy = {"torch", "sklearn", "onnx", "click", "pandas", "pyarrow", "ray", "xgboost", "lightgbm", "matplotlib"}
    assert not heavy & loaded, heavy & loaded
