"""Members whose framework compares the service's float64 rows in double (LightGBM, HistGradientBoosting,
LogisticRegression) read float64 in the fused graph; XGBoost, random forests and CatBoost compare in float32
and keep reading float32 (docs/numerics.md). Each is held to its framework's own predict_proba on fresh
float64 rows with large-magnitude raw features (volumes near 1e8, epoch seconds)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from domain_rows import typical_rows

import runtime
from convert.cli import main
from convert.members import MemberSource, get_kind, input_dtype

NAMES = ["volume", "ret", "ts"]
FRESH = 20_000


def draw(rng: np.random.Generator, n: int, nan: bool = False) -> np.ndarray:
    """Integer volumes near 1e8 and epoch seconds near 1.7e9 (float32 steps of 8 and 128), and a return."""
    x = np.column_stack([rng.integers(90_000_000, 110_000_000, n).astype(np.float64), rng.standard_normal(n),
                         1.7e9 + rng.integers(0, 10_000_000, n).astype(np.float64)])
    if nan:
        x[rng.random(n) < 0.1, 1] = np.nan
    return x


def labels(x: np.ndarray, rng: np.random.Generator, n_classes: int) -> np.ndarray:
    score = (x[:, 0] - 1e8) / 5e6 + np.nan_to_num(x[:, 1]) + (x[:, 2] - 1.705e9) / 3e6 + rng.standard_normal(len(x))
    return (score > 0).astype(int) if n_classes == 2 else np.digitize(score, [-0.7, 0.7])


def fit(estimator: str, n_classes: int, x: np.ndarray, y: np.ndarray) -> Any:
    import catboost
    import lightgbm
    import xgboost
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    make = {"lightgbm": lambda: lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1,
                                                        random_state=0),
            "hgb": lambda: HistGradientBoostingClassifier(max_iter=20, max_leaf_nodes=15, random_state=0),
            "logistic": lambda: LogisticRegression(max_iter=500),
            "xgboost": lambda: xgboost.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1),
            "forest": lambda: RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0, n_jobs=1),
            "catboost": lambda: catboost.CatBoostClassifier(iterations=15, depth=3, random_seed=0, thread_count=1,
                                                            verbose=False, allow_writing_files=False)}
    if estimator != "logistic":
        return make[estimator]().fit(x, y)
    # lbfgs does not converge on raw 1e9 magnitudes: fit on centred rows, then move the intercept so the model
    # takes the raw ones (what a user gets by folding a centring step into the coefficients).
    centre = np.nanmean(x, axis=0)
    model = make[estimator]().fit(x - centre, y)
    model.intercept_ = model.intercept_ - model.coef_ @ centre
    return model


KIND = {"lightgbm": "lightgbm", "hgb": "sklearn", "logistic": "sklearn", "xgboost": "xgboost", "forest": "sklearn",
        "catboost": "catboost"}
CLASSES = {2: ["DOWN", "UP"], 3: ["SELL", "HOLD", "BUY"]}


Trained = tuple[Path, Any, Any]  # a models folder with one member "m", its model, its scaler or None


def folder_for(root: Path, estimator: str, n_classes: int, scaled: bool, nan: bool = False) -> Trained:
    """A models folder holding one member trained on the large-magnitude rows (through a StandardScaler when
    `scaled`)."""
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n_classes)
    x = draw(rng, 4000, nan)
    y = labels(x, rng, n_classes)
    scaler = StandardScaler().fit(x) if scaled else None
    model = fit(estimator, n_classes, scaler.transform(x) if scaler is not None else x, y)
    folder = root / f"{estimator}-{n_classes}-{'scaled' if scaled else 'raw'}{'-nan' if nan else ''}"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(pickle.dumps(model))
    if scaler is not None:
        (folder / "scaler.pkl").write_bytes(pickle.dumps(scaler))
    (folder / "ensemble.json").write_text(json.dumps({
        "feature_names": NAMES, "classes": CLASSES[n_classes],
        "members": {"m": {"kind": KIND[estimator], "file": "model.pkl", "scaler": "scaler.pkl" if scaled else None}}}))
    return folder, model, scaler


def convert(folder: Path, out: Path) -> Path:
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q", "--json"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Callable[..., Trained]:
    """Each model of the module trained once, on first use: trained(estimator, n_classes, scaled, nan=False)."""
    root, made = tmp_path_factory.mktemp("double"), {}

    def get(*key: Any) -> Trained:
        if key not in made:
            made[key] = folder_for(root, *key)
        return made[key]
    return get


@pytest.mark.parametrize(("estimator", "n_classes", "scaled", "reads"), [
    ("lightgbm", 2, False, "float64"), ("lightgbm", 3, False, "float64"),
    ("lightgbm", 2, True, "float64"), ("lightgbm", 3, True, "float64"),
    ("hgb", 2, False, "float64"), ("hgb", 3, False, "float64"), ("hgb", 2, True, "float64"),
    ("logistic", 2, False, "float64"), ("logistic", 3, False, "float64"), ("logistic", 2, True, "float64"),
    ("logistic", 3, True, "float64"),
    ("xgboost", 2, False, "float32"), ("xgboost", 3, False, "float32"), ("forest", 2, False, "float32"),
    ("catboost", 2, False, "float32"),
])
def test_a_member_scores_the_float64_rows_as_its_framework(trained, tmp_path, estimator, n_classes, scaled, reads):
    folder, model, scaler = trained(estimator, n_classes, scaled)
    served = runtime.load(convert(folder, tmp_path / "out"))
    rows = draw(np.random.default_rng(99), FRESH)
    got = served.member_probabilities(rows)["m"]
    want = model.predict_proba(scaler.transform(rows) if scaler is not None else rows)
    assert np.abs(got - want).max() <= 1e-5
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    assert input_dtype(loaded_member(folder)) == reads


@pytest.mark.parametrize(("estimator", "compares_in_double"), [
    ("lightgbm", True), ("hgb", True), ("logistic", True),
    ("xgboost", False), ("forest", False), ("catboost", False),
])
def test_which_frameworks_compare_the_float64_row_in_double(estimator, compares_in_double):
    """The claim each kind's `takes_float64` rests on, asked of the frameworks themselves: one integer volume
    feature near 1e8 (float32 step 8) whose label turns between integers a float32 cast merges. A framework that
    reads the row in double answers differently on the float64 rows than on the same rows cast to float32."""
    rng = np.random.default_rng(0)
    x = (1e8 + rng.integers(-64, 64, 4000)).astype(np.float64)[:, None]
    y = (x[:, 0] > 1e8 + 3).astype(int)
    model = fit(estimator, 2, x, y)
    probe = (1e8 + np.arange(-64, 64)).astype(np.float64)[:, None]
    cast = probe.astype(np.float32).astype(np.float64)
    assert len(np.unique(model.predict_proba(probe)[:, 1].round(6))) > 1, "the model must turn inside the probe"
    differs = not np.array_equal(model.predict_proba(probe), model.predict_proba(cast))
    assert differs == compares_in_double


def test_a_torch_member_and_a_lightgbm_read_one_scaler_in_float32_and_float64(tmp_path):
    """N-HiTS (float32) and LightGBM (float64) behind the same StandardScaler: the fused graph casts for one and
    not for the other, the load's check accepts both, and the LightGBM member is LightGBM on the float64 rows."""
    import onnx

    from convert.demo import DemoSpec, write_demo_models
    from convert.scaler import load_scaler

    spec = DemoSpec(n_features=6, n_rows=600, nhits_hidden=8, nhits_stacks=1, epochs=1, n_trees=8,
                    kinds=("nhits", "lightgbm"))
    models = write_demo_models(tmp_path / "models", spec)
    stamp, scaler = spec.stamp, f"scaler_{spec.stamp}.pkl"
    (models / "ensemble.json").write_text(json.dumps({"feature_names": spec.feature_names, "members": {
        "nhits": {"kind": "nhits", "file": f"nhits_{stamp}.pth", "scaler": scaler},
        "lightgbm": {"kind": "lightgbm", "file": f"lightgbm_{stamp}.pkl", "scaler": scaler}}}))
    out = convert(models, tmp_path / "out")
    graph = onnx.load(str(out / "ensemble.onnx")).graph
    inputs = {n.output[0]: n.input[0] for n in graph.node if n.output[0].endswith("/input")}
    assert inputs == {"nhits/input": "scaler0/float32", "lightgbm/input": "scaler0/float64"}
    served = runtime.load(out)
    rows = typical_rows(served, 2000, seed=5, spread=0.5)  # to 50 standard deviations: through every split
    scaled = load_scaler(next(models.glob("scaler_*.pkl"))).transform(rows)
    lightgbm_model = pickle.loads(next(models.glob("lightgbm_*.pkl")).read_bytes())
    got = served.member_probabilities(rows)
    assert np.abs(got["lightgbm"] - lightgbm_model.predict_proba(scaled)).max() <= 1e-5
    from convert.members.nhits import reference as nhits_reference
    want = nhits_reference(MemberSource("nhits", "nhits", next(models.glob("nhits_*.pth"))))(scaled)
    assert np.abs(got["nhits"] - want).max() <= 1e-5


