"""No traceback from `convert` for a model problem: what a framework raises while reading, exporting or
predicting a member becomes a FrameworkError naming the member, the file and the step; `--debug` shows the
traceback; a bug of our own still says so, with its traceback."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import main
from convert.errors import FrameworkError, member_step
from tests.variants import by_id, cached_folder


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def broken_stacker_folder(tmp_path_factory, tmp_path) -> Path:
    """A real xgboost member and a LogisticRegression stacker whose coefficients lost a column: scikit-learn
    raises inside predict_proba when the gate asks it for the reference."""
    import shutil

    from sklearn.linear_model import LogisticRegression

    folder = Path(shutil.copytree(cached_folder(by_id("xgboost-default-json"), tmp_path_factory.mktemp("fw")),
                                  tmp_path / "models"))
    rng = np.random.default_rng(0)
    stacker = LogisticRegression().fit(rng.random((60, 3)), rng.integers(0, 3, 60))
    stacker.coef_ = stacker.coef_[:, :2]
    (folder / "stacker.pkl").write_bytes(pickle.dumps(stacker))
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["combine"] = {"method": "stacking", "file": "stacker.pkl"}
    (folder / "ensemble.json").write_text(json.dumps(spec))
    return folder


def test_framework_exception_is_refused_by_member_file_and_step(broken_stacker_folder, tmp_path):
    result = invoke("convert", broken_stacker_folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1, result.output
    assert "FrameworkError: member stacker" in result.output and "stacker.pkl" in result.output
    assert "sklearn raised while predicting with scikit-learn: ValueError" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_debug_shows_the_frameworks_traceback(broken_stacker_folder, tmp_path):
    result = invoke("--debug", "convert", broken_stacker_folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert "Traceback" in result.output and "sklearn" in result.output and "FrameworkError" in result.output


def test_member_step_names_a_real_framework_error_and_lets_our_own_bugs_through():
    from sklearn.preprocessing import StandardScaler

    with (pytest.raises(FrameworkError, match=r"member m \(f.pkl\): sklearn raised while scaling: NotFittedError"),
          member_step("m", "f.pkl", "scaling")):
        StandardScaler().transform(np.zeros((1, 2)))
    with pytest.raises(KeyError), member_step("m", "f.pkl", "scaling"):  # never entered a framework: our bug
        {}["missing"]


def test_an_internal_bug_says_so_with_its_traceback(monkeypatch, tmp_path_factory, tmp_path):
    import convert.build

    def bug(*_: object) -> None:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(convert.build, "check_widths", bug)
    folder = cached_folder(by_id("xgboost-default-json"), tmp_path_factory.mktemp("bug"))
    result = invoke("convert", folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert "Traceback" in result.output and "internal error: this is a bug in ensemble-onnx" in result.output
