"""The `torch` kind: the training code's own `nn.Module` class is the model, and the parity reference.

ensemble.json names it: `{"kind": "torch", "module": "pkg.mod:Class", "init": {...}, "code": "src",
"file": "x.pth"}`. The class is imported from `code` (a folder inside the models folder, default the folder
itself), built with `init`, and the state_dict is loaded into it strictly. The contract: `forward` takes
float32 rows [N, F], scaled as the member's scaler scales them, and returns logits [N, K]; the build exports
`softmax(forward)` and the gate compares it with that same instance. No rebuild stands between the two.

Importing the class runs the user's code: the models folder is trusted build input. The folder is on
`sys.path` for the import only, and the modules imported from it are forgotten afterwards (a second member
with a package of the same name gets its own); the runtime never imports any of it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import is_code_path
from runtime.errors import shortened

from ..errors import MetadataError, PlanError, UnsupportedModelError, UserCodeError
from ..loaders import load_state_dict
from ..manifest import file_sha256
from . import LoadedMember, MemberKind, MemberSource, register
from .export import CONTRACT
from .torch_common import export_onnx, load_strict, read_metadata, torch_reference, unwrap

KIND = "torch"
ENTRY_KEYS = ("module", "init", "code")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_SPEC = re.compile(rf"({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)\Z")
PROBE_ROWS = 2  # the output-shape check; the gate then runs 1, 7 and 512 rows
MAX_FEATURES = 2**20  # more names than a 1 MiB JSON file holds: a larger num_features is a typo, not a model


def parse_entry(entry: Mapping[str, Any], models_dir: Path, where: str) -> dict[str, Any]:
    """`module`, `init` and `code` of an ensemble.json entry, checked before anything is imported."""
    spec = entry.get("module")
    if not isinstance(spec, str) or not MODULE_SPEC.match(spec):
        raise MetadataError(f"{where}.module must name the training code's class as 'package.module:Class' "
                            f"(e.g. \"trading.models:PatchTST\"), got {shortened(repr(spec))}.")
    init = entry.get("init", {})
    if not isinstance(init, dict):
        raise MetadataError(f"{where}.init must be an object: the keyword arguments {spec} is built with.")
    odd = _non_finite(init, f"{where}.init")
    if odd is not None:  # the manifest records init, and JSON has no NaN or Infinity
        raise MetadataError(f"{odd} is not a finite number (NaN and Infinity are not JSON, and the manifest "
                            f"records init); write a finite number, or set the value in the class's code.")
    code = entry.get("code", ".")
    if not isinstance(code, str) or not code or "\0" in code:
        raise MetadataError(f"{where}.code must be the name of a folder inside {models_dir}.")
    relative = Path(code)
    if relative.is_absolute() or ".." in relative.parts:
        raise MetadataError(f"{where}.code: {shortened(code)} must be a folder inside {models_dir}, written "
                            f"relative to it (no '..', not absolute): the models folder is what a build reads.")
    folder = models_dir / relative
    if not folder.is_dir():
        raise PlanError(f"{where}.code: {folder} is not a folder; it holds the package that defines {spec}.")
    if not folder.resolve().is_relative_to(models_dir.resolve()):  # a link out of the models folder
        raise MetadataError(f"{where}.code: {folder} leads to {folder.resolve()}, outside {models_dir}.")
    return {"module": spec, "init": dict(init), "code": relative.as_posix()}


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinity inside a parsed JSON value (Python's json reads NaN, Infinity and
    1e999 as floats), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def _inside(file: str | None, folder: Path) -> bool:
    return bool(file) and Path(str(file)).resolve().is_relative_to(folder)


def _located(exc: BaseException, folder: Path, fallback: str) -> str:
    """file:line in the user's code where `exc` came from (the innermost frame there), else `fallback`."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _inside(f.filename, folder)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else fallback


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


