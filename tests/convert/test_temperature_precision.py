"""A temperature on a binary member so confident that |margin| passes float32's range (~87): exact where
float32 allows (t = 3), and a gate failure that names the member, the temperature and the margin where it
does not (docs/numerics.md)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import expit

import runtime
from convert.cli import main

FEATURES = [f"f{i}" for i in range(4)]


@pytest.fixture(scope="module")
def confident():
    """A logistic regression on separable data, barely regularised: margins in the hundreds on wide rows."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] > 0).astype(int)
    x[:, 0] += np.where(y == 1, 1.0, -1.0)
    return LogisticRegression(C=1e6, max_iter=10000).fit(x, y)


def _folder(root: Path, model, t: float) -> Path:
    root.mkdir()
    (root / "m.pkl").write_bytes(pickle.dumps(model))
    (root / "ensemble.json").write_text(json.dumps({
        "feature_names": FEATURES, "classes": ["DOWN", "UP"],
        "members": {"m": {"kind": "sklearn", "file": "m.pkl", "scaler": None}},
        "decision": {"temperature": {"m": t}}}))
    return root


def test_t3_past_87_is_exact(confident, tmp_path):
    rows = np.random.default_rng(1).normal(size=(300, 4)) * 12
    m = confident.decision_function(rows)
    assert (np.abs(m) > 88.8).sum() > 20  # float32 exp overflows: 1 / (1 + exp(m)) is 0 there
    result = CliRunner().invoke(main, ["convert", str(_folder(tmp_path / "models", confident, 3)), "-o",
                                       str(tmp_path / "art"), "-q"])
    assert result.exit_code == 0, result.output
    got = runtime.load(tmp_path / "art").predict_proba(rows)
    assert np.abs(got - np.column_stack([expit(-m / 3), expit(m / 3)])).max() <= 1e-5


def test_a_temperature_float32_cannot_hold_names_the_cause(confident, tmp_path):
    out = tmp_path / "art"
    result = CliRunner().invoke(main, ["convert", str(_folder(tmp_path / "models", confident, 20)), "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    said = next(line for line in result.output.splitlines() if line.strip().startswith("member m: temperature 20"))
    assert "|margin|" in said and "float32's smallest normal number" in said and "lower it" in said
    margin = float(said.split("|margin| ")[2].split(",")[0])
    assert -np.log(np.finfo(np.float32).tiny) < margin < 745  # 87.3: past float32's smallest normal
    report = json.loads(out.with_name("art.parity-failed.json").read_text())
    assert said.strip() in report["failures"] and not out.exists()