@pytest.mark.parametrize("estimator", ["lightgbm", "hgb"])
def test_missing_values_take_the_trained_branch_in_double(trained, tmp_path, estimator):
    folder, model, _ = trained(estimator, 3, False, True)
    served = runtime.load(convert(folder, tmp_path / "out"))
    rows = draw(np.random.default_rng(7), 5000, nan=True)
    got = served.member_probabilities(rows)["m"]
    assert np.isnan(rows).any()
    assert np.abs(got - model.predict_proba(rows)).max() <= 1e-5


def loaded_member(folder: Path) -> Any:
    spec = json.loads((folder / "ensemble.json").read_text())["members"]["m"]
    return get_kind(spec["kind"]).load(MemberSource("m", spec["kind"], folder / spec["file"]))


@pytest.mark.parametrize("scaled", [False, True])
def test_threshold_rows_sit_on_and_one_float64_ulp_beside_each_double_split(trained, tmp_path, scaled):
    """The gate's rows for a member that reads float64: after the fused graph's own float64 scaling (read off
    ensemble.onnx), each sits exactly on a split value or one float64 ulp under or over it, not on float32
    neighbours; those left out are counted. Behind a scaler, the two raw values nearest each split too."""
    import onnx
    import onnxruntime as ort

    from convert.domain import input_domain
    from convert.parity import parity_rows
    from convert.scaler import load_scaler

    folder, _, _ = trained("lightgbm", 2, scaled)
    out = convert(folder, tmp_path / "out")
    member = loaded_member(folder)
    scalers = {folder / "scaler.pkl": load_scaler(folder / "scaler.pkl")} if scaled else {}
    if scaled:
        member.source = MemberSource("m", "lightgbm", member.source.file, scaler=folder / "scaler.pkl")
    rows = parity_rows([member], scalers, 3, input_domain([member], scalers, 3))
    graph = onnx.load(str(out / "ensemble.onnx"))
    tensor = "scaler0/float64" if scaled else "raw/float64"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.DOUBLE, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (seen,) = session.run([tensor], {"features": rows.raw})
    found = 0
    for feature, t in member.thresholds:
        for target in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)):
            found += bool((seen[:, feature] == target).any())
    assert found == rows.counts["threshold"] > 0
    assert found + rows.counts["threshold_unreachable"] + rows.counts["threshold_outside_domain"] \
        + rows.counts["threshold_not_finite"] == 3 * len(member.thresholds)
    if not scaled:  # raw features: every split value is a raw value
        assert rows.counts["threshold_unreachable"] == 0
    else:  # where the scaler lands on no split value: the raw value nearest it on each side, for every split
        mean, scale = scalers[folder / "scaler.pkl"].mean, scalers[folder / "scaler.pkl"].scale
        assert rows.counts["threshold_boundary"] == 2 * len(member.thresholds)
        for feature, t in member.thresholds:
            x = rows.raw[:, feature]
            assert ((seen[:, feature] <= t) & ((np.nextafter(x, np.inf) - mean[feature]) / scale[feature] > t)).any()
    # The float64 ulp beside a split is no float32 value: the rows are not the float32 ones.
    assert any(np.float32(np.nextafter(t, np.inf)) != np.nextafter(t, np.inf) for _, t in member.thresholds)


