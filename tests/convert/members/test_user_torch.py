"""The gate compares with the model the user trained (issue 23), for torch members.

- kind `torch`: a models folder carrying its own training code (a small package with an MLP, a Conv1d and an
  LSTM classifier) converts, and the build answers as the user's class does, not as any rebuild would;
- a forward that tracing cannot capture (a data-dependent Python branch) fails the gate, with its report;
- the user's code is refused by name when it cannot be the reference;
- `.safetensors` state_dicts and DataParallel's `module.` prefix are read, and the plan says so.

The built-in kinds (N-HiTS, PatchTST and their options): test_torch_builtins.py.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from torch_training import FEATURES, SEED, F, K, _convert, _probabilities, _train

import runtime
from convert.cli import main
from convert.members import MemberSource, get_kind

# The user's training code, as it would sit in their repository. SwishMLP's forward carries an op (x * sigmoid)
# that no built-in rebuild has; TinyTCN reads the features as a sequence (Conv1d); TinyLSTM as time steps.
TRADING_MODELS = '''
import torch
import torch.nn as nn


class SwishMLP(nn.Module):
    def __init__(self, n_features, hidden, n_classes):
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, n_classes)
        self.register_buffer("temperature", torch.tensor(0.5))

    def forward(self, x):
        h = self.fc1(x)
        return self.out(h * torch.sigmoid(h)) / self.temperature


class TinyTCN(nn.Module):
    def __init__(self, channels=4, n_classes=3):
        super().__init__()
        self.conv = nn.Conv1d(1, channels, kernel_size=3, padding=1)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x.unsqueeze(1))).mean(dim=2))


class TinyLSTM(nn.Module):
    def __init__(self, hidden=5, n_classes=3):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.lstm(x.unsqueeze(-1))
        return self.head(out[:, -1])


class Branchy(nn.Module):
    """A Python branch on the data: tracing freezes it at the example batch's (zeros: no clipping)."""
    def __init__(self, n_features=8, n_classes=3, limit=50.0):
        super().__init__()
        self.fc = nn.Linear(n_features, n_classes)
        self.limit = limit

    def forward(self, x):
        if float(x.abs().max()) > self.limit:  # each value clipped on its own: rows stay independent
            x = x.clamp(-self.limit, self.limit)
        return self.fc(x)


def not_a_module():
    return None


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        return self.fc(x)[:, 0]


class Doubled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x).double()


