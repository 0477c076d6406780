"""The model-variant matrix (tests/variants.py): every case runs the real `convert` on a folder holding that
member alone. A case either converts (gate passed: within 1e-5, identical labels, at every batch size) or
exits 1 with a refusal that names the file and the option, no traceback, and no output folder. The
expectation per case is written by hand in the table, and the README's table is generated from it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convert.cli import main
from tests.variants import (
    CONVERTS,
    README_BEGIN,
    README_END,
    VARIANTS,
    Variant,
    cached_folder,
    markdown,
)

README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.fixture(scope="session")
def matrix_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix")


def test_the_matrix_is_wide_enough():
    assert len(VARIANTS) >= 30 and len({v.id for v in VARIANTS}) == len(VARIANTS)
    assert {v.framework for v in VARIANTS} >= {"xgboost", "lightgbm", "sklearn", "scaler", "nhits", "patchtst"}
    assert {v.expect != CONVERTS for v in VARIANTS} == {True, False}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_variant_converts_or_is_refused_by_name(variant: Variant, matrix_root, tmp_path):
    folder = cached_folder(variant, matrix_root)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "-q"])
    member_file = json.loads((folder / "ensemble.json").read_text())["members"]
    files = [str(folder / m["file"]) for m in member_file.values()]
    assert "Traceback" not in result.output
    if variant.expect == CONVERTS:
        assert result.exit_code == 0, result.output
        report = json.loads((out / "parity.json").read_text())
        assert report["passed"] and all(c["max_abs_diff"] <= 1e-5 and c["label_mismatches"] == 0
                                        for c in report["checks"])
        assert report["rows"]["threshold"] > 0 or variant.framework in ("nhits", "patchtst") \
            or variant.option == "LogisticRegression" or variant.option == "stumps"
    else:
        error, *words = variant.expect.split(" ", 1)
        assert result.exit_code == 1, result.output
        assert f"{error}: " in result.output and any(f in result.output for f in files)
        assert all(w in result.output for w in words), result.output
        assert not out.exists()


def test_sklearn_kind_admits_only_its_classifiers(tmp_path):
    """The allowlist grew by the classes the sklearn kind needs, not by scikit-learn as a whole."""
    from sklearn.svm import SVC

    from convert.errors import UnsafeFileError
    from convert.members import MemberSource, get_kind

    x = np.random.default_rng(0).standard_normal((40, 3))
    path = tmp_path / "svc.pkl"
    path.write_bytes(pickle.dumps(SVC().fit(x, np.arange(40) % 2)))
    with pytest.raises(UnsafeFileError, match="sklearn.svm._classes.SVC"):
        get_kind("sklearn").load(MemberSource("s", "sklearn", path))


def test_readme_table_is_the_matrix():
    """README.md's table is `python -m tests.variants --markdown`; edit the table in tests/variants.py."""
    text = README.read_text()
    assert README_BEGIN in text and README_END in text
    block = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert block == markdown(), "README.md's matrix table is stale: run `python -m tests.variants --markdown`"