@pytest.mark.parametrize(("beside", "limit"), [(None, 1e308), ("xgboost", 1e38)])
def test_a_double_tree_takes_the_float64_range_unless_a_float32_member_reads_the_feature(trained, beside, limit):
    from convert.domain import input_domain

    members = [loaded_member(trained("lightgbm", 2, False)[0])]
    if beside is not None:
        members.append(loaded_member(trained(beside, 2, False)[0]))
    domain = input_domain(members, {}, 3)
    assert domain.lo.tolist() == [-limit] * 3 and domain.hi.tolist() == [limit] * 3


@pytest.mark.parametrize("split", [100_000_003.0, 1e308, -1e308])
def test_a_split_on_an_integer_volume_or_at_1e308_scores_as_lightgbm(tmp_path, split):
    """A LightGBM split value written as an integer volume (rows exactly on it and one unit either side, all
    one float32) or at the domain's edge +-1e308: the member answers as LightGBM on the float64 rows."""
    import lightgbm

    rng = np.random.default_rng(0)
    x = draw(rng, 3000)[:, :2]
    model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, n_jobs=1).fit(x, labels(
        np.column_stack([x, np.full(len(x), 1.705e9)]), rng, 2))
    lines = [line for line in model.booster_.model_to_string().splitlines() if not line.startswith("tree_sizes=")]
    first = next(i for i, line in enumerate(lines) if line.startswith("split_feature="))
    on_volume = lines[first].split("=")[1].split().index("0")
    values = lines[first + 2].split("=")[1].split()  # threshold= follows split_gain= in LightGBM's text
    assert lines[first + 2].startswith("threshold=")
    values[on_volume] = repr(split)
    lines[first + 2] = "threshold=" + " ".join(values)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.txt").write_text("\n".join(lines) + "\n")
    (folder / "ensemble.json").write_text(json.dumps({"feature_names": NAMES[:2], "classes": CLASSES[2],
                                                      "members": {"m": {"kind": "lightgbm", "file": "model.txt",
                                                                        "scaler": None}}}))
    served = runtime.load(convert(folder, tmp_path / "out"))
    booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
    volumes = [split, np.nextafter(split, -np.inf), np.nextafter(split, np.inf), split - 1, split + 1, 1e8, -split]
    rows = np.array([[v, 0.1] for v in volumes if abs(v) <= 1e308])
    want = booster.predict(rows)
    assert np.abs(served.member_probabilities(rows)["m"][:, 1] - want).max() <= 1e-5