class Probabilities(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return torch.softmax(self.fc(x), dim=-1)


class Reshaper(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 5)
'''

MEMBERS = {  # name -> (class, init)
    "mlp": ("SwishMLP", {"n_features": F, "hidden": 6, "n_classes": K}),
    "tcn": ("TinyTCN", {"channels": 4}),
    "lstm": ("TinyLSTM", {"hidden": 5}),
}


def _user_module(folder: Path, name: str = "trading.models") -> Any:
    """The test's own import of the user's code (not convert's), from the folder, under a private name."""
    path = folder / "src" / Path(*name.split(".")).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(f"_test_user_{abs(hash(str(path)))}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_code(folder: Path) -> None:
    package = folder / "src" / "trading"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(TRADING_MODELS)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A models folder with its own code: three custom classifiers, trained, saved as state_dicts."""
    import torch

    folder = tmp_path_factory.mktemp("usercode") / "models"
    folder.mkdir()
    _write_code(folder)
    code = _user_module(folder)
    for name, (cls, init) in MEMBERS.items():
        torch.manual_seed(SEED)
        torch.save(_train(getattr(code, cls)(**init)).state_dict(), folder / f"{name}.pth")
    spec = {"feature_names": FEATURES, "classes": ["SELL", "HOLD", "BUY"],
            "members": {name: {"kind": "torch", "module": f"trading.models:{cls}", "init": init, "code": "src",
                               "file": f"{name}.pth", "scaler": None}
                        for name, (cls, init) in MEMBERS.items()}}
    (folder / "ensemble.json").write_text(json.dumps(spec, indent=1))
    return folder


@pytest.fixture(scope="module")
def user_build(user_folder, tmp_path_factory) -> Path:
    path_before, modules_before = list(sys.path), set(sys.modules)
    out = tmp_path_factory.mktemp("userbuild") / "artifacts"
    result = _convert(user_folder, out)
    assert result.exit_code == 0, result.output
    # The user's code was importable for the build only: sys.path as it was, its package forgotten.
    assert sys.path == path_before and "trading" not in sys.modules
    assert not {m for m in set(sys.modules) - modules_before if m.startswith("trading")}
    return out


def test_user_classes_convert_and_the_build_answers_as_they_do(user_folder, user_build):
    import torch

    report = json.loads((user_build / "parity.json").read_text())
    assert report["passed"] and {f"member {n}" for n in MEMBERS} <= {c["target"] for c in report["checks"]}
    code = _user_module(user_folder)
    rows = np.random.default_rng(99).normal(size=(300, F)).astype(np.float32)  # rows the gate never saw
    ensemble = runtime.load(user_build)
    got = ensemble.member_probabilities(rows)
    for name, (cls, init) in MEMBERS.items():
        model = getattr(code, cls)(**init)
        model.load_state_dict(torch.load(user_folder / f"{name}.pth", weights_only=True))
        want = _probabilities(model.eval(), rows)
        assert np.abs(got[name] - want).max() <= 1e-5, name
        assert (got[name].argmax(axis=1) == want.argmax(axis=1)).all(), name
    manifest = json.loads((user_build / "manifest.json").read_text())
    hp = manifest["members"]["mlp"]["hyperparameters"]
    assert hp == {"module": "trading.models:SwishMLP", "init": MEMBERS["mlp"][1], "code": "src", "input_size": F,
                  "num_classes": K, "parameters": F * 6 + 6 + 6 * K + K}


def test_the_gate_is_the_users_class_not_a_rebuild(user_folder, user_build):
    """What a rebuild without SwishMLP's extra op would answer differs from the build; the user's class does not."""
    import torch

    code = _user_module(user_folder)
    model = code.SwishMLP(**MEMBERS["mlp"][1])
    model.load_state_dict(torch.load(user_folder / "mlp.pth", weights_only=True))
    model.eval()
    rows = np.random.default_rng(5).normal(size=(200, F)).astype(np.float32)
    with torch.no_grad():  # the same weights through a plain MLP head (no swish, no temperature buffer)
        plain = torch.softmax(model.out(model.fc1(torch.from_numpy(rows))), dim=-1).double().numpy()
    built = runtime.load(user_build).member_probabilities(rows)["mlp"]
    assert np.abs(built - plain).max() > 0.05  # a rebuild-shaped reference would have failed this build
    assert np.abs(built - _probabilities(model, rows)).max() <= 1e-5


def test_the_runtime_serves_the_build_without_the_users_code_or_torch(user_build, tmp_path):
    import subprocess

    code = ("import json, sys, numpy as np, runtime; e = runtime.load(sys.argv[1]); "
            "p = e.predict_proba(np.zeros((3, len(e.feature_names)))); "
            "print(json.dumps([p.shape, sorted(m for m in sys.modules if m.split('.')[0] in ('trading', 'torch'))]))")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code, str(user_build)], capture_output=True, text=True, check=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert json.loads(done.stdout) == [[3, K], []]


def test_verify_rebuilds_the_reference_from_the_users_code(user_folder, user_build):
    result = CliRunner().invoke(main, ["verify", str(user_build), "--models", str(user_folder)])
    assert result.exit_code == 0, result.output
    assert "trading" not in sys.modules


def _copy(user_folder: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(user_folder, folder)
    return folder


def _one_member(folder: Path, **entry: Any) -> None:
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["members"] = {"m": {"kind": "torch", "module": "trading.models:SwishMLP", "init": MEMBERS["mlp"][1],
                             "code": "src", "file": "mlp.pth", "scaler": None, **entry}}
    (folder / "ensemble.json").write_text(json.dumps(spec))


def _branchy(folder: Path, limit: float) -> None:
    import torch

    torch.manual_seed(SEED)
    torch.save(_user_module(folder).Branchy().state_dict(), folder / "branchy.pth")
    _one_member(folder, module="trading.models:Branchy", init={"limit": limit}, file="branchy.pth")


def test_a_forward_tracing_cannot_capture_fails_the_gate_with_its_report(user_folder, tmp_path):
    """The branch parts rows inside the domain's first rung (20 standard deviations; raw features here): the
    export computes otherwise there, and the gate fails."""
    folder = _copy(user_folder, tmp_path)
    _branchy(folder, limit=5.0)
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 1 and "ParityError: " in result.output and "Traceback" not in result.output
    assert not out.exists()
    report = json.loads((tmp_path / "out.parity-failed.json").read_text())
    assert not report["passed"] and any("member m" in f for f in report["failures"])
    member = get_kind("torch").load(MemberSource("m", "torch", folder / "branchy.pth", options={
        "module": "trading.models:Branchy", "init": {"limit": 5.0}, "code": "src", "n_features": F}))
    line = next(i for i, text in enumerate(TRADING_MODELS.splitlines(), 1) if "float(x.abs().max())" in text)
    assert any(n.startswith("tracing fixed a Python value at ") and f"models.py:{line}:" in n for n in member.notes), \
        member.notes


def test_a_branch_tracing_froze_past_the_first_rung_ends_the_domain_under_it(user_folder, tmp_path):
    """The branch parts rows only past the first rung (|x| > 50): the build is served only where the export
    answers as the user's class, so its domain stops under the rung where they part, and says so; a row where
    the class would clip is refused, one inside answers as the class does."""
    import torch

    folder = _copy(user_folder, tmp_path)
    _branchy(folder, limit=50.0)
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "parity.json").read_text())
    assert report["domain"]["sds"] == 20.0 and report["domain"]["stopped"]["sds"] == 100.0
    assert report["domain"]["stopped"]["max_abs_diff"] > 1e-5
    served = runtime.load(out)
    inside = np.random.default_rng(SEED).uniform(-20, 20, (64, F))
    model = _user_module(folder).Branchy(limit=50.0)
    model.load_state_dict(torch.load(folder / "branchy.pth", weights_only=True))
    with torch.no_grad():
        want = torch.softmax(model(torch.tensor(inside, dtype=torch.float32)), dim=-1).double().numpy()
    assert np.abs(served.predict_proba(inside) - want).max() <= 1e-5
    with pytest.raises(runtime.InputError, match=r"row 0, feature 'f0': 60\.0 is outside"):
        served.predict_proba(np.full((1, F), 60.0))


def _file_with(folder: Path, name: str, text: str) -> None:
    (folder / "src" / "trading" / name).write_text(textwrap.dedent(text))


def _save_with_extra_key(folder: Path) -> None:
    import torch

    state = torch.load(folder / "mlp.pth", weights_only=True)
    state["fc2.weight"] = torch.zeros(2, 2)
    torch.save(state, folder / "mlp.pth")


def _save_fresh(folder: Path, cls: str) -> None:
    import torch

    torch.save(getattr(_user_module(folder), cls)().state_dict(), folder / f"{cls}.pth")


# (case, how the folder is changed, the error and words the one-line refusal must carry)
REFUSALS = [
    ("no such module", lambda d: _one_member(d, module="trading.nope:SwishMLP"),
     "PlanError: member m.module: no module 'trading.nope'"),
    ("no such class", lambda d: _one_member(d, module="trading.models:Nope"), "PlanError: defines no 'Nope'"),
    ("import raises in user code",
     lambda d: (_file_with(d, "broken.py", "x = 1\nraise RuntimeError('no data at import')\n"),
                _one_member(d, module="trading.broken:X")),
     "UserCodeError: broken.py:2: RuntimeError: no data at import"),
    ("syntax error in user code",
     lambda d: (_file_with(d, "broken.py", "def f(:\n"), _one_member(d, module="trading.broken:X")),
     "UserCodeError: broken.py:1 SyntaxError"),
    ("user code needs a package that is not installed",
     lambda d: (_file_with(d, "needs.py", "import not_installed_anywhere_42\n"),
                _one_member(d, module="trading.needs:X")),
     "UserCodeError: needs.py:1 not_installed_anywhere_42 this environment does not have"),
    ("sys.exit at import",
     lambda d: (_file_with(d, "exits.py", "import sys\nsys.exit(3)\n"), _one_member(d, module="trading.exits:X")),
     "UserCodeError: exits.py:2 SystemExit"),
    ("not an nn.Module", lambda d: _one_member(d, module="trading.models:not_a_module"),
     "UnsupportedModelError: not a torch.nn.Module subclass"),
    ("class defined outside the models folder",
     lambda d: (_file_with(d, "reexport.py", "from torch.nn import Linear\n"),
                _one_member(d, module="trading.reexport:Linear", init={"in_features": F, "out_features": K})),
     "PlanError: outside"),
    ("package name ensemble-onnx already uses", lambda d: _one_member(d, module="convert.cli:main"),
     "PlanError: the package 'convert' is already imported"),
    ("init the class refuses", lambda d: _one_member(d, init={"width": 3}),
     "UserCodeError: models.py SwishMLP(**init) TypeError"),
    ("weights of another width (strict load)", lambda d: _one_member(d, init={"n_features": F, "hidden": 7,
                                                                              "n_classes": K}),
     "StateDictError: mlp.pth trading.models:SwishMLP(**init) tensor 'fc1.weight' has shape (6, 8)"),
    ("an unexpected tensor (strict load)", lambda d: (_save_with_extra_key(d), _one_member(d)),
     "StateDictError: mlp.pth unexpected tensor 'fc2.weight'"),
    ("forward returns [N], not logits [N, K]",
     lambda d: (_save_fresh(d, "Flat"), _one_member(d, module="trading.models:Flat", init={}, file="Flat.pth")),
     "UnsupportedModelError: returned a torch.float32 tensor of shape (2,) float32 logits [N, K]"),
    ("forward returns float64",
     lambda d: (_save_fresh(d, "Doubled"), _one_member(d, module="trading.models:Doubled", init={},
                                                       file="Doubled.pth")),
     "UnsupportedModelError: returned a torch.float64 tensor of shape (2, 3) float32 logits"),
    ("code folder linked from outside",
     lambda d: ((d / "linked").symlink_to(d.parent / "elsewhere", target_is_directory=True),
                (d.parent / "elsewhere").mkdir(), _one_member(d, code="linked")),
     "MetadataError: members.m.code leads to elsewhere, outside"),
    ("forward returns probabilities",
     lambda d: (_save_fresh(d, "Probabilities"), _one_member(d, module="trading.models:Probabilities", init={},
                                                             file="Probabilities.pth")),
     "UnsupportedModelError: Probabilities.forward returns rows of probabilities logits"),
    ("forward fails on the rows",
     lambda d: (_save_fresh(d, "Reshaper"), _one_member(d, module="trading.models:Reshaper", init={},
                                                        file="Reshaper.pth")),
     "UserCodeError: models.py Reshaper.forward [2, 8] RuntimeError"),
    ("code outside the models folder", lambda d: _one_member(d, code="../elsewhere"),
     "MetadataError: members.m.code no '..'"),
    ("code folder missing", lambda d: _one_member(d, code="lib"), "PlanError: members.m.code"),
    ("module not package:Class", lambda d: _one_member(d, module="trading/models.py"),
     "MetadataError: members.m.module 'package.module:Class'"),
    ("init not an object", lambda d: _one_member(d, init=[F, 6, K]), "MetadataError: members.m.init"),
    ("architecture in metadata is not read",
     lambda d: ((d / "meta.json").write_text('{"architecture": {"hidden": 6}}'), _one_member(d, metadata="meta.json")),
     "MetadataError: meta.json 'architecture' 'init'"),
    ("a key of another kind", lambda d: _one_member(d, kind="nhits"), "MetadataError: unknown field(s) ['code'"),
]


@pytest.mark.parametrize(("change", "expect"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_user_code_that_cannot_be_the_reference_is_refused_by_name(user_folder, tmp_path, change, expect):
    folder = _copy(user_folder, tmp_path)
    change(folder)
    out = tmp_path / "out"
    result = _convert(folder, out)
    error, *words = expect.split(" ")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") <= 2, result.output
    assert all(w in result.output for w in [error, *words]), result.output
    assert not out.exists() and "trading" not in sys.modules


def test_a_global_setting_made_by_the_users_code_ends_with_its_member(user_folder, tmp_path):
    """Training code that sets torch's default dtype at import builds its own member so; the next member (the
    MLP, built after it) and the process keep float32."""
    import torch

    folder = _copy(user_folder, tmp_path)
    _file_with(folder, "dtype64.py", """
        import torch
        import torch.nn as nn

        torch.set_default_dtype(torch.float64)


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 3, dtype=torch.float32)

            def forward(self, x):
                return self.fc(x)
        """)
    torch.manual_seed(SEED)
    torch.save({f"fc.{k}": v for k, v in torch.nn.Linear(F, K).state_dict().items()}, folder / "net.pth")
    spec = json.loads((folder / "ensemble.json").read_text())
    spec["members"] = {"net": {"kind": "torch", "module": "trading.dtype64:Net", "code": "src", "file": "net.pth",
                               "scaler": None}, "mlp": spec["members"]["mlp"]}
    (folder / "ensemble.json").write_text(json.dumps(spec))
    result = _convert(folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert torch.get_default_dtype() == torch.float32


def test_two_members_whose_packages_share_a_name_each_get_their_own(user_folder, tmp_path):
    import onnxruntime as ort

    folder = _copy(user_folder, tmp_path)
    shutil.copytree(folder / "src", folder / "src2")
    models = folder / "src2" / "trading" / "models.py"
    models.write_text(models.read_text().replace("/ self.temperature", "/ (4 * self.temperature)"))
    rows = np.random.default_rng(4).normal(size=(64, F)).astype(np.float32)
    got = {}
    for code in ("src", "src2"):
        member = get_kind("torch").load(MemberSource("m", "torch", folder / "mlp.pth", options={
            "module": "trading.models:SwishMLP", "init": MEMBERS["mlp"][1], "code": code, "n_features": F}))
        session = ort.InferenceSession(member.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        exported = session.run(None, {session.get_inputs()[0].name: rows})[0]
        got[code] = member.reference(rows)
        assert np.abs(exported - got[code]).max() <= 1e-5
    assert np.abs(got["src"] - got["src2"]).max() > 0.01 and "trading" not in sys.modules


def test_the_user_kind_through_a_linked_models_folder_says_where_the_class_came_from(user_folder, tmp_path):
    (tmp_path / "link").symlink_to(user_folder, target_is_directory=True)
    source = MemberSource("m", "torch", tmp_path / "link" / "mlp.pth", options={
        "module": "trading.models:SwishMLP", "init": MEMBERS["mlp"][1], "code": "src", "n_features": F})
    member = get_kind("torch").load(source)
    assert "class trading.models:SwishMLP from src/trading/models.py (imported for the build only; the gate's " \
           "reference is this class)" in member.notes
    assert f"input_size={F} (from ensemble.json feature_names)" in member.notes and "trading" not in sys.modules


def test_discovery_never_takes_the_torch_kind(tmp_path):
    out = tmp_path.with_name(tmp_path.name + "-out")  # beside the models folder, not inside it
    result = CliRunner().invoke(main, ["convert", str(tmp_path), "-o", str(out), "--only", "torch"])
    assert result.exit_code == 1 and "kind 'torch' is declared in ensemble.json only" in result.output


def test_the_user_kind_reads_safetensors_and_a_dataparallel_state_dict(user_folder, tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = _copy(user_folder, tmp_path)
    state = torch.load(folder / "mlp.pth", weights_only=True)
    wrapped = torch.nn.DataParallel(_user_module(folder).SwishMLP(**MEMBERS["mlp"][1]))
    wrapped.module.load_state_dict(state)
    torch.save(wrapped.state_dict(), folder / "ddp.pth")  # keys 'module.fc1.weight', ...
    save_file({f"module.{k}": v for k, v in state.items()}, folder / "ddp.safetensors")
    for file in ("ddp.pth", "ddp.safetensors"):
        source = MemberSource("m", "torch", folder / file, options={
            "module": "trading.models:SwishMLP", "init": MEMBERS["mlp"][1], "code": "src", "n_features": F})
        member = get_kind("torch").load(source)
        assert any("'module.'" in n and "DataParallel" in n for n in member.notes), member.notes
        rows = np.random.default_rng(3).normal(size=(50, F)).astype(np.float32)
        model = _user_module(folder).SwishMLP(**MEMBERS["mlp"][1])
        model.load_state_dict(state)
        assert np.abs(member.reference(rows) - _probabilities(model.eval(), rows)).max() == 0.0
