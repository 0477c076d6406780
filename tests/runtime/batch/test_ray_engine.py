"""The Ray engine's parts (`runtime/batch/ray_engine.py`): the CPU shares of the driver and the actors, how an
actor's refusal is unwrapped from Ray's errors, and the refusals made on the driver before Ray starts. Real
pyarrow, real onnxruntime on the prebuilt demo build, a real local Ray where a test runs the engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from backfill_support import batch_of, layout_of, one_thread, rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pcsv = pytest.importorskip("pyarrow.csv")

import runtime  # noqa: E402  (after the skip: these tests need pyarrow)
from runtime.artifacts import ArtifactError, read_files  # noqa: E402
from runtime.batch import backfill, ray_engine  # noqa: E402
from runtime.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def ens(demo_artifacts: Path) -> runtime.Ensemble:
    return one_thread(demo_artifacts)


# ------------------------------------------------------------------------------ the Ray engine's helpers

@pytest.mark.parametrize(("workers", "cores", "cluster", "shares"), [
    (2, 16, True, (1.0, 1.0)),
    (64, 1, True, (1.0, 1.0)),
    (2, 2, False, (1.0, 0.5)),
    (1, 1, False, (0.5, 0.5)),
    (4, 16, False, (1.0, 1.0)),
    (8, 4, False, (1.0, 0.375)),
    (3, 1, False, (0.5, 0.5 / 3)),
])
def test_cpu_shares_leave_each_side_its_part(workers, cores, cluster, shares):
    assert ray_engine.cpu_shares(workers, cores, cluster) == shares


class Wrapped(Exception):
    """Like Ray's RayTaskError: the user's exception in `.cause`."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("task failed")
        self.cause = cause


def chained(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("user code failed") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("raised", "expect"), [
    (InputError("in.csv: row 2, bad"), InputError("in.csv: row 2, bad")),
    (Wrapped(ArtifactError("sent/ensemble.onnx: sha256 differs")), ArtifactError("sent/ensemble.onnx: sha256 differs")),
    (chained(InputError("x", "y")), InputError("x", "y")),
    (Wrapped(chained(Wrapped(ArtifactError("deep")))), ArtifactError("deep")),
    (Wrapped(None), None),
    ("ray", InputError("in.csv: row 2, bad")),
    (chained(ValueError("other")), None),
    (ValueError("plain"), None),
])
def test_refusal_unwraps_the_actors_input_or_artifact_error(raised, expect):
    if raised == "ray":  # what Ray raises on the driver: a RayTaskError that is also an InputError, Ray's text
        exceptions = pytest.importorskip("ray.exceptions")
        raised = exceptions.RayTaskError("fn", "Traceback: ...", InputError("in.csv: row 2, bad")).as_instanceof_cause()
        assert isinstance(raised, InputError) and str(raised) != "in.csv: row 2, bad"
    got = ray_engine._refusal(raised)
    if expect is None:
        assert got is None
    else:
        assert type(got) is type(expect) and got.args == expect.args and got is not raised


def test_refusal_prefers_rays_cause_to_python_s_and_stops_on_a_cycle():
    both = Wrapped(InputError("from ray"))
    both.__cause__ = ArtifactError("from python")
    assert ray_engine._refusal(both).args == ("from ray",)
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert ray_engine._refusal(a) is None


# ------------------------------------------------------------------- the Ray engine: refusals before Ray starts

def test_the_ray_engine_without_ray_says_how_to_install_it(demo_artifacts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(demo_artifacts, tmp_path / "in.parquet", tmp_path / "o.parquet")
    assert str(err.value) == ("--engine ray needs Ray Data: pip install --find-links dist/ 'ensemble-onnx[ray]' "
                              "(dist/: the folder with the wheel `make dist` builds), or pip install '.[ray]' in a "
                              "clone of the repository")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError, match=r"^backfill needs pyarrow: "):
        ray_engine.score_file_ray(demo_artifacts, tmp_path / "in.parquet", tmp_path / "o.parquet")


@pytest.mark.parametrize(("name", "on_error", "message"), [
    # fail mode checks no rejects file, so the default rejects name of o.parquet is a fine input (refused later
    # only for being JSON lines); skip mode refuses it as the input.
    ("o.rejects.jsonl", "fail", "SRC: --engine ray reads Parquet and CSV; score JSON lines with the local engine."),
    ("o.rejects.parquet", "skip", "--rejects SRC: is an input of this run (SRC); write the result to another file."),
])
def test_the_ray_engine_refuses_before_starting_ray(demo_artifacts, tmp_path, name, on_error, message):
    pytest.importorskip("ray")
    source = tmp_path / name
    source.write_text("{}\n")
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(demo_artifacts, source, tmp_path / "o.parquet", on_error=on_error)
    assert str(err.value) == message.replace("SRC", str(source))