@pytest.mark.parametrize(("recorded", "refused"), [(None, True), ("float32", True), ("float64", False)])
def test_verify_names_a_folder_built_before_its_member_read_float64(trained, recorded, refused):
    """`verify` of a folder whose LightGBM was built reading float32 (before this version): refused naming the
    member and both dtypes, not a parity failure blamed on the libraries."""
    from convert.verify import dtype_differences

    member = loaded_member(trained("lightgbm", 2, False)[0])
    manifest = {"members": {"m": {"kind": "lightgbm", **({"input_dtype": recorded} if recorded else {})}}}
    said = dtype_differences(manifest, [member])
    assert said == (["members.m.input_dtype: the artifacts feed it float32, this version float64 (as its framework "
                     "computes with the service's float64 rows)"] if refused else [])


@pytest.mark.parametrize("variant_id", ["lightgbm-subsampling-txt", "lightgbm-default-txt"])
def test_lightgbm_reads_float64_values_within_1e_35_as_zero_and_so_does_the_export(tmp_path, variant_id):
    """LightGBM's kZeroThreshold in double: float64 values a float32 cast would move (1e-36, a float64 ulp either
    side of +-1e-35, the smallest subnormal) go where LightGBM sends them."""
    import onnxruntime as ort

    from tests.variants import by_id, cached_folder

    folder = cached_folder(by_id(variant_id), tmp_path)
    spec = json.loads((folder / "ensemble.json").read_text())
    name, entry = next(iter(spec["members"].items()))
    loaded = get_kind(entry["kind"]).load(MemberSource(name, entry["kind"], folder / entry["file"]))
    assert any(abs(t) < 1e-30 for _, t in loaded.thresholds), "the model must split between the zero bins"
    tiny = float(np.float32(1e-35))
    values = np.array([0.0, 1e-36, -1e-36, tiny, -tiny, np.nextafter(tiny, 1), np.nextafter(tiny, 0),
                       np.nextafter(-tiny, -1), np.nextafter(-tiny, 0), 5e-324, -5e-324])
    x = np.random.default_rng(1).standard_normal((len(values) * 8 * 4, 8))
    for i in range(len(x)):
        x[i, (i // len(values)) % 8] = values[i % len(values)]
    session = ort.InferenceSession(loaded.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], loaded.reference(x), atol=1e-6)
