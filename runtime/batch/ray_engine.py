"""Backfill on Ray: `ensemble-onnx score --engine ray`, the same answers as `runtime.batch.backfill` on a cluster.

Ray Data reads the input; `map_batches` runs `RayScorer`, a callable class that each actor builds once: it
receives the artifacts folder's files as bytes through the object store and verifies them against the
manifest's sha256 (`runtime.artifacts.verify_files`, the folder reader's own checks) before the first row,
so no actor scores with files it could not verify. Each actor runs `threads` onnxruntime intra-op threads
(one by default), so actors never oversubscribe the cores and a row's probabilities are bit-identical to a
local run's. The scored batches stream back to the driver in input order (Ray Data's preserve_order) and
go through the local engine's writer: the same output file, rejects, errors and atomic commit.

Without an address a local Ray is started for this machine, its actors asking for a fraction of a CPU:
on a small host, actors that each take a whole CPU leave none for the read tasks and the run deadlocks.
ray and pyarrow are imported inside the functions (`pip install 'ensemble-onnx[ray]'`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..artifacts import ArtifactError, read_files, verify_files
from ..errors import CannotRunError, InputError, install_hint
from . import backfill
from .backfill_io import csv_text_options, file_format, open_batches, require_pyarrow

INSTALL_HINT = "--engine ray needs Ray Data: " + install_hint("ray")
SENT_ARGS = "sent_args"  # an actor's refusal's own args, kept beside those Ray Data annotates


class RayScorer:
    """One per actor: verified artifacts loaded once, then Arrow batch in, assembled table out. An artifact
    refusal names `where` (the artifacts folder), a row's refusal names `source` (the input file)."""

    def __init__(self, files: Any, layout: backfill.Layout, threads: int, where: str, source: str,
                 expect_build_id: str | None = None, public_key: bytes | None = None) -> None:
        import ray

        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        self.layout, self.source = layout, source
        # verify_files, with the driver's trust options, before anything is scored
        self.ens = backfill.load_from_files(files, threads, where, expect_build_id, public_key)

    def __call__(self, batch: Any) -> Any:
        try:
            return backfill.score_batch(self.ens, self.layout, batch, self.source)
        except InputError as exc:
            # Ray Data appends its retry advice to args on the way to the driver; _refusal rebuilds from these.
            vars(exc)[SENT_ARGS] = exc.args
            raise


def _refusal(exc: BaseException) -> Exception | None:
    """The ArtifactError or InputError an actor raised, unwrapped from Ray's task and user-code errors, so
    the command line reports it as the local engine would (one message, exit 1)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # A RayTaskError(InputError) is an InputError too, with Ray's traceback text for its message: the
        # refusal itself is its `cause`.
        cause = getattr(current, "cause", None)
        if cause is None and isinstance(current, (InputError, ArtifactError)):
            return type(current)(*vars(current).get(SENT_ARGS, current.args))
        current = cause or current.__cause__
    return None


def cpu_shares(workers: int, cores: int, cluster: bool) -> tuple[float, float]:
    """(CPUs per read task, CPUs per actor). A cluster: one each. This machine: read tasks keep up to one
    CPU (half the machine at most) and the actors share the rest, so neither side can starve the other."""
    if cluster:
        return 1.0, 1.0
    read = min(1.0, cores / 2)
    return read, min(1.0, (cores - read) / workers)


def _dataset(ray: Any, path: Path, columns: list[str], read_cpus: float, blocks: int | None) -> Any:
    fmt = file_format(path)
    remote = {"num_cpus": read_cpus, "override_num_blocks": blocks}
    if fmt == "parquet":
        return ray.data.read_parquet(str(path), **remote)
    if fmt == "csv":
        return ray.data.read_csv(str(path), **remote, convert_options=csv_text_options(columns))
    return ray.data.read_json(str(path), lines=True, **remote)


def score_file_ray(artifacts: str | os.PathLike[str], input_path: str | os.PathLike[str],
                   output: str | os.PathLike[str], *, address: str | None = None, keep: list[str] | None = None,
                   members: bool = False, on_error: str = "fail", rejects: str | os.PathLike[str] | None = None,
                   threads: int = 1, workers: int = 2, batch_rows: int = 65536, force: bool = False,
                   progress: bool = False, expect_build_id: str | None = None,
                   public_key: str | os.PathLike[str] | bytes | None = None) -> backfill.Summary:
    """Score INPUT into OUTPUT with `workers` Ray actors; the same contract as backfill.score_file."""
    require_pyarrow()
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    input_path, output = Path(input_path), Path(output)
    rejects_path = Path(rejects) if rejects is not None else None
    backfill.check_batch_rows(batch_rows)
    backfill.check_paths(input_path, output, (rejects_path or backfill.default_rejects(output))
                         if on_error == "skip" else None, Path(artifacts), force)
    if file_format(input_path) == "jsonl":
        raise InputError(f"{input_path}: --engine ray reads Parquet and CSV; score JSON lines with the local engine.")
    files = read_files(artifacts, expect_build_id, public_key)
    key = backfill.key_bytes(public_key)
    # the driver refuses a bad (or untrusted) folder before any actor starts
    manifest = verify_files(files, artifacts, expect_build_id, key).manifest
    columns, total, _batches = open_batches(input_path, tuple(manifest["feature_names"]), batch_rows)
    layout = backfill.Layout.for_input(manifest, columns, keep, members, str(input_path))

    logging.getLogger("ray.data").setLevel(logging.WARNING if progress else logging.ERROR)
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
        except (ValueError, ConnectionError, RuntimeError, TimeoutError) as exc:  # no cluster there, no ray[client]
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise CannotRunError(f"--engine ray{f' --address {address}' if address else ''}: Ray could not start "
                                 f"({reason}); nothing was written.") from None
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # output rows in input order
        context.enable_progress_bars = False  # ours: one line, on a terminal only
        # An actor's InputError as itself, not a UserCodeException: Ray does not pickle __cause__, so the wrapped
        # refusal would reach the driver as text only (_refusal could not name the file and row).
        context.raise_original_map_exception = True
        files_ref = ray.put(files)
        # Actors past the cluster's CPUs only queue (8 actors on 2 cores held 3.9 GB); threads past a node's
        # cores oversubscribe it.
        cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
        workers = backfill.capped(workers, cluster_cpus, "--workers")
        threads = backfill.capped(threads, (os.cpu_count() or 1) if address is None else cluster_cpus, "--threads")
        read_cpus, per_actor = cpu_shares(workers, os.cpu_count() or 1, cluster=address is not None)
        # Blocks of about batch_rows rows (where the row count is known), so every actor gets work.
        blocks = max(workers, -(-total // batch_rows)) if total else None
        scored = _dataset(ray, input_path, columns, read_cpus, blocks).map_batches(
            RayScorer, fn_constructor_args=(files_ref, layout, threads, str(artifacts), str(input_path),
                                            expect_build_id, key),
            batch_size=batch_rows, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=per_actor)
        warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
        tables = (batch for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None))
        summary = backfill.Summary(str(input_path), str(output), engine="ray", workers=workers, threads=threads)
        return backfill.run(input_path, output, layout, tables, force, on_error, rejects_path, summary,
                            backfill.Progress(total, progress), batch_rows)
    except Exception as exc:
        refusal = _refusal(exc)
        if refusal is None:
            raise
        raise refusal from None
    finally:
        if started:
            ray.shutdown()