@contextlib.contextmanager
def _code_on_path(folder: Path, top: str, where: str) -> Iterator[None]:
    """`folder` first on sys.path while the block runs; then sys.path as it was, and every module imported
    from the folder forgotten, so nothing of the user's code outlives the build step that needed it."""
    clash = sys.modules.get(top)
    if clash is not None:  # importing would return that package, not the training code
        raise PlanError(f"{where}.module: the package '{top}' is already imported by ensemble-onnx "
                        f"(from {getattr(clash, '__file__', None) or 'a built-in module'}); the training code's "
                        f"package cannot share its name. Rename the package, or import it from one that does not.")
    import torch

    saved, before, dtype = list(sys.path), set(sys.modules), torch.get_default_dtype()
    bytecode = sys.dont_write_bytecode
    sys.path.insert(0, str(folder))
    sys.dont_write_bytecode = True  # no __pycache__ written into the user's models folder
    importlib.invalidate_caches()  # a folder written after the path finders looked
    try:
        yield
    finally:
        sys.path[:] = saved
        sys.dont_write_bytecode = bytecode
        torch.set_default_dtype(dtype)  # training code may set it at import; the other members keep theirs
        for name in set(sys.modules) - before:
            module = sys.modules.get(name)
            if name == top or name.startswith(top + ".") or _inside(getattr(module, "__file__", None), folder):
                del sys.modules[name]


def _python_files(folder: Path) -> list[Path]:
    """Every Python source under `folder`; links to folders not followed (a linked folder counts by what was
    imported from it), `__pycache__` left out."""
    found = []
    for root, dirs, files in os.walk(folder):  # followlinks=False
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [Path(root, f) for f in files if f.endswith(".py")]
    return found


def _digests(folder: Path) -> dict[Path, str]:
    """sha256 of each regular Python source under `folder`, before the build imports any: code_files holds the
    record to these, since the code that ran is the code as it was imported."""
    digests = {}
    for path in _python_files(folder):
        if path.is_file() and not path.is_symlink():  # a FIFO is never opened; a link is judged by code_files
            with contextlib.suppress(OSError):  # unreadable: code_files refuses it by name
                digests[path] = file_sha256(path)
    return digests


def code_files(folder: Path, models_dir: Path, where: str, before: dict[Path, str] | None = None
               ) -> list[dict[str, str]]:
    """The training code the build ran, for the manifest: every Python source under `folder` (links to folders
    not followed, `__pycache__` left out) and every file a module was imported from there (a `.pyc` alone, an
    extension module, a module reached through a linked folder), each as its path in the models folder and its
    sha256 (streamed), sorted by path. While the code is still imported (the caller's `_code_on_path`). A file
    that leads outside the models folder is refused: a release could not tell which code made the build."""
    found = set(_python_files(folder))
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and (Path(file).is_relative_to(folder) or _inside(file, folder)):
            found.add(Path(file))
    records = []
    for path in found:
        try:
            real = path.resolve()
        except (RuntimeError, OSError):  # a loop of links: RuntimeError before Python 3.13, OSError after
            raise PlanError(f"{where}.code: {path} is a loop of symbolic links, not a file; remove it.") from None
        if not real.is_relative_to(models_dir):
            raise PlanError(f"{where}.code: {path} leads to {real}, outside {models_dir}; the manifest records the "
                            f"training code the build ran, which must be kept in the models folder.")
        if not real.is_file():
            raise PlanError(f"{where}.code: {path} is not a regular file (a link to nothing?); remove it or "
                            f"replace it with the file.")
        shown = (path.relative_to(models_dir) if path.is_relative_to(models_dir)
                 else real.relative_to(models_dir)).as_posix()
        if not is_code_path(shown):  # a backslash, a name that is not UTF-8: the runtime would refuse the manifest
            raise PlanError(f"{where}.code: {shortened(str(path))}: a file name the manifest cannot record (it "
                            f"holds a backslash or bytes that are not UTF-8 text); rename it.")
        try:
            digest = file_sha256(real)
        except OSError as exc:
            raise PlanError(f"{where}.code: {path} cannot be read ({exc.strerror}).") from None
        if before is not None and before.get(path, digest) != digest:
            # Code that rewrote itself (or another file of the folder) at import: the record would name bytes
            # that never ran, and verify would then fail the gate with no hint why.
            raise PlanError(f"{where}.code: {path} changed while the build ran (sha256 {before[path][:12]}... when "
                            f"the build started, {digest[:12]}... after the training code was imported and run); "
                            f"the manifest records the code the build ran. Keep the code from writing to its "
                            f"own files, then build again.")
        records.append({"file": shown, "sha256": digest})
    return sorted(records, key=lambda r: r["file"])


