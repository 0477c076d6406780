"""A `torch` member's training code in the manifest: each file the build imported or could import (path,
sha256), sorted; shown by inspect, checked by verify, validated by the runtime (docs/artifacts.md)."""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import runtime
from convert.cli import main
from convert.manifest import file_sha256
from runtime.artifacts import ArtifactError
from tests.forge import rebound

FEATURES = [f"f{i}" for i in range(4)]
MODELS_PY = '''
import torch
import torch.nn as nn
from trading.helpers import scale


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(scale(x))
'''
HELPERS_PY = "def scale(x):\n    return x * 0.5\n"


def write_models(folder: Path, helpers: str = HELPERS_PY) -> Path:
    """A models folder whose code is src/trading (models.py imports helpers.py), an unused module, and a data
    file that is no code; a Linear member trained a few steps."""
    import torch

    package = folder / "src" / "trading"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODELS_PY)
    (package / "helpers.py").write_text(helpers)
    (folder / "src" / "tools").mkdir()
    (folder / "src" / "tools" / "unused.py").write_text("X = 1\n")
    (folder / "src" / "weights.bin").write_bytes(b"\0" * 1000)
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("fc", torch.nn.Linear(4, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x * 0.5), y).backward()
        opt.step()
    torch.save(model.state_dict(), folder / "tiny.pth")
    (folder / "ensemble.json").write_text(json.dumps({
        "feature_names": FEATURES, "classes": ["SELL", "HOLD", "BUY"],
        "members": {"tiny": {"kind": "torch", "module": "trading.models:Tiny", "code": "src", "file": "tiny.pth",
                             "scaler": None}}}))
    return folder


def convert(models: Path, out: Path):
    return CliRunner().invoke(main, ["convert", str(models), "-o", str(out), "-q"])


def expected(models: Path, *files: str) -> list[dict[str, str]]:
    return [{"file": f, "sha256": hashlib.sha256((models / f).read_bytes()).hexdigest()} for f in sorted(files)]


CODE = ("src/tools/unused.py", "src/trading/__init__.py", "src/trading/helpers.py", "src/trading/models.py")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("code_record")
    models = write_models(root / "models")
    result = convert(models, root / "art")
    assert result.exit_code == 0, result.output
    return models, root / "art"


def test_manifest_records_the_code(built):
    models, artifacts = built
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["members"]["tiny"]["code"] == expected(models, *CODE)
    assert not list(models.rglob("__pycache__"))  # the build wrote nothing into the models folder


