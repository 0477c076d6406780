"""The layout drawn in docs/index.md, held: each folder imports only across the lines the picture allows.

Every import statement of every source file is read with `ast` (lazy imports inside functions and
TYPE_CHECKING blocks included), relative imports resolved, and checked against the rules below.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Where a module lives -> the project packages it may import. Third-party code is checked for the core only:
# the service's `import runtime` needs numpy and onnxruntime (and cryptography for a signature, lazily).
ROOMS = {
    "runtime": {"runtime"},                                    # the serving core
    "runtime.batch": {"runtime", "runtime.batch"},             # the `score` engines and the result writer
    "runtime.monitor": {"runtime", "runtime.monitor"},         # compare, evaluate, drift report, HTML
    # the serving host's benchmark: the core and the result writer (weights counted off the bytes, no onnx)
    "runtime.bench": {"runtime", "runtime.batch", "runtime.bench"},
    "convert": {"convert", "runtime", "runtime.batch", "runtime.monitor", "runtime.bench"},  # build stack, commands
}
PROJECT = ("convert", "runtime")
CORE_THIRD_PARTY = {"numpy", "onnxruntime", "cryptography"}
# The build stack's libraries, which no serving host installs: nothing under runtime/ may import them.
BUILD_ONLY = {"onnx", "torch", "sklearn", "xgboost", "lightgbm", "catboost", "skl2onnx", "onnxmltools"}


def room(module: str) -> str:
    """The room a project module is in: runtime.batch.backfill -> runtime.batch, convert.members.x -> convert."""
    parts = module.split(".")
    if parts[0] == "runtime" and len(parts) > 1 and parts[1] in ("batch", "monitor", "bench"):
        return f"runtime.{parts[1]}"
    return parts[0]


def imported(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the module `module`; `from p import x`
    counts as importing p and, where x is a module of the project, p.x."""
    package = module if (REPO / Path(*module.split("."))).is_dir() else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if (REPO / Path(*f"{target}.{alias.name}".split("."))).is_dir()
                      or (REPO / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").is_file()]
    return found


def violations(source: str, module: str) -> list[str]:
    """Each import of `module` that crosses a line of the picture, as 'module:line imports target'."""
    here = room(module)
    allowed = ROOMS[here]
    bad = []
    for line, target in imported(source, module):
        top = target.split(".")[0]
        if top in PROJECT:
            if room(target) not in allowed:
                bad.append(f"{module}:{line} imports {target}")
        elif here == "runtime" and top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY:
            bad.append(f"{module}:{line} imports {target}")
        elif here.startswith("runtime") and top in BUILD_ONLY:
            bad.append(f"{module}:{line} imports {target}")
    return bad


def project_modules() -> list[tuple[Path, str]]:
    out = []
    for top in PROJECT:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            out.append((path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)))
    return out


def test_every_module_stays_in_its_room():
    modules = project_modules()
    assert {room(m) for _, m in modules} == set(ROOMS), "a folder the picture does not draw"
    bad = [v for path, module in modules for v in violations(path.read_text(), module)]
    assert not bad, "imports across the lines of docs/index.md:\n" + "\n".join(bad)


def test_every_runtime_error_class_is_defined_in_errors_py():
    """One place for the runtime's refusals; the modules that raise them import (and re-export) them."""
    import runtime.errors

    elsewhere = []
    for path, module in project_modules():
        if room(module).startswith("runtime") and module != "runtime.errors":
            elsewhere += [f"{module}:{node.lineno} {node.name}" for node in ast.walk(ast.parse(path.read_text()))
                          if isinstance(node, ast.ClassDef) and ("Error" in node.name or "Exception" in node.name)]
    assert not elsewhere, elsewhere
    defined = {name for name, value in vars(runtime.errors).items()
               if isinstance(value, type) and issubclass(value, Exception)}
    assert {"ArtifactError", "InputError", "FieldError", "SignatureError", "RepeatedKeyError", "IncomparableError",
            "CannotRunError", "EnsembleOnnxError", "LongIntegerError"} <= defined