def _import_class(spec: str, folder: Path, where: str) -> Any:
    import torch

    module_name, _, attribute = spec.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PlanError(f"{where}.module: no module '{module_name}' under {folder} (looked for "
                            f"{folder / module_name.replace('.', '/')}.py or a package of that name).") from None
        raise UserCodeError(f"{_located(exc, folder, str(folder))}: importing {module_name} raised {_reason(exc)}; "
                            f"the training code needs a package this environment does not have.") from exc
    except (Exception, SystemExit) as exc:  # the user's code runs here: anything may come out of it
        raise UserCodeError(f"{_located(exc, folder, str(folder))}: importing {module_name} raised "
                            f"{_reason(exc)}.") from exc
    source = getattr(found, "__file__", None)
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise PlanError(f"{where}.module: {source} defines no '{attribute}'.")
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise UnsupportedModelError(f"{where}.module: {spec} in {source} is {type(found).__name__} "
                                    f"{shortened(repr(found))}, not a torch.nn.Module subclass.")
    try:
        defined = inspect.getsourcefile(found)
    except TypeError:  # a class with no source file (built in, or made where no module file is)
        defined = None
    if not _inside(defined, folder):  # the gate's reference must be the code shipped in the models folder
        link = f" (a link to {Path(defined).resolve()})" if defined and Path(defined).resolve() != Path(defined) else ""
        raise PlanError(f"{where}.module: {spec} is defined in {defined}{link}, outside {folder}; the class must be "
                        f"the training code kept in the models folder.")
    return found


def n_features_of(source: MemberSource, meta: dict[str, Any]) -> tuple[int, str]:
    """F, and where it was read: metadata `num_features`, its `feature_names`, or ensemble.json's names."""
    where = str(source.metadata)
    if "architecture" in meta:
        raise MetadataError(f"{where}: field 'architecture' is not read for kind 'torch': the class is built from "
                            f"ensemble.json's 'init' alone. Move its values there and remove it, or give the "
                            f"member \"metadata\": null.")
    stated = meta.get("num_features")
    names = meta.get("feature_names")
    if stated is not None and (not isinstance(stated, int) or isinstance(stated, bool) or stated < 1):
        raise MetadataError(f"{where}: num_features must be a positive integer, got {shortened(repr(stated))}.")
    if stated is not None and names is not None and stated != len(names):
        raise MetadataError(f"{where}: num_features={stated}, but feature_names lists {len(names)} names.")
    named = source.options.get("n_features")
    if stated is not None and named is not None and stated != named:  # before a probe of that width is allocated
        raise MetadataError(f"{where}: num_features={shortened(stated)}, but ensemble.json's feature_names lists "
                            f"{named} names.")
    if stated is not None and stated > MAX_FEATURES:
        raise MetadataError(f"{where}: num_features={shortened(stated)} is more features than any build takes "
                            f"(at most {MAX_FEATURES}); the metadata is wrong.")
    if stated is not None:
        return stated, "metadata num_features"
    if names is not None:
        return len(names), "metadata feature_names"
    if "n_features" in source.options:
        return int(source.options["n_features"]), "ensemble.json feature_names"
    raise MetadataError(f"{source.file}: kind 'torch' needs the number of input features: add \"feature_names\" "
                        f"to ensemble.json, or \"num_features\" / \"feature_names\" to the member's metadata.")


def _check_output(out: Any, rows: int, n_features: int, what: str, file: str) -> int:
    import torch

    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != rows or out.shape[1] < 2 \
            or out.dtype != torch.float32:
        got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
               else type(out).__name__)
        raise UnsupportedModelError(f"{file}: {what}.forward on float32 rows [{rows}, {n_features}] returned {got}; "
                                    f"the contract is float32 logits [N, K], K >= 2 classes.")
    # Probabilities would pass the gate (both sides take their softmax) and ship softmax(p), not p.
    if bool((out >= 0).all()) and bool(((out.sum(dim=1) - 1).abs() <= 1e-4).all()):
        raise UnsupportedModelError(f"{file}: {what}.forward returns rows of probabilities (each sums to 1); the "
                                    f"contract is logits, which the build turns into probabilities with softmax. "
                                    f"Return the values before the softmax (log-probabilities work too).")
    return int(out.shape[1])


