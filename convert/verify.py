"""`ensemble-onnx verify`: does an existing artifacts folder still come from, and still agree with, these
model files? What a release pipeline runs before promoting a build.

The folder is read as `runtime.load` reads it (hashes, binding, an optional pin and key), then its graph is
read back against its manifest (`verify_graph.check_combiner`: the weights, temperatures, member order and
decision policy the manifest reports must be the ones the graph computes with; the load does not read them).
Then the sources: every source file the manifest names must be in MODELS with the same sha256, then the plan
(the manifest's classes, features, members, weights, decision policy and precision must be what these
sources would build, field by field), then numbers:
the members are rebuilt from those files and the parity gate is run again on the very ONNX bytes in the
artifacts folder (not on a new export), with recorded features added when given.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import manifest as mf
from .build import Progress, domain_of, load_plan, read_features_file, run_parity
from .discover import Plan, make_plan, plan_from_manifest
from .domain import Domain
from .errors import UnsupportedModelError, VerifyError
from .members import LoadedMember, input_dtype
from .members.torch_common import one_thread
from .members.trees import OPTIONS, recorded_options
from .parity import summary
from .precision import Precision
from .verify_graph import check_combiner

log = logging.getLogger(__name__)


def source_files(manifest: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(what it is, {"file", "sha256"}) for every model file the artifacts were built from."""
    out = [(f"members.{name}.{part}", m[part]) for name, m in manifest["members"].items()
           for part in ("source", "metadata", "scaler") if m.get(part)]
    out += [(f"members.{name}.code", record) for name, m in manifest["members"].items()
            for record in m.get("code") or []]  # a torch member's training code, file by file
    if manifest["combine"]["method"] == "stacking":
        out.append(("combine.source", manifest["combine"]["source"]))
    return out


def check_sources(manifest: dict[str, Any], models: Path) -> None:
    """Every source file present in `models` with the sha256 the manifest recorded; VerifyError otherwise."""
    problems = []
    for what, record in source_files(manifest):
        if (outside := _outside(models, what, record["file"])) is not None:
            problems.append(outside)  # never read: a forged manifest must not make verify hash any file it names
            continue
        path = models / record["file"]
        if not path.is_file():
            problems.append(f"{path}: missing ({what} in manifest.json)")
        elif mf.file_sha256(path) != record["sha256"]:
            problems.append(f"{path}: sha256 differs from the one the artifacts were built from ({what})")
    if problems:
        raise VerifyError(f"the artifacts were not built from {models}:\n  " + "\n  ".join(problems)
                          + "\nRebuild with `ensemble-onnx convert`, or point --models at the files of that build.")


def _outside(models: Path, what: str, file: str) -> str | None:
    """Why `file` (as the manifest names it) is not a file of the models folder, or None. convert records a model
    file by its bare name (discover refuses a path) and training code by its path in the folder, refusing a link
    out of it; a manifest naming '/etc/passwd' or '../x', or code reached through a link leading out, was not
    written by convert, and verify reads nothing outside `models` for it."""
    from runtime.contract import is_code_path
    from runtime.errors import shortened

    code = what.endswith(".code")
    if not (is_code_path(file) if code else file == Path(file).name and file not in ("", ".", "..")):
        return f"{shortened(file)}: not a file in {models} ({what} in manifest.json); convert records none such"
    if code:
        try:
            real = (models / file).resolve()
        except (RuntimeError, OSError):  # a loop of links: RuntimeError before Python 3.13, OSError after
            return f"{models / file}: a loop of symbolic links ({what} in manifest.json)"
        if not real.is_relative_to(models.resolve()):
            return (f"{models / file}: leads to {real}, outside {models} ({what} in manifest.json); the training "
                    f"code must be in the models folder")
    return None


def plan_differences(manifest: dict[str, Any], plan: Plan) -> list[str]:
    """Every manifest field that differs from what `plan` (made from the sources) would build, by path."""
    out = []

    def differ(path: str, built: Any, planned: Any) -> None:
        if built != planned:
            out.append(f"{path}: the artifacts have {built!r}, the sources give {planned!r}")

    differ("classes", manifest["classes"], plan.classes)
    differ("ensemble.members", manifest["ensemble"]["members"], [m.name for m in plan.members])
    for m in plan.members:
        built = manifest["members"].get(m.name, {})
        differ(f"members.{m.name}.kind", built.get("kind"), m.kind)
        differ(f"members.{m.name}.weight", built.get("weight"), m.weight)
        differ(f"members.{m.name}.source.file", (built.get("source") or {}).get("file"), m.file.name)
        # How the service called the model (ensemble.json's "rounds", "missing") is part of what was built.
        # (A torch kind's module/init/code are checked by re-importing the class and re-running the gate.)
        differ(f"members.{m.name}.hyperparameters.options", recorded_options(built.get("hyperparameters") or {}),
               {k: v for k, v in m.options.items() if k in OPTIONS})
        # The manifest's metadata and scaler are what verify rebuilds from: they must be the ones planned.
        for part, planned_file in (("metadata", m.metadata), ("scaler", m.scaler)):
            differ(f"members.{m.name}.{part}.file", (built.get(part) or {}).get("file"),
                   planned_file.name if planned_file else None)
    differ("combine.method", manifest["combine"]["method"], plan.combine["method"])
    if plan.combine["method"] == "stacking":
        differ("combine.source.file", (manifest["combine"].get("source") or {}).get("file"), plan.combine["file"].name)
    decision, planned = manifest.get("decision") or {}, plan.decision.record()
    # Temperatures fitted by --calibrate come from labelled rows, not from the sources: the parity gate
    # below holds the graph to the manifest's; a policy written in ensemble.json must match as written.
    for key in ("min_confidence", "fallback") if decision.get("calibration") else ("temperature", "min_confidence",
                                                                                  "fallback"):
        differ(f"decision.{key}", decision.get(key), planned[key])
    precision = manifest.get("precision") or {"weights": "fp32"}
    try:
        known = Precision.from_record(precision).record(precision.get("quantized_nodes"))
    except UnsupportedModelError as exc:  # a precision this version does not know
        out.append(f"precision: {exc}")
    else:
        # build_host records where it was built: another host verifying it computes its own.
        differ("precision", {k: v for k, v in precision.items() if k != "build_host"},
               {k: v for k, v in known.items() if k != "build_host"})
    return out


