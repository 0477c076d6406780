"""The input domain of a member that computes is chosen by parity, not only by finiteness (docs/numerics.md): a
rung is taken only where the exported build answers as the user's own torch code within the gate's tolerance on
rows spread through the rung. The models are the ones issue 23's attack found answering differently inside a
domain chosen by finiteness: float32 logits of 1e2 to 1e4 round otherwise in torch and onnxruntime, and where two
of them nearly tie, the probabilities differ past 1e-5. Tiny models, written as a user's code folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from convert.cli import main

NAMES = ["volume", "ret", "ts", "spread"]
RUNGS = (20.0, 1e2, 1e3, 1e4, 1e5, 1e6)  # docs/numerics.md's ladder, written out: the test's own expectation

CODE = '''
import torch
import torch.nn as nn


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(x)


class LogSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return torch.log_softmax(self.head(x), dim=-1)


class BatchNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)
'''


def _scaler(with_mean: bool) -> Any:
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(1e8, 5e6, 500), rng.standard_normal(500), rng.normal(1.7e9, 3e6, 500),
                         rng.standard_normal(500) * 1e-3])
    return StandardScaler(with_mean=with_mean).fit(x)


def _write(folder: Path, cls: str, scaler: Any | None) -> Any:
    """The user's folder: their code, the trained weights, an optional scaler; returns their model."""
    import torch

    (folder / "userpkg").mkdir(parents=True)
    (folder / "userpkg" / "__init__.py").write_text(CODE)
    namespace: dict[str, Any] = {}
    exec(compile(CODE, "userpkg/__init__.py", "exec"), namespace)  # the user's training code
    torch.manual_seed(0)
    model = namespace[cls]()
    if cls == "BatchNormMLP":  # running statistics as training leaves them: not the initial 0 and 1
        with torch.no_grad():
            model.net[1].running_mean.uniform_(-2, 2)
            model.net[1].running_var.uniform_(0.5, 3)
            model.net[1].weight.uniform_(0.5, 2)
    model.eval()
    torch.save(model.state_dict(), folder / "w.pth")
    if scaler is not None:
        (folder / "scaler.pkl").write_bytes(pickle.dumps(scaler))
    (folder / "ensemble.json").write_text(json.dumps({
        "feature_names": NAMES, "classes": ["SELL", "HOLD", "BUY"],
        "members": {"m": {"kind": "torch", "module": f"userpkg:{cls}", "file": "w.pth",
                          "scaler": None if scaler is None else "scaler.pkl"}}}))
    return model


def _users_probabilities(model: Any, scaler: Any | None, rows: np.ndarray) -> np.ndarray:
    """The user's own code on rows: their scaler in float64, one cast to float32, softmax in float64."""
    import torch

    x = rows if scaler is None else scaler.transform(rows)
    with torch.no_grad():
        out = model(torch.from_numpy(x.astype(np.float32))).double()
    return torch.softmax(out, -1).numpy()


CASES = [("Linear", None), ("LogSoftmax", False), ("BatchNormMLP", True)]