@pytest.mark.parametrize(("module", "source", "expect"), [
    # the core reaching up into a tool, relatively or absolutely, lazily or not
    ("runtime.artifacts", "from .batch import results\n",
     ["runtime.artifacts:1 imports runtime.batch", "runtime.artifacts:1 imports runtime.batch.results"]),
    ("runtime.features", "def f():\n    import runtime.monitor.report\n",
     ["runtime.features:2 imports runtime.monitor.report"]),
    ("runtime", "from .monitor.compare import compare\n", ["runtime:1 imports runtime.monitor.compare"]),
    ("runtime.contract", "from . import batch\n", ["runtime.contract:1 imports runtime.batch"]),
    # anything of the runtime reaching into the build stack
    ("runtime.drift", "from convert.errors import PlanError\n", ["runtime.drift:1 imports convert.errors"]),
    ("runtime.batch.backfill", "import convert.cli\n", ["runtime.batch.backfill:1 imports convert.cli"]),
    # one tool into another
    ("runtime.monitor.compare", "from ..batch.results import write_file\n",
     ["runtime.monitor.compare:1 imports runtime.batch.results"]),
    ("runtime.batch.backfill", "from runtime.monitor import report\n",
     ["runtime.batch.backfill:1 imports runtime.monitor", "runtime.batch.backfill:1 imports runtime.monitor.report"]),
    # a heavy library in the core
    ("runtime.protowire", "import onnx\n", ["runtime.protowire:1 imports onnx"]),
    ("runtime.features", "from pyarrow import csv\n", ["runtime.features:1 imports pyarrow"]),
    # the build stack's libraries in a tool a serving host runs
    ("runtime.bench.host", "def f():\n    import onnx\n", ["runtime.bench.host:2 imports onnx"]),
    ("runtime.bench.floors", "from onnx import numpy_helper\n", ["runtime.bench.floors:1 imports onnx"]),
    # allowed: the core itself, numpy, stdlib, a signature's cryptography; tools on the core; convert on all
    ("runtime.artifacts", "import json\nimport numpy as np\nfrom .contract import canonical\n", []),
    ("runtime.signing", "def f():\n    from cryptography.hazmat.primitives import hashes\n", []),
    ("runtime.batch.backfill", "import pyarrow\nfrom .. import Ensemble\nfrom .results import write_file\n", []),
    ("runtime.monitor.evaluate", "from .compare import score_records\nfrom ..features import InputError\n", []),
    ("convert.cli", "from runtime.batch.backfill import score_file\nfrom runtime.monitor import compare\n", []),
])
def test_an_import_across_a_line_is_caught(module, source, expect):
    assert violations(source, module) == expect


# ----------------------------------------------------------------------------------- the tests' own layout

TESTS = REPO / "tests"
# A folder of tests -> the project package every test file in it must import (or run, as `python -m ...`):
# the tests mirror the packages. tests/attack/ and tests/project/ test across them.
MIRRORS = {"runtime": "runtime", "runtime/batch": "runtime.batch", "runtime/monitor": "runtime.monitor",
           "runtime/bench": "runtime.bench", "convert": "convert", "convert/members": "convert",
           "convert/cli": "convert", "convert/bench": "convert", "attack": None, "project": None}


def referred(source: str) -> set[str]:
    """Every module a test file imports, and every dotted name it runs as a string (`python -m convert.demo`)."""
    found = {target for _, target in imported(source, "tests")}
    found |= {node.value for node in ast.walk(ast.parse(source))
              if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier() is False
              and all(part.isidentifier() for part in node.value.split("."))}
    return found


def misplaced(files: list[Path], root: Path) -> list[str]:
    """Each test file outside the folders drawn, or in one whose package it never imports."""
    bad = []
    for path in files:
        folder = path.parent.relative_to(root).as_posix()
        if folder not in MIRRORS:
            bad.append(f"{path.relative_to(root)}: not in a folder that mirrors a package ({', '.join(MIRRORS)})")
        elif MIRRORS[folder] and not any(name == MIRRORS[folder] or name.startswith(MIRRORS[folder] + ".")
                                         for name in referred(path.read_text())):
            bad.append(f"{path.relative_to(root)}: imports nothing of {MIRRORS[folder]}")
    return bad


def test_every_test_file_sits_in_the_folder_of_what_it_tests():
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) > 40
    assert not misplaced(files, TESTS)


def test_test_file_names_are_unique_and_no_folder_is_a_package():
    """Without `__init__.py`, pytest imports each test file by its name alone: two of a name would collide."""
    names = [path.name for path in TESTS.rglob("*.py")]
    assert not [name for name in set(names) if names.count(name) > 1]
    assert not list(TESTS.rglob("__init__.py"))


@pytest.mark.parametrize(("rel", "source", "expect"), [
    ("runtime/batch/test_a.py", "from runtime.batch.results import write_file\n", []),
    ("runtime/batch/test_a.py", "import runtime\n", ["runtime/batch/test_a.py: imports nothing of runtime.batch"]),
    ("convert/test_a.py", "import subprocess\nsubprocess.run(['python', '-m', 'convert.demo'])\n", []),
    ("convert/members/test_a.py", "def f():\n    from convert.cli import main\n", []),
    ("convert/test_a.py", "import runtime\n", ["convert/test_a.py: imports nothing of convert"]),
    ("attack/test_a.py", "import json\n", []),
    ("test_a.py", "import runtime\n", ["test_a.py: not in a folder that mirrors a package"]),
    ("runtime/extra/test_a.py", "import runtime\n", ["runtime/extra/test_a.py: not in a folder that mirrors"]),
])
def test_a_test_file_out_of_its_folder_is_caught(tmp_path, rel, source, expect):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = misplaced([path], tmp_path)
    assert len(found) == len(expect) and all(got.startswith(want) for got, want in zip(found, expect, strict=True))