def test_inspect_shows_the_code(built):
    result = CliRunner().invoke(main, ["inspect", str(built[1]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["members"]["tiny"]["code"] == expected(built[0], *CODE)
    text = CliRunner().invoke(main, ["inspect", str(built[1])]).output
    assert "src/trading/helpers.py" in text


def test_verify_refuses_changed_code(built, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(built[0], models)
    assert CliRunner().invoke(main, ["verify", str(built[1]), "--models", str(models), "-q"]).exit_code == 0
    (models / "src" / "trading" / "helpers.py").write_text(HELPERS_PY.replace("0.5", "0.25"))
    result = CliRunner().invoke(main, ["verify", str(built[1]), "--models", str(models), "-q"])
    assert result.exit_code == 1
    assert f"{models / 'src/trading/helpers.py'}: sha256 differs" in result.output
    assert "members.tiny.code" in result.output


def test_the_same_folder_records_the_same_bytes(built, tmp_path):
    assert convert(built[0], tmp_path / "again").exit_code == 0
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (built[1] / "manifest.json").read_bytes()


def test_an_older_build_without_code_loads(built, tmp_path):
    def drop(manifest: dict) -> None:
        del manifest["members"]["tiny"]["code"]

    ens = runtime.load(rebound(built[1], tmp_path / "old", drop))
    assert "code" not in ens.describe()["members"]["tiny"]
    assert ens.predict_proba([[0.0] * 4]).shape == (1, 3)


GOOD = "a" * 64
UNSORTED = "field 'members.tiny.code' must be sorted by file, each file once"


@pytest.mark.parametrize(("code", "expect"), [
    ([], "field 'members.tiny.code' must list the training code's files"),
    ("src/a.py", "field 'members.tiny.code' must be a list"),
    ([{"file": "../outside.py", "sha256": GOOD}], "field 'members.tiny.code[0].file' must be a relative path"),
    ([{"file": "/etc/passwd", "sha256": GOOD}], "field 'members.tiny.code[0].file' must be a relative path"),
    ([{"file": "src//a.py", "sha256": GOOD}], "field 'members.tiny.code[0].file' must be a relative path"),
    ([{"file": "src\\a.py", "sha256": GOOD}], "field 'members.tiny.code[0].file' must be a relative path"),
    ([{"file": "a.py", "sha256": "XYZ"}], "field 'members.tiny.code[0].sha256' must be 64 lowercase hex digits"),
    ([{"file": "a.py", "sha256": GOOD.upper()}], "field 'members.tiny.code[0].sha256' must be 64 lowercase hex digits"),
    ([{"file": "a.py"}], "field 'members.tiny.code[0].sha256' is missing"),
    ([{"file": 3, "sha256": GOOD}], "field 'members.tiny.code[0].file' must be a string"),
    ([{"file": "b.py", "sha256": GOOD}, {"file": "a.py", "sha256": GOOD}], UNSORTED),
    ([{"file": "a.py", "sha256": GOOD}, {"file": "a.py", "sha256": GOOD}], UNSORTED),
])
def test_a_malformed_code_record_is_refused(built, tmp_path, code, expect):
    def edit(manifest: dict) -> None:
        manifest["members"]["tiny"]["code"] = code

    with pytest.raises(ArtifactError) as err:
        runtime.load(rebound(built[1], tmp_path / "bad", edit))
    assert expect in str(err.value)


def _refused(models: Path, out: Path, *names: str) -> str:
    result = convert(models, out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for name in names:
        assert name in result.output, result.output
    assert not out.exists()
    return result.output


def test_a_code_file_linking_outside_is_refused(tmp_path):
    models = write_models(tmp_path / "models")
    (tmp_path / "elsewhere.py").write_text("Y = 2\n")
    (models / "src" / "tools" / "linked.py").symlink_to(tmp_path / "elsewhere.py")
    _refused(models, tmp_path / "art", "src/tools/linked.py", "outside", str(models))


def test_a_module_imported_through_a_linked_folder_outside_is_refused(tmp_path):
    models = write_models(tmp_path / "models", helpers="from extra.more import scale\n")
    outside = tmp_path / "outside_pkg"
    outside.mkdir()
    (outside / "__init__.py").write_text("")
    (outside / "more.py").write_text(HELPERS_PY)
    (models / "src" / "extra").symlink_to(outside)
    _refused(models, tmp_path / "art", "src/extra", "outside")


def test_a_link_to_nothing_is_refused(tmp_path):
    models = write_models(tmp_path / "models")
    (models / "src" / "tools" / "gone.py").symlink_to(tmp_path / "nothing.py")
    _refused(models, tmp_path / "art", "gone.py")


def test_a_module_imported_as_pyc_alone_is_recorded(tmp_path):
    models = write_models(tmp_path / "models")
    helpers = models / "src" / "trading" / "helpers.py"
    py_compile.compile(str(helpers), cfile=str(helpers.with_suffix(".pyc")), doraise=True)
    helpers.unlink()
    result = convert(models, tmp_path / "art")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["members"]["tiny"]["code"] == expected(
        models, "src/tools/unused.py", "src/trading/__init__.py", "src/trading/helpers.pyc", "src/trading/models.py")


def test_file_sha256_streams(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1000 + 7))
    assert file_sha256(big, chunk=1000) == hashlib.sha256(big.read_bytes()).hexdigest()


@pytest.mark.parametrize(("name", "expect"), [
    (b"back\\slash.py", "a file name the manifest cannot record"),
    (b"caf\xe9.py", "a file name the manifest cannot record"),  # Latin-1, not UTF-8
])
def test_a_code_file_name_the_manifest_cannot_hold_is_refused(tmp_path, name, expect):
    models = write_models(tmp_path / "models")
    with open(os.fsencode(models / "src" / "tools") + b"/" + name, "w") as fh:
        fh.write("Z = 3\n")
    _refused(models, tmp_path / "art", expect)


def test_a_fifo_named_like_code_is_refused_not_read(tmp_path):
    models = write_models(tmp_path / "models")
    os.mkfifo(models / "src" / "tools" / "pipe.py")  # opening it to hash would wait forever
    _refused(models, tmp_path / "art", "pipe.py", "not a regular file")
