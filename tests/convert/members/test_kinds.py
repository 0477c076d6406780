"""A member kind lives in one file: each kind module registers itself, and importing the registry (which
imports every kind module) pulls in none of the frameworks, so discovery and `--help` stay fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.members import get_kind, known_kinds

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(("kind", "suffixes", "module"), [
    ("nhits", (".pth", ".pt", ".safetensors"), "nhits"),
    ("patchtst", (".pth", ".pt", ".safetensors"), "patchtst"),
    ("torch", (".pth", ".pt", ".safetensors"), "user_torch"),  # not `torch.py`: it would read as torch itself
    ("xgboost", (".pkl", ".joblib", ".json", ".ubj"), "xgboost"),
    ("lightgbm", (".pkl", ".joblib", ".txt"), "lightgbm"),
    ("sklearn", (".pkl", ".joblib"), "sklearn"),
    ("catboost", (".cbm", ".pkl", ".joblib"), "catboost"),
])
def test_each_kind_registers_itself_from_its_own_module(kind, suffixes, module):
    registered = get_kind(kind)
    assert registered.suffixes == suffixes
    assert registered.load.__module__ == registered.reference.__module__ == f"convert.members.{module}"


def test_importing_the_registry_loads_no_framework():
    code = "import convert.members, sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                           env=env, cwd=ROOT).stdout))
    heavy = {"torch", "sklearn", "xgboost", "lightgbm", "catboost", "onnx", "skl2onnx", "onnxmltools", "scipy",
             "pandas"}
    assert known_kinds() and not heavy & loaded, heavy & loaded


# The modules outside convert/members/ that once held per-kind tables: none may name a kind or its libraries.
SHARED_MODULES = ("convert/loaders.py", "convert/errors.py", "convert/manifest.py", "convert/cli/__init__.py",
                  "convert/cli/build.py", "convert/cli/serve.py", "convert/cli/operate.py", "convert/discover.py",
                  "convert/domain.py")
# Named on purpose: torch is the family of two kinds (members/torch_common.py), its weights-only reader is one
# of the safe readers, its state_dict refusal one of the error families, and the command line's help says
# "torch" to its users (and `inspect` reads a torch member's metadata).
SHARED_READERS = {"convert/loaders.py": {"torch"}, "convert/errors.py": {"torch"},
                  **{f"convert/cli/{name}.py": {"torch"} for name in ("__init__", "build", "serve", "operate")}}


def _words(path: Path) -> set[str]:
    """Every identifier and every word inside a string literal of a module, lower-cased; comments left out."""
    import re
    import tokenize

    words: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for tok in tokenize.generate_tokens(fh.readline):
            if tok.type in (tokenize.NAME, tokenize.STRING):
                words.update(w.lower() for w in re.findall(r"[A-Za-z0-9_-]+", tok.string))
    return words


def _kind_words() -> dict[str, set[str]]:
    """What each kind declares about itself, less the names the shared code uses for its own (the scaler's and
    stacker's sklearn, the converters): those are not kind knowledge."""
    from convert.cli import BUILD_STACK
    from convert.errors import FRAMEWORKS
    from convert.loaders import ALLOWED_GLOBALS
    from convert.manifest import LIBRARIES
    from convert.members import all_kinds

    shared = set(FRAMEWORKS) | set(LIBRARIES) | set(BUILD_STACK)
    shared |= {module.split(".")[0] for allowed in ALLOWED_GLOBALS.values() for module, _ in allowed}
    return {k.name: ({k.name, *k.frameworks, *k.distributions, *k.build_modules}
                     | {module.split(".")[0] for module, _ in k.pickle_globals}) - shared for k in all_kinds()}


def test_no_shared_module_names_a_kind_or_its_libraries():
    declared = _kind_words()
    # Not vacuous: every tree and torch kind leaves names to look for, and the scan finds a kind's name in
    # its own module (the check would fail on a table moved back into a shared module).
    assert {"xgboost", "lightgbm", "nhits", "patchtst", "torch"} <= set().union(*declared.values())
    assert {"xgboost", "onnx"} <= _words(ROOT / "convert" / "members" / "xgboost.py")
    for module in SHARED_MODULES:
        words = _words(ROOT / module)
        assert "onnx" in words or "members" in words  # the scan reads the module
        words -= SHARED_READERS.get(module, set())
        found = {kind: sorted(names & words) for kind, names in declared.items() if names & words}
        assert not found, f"{module} names {found}: per-kind facts belong on the kind's registry entry"


def test_shared_code_reads_every_kind_fact_from_the_registry():
    from convert.discover import SERVICE_WEIGHTS
    from convert.errors import frameworks
    from convert.loaders import COMMON_PICKLE_GLOBALS, allowed_globals
    from convert.manifest import library_versions
    from convert.members import all_kinds

    versions = library_versions()
    for kind in all_kinds():
        assert allowed_globals(kind.name) == COMMON_PICKLE_GLOBALS | kind.pickle_globals
        assert set(kind.frameworks) <= frameworks()
        assert set(kind.distributions) <= set(versions)
        assert SERVICE_WEIGHTS.get(kind.name) == kind.service_weight
    assert SERVICE_WEIGHTS == {"xgboost": 0.25, "lightgbm": 0.25, "nhits": 0.30, "patchtst": 0.20}


@pytest.mark.parametrize(("kind", "hyperparameters", "compares", "takes_nan"), [
    ("xgboost", {}, True, True),
    ("lightgbm", {}, True, True),
    ("sklearn", {"estimator": "RandomForestClassifier"}, True, False),
    ("sklearn", {"estimator": "ExtraTreesClassifier"}, True, False),
    ("sklearn", {"estimator": "HistGradientBoostingClassifier"}, True, True),
    ("sklearn", {"estimator": "LogisticRegression"}, False, False),
    ("catboost", {"nan_mode": "Min"}, True, True),
    ("catboost", {"nan_mode": "Max"}, True, True),
    ("catboost", {"nan_mode": "Forbidden"}, True, False),
    ("nhits", {}, False, False),
    ("patchtst", {}, False, False),
    ("torch", {}, False, False),
])
def test_the_input_domain_reads_each_kind_from_its_entry(kind, hyperparameters, compares, takes_nan):
    from convert import domain
    from convert.members import LoadedMember, MemberSource

    member = LoadedMember(MemberSource("m", kind, Path("m")), 3, 2, hyperparameters, lambda x: x, None)
    assert (domain.only_compares(member), domain.takes_nan(member)) == (compares, takes_nan)


PROBE_KIND = """
import json, sys
from pathlib import Path
from convert import members
members.register(members.MemberKind(
    "probekind", (".probe",), lambda source: None, lambda source: None,
    pickle_globals=frozenset({("probelib.model", "Model")}), frameworks=("probelib",),
    distributions=("probelib-dist",), build_modules=("probelib_mod",), service_weight=0.5,
    only_compares=members.always, tree_options=("rounds",)))
from convert import cli, discover, domain, errors, loaders, manifest
from convert.members import trees
probe = members.LoadedMember(members.MemberSource("p", "probekind", Path("p")), 2, 2, {}, None, None)
missing = []
try:
    cli.require_build_stack()
except Exception as exc:
    missing = str(exc)
print(json.dumps({
    "allowed": sorted(map(list, loaders.allowed_globals("probekind") - loaders.COMMON_PICKLE_GLOBALS)),
    "frameworks": "probelib" in errors.frameworks(),
    "versions": manifest.library_versions().get("probelib-dist"),
    "stack": missing,
    "weights": discover.service_weights(),
    "domain": [domain.only_compares(probe), domain.takes_nan(probe)],
    "options": trees.parse_options("probekind", {"rounds": 3}, None, "members.p"),
}))
try:
    trees.parse_options("catboost", {"rounds": 3}, None, "members.c")
except Exception as exc:
    print(str(exc))
"""


def test_a_new_kind_is_one_register_call():
    """A kind registered from outside the shared modules reaches every place that needs to know about it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    printed = subprocess.run([sys.executable, "-c", PROBE_KIND], capture_output=True, text=True, check=True,
                             env=env, cwd=ROOT).stdout.splitlines()
    out = json.loads(printed[0])
    assert out["allowed"] == [["probelib.model", "Model"]]
    assert out["frameworks"] is True
    assert out["versions"] == "not installed"
    assert "probelib_mod missing" in out["stack"]
    assert list(out["weights"])[-1] == "probekind" and out["weights"]["probekind"] == 0.5
    assert out["domain"] == [True, False]  # a tree of its own kind, NaN refused until the kind says otherwise
    assert out["options"] == {"rounds": 3}
    assert printed[1] == ("members.c.rounds: only a xgboost or lightgbm or probekind member takes 'rounds'; this "
                          "member's kind is 'catboost'.")


def test_the_registry_refuses_a_second_kind_of_a_name():
    from convert.members import MemberKind, register

    before = get_kind("xgboost")
    with pytest.raises(ValueError, match="member kind 'xgboost' is already registered"):
        register(MemberKind("xgboost", (".x",), before.load, before.reference))
    assert get_kind("xgboost") is before


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    from convert.errors import PlanError

    with pytest.raises(PlanError, match="unknown member kind 'nosuchkind'; known kinds: catboost, lightgbm, nhits, "
                                        "patchtst, sklearn, torch, xgboost"):
        get_kind("nosuchkind")