TWIN_SEED = 20260207  # another seed than the first instance's: a tensor the state_dict misses comes out otherwise
TWIN_ROWS = 16


def _check_determined(cls: Any, init: dict[str, Any], state: dict[str, Any], module: Any, n_features: int,
                      file: Path, spec: str, folder: Path, defined: str) -> None:
    """Refuse a class whose answer the file does not determine: a second instance, built under another seed
    and loaded from the same state_dict, must answer as the first. A tensor kept outside the state_dict (a
    plain attribute, a non-persistent buffer, a layer in a Python list) is drawn anew by every instance, so
    the service's instance is not the build's, and the gate, comparing the build with its own instance,
    would pass; so would a forward that draws random numbers or changes the module's state. And each row must
    get the same answer alone as in a batch: the runtime scores batches of any size."""
    import torch

    try:
        with torch.random.fork_rng():
            torch.manual_seed(TWIN_SEED)
            twin = cls(**init)
    except (Exception, SystemExit) as exc:
        raise UserCodeError(f"{_located(exc, folder, defined)}: building {spec}(**init) a second time raised "
                            f"{_reason(exc)}.") from exc
    twin.eval()
    load_strict(twin, state, file, f"{spec}(**init)")
    # Half the rows near the scaled data, half out to the domain's first rung (20 standard deviations), where
    # the gate's edge rows also go: a tensor outside the state_dict may only matter there.
    spread = np.repeat([1.0, 20.0], TWIN_ROWS // 2)[:, None]
    rows = torch.from_numpy((np.random.default_rng(0).standard_normal((TWIN_ROWS, n_features)) * spread)
                            .astype(np.float32))
    try:
        with torch.no_grad():
            first, second = (torch.softmax(m(rows), dim=-1).double() for m in (module, twin))
            alone = torch.cat([torch.softmax(twin(rows[i:i + 1]), dim=-1).double() for i in range(TWIN_ROWS)])
    except (Exception, SystemExit) as exc:
        raise UserCodeError(f"{_located(exc, folder, defined)}: {spec}.forward on float32 rows "
                            f"[{TWIN_ROWS}, {n_features}] raised {_reason(exc)}.") from exc
    diff = float((first - second).abs().max()) if first.shape == second.shape else math.inf
    if not diff <= CONTRACT.tolerance:  # NaN too
        raise UnsupportedModelError(
            f"{file}: two instances of {spec}, each built with init and loaded from this file, answer the same "
            f"rows differently (max |diff| {diff:.3g}): the model is not determined by its state_dict. A tensor "
            f"kept outside it (a plain tensor attribute, a buffer with persistent=False, a layer in a Python list "
            f"instead of nn.ModuleList) is drawn anew by every instance, so the service's model is not the "
            f"build's; a forward that draws random numbers or changes the module's state does the same. "
            f"Register it (nn.Parameter, register_buffer, nn.ModuleList) and save the state_dict again, or make "
            f"forward deterministic.")
    mixed = float((second - alone).abs().max()) if second.shape == alone.shape else math.inf
    if not mixed <= CONTRACT.tolerance:
        raise UnsupportedModelError(
            f"{file}: {spec} answers a row otherwise in a batch of {TWIN_ROWS} than alone (max |diff| {mixed:.3g}): "
            f"forward mixes the rows of a batch (a statistic over dim 0, batch norm in training mode), so a row's "
            f"answer would depend on the rows served beside it, and the runtime scores batches of any size. "
            f"Compute each row from its own features.")


def build(source: MemberSource, export: bool) -> tuple[Any, dict[str, Any], list[str], Any, list[dict[str, str]]]:
    """The user's class, built with `init`, the state_dict loaded strictly, in eval mode; its hyperparameters
    record, the plan notes, with `export` its ONNX export, and the code files it ran (`code_files`). The user's
    code is importable during this call only (a forward that imports lazily still finds its package while it
    is traced)."""
    import torch

    if "module" not in source.options:
        raise PlanError(f"{source.file}: kind 'torch' is declared in ensemble.json, naming the class with "
                        f"\"module\": \"package.module:Class\" (docs/models-folder.md).")
    spec, init, code = source.options["module"], source.options.get("init", {}), source.options.get("code", ".")
    where = f"member {source.name}"
    n_features, width_from = n_features_of(source, read_metadata(source))
    folder = (source.file.parent / code).resolve()
    traced: list[str] = []
    onnx_model = None
    before = _digests(folder) if export else None  # export: the build that records the code
    with _code_on_path(folder, spec.split(".")[0].split(":")[0], where):
        cls = _import_class(spec, folder, where)
        defined = str(inspect.getsourcefile(cls))
        try:
            module = cls(**init)
        except (Exception, SystemExit) as exc:
            raise UserCodeError(f"{_located(exc, folder, defined)}: building {spec}(**init) with init "
                                f"{shortened(repr(init))} raised {_reason(exc)}.") from exc
        module.eval()
        probe = torch.zeros(PROBE_ROWS, n_features, dtype=torch.float32)
        probe[1] = torch.linspace(-1.0, 1.0, n_features)  # a second row unlike the first
        state, notes = unwrap(load_state_dict(source.file), set(module.state_dict()))
        load_strict(module, state, source.file, f"{spec}(**init)")
        try:
            with torch.no_grad():
                out = module(probe)
        except (Exception, SystemExit) as exc:
            raise UserCodeError(f"{_located(exc, folder, defined)}: {spec}.forward on float32 rows "
                                f"[{PROBE_ROWS}, {n_features}] raised {_reason(exc)}; the contract: forward takes "
                                f"the scaled rows [N, F] ({n_features} from {width_from}) and returns logits [N, K]."
                                ) from exc
        n_classes = _check_output(out, PROBE_ROWS, n_features, spec, str(source.file))
        _check_determined(cls, init, state, module, n_features, source.file, spec, folder, defined)
        if export:
            try:
                onnx_model = export_onnx(module, n_features, traced)
            except (Exception, SystemExit) as exc:  # an op torch.onnx lacks, or forward failing under tracing
                raise UnsupportedModelError(f"{_located(exc, folder, str(source.file))}: torch.onnx could not "
                                            f"export {spec} ({_reason(exc)}); only what the TorchScript exporter "
                                            f"traces converts.") from exc
        code_record = code_files(folder, source.file.parent.resolve(), where, before)  # forward's imports too
    record = {"module": spec, "init": init, "code": code, "input_size": n_features, "num_classes": n_classes,
              "parameters": sum(p.numel() for p in module.parameters())}
    notes += [f"class {spec} from {Path(defined).resolve().relative_to(source.file.parent.resolve()).as_posix()} "
              f"(imported for the build only; the gate's reference is this class)",
              f"init {json.dumps(init)[:200]} (from ensemble.json)",
              f"input_size={n_features} (from {width_from})", f"num_classes={n_classes} (from forward's output)"]
    notes += [f"tracing fixed a Python value at {t}; the parity gate checks the export against the class"
              for t in traced]
    notes.append(f"code: {len(code_record)} file(s) recorded with their sha256 (manifest members.{source.name}.code)")
    return module, record, notes, onnx_model, code_record


def load(source: MemberSource) -> LoadedMember:
    module, record, notes, onnx_model, code = build(source, export=True)
    return LoadedMember(source=source, n_features=record["input_size"], n_classes=record["num_classes"],
                        hyperparameters=record, reference=torch_reference(module), onnx_model=onnx_model,
                        feature_names=read_metadata(source).get("feature_names"), notes=notes, code=code)


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return torch_reference(build(source, export=False)[0])


# Not discovered by stamp (no service weight): ensemble.json names its class. No read_architecture: the class,
# not the state_dict, says what the model is, and `inspect` never imports code.
register(MemberKind(KIND, (".pth", ".pt", ".safetensors"), load, reference, entry_keys=ENTRY_KEYS,
                    parse_entry=parse_entry, frameworks=("torch",), distributions=("torch",), build_modules=("torch",)))