def dtype_differences(manifest: dict[str, Any], members: list[LoadedMember]) -> list[str]:
    """Members whose graph reads another dtype than this version's export of them (a folder built before a
    kind read the float64 row in double: its float32 splits differ from the framework between float32 values)."""
    out = []
    for member in members:
        built = (manifest["members"].get(member.source.name) or {}).get("input_dtype", "float32")
        if built != input_dtype(member):
            out.append(f"members.{member.source.name}.input_dtype: the artifacts feed it {built}, this version "
                       f"{input_dtype(member)} (as its framework computes with the service's float64 rows)")
    return out


@one_thread()  # the figures a build recorded, reproduced under the same conditions
def verify(artifacts: Path, models: Path, data: Path | None = None, progress: Progress = log.info,
           public_key: Path | None = None, expect_build_id: str | None = None) -> dict[str, Any]:
    from runtime.artifacts import read_folder
    from runtime.contract import MANIFEST_FILE

    progress(f"checking {artifacts} and the sha256 of its files")
    # The pin and the key on the one read the parity gate then runs on: checked on an earlier read, a folder
    # swapped in between (another build signed by the same key) would be verified in the pinned one's name.
    folder = read_folder(artifacts, expect_build_id, public_key)
    manifest, files = folder.manifest, folder.files
    graph = folder.typed.ensemble.file
    progress(f"checking that {graph} computes what {MANIFEST_FILE} says")
    check_combiner(folder.typed, files[graph], artifacts / graph, artifacts / MANIFEST_FILE)
    progress(f"checking the source files in {models}")
    check_sources(manifest, models)
    planned = make_plan(models)
    kinds = list(dict.fromkeys(manifest["members"][n]["kind"] for n in manifest["ensemble"]["members"]))
    if not (models / "ensemble.json").exists() and sorted(kinds) != sorted(m.kind for m in planned.members):
        planned = make_plan(models, kinds)  # a `convert --only` build: discovery in the order it was given
    problems = plan_differences(manifest, planned)
    if problems:
        raise VerifyError(f"{artifacts}: manifest.json is not what {models} builds:\n  " + "\n  ".join(problems)
                          + "\nRebuild with `ensemble-onnx convert`.")
    loaded = load_plan(plan_from_manifest(manifest, models), progress)
    problems = dtype_differences(manifest, loaded.members)
    if problems:
        raise VerifyError(f"{artifacts}: built by a version that fed its members otherwise:\n  " + "\n  ".join(problems)
                          + "\nRebuild with `ensemble-onnx convert`.")
    if loaded.feature_names != manifest["feature_names"]:
        raise VerifyError(f"{models}: the model files name the features {loaded.feature_names[:3]}..., the "
                          f"artifacts {manifest['feature_names'][:3]}...; rebuild with `ensemble-onnx convert`.")
    member_bytes = {name: files[m["onnx"]["file"]] for name, m in manifest["members"].items()}
    recorded = read_features_file(data, loaded.feature_names) if data else None
    domain = None
    shipped, precision = files[manifest["ensemble"]["file"]], Precision.from_record(manifest.get("precision"))
    if folder.typed.domain is not None:  # the range it serves, with the rungs and rows under it as the build ran them
        served = Domain.from_record(folder.typed.domain)
        # Its range as recorded rows: a band past what the search proves (recorded rows a build was made with, or
        # a build of an older version whose search went further) is proven through, not only at its edges.
        rungs = domain_of(loaded, np.vstack([served.lo, served.hi]), member_bytes, shipped, precision,
                          "this build serves a range")
        domain = replace(served, sds=rungs.sds, ladder=rungs.ladder,
                         inside=rungs.inside, stopped=rungs.stopped)
    report = run_parity(loaded, member_bytes, shipped, recorded, progress, precision, domain)
    result = {"artifacts": str(artifacts), "models": str(models), "build_id": folder.build_id,
              "signed": public_key is not None, "sources": len(source_files(manifest)),
              "passed": report["passed"], "parity": summary(report), "failures": report["failures"]}
    if not report["passed"]:
        raise VerifyError(f"{artifacts} no longer passes the parity gate against {models}:\n  "
                          + "\n  ".join(report["failures"]) + "\nRebuild with `ensemble-onnx convert` and look at "
                          "what changed in the libraries (manifest.json 'libraries').")
    return result