@pytest.fixture(scope="module", params=CASES, ids=[c for c, _ in CASES])
def built(request, tmp_path_factory) -> tuple[Any, Any, Path]:
    cls, with_mean = request.param
    root = tmp_path_factory.mktemp(cls)
    scaler = None if with_mean is None else _scaler(with_mean)
    model = _write(root / "models", cls, scaler)
    result = CliRunner().invoke(main, ["convert", str(root / "models"), "-o", str(root / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return model, scaler, root / "out"


def _spread(lo: np.ndarray, hi: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows through [lo, hi]: uniform at 1e-4 to 1 of the reach from the centre."""
    rng = np.random.default_rng(seed)
    centre, reach = lo / 2 + hi / 2, hi / 2 - lo / 2
    return np.vstack([centre + rng.uniform(-1, 1, (n, len(lo))) * reach * frac for frac in (1e-4, 1e-3, 1e-2, 0.1, 1)])


def test_a_member_answers_as_the_users_code_through_its_whole_domain(built):
    model, scaler, out = built
    domain = json.loads((out / "manifest.json").read_text())["domain"]
    rows = _spread(np.asarray(domain["lo"]), np.asarray(domain["hi"]), 20000, 0)
    served = runtime.load(out).member_probabilities(rows)["m"]
    want = _users_probabilities(model, scaler, rows)
    assert np.abs(served - want).max() <= 1e-5
    assert (served.argmax(1) == want.argmax(1)).all()


def test_the_domain_is_the_rung_the_search_took(built):
    """The recorded range is a rung of the ladder, mean +- sds standard deviations of the member's scaler. Which
    rung depends on where this CPU's float32 rounding in torch and in onnxruntime first parts (on this VM, AVX-512:
    100 sd for all three models, against 1e6 before the search compared the export); that every row of the rung
    taken answers as the user's code is `test_a_member_answers_as_the_users_code_through_its_whole_domain`."""
    _, scaler, out = built
    sds = json.loads((out / "parity.json").read_text())["domain"]["sds"]
    assert sds in RUNGS
    mean = scaler.mean_ if scaler is not None and scaler.with_mean else np.zeros(len(NAMES))
    scale = np.ones(len(NAMES)) if scaler is None else scaler.scale_
    domain = json.loads((out / "manifest.json").read_text())["domain"]
    np.testing.assert_allclose(domain["hi"], mean + sds * scale, rtol=1e-15)
    np.testing.assert_allclose(domain["lo"], mean - sds * scale, rtol=1e-15)


def test_the_demo_builds_and_verify_runs_the_same_rows(demo_models, demo_artifacts):
    """The built-in demo still passes its gate with the rows inside each rung, and `verify` rebuilds those rows
    from the manifest's domain and the fixed seed: its gate runs as many rows as the build's did."""
    report = json.loads((demo_artifacts / "parity.json").read_text())
    assert report["passed"] and report["domain"]["sds"] in RUNGS
    result = CliRunner().invoke(main, ["verify", str(demo_artifacts), "--models", str(demo_models), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["rows"] == report["rows"]["total"]


def _wider(out: Path, dest: Path, times: float) -> Path:
    """The build as a version whose search went `times` further would have recorded it: its domain widened about
    its centre, bound into the graph again and re-hashed (tests/forge.py), as that build would load."""
    from forge import rebound

    def widen(manifest: dict[str, Any]) -> None:
        lo, hi = np.asarray(manifest["domain"]["lo"]), np.asarray(manifest["domain"]["hi"])
        centre, reach = lo / 2 + hi / 2, hi / 2 - lo / 2
        manifest["domain"]["lo"], manifest["domain"]["hi"] = list(centre - times * reach), list(centre + times * reach)
    return rebound(out, dest, widen)


def test_verify_proves_a_wider_recorded_domain_through_not_only_at_its_edges(built, tmp_path):
    """A build of an older version served a domain the search no longer takes (up to 1e6 standard deviations,
    where the export's rounding parts from the user's code): `verify` runs rows through the band past the rungs
    and on the class boundaries there, and fails it, where its edges alone (every probability 0 or 1) passed."""
    _, _, out = built
    sds = json.loads((out / "parity.json").read_text())["domain"]["sds"]
    if sds == RUNGS[-1]:
        pytest.skip("this CPU's rounding parts nowhere on the ladder: no wider domain to forge")
    models = out.parent / "models"
    same = CliRunner().invoke(main, ["verify", str(out), "--models", str(models), "-q"])
    assert same.exit_code == 0, same.output
    older = _wider(out, tmp_path / "older", RUNGS[-1] / sds)
    result = CliRunner().invoke(main, ["verify", str(older), "--models", str(models), "-q"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no longer passes the parity gate" in result.output and "member m probabilities" in result.output


def test_recorded_rows_past_the_search_widen_the_domain_only_where_the_export_holds(tmp_path):
    """`convert --parity-data` with a recorded row 1e4 standard deviations out: the domain widens to hold it
    (docs/numerics.md), and the band it adds is proven through like a rung, so a Linear member whose float32
    rounding parts there fails the gate instead of serving that band unproven."""
    model = _write(tmp_path / "models", "Linear", None)
    data = tmp_path / "recorded.csv"
    data.write_text(",".join(NAMES) + "\n" + "0.5,-1,2,0\n" + "1e4,-3,0.5,1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "models"), "-o", str(out), "--parity-data",
                                       str(data), "-q"])
    if result.exit_code == 0:  # this CPU's rounding held through the band: every row of it answers as the user's
        domain = json.loads((out / "manifest.json").read_text())["domain"]
        assert domain["hi"][0] == 1e4
        rows = _spread(np.asarray(domain["lo"]), np.asarray(domain["hi"]), 20000, 1)
        assert np.abs(runtime.load(out).member_probabilities(rows)["m"] - _users_probabilities(model, None, rows)
                      ).max() <= 1e-5
    else:
        assert result.exit_code == 1 and "ParityError: " in result.output and "member m probabilities" in result.output
        assert not out.exists()


@pytest.fixture(scope="module")
def linear(tmp_path_factory) -> tuple[Any, Path, Path]:
    """The plain nn.Linear on raw features, its folder and its build (domain 100: rounding parts at 1000)."""
    root = tmp_path_factory.mktemp("linear_widened")
    model = _write(root / "models", "Linear", None)
    result = CliRunner().invoke(main, ["convert", str(root / "models"), "-o", str(root / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return model, root / "models", root / "out"


def _served_as_the_users_code(model: Any, out: Path) -> bool:
    domain = json.loads((out / "manifest.json").read_text())["domain"]
    rows = _spread(np.asarray(domain["lo"]), np.asarray(domain["hi"]), 20000, 1)
    served = runtime.load(out).member_probabilities(rows)["m"]
    return bool(np.abs(served - _users_probabilities(model, None, rows)).max() <= 1e-5)


def test_parity_rows_that_widen_the_range_past_the_search_are_no_way_around_it(linear, tmp_path):
    """Recorded rows at 3,000 in every feature widen the range over the rung (1,000) where the search found the
    export's probabilities off the user's class: the gate then runs rows through the widened range, so the build
    fails there, or (on a CPU whose rounding parts later) every row of its range answers as the user's code.
    Before, the build passed, its range holding rows the export answered up to 2e-5 off."""
    model, models, _ = linear
    rng = np.random.default_rng(4)
    rows = [*rng.standard_normal((50, len(NAMES))), np.full(len(NAMES), 3000.0), np.full(len(NAMES), -3000.0)]
    recorded = tmp_path / "recorded.csv"
    recorded.write_text("\n".join([",".join(NAMES), *(",".join(repr(float(v)) for v in r) for r in rows)]) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(models), "-o", str(out), "--parity-data", str(recorded)])
    assert "the recorded parity rows widen the range past the" in result.stderr
    if result.exit_code == 0:
        assert _served_as_the_users_code(model, out)
    else:
        assert "ParityError: parity gate failed" in result.stderr and not out.exists()


def test_verify_runs_the_range_a_build_serves_past_its_own_search(linear, tmp_path):
    """A build recorded with the range a finiteness-only search chose (1e6 standard deviations, as before the
    export was compared) and bound again: verify runs rows through it, so it fails, unless every row of that
    range answers as the user's code. Before, it ran that range's edges alone (probabilities 0 or 1) and passed."""
    from forge import rebound

    model, models, out = linear

    def edit(manifest: dict[str, Any]) -> None:
        manifest["domain"]["lo"], manifest["domain"]["hi"] = [-1e6] * len(NAMES), [1e6] * len(NAMES)

    old = rebound(out, tmp_path / "old", edit)
    result = CliRunner().invoke(main, ["verify", str(old), "--models", str(models)])
    assert "this build serves a range past the" in result.stderr
    if result.exit_code == 0:
        assert _served_as_the_users_code(model, old)
    else:
        assert result.exit_code == 1 and "no longer passes the parity gate" in result.stderr
