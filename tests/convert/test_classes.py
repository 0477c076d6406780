"""Any class set of K >= 2: binary members as two columns, five classes, and the decision policy's fallback
(including a minimum on the fallback class itself), through the real convert and the runtime."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import main
from convert.decision import Decision, parse_decision
from convert.errors import MetadataError
from tests.variants import CLASS_SETS, FEATURES, by_id, cached_folder, training_data

FIVE = CLASS_SETS[5]  # STRONG_SELL, SELL, HOLD, BUY, STRONG_BUY


# ------------------------------------------------------------------------ the policy, as a specification

P = np.array([[0.10, 0.50, 0.40],   # HOLD 0.50 on top
              [0.05, 0.70, 0.25],   # HOLD 0.70 on top
              [0.35, 0.30, 0.35],   # a tie between SELL and BUY: the first wins, as argmax
              [0.20, 0.25, 0.55],   # BUY 0.55
              [0.45, 0.40, 0.15]])  # SELL 0.45


@pytest.mark.parametrize(("min_confidence", "labels"), [
    ({}, ["HOLD", "HOLD", "SELL", "BUY", "SELL"]),
    ({"BUY": 0.6, "SELL": 0.6}, ["HOLD", "HOLD", "HOLD", "HOLD", "HOLD"]),
    ({"HOLD": 0.6}, ["BUY", "HOLD", "SELL", "BUY", "SELL"]),             # HOLD under 0.6 -> best other class
    ({"HOLD": 0.6, "BUY": 0.45}, ["HOLD", "HOLD", "SELL", "BUY", "SELL"]),  # ... which must meet its own minimum
    ({"HOLD": 0.6, "SELL": 0.5}, ["BUY", "HOLD", "HOLD", "BUY", "HOLD"]),
])
def test_decision_policy_table(min_confidence, labels):
    classes = ["SELL", "HOLD", "BUY"]
    label, confidence = parse_decision({"min_confidence": min_confidence}, [], classes, "e.json").choose(P, classes)
    assert [classes[i] for i in label] == labels
    assert np.array_equal(confidence, P[np.arange(len(P)), label])


@pytest.mark.parametrize(("decision", "classes", "message"), [
    ({"min_confidence": {"UP": 0.6}}, ["DOWN", "UP"], "needs decision.fallback"),
    ({"fallback": "HOLD"}, ["DOWN", "UP"], "must name one of the classes"),
    ({"min_confidence": {"STRONG": 0.6}}, FIVE, "not a class"),
    ({"min_confidence": {"HOLD": 1.5}}, FIVE, "at most 1.0"),
])
def test_decision_policy_refusals_name_the_field(decision, classes, message):
    with pytest.raises(MetadataError, match=message):
        parse_decision(decision, [], classes, "e.json")


def test_default_fallback_is_hold_when_the_class_set_has_it():
    assert parse_decision({}, [], FIVE, "e.json").fallback == "HOLD"
    assert parse_decision({}, [], ["DOWN", "UP"], "e.json").fallback is None
    assert parse_decision({"fallback": "DOWN", "min_confidence": {"UP": 0.7}}, [], ["DOWN", "UP"],
                          "e.json") == Decision({}, {"UP": 0.7}, fallback="DOWN")


# ------------------------------------------------------------------------ whole builds for K = 2 and K = 5

def ensemble_folder(root: Path, tmp: Path, variant_ids: list[str], classes: list[str], **spec_extra) -> Path:
    """Members of several cached variant folders (each trained on the same rows) in one models folder."""
    folder = tmp / "models"
    folder.mkdir()
    members = {}
    for variant_id in variant_ids:
        source = cached_folder(by_id(variant_id), root)
        for path in source.iterdir():
            if path.name != "ensemble.json":
                shutil.copy(path, folder / path.name)
        for name, entry in json.loads((source / "ensemble.json").read_text())["members"].items():
            members[name] = entry
    (folder / "ensemble.json").write_text(json.dumps(
        {"feature_names": FEATURES, "classes": classes, "members": members, **spec_extra}))
    return folder


def convert(folder: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q", "--json", *extra])


def rows() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((400, len(FEATURES)))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classes")


FIVE_MEMBERS = ["xgboost-5_classes-k5-ubj", "lightgbm-5_classes-k5-txt", "patchtst-5_classes-k5-pth"]
TWO_MEMBERS = ["xgboost-binary-k2-pkl", "lightgbm-binary-k2-txt", "nhits-binary-k2-pth"]


@pytest.mark.parametrize(("variant_ids", "classes", "decision"), [
    (FIVE_MEMBERS, FIVE, {"min_confidence": {"HOLD": 0.6, "STRONG_BUY": 0.3}, "temperature": {"patchtst": 1.7}}),
    (TWO_MEMBERS, CLASS_SETS[2], {"fallback": "DOWN", "min_confidence": {"UP": 0.55}, "temperature": {"xgboost": 0.8}}),
])
def test_any_class_set_converts_and_serves_the_policy(root, tmp_path, variant_ids, classes, decision):
    import runtime

    folder = ensemble_folder(root, tmp_path, variant_ids, classes, decision=decision)
    result = convert(folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["classes"] == classes and manifest["decision"]["fallback"] == decision.get("fallback", "HOLD")
    ens = runtime.load(tmp_path / "out")
    probs = ens.predict_proba(rows())
    assert probs.shape == (400, len(classes)) and ens.classes == tuple(classes)
    # The policy, restated here from the README (not from decision.py): float32 comparisons.
    fallback = classes.index(manifest["decision"]["fallback"])
    minimum = {classes.index(c): np.float32(m) for c, m in decision["min_confidence"].items()}
    p32 = probs.astype(np.float32)
    want = []
    for p in p32:
        top = int(p.argmax())
        if top == fallback and p[top] < minimum.get(fallback, 0):
            top = int(np.where(np.arange(len(p)) == fallback, -np.inf, p).argmax())
        if top != fallback and p[top] < minimum.get(top, 0):
            top = fallback
        want.append(classes[top])
    actions = [p.action for p in ens.predict(rows())]
    assert actions == want
    assert set(want) - {classes[fallback]}, "some rows must act"
    assert any(a != classes[int(p.argmax())] for a, p in zip(actions, probs, strict=True)), \
        "the policy must change some labels"


@pytest.mark.parametrize(("variant_ids", "classes"), [(FIVE_MEMBERS[:2], FIVE), (TWO_MEMBERS[:2], CLASS_SETS[2])])
def test_stacking_and_calibration_for_any_k(root, tmp_path, variant_ids, classes):
    from sklearn.linear_model import LogisticRegression

    k = len(classes)
    folder = ensemble_folder(root, tmp_path, variant_ids, classes,
                             combine={"method": "stacking", "file": "stacker.pkl"})
    rng = np.random.default_rng(0)
    stacker = LogisticRegression(max_iter=500).fit(rng.random((300, 2 * k)), rng.integers(0, k, 300))
    (folder / "stacker.pkl").write_bytes(pickle.dumps(stacker))
    x, y = training_data(by_id(variant_ids[0]))
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(",".join(FEATURES) + ",label\n" + "".join(
        ",".join(map(str, row.tolist())) + f",{classes[c]}\n" for row, c in zip(x[:200], y[:200], strict=True)))
    result = convert(folder, tmp_path / "out", "--calibrate", str(labelled))
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["combine"]["method"] == "stacking" and len(manifest["decision"]["temperature"]) == 2
    assert manifest["parity"]["passed"] and manifest["classes"] == classes