def test_the_ray_engine_refuses_to_write_into_the_artifacts_folder(artifacts_copy, tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(InputError, match="is inside the artifacts folder"):
        ray_engine.score_file_ray(artifacts_copy, tmp_path / "in.parquet", artifacts_copy / "o.parquet")


def test_the_ray_engine_refuses_a_tampered_build_and_a_bad_header_on_the_driver(artifacts_copy, ens, tmp_path):
    pytest.importorskip("ray")
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1], ens.feature_names[0]: [0.5]}), source)
    with pytest.raises(InputError) as err:
        ray_engine.score_file_ray(artifacts_copy, source, tmp_path / "o.parquet")
    assert str(err.value) == f"{source}: missing feature column(s) {list(ens.feature_names[1:])}."
    graph = artifacts_copy / "ensemble.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + bytes([graph.read_bytes()[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="ensemble.onnx"):
        ray_engine.score_file_ray(artifacts_copy, source, tmp_path / "o.parquet")


@pytest.mark.slow
def test_the_ray_engine_scores_csv_like_the_local_engine_and_reports_an_actors_refusal_as_its_own(
        demo_artifacts, ens, tmp_path):
    """Found: an actor's refusal reached the command line as Ray's UserCodeException text (Ray does not pickle
    __cause__), and named the artifacts folder where the local engine names the input file. One local Ray for
    both runs (score_file_ray uses a Ray already started, and leaves it running)."""
    ray = pytest.importorskip("ray")
    x = rows(ens, 40, seed=21)
    source = tmp_path / "in.csv"
    pcsv.write_csv(pa.Table.from_batches([batch_of(x, ens.feature_names, sym=[f"S{i}" for i in range(40)])]), source)
    lines = source.read_text().splitlines(keepends=True)
    cells = lines[3].split(",")
    cells[1] = '""'  # row 3: an empty cell is a null, not text
    lines[3] = ",".join(cells)
    lines[7] = lines[7].replace(lines[7].split(",")[2], '"abc"', 1)  # row 7: text that is not a number
    source.write_text("".join(lines))
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({**{f: [0.5, 0.5] for f in ens.feature_names}, ens.feature_names[3]: [True, False]}),
                   typed)
    flags: dict[str, Any] = {"members": True, "batch_rows": 16, "on_error": "skip"}
    local = backfill.score_file(demo_artifacts, source, tmp_path / "local.parquet", **flags)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = ray_engine.score_file_ray(demo_artifacts, source, tmp_path / "ray.parquet", workers=1, **flags)
        with pytest.raises(InputError) as err:
            ray_engine.score_file_ray(demo_artifacts, typed, tmp_path / "typed.csv", workers=1)
    finally:
        ray.shutdown()
    assert pq.read_table(tmp_path / "ray.rejects.parquet").column("reason").to_pylist() == [
        f"column '{ens.feature_names[0]}': missing (null)", f"column '{ens.feature_names[1]}': 'abc' is not a number"]
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    assert {**summary.as_dict(), "seconds": 0, "rows_per_second": 0, "output": "", "rejects_file": ""} == {
        **local.as_dict(), "engine": "ray", "seconds": 0, "rows_per_second": 0, "output": "", "rejects_file": ""}
    assert type(err.value) is InputError and str(err.value) == (
        f"{typed}: column '{ens.feature_names[3]}' is of type bool, not numbers; every feature must be numeric.")
    assert not (tmp_path / "typed.csv").exists()


def test_an_actor_refuses_a_bad_batch_naming_the_input_file(demo_artifacts, ens):
    pytest.importorskip("ray")
    layout = layout_of(ens)
    scorer = ray_engine.RayScorer(read_files(demo_artifacts), layout, 1, "sent", "in.parquet")
    batch = pa.RecordBatch.from_pydict({f: pa.array([None], pa.bool_()) for f in ens.feature_names})
    with pytest.raises(InputError) as err:
        scorer(batch)
    message = (f"in.parquet: column '{ens.feature_names[0]}' is of type bool, not numbers; every feature must be "
               f"numeric.")
    assert err.value.args == (message,) and vars(err.value)["sent_args"] == (message,)


def test_refusal_rebuilds_an_actors_refusal_from_its_own_args_not_rays_annotated_ones():
    sent = InputError("in.csv: column 'f' is of type bool")
    vars(sent)["sent_args"] = sent.args
    sent.args = ("in.csv: column 'f' is of type bool\nFailed to apply UDF transform after 1/1 attempts.",)
    got = ray_engine._refusal(sent)
    assert type(got) is InputError and got.args == ("in.csv: column 'f' is of type bool",)

