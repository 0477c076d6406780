"""The input domain: the range and the missing values a build proves parity on, recorded in the
manifest and held by the runtime. Real tiny models, trained once per module."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from convert.cli import main
from runtime import contract
from runtime.artifacts import ArtifactError
from runtime.errors import InputError
from tests.forge import rebound
from tests.variants import by_id, cached_folder

N_FEATURES = 12
# docs/numerics.md: members that compute are proven to the widest rung of 20, 1e2, ... 1e6 standard deviations of
# their scaler's mean at which their frameworks answer finitely and the export as they do, within the tolerance.
RUNGS = (20.0, 1e2, 1e3, 1e4, 1e5, 1e6)


def write_mixed(folder: Path) -> Path:
    """LightGBM on raw features trained with NaNs beside N-HiTS, PatchTST and XGBoost sharing
    a StandardScaler, 12 features. LightGBM's NaN-only splits put its split values past float32."""
    import lightgbm

    from convert.demo import DemoSpec, market_data, write_demo_models

    spec = DemoSpec(n_features=N_FEATURES, n_rows=800, nhits_hidden=8, nhits_stacks=1, patchtst_d_model=8,
                    patchtst_heads=2, patchtst_layers=1, patchtst_ff=16, epochs=1, n_trees=6, tree_format="native",
                    kinds=("nhits", "patchtst", "xgboost"))
    write_demo_models(folder, spec)
    x, y = market_data(spec)
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[(y == 0) & (rng.random(len(y)) < 0.9), 3] = np.nan  # a NaN in feature 3 says SELL, in 5 BUY
    x[(y == 2) & (rng.random(len(y)) < 0.9), 5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lightgbm.LGBMClassifier(n_estimators=10, num_leaves=7, min_child_samples=5, random_state=0,
                                        n_jobs=1, verbose=-1).fit(x, y)
    model.booster_.save_model(folder / "lgbm.txt")
    stamp, scaler = spec.stamp, f"scaler_{spec.stamp}.pkl"
    members = {"nhits": {"kind": "nhits", "file": f"nhits_{stamp}.pth", "scaler": scaler},
               "patchtst": {"kind": "patchtst", "file": f"patchtst_{stamp}.pth", "scaler": scaler},
               "xgboost": {"kind": "xgboost", "file": f"xgboost_{stamp}.json", "scaler": scaler},
               "raw": {"kind": "lightgbm", "file": "lgbm.txt", "scaler": None}}
    (folder / "ensemble.json").write_text(json.dumps({"feature_names": spec.feature_names, "members": members}))
    return folder


def convert(models: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["convert", str(models), "-o", str(out), "-q", "--json", *extra])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return write_mixed(tmp_path_factory.mktemp("mixed") / "models")


@pytest.fixture(scope="module")
def mixed_build(mixed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed_build") / "artifacts"
    result = convert(mixed, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def scaler(mixed):
    return pickle.loads(next(mixed.glob("scaler_*.pkl")).read_bytes())


@pytest.fixture(scope="module")
def lgbm_nan(tmp_path_factory) -> tuple[Path, Path]:
    """LightGBM trained with NaNs, alone in its build."""
    root = tmp_path_factory.mktemp("lgbm_nan")
    models = cached_folder(by_id("lightgbm-nan_in_training-txt"), root)
    result = convert(models, root / "artifacts")
    assert result.exit_code == 0, result.output
    return models, root / "artifacts"


def test_mixed_build_converts(mixed, mixed_build, scaler):
    splits = [float(v) for line in (mixed / "lgbm.txt").read_text().splitlines() if line.startswith("threshold=")
              for v in line.removeprefix("threshold=").split()]
    assert max(splits) > 3.4e38, "LightGBM must hold a split past float32"
    manifest = json.loads((mixed_build / "manifest.json").read_text())
    domain = manifest["domain"]
    report = json.loads((mixed_build / "parity.json").read_text())
    sds = report["domain"]["sds"]
    assert sds in RUNGS
    np.testing.assert_allclose(domain["lo"], scaler.mean_ - sds * scaler.scale_, rtol=1e-15)
    np.testing.assert_allclose(domain["hi"], scaler.mean_ + sds * scaler.scale_, rtol=1e-15)
    assert domain["nan"] == [False] * N_FEATURES
    assert domain["nan_refused_by"] == ["nhits", "patchtst"]  # xgboost and LightGBM define missing
    rungs = RUNGS.index(sds) + 1  # 20 to sds: each rung's edges, alone and all at once
    assert report["rows"]["domain_edges"] >= rungs * (2 * N_FEATURES + 2)
    assert report["rows"]["threshold_outside_domain"] > 0


def test_gate_rows_cover_the_domain(mixed, mixed_build):
    from convert.build import domain_of, load_plan
    from convert.discover import make_plan
    from convert.parity import parity_rows

    loaded = load_plan(make_plan(mixed), progress=lambda _: None)
    members = {m.source.name: (mixed_build / "members" / f"{m.source.name}.onnx").read_bytes() for m in loaded.members}
    domain = domain_of(loaded, None, members, (mixed_build / "ensemble.onnx").read_bytes())
    raw = parity_rows(loaded.members, loaded.scalers, N_FEATURES, domain).raw
    want = json.loads((mixed_build / "manifest.json").read_text())["domain"]
    assert ((raw >= want["lo"]) & (raw <= want["hi"])).all()
    for j in range(N_FEATURES):  # each edge, exactly, and the rows with every feature at an edge
        assert want["lo"][j] in raw[:, j] and want["hi"][j] in raw[:, j]
    assert (raw == want["lo"]).all(axis=1).any() and (raw == want["hi"]).all(axis=1).any()


@pytest.mark.parametrize("decision", [None, {"min_confidence": {"BUY": 0.6, "SELL": 0.6}, "fallback": "HOLD"}])
def test_failed_gate_writes_its_report(mixed, tmp_path, decision):
    """Recorded rows far outside training widen the domain to them; PatchTST overflows there (|diff| inf).
    The report is written, its non-finite figures as text, and convert exits 1 with no internal error; with a
    decision policy too."""
    import shutil

    if decision is not None:
        mixed = Path(shutil.copytree(mixed, tmp_path / "models"))
        spec = json.loads((mixed / "ensemble.json").read_text())
        (mixed / "ensemble.json").write_text(json.dumps({**spec, "decision": decision}))
    names = json.loads((mixed / "ensemble.json").read_text())["feature_names"]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(names) + "\n" + ",".join(["1e30"] * N_FEATURES) + "\n")
    out = tmp_path / "artifacts"
    result = convert(mixed, out, "--parity-data", str(rows))
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    report = json.loads((tmp_path / "artifacts.parity-failed.json").read_text())
    assert not report["passed"] and not out.exists()
    assert "inf" in {c["max_abs_diff"] for c in report["checks"]}


@pytest.mark.parametrize(("feature", "edge", "ulps", "expect"), [
    (0, "lo", 0, None),
    (0, "hi", 0, None),
    (5, "lo", -1, "feature 'bb_position'"),
    (11, "hi", 1, "feature 'volatility_24h'"),
    (11, "hi", 10**6, "outside ["),
])
def test_runtime_holds_the_range(mixed_build, feature, edge, ulps, expect):
    ens = runtime.load(mixed_build)
    domain = ens.manifest["domain"]
    x = np.tile(np.asarray(domain["lo"]) / 2 + np.asarray(domain["hi"]) / 2, (3, 1))
    value = domain[edge][feature]
    for _ in range(abs(ulps)):
        value = np.nextafter(value, np.inf if ulps > 0 else -np.inf)
    x[2, feature] = value
    if expect is None:
        assert np.isfinite(ens.predict_proba(x)).all()
        return
    with pytest.raises(InputError, match="row 2, ") as caught:
        ens.predict_proba(x)
    assert expect in str(caught.value) and caught.value.row == 2


@pytest.mark.parametrize(("value", "expect"), [
    (np.nan, "member(s) 'nhits', 'patchtst' define no missing value"),
    (np.inf, "is not finite"),
    (-np.inf, "is not finite"),
])
def test_runtime_refuses_what_members_cannot_take(mixed_build, value, expect):
    ens = runtime.load(mixed_build)
    row = dict(zip(ens.feature_names, ens.manifest["domain"]["lo"], strict=True))
    row["macd"] = value
    for call in (lambda: ens.predict([row, row]), lambda: ens.predict_proba([list(row.values())])):
        with pytest.raises(InputError, match="row 0, feature 'macd'") as caught:
            call()
        assert expect in str(caught.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(feature=st.integers(0, N_FEATURES - 1), high=st.booleans(), ulps=st.integers(-4, 4))
def test_edges_by_the_ulp(mixed_build, feature, high, ulps):
    ens = _loaded(mixed_build)
    domain = ens.manifest["domain"]
    edge = domain["hi" if high else "lo"][feature]
    value = edge
    for _ in range(abs(ulps)):
        value = float(np.nextafter(value, np.inf if ulps > 0 else -np.inf))
    x = np.array([domain["lo"]], dtype=np.float64)
    x[0, feature] = value
    inside = domain["lo"][feature] <= value <= domain["hi"][feature]
    if inside:
        assert np.isfinite(ens.predict_proba(x)).all()
    else:
        with pytest.raises(InputError, match=f"row 0, feature '{ens.feature_names[feature]}'"):
            ens.predict_proba(x)


_LOADED: dict[Path, runtime.Ensemble] = {}


def _loaded(folder: Path) -> runtime.Ensemble:
    if folder not in _LOADED:
        _LOADED[folder] = runtime.load(folder)
    return _LOADED[folder]


def test_nan_scored_as_lightgbm_scores_it(lgbm_nan):
    import lightgbm

    models, artifacts = lgbm_nan
    ens = runtime.load(artifacts)
    assert ens.manifest["domain"]["nan"] == [True] * 8 and ens.manifest["domain"]["nan_refused_by"] == []
    x = np.random.default_rng(5).standard_normal((60, 8))
    x[::2, 3] = np.nan
    x[1::3, 0] = np.nan
    x[5] = np.nan
    want = lightgbm.Booster(model_file=str(models / "lightgbm.txt")).predict(x)
    np.testing.assert_allclose(ens.predict_proba(x), want, atol=1e-5, rtol=0)
    rows = [dict(zip(ens.feature_names, map(float, r), strict=True)) for r in x]
    got = np.array([list(p.probabilities.values()) for p in ens.predict(rows)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="row 1, feature 'f2'.*not finite"):
        ens.predict_proba([[0.0] * 8, [0.0, 0.0, np.inf, np.nan, 0, 0, 0, 0]])


def test_nan_rows_in_the_gate(lgbm_nan):
    report = json.loads((lgbm_nan[1] / "parity.json").read_text())
    assert report["passed"] and report["rows"]["nan"] >= 8 * 8


def test_edited_domain_is_refused(mixed_build, tmp_path):
    folder = Path(tmp_path / "edited")
    import shutil
    shutil.copytree(mixed_build, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["domain"]["hi"][0] *= 10
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"domain\.hi\[0\]"):
        runtime.load(folder)


def _without_domain(manifest: dict) -> None:
    del manifest["domain"]


def test_build_without_domain_loads(lgbm_nan, tmp_path):
    """A folder built before the domain existed: no range is checked, and NaN is refused as before."""
    ens = runtime.load(rebound(lgbm_nan[1], tmp_path / "old", _without_domain))
    assert np.isfinite(ens.predict_proba([[1e30] * 8])).all()
    with pytest.raises(InputError, match="nan is not finite; impute it"):
        ens.predict_proba([[np.nan] * 8])


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("lo", "short", "field 'domain.lo' must hold one value per feature (12), got 11"),
    ("nan", "short", "field 'domain.nan' must hold one value per feature"),
    ("hi", [-1e300] * N_FEATURES, r"field 'domain.lo[0]' and domain.hi[0]"),
    ("lo", [float("-inf")] * N_FEATURES, "must be finite"),
    ("hi", [float("nan")] * N_FEATURES, "must be finite"),
    ("lo", ["0"] * N_FEATURES, "field 'domain.lo[0]' must be a number"),
    ("nan", [1] * N_FEATURES, "field 'domain.nan[0]' must be true or false"),
    ("nan_refused_by", ["nobody"], "field 'domain.nan_refused_by' names 'nobody', no member"),
    ("nan_refused_by", [], "must name the members"),
])
def test_domain_validated(mixed_build, field, value, expect):
    manifest = json.loads((mixed_build / "manifest.json").read_text())
    domain = manifest["domain"]
    domain[field] = domain[field][:-1] if value == "short" else value
    with pytest.raises(contract.FieldError) as caught:
        contract.parse_manifest(manifest)
    assert expect in str(caught.value)


def test_rebound_bad_domain_refused_at_load(mixed_build, tmp_path):
    def invert(manifest: dict) -> None:
        manifest["domain"]["lo"], manifest["domain"]["hi"] = manifest["domain"]["hi"], manifest["domain"]["lo"]

    with pytest.raises(ArtifactError, match=r"domain\.lo\[0\]"):
        runtime.load(rebound(mixed_build, tmp_path / "forged", invert))


def _predict(artifacts: Path, rows: Path):
    return CliRunner().invoke(main, ["predict", str(artifacts), "--input", str(rows), "--format", "csv"])


def test_predict_command_takes_nan(lgbm_nan, tmp_path):
    import lightgbm

    models, artifacts = lgbm_nan
    rows = tmp_path / "rows.csv"
    rows.write_text("f0,f1,f2,f3,f4,f5,f6,f7\n0.5,nan,0,nan,1,2,-1,0\nnan,nan,nan,nan,nan,nan,nan,nan\n")
    result = _predict(artifacts, rows)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    got = np.array([[float(v) for v in line.split(",")[3:5]] for line in lines[1:]])
    x = np.array([[0.5, np.nan, 0, np.nan, 1, 2, -1, 0], [np.nan] * 8])
    want = lightgbm.Booster(model_file=str(models / "lightgbm.txt")).predict(x)[:, :2]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_predict_command_names_the_member(mixed_build, tmp_path):
    ens = runtime.load(mixed_build)
    values = [repr(v) for v in ens.manifest["domain"]["lo"]]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(ens.feature_names) + "\n" + ",".join(values) + "\n"
                    + ",".join(["nan", *values[1:]]) + "\n")
    result = _predict(mixed_build, rows)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "line 3: feature 'rsi_14': nan (a missing value) cannot be scored: member(s) 'nhits', 'patchtst'" \
        in result.output


def test_verify_proves_the_recorded_domain_again(lgbm_nan):
    models, artifacts = lgbm_nan
    result = CliRunner().invoke(main, ["verify", str(artifacts), "--models", str(models), "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]


def test_verify_runs_the_manifests_domain(mixed, mixed_build, tmp_path):
    """A domain re-bound wider than the gate proved (a careless release edit): verify runs its edges, where
    PatchTST overflows, and fails, rather than proving a domain of its own."""
    def widen(manifest: dict) -> None:
        manifest["domain"]["hi"] = [1e30] * N_FEATURES

    forged = rebound(mixed_build, tmp_path / "forged", widen)
    result = CliRunner().invoke(main, ["verify", str(forged), "--models", str(mixed), "-q"])
    assert result.exit_code == 1 and "no longer passes the parity gate" in result.output, result.output


@pytest.fixture(scope="module")
def loud(mixed, tmp_path_factory) -> Path:
    """An N-HiTS whose weights are 1e9 times a fresh one's: its float32 overflows some thousands of standard
    deviations out, so the domain stops at a rung under the last."""
    import shutil

    import torch

    from convert.demo import _torch_classes

    folder = tmp_path_factory.mktemp("loud") / "models"
    folder.mkdir()
    scaler_file = next(mixed.glob("scaler_*.pkl"))
    shutil.copy(scaler_file, folder / "scaler.pkl")
    nhits, _ = _torch_classes()
    torch.manual_seed(0)
    net = nhits(N_FEATURES, 8, 1).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e9)
    torch.save(net.state_dict(), folder / "nhits.pth")
    names = json.loads((mixed / "ensemble.json").read_text())["feature_names"]
    (folder / "ensemble.json").write_text(json.dumps({"feature_names": names, "members": {
        "nhits": {"kind": "nhits", "file": "nhits.pth", "scaler": "scaler.pkl", "metadata": None}}}))
    out = folder.parent / "artifacts"
    result = convert(folder, out)
    assert result.exit_code == 0, result.output
    return out


def test_domain_stops_where_a_member_overflows(loud, scaler):
    import torch

    from convert.demo import _torch_classes

    sds = json.loads((loud / "parity.json").read_text())["domain"]["sds"]
    assert sds in (20.0, 1e2, 1e3, 1e4, 1e5)
    ens = runtime.load(loud)
    domain = ens.manifest["domain"]
    np.testing.assert_allclose(domain["hi"], scaler.mean_ + sds * scaler.scale_, rtol=1e-15)
    assert np.isfinite(ens.predict_proba([domain["hi"], domain["lo"]])).all()
    # The next rung is where torch itself answers NaN on some row: the rung was deserved.
    nhits, _ = _torch_classes()
    net = nhits(N_FEATURES, 8, 1).eval()
    net.load_state_dict(torch.load(loud.parent / "models" / "nhits.pth", weights_only=True))
    rng = np.random.default_rng(1)
    signs = np.vstack([np.ones(N_FEATURES), -np.ones(N_FEATURES), rng.choice([-1.0, 1.0], (200, N_FEATURES))])
    with torch.no_grad():
        logits = net(torch.tensor(signs * sds * 10, dtype=torch.float32))
    assert not torch.isfinite(torch.softmax(logits, -1)).all()
    beyond = np.array([domain["hi"]])
    beyond[0, 4] = np.nextafter(beyond[0, 4], np.inf)
    with pytest.raises(InputError, match="row 0, feature 'bb_width'"):
        ens.predict_proba(beyond)


def test_a_huge_scale_keeps_the_domain_finite(tmp_path):
    """A scaler of scale 1e300 in front of a tree: 1e38 of its units is past float64, so the range stops at
    float64's largest, and the build still passes with rows on those edges."""
    models = tmp_path / "models"
    cached_folder(by_id("xgboost-default-json"), tmp_path)  # trained once, then copied and edited
    import shutil
    shutil.copytree(tmp_path / "xgboost-default-json" / "models", models)
    (models / "scaler.json").write_text(json.dumps({"mean": [0.0] * 8, "scale": [1e300] * 8}))
    spec = json.loads((models / "ensemble.json").read_text())
    spec["members"]["xgboost"]["scaler"] = "scaler.json"
    (models / "ensemble.json").write_text(json.dumps(spec))
    result = convert(models, tmp_path / "artifacts")
    assert result.exit_code == 0, result.output
    ens = runtime.load(tmp_path / "artifacts")
    largest = float(np.finfo(np.float64).max)
    assert ens.manifest["domain"]["lo"] == [-largest] * 8 and ens.manifest["domain"]["hi"] == [largest] * 8
    assert np.isfinite(ens.predict_proba([[largest] * 8, [-largest] * 8])).all()
