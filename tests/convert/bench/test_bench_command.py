"""`ensemble-onnx bench` through the real CLI on the real demo models and build: the table, JSON and plot it
writes, each build named and measured against one frameworks figure, the graph cost it counts, and its
refusals. No timing is asserted: only that the figures exist and agree with each other."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from convert.cli import main

STAMP = "v20260205_231109_v5"


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


# -------------------------------------------------------------------------------------------- bench

def test_bench_quick_run_writes_table_json_and_plot(demo_models, demo_artifacts, tmp_path):
    result = invoke("bench", demo_artifacts, "--models", demo_models, "--threads", "1", "--quick", "--out", tmp_path,
                    "--json", "-q")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    entry = figures["threads"]["1"]
    runtime, frameworks = entry["builds"]["fp32"]["runtime"], entry["frameworks"]
    for pipeline in (runtime, frameworks):
        assert pipeline["one_row_p50_us"] > 0 and pipeline["rows_per_second"] > 0
        assert pipeline["cold_start_seconds"] > 0 and pipeline["cold_peak_rss_mib"] > 0
    # The runtime worker must not have the frameworks in its address space.
    assert runtime["cold_peak_rss_mib"] < frameworks["cold_peak_rss_mib"]
    assert entry["builds"]["fp32"]["floor"]["one_row_floor_us"] > 0
    assert figures["installed_mib"]["runtime"] < figures["installed_mib"]["frameworks"]
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert "| 1 | one row, p50 | fp32 |" in (tmp_path / "bench.md").read_text()


def test_bench_names_each_build_and_measures_the_frameworks_once(demo_models, demo_artifacts, tmp_path):
    """Two builds of the same models: each gets its floor and its ratios against one frameworks figure."""
    other = shutil.copytree(demo_artifacts, tmp_path / "again")
    result = invoke("bench", demo_artifacts, other, "--models", demo_models, "--threads", "1", "--quick",
                    "--out", tmp_path / "bench", "--json", "-q")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["threads"]["1"]
    assert sorted(entry["builds"]) == sorted([demo_artifacts.name, "again"])  # both fp32: named by folder
    for build in entry["builds"].values():
        assert build["ratios"]["one_row_p50_speedup"] == pytest.approx(
            entry["frameworks"]["one_row_p50_us"] / build["runtime"]["one_row_p50_us"])


@pytest.mark.parametrize("scaler", [True, False])
def test_bench_rows_are_inside_every_builds_domain(scaler):
    """Found: with no scaler the bench drew rows around 0 with scale 1 on every feature, past a narrow feature's
    domain: refused, not timed. Rows come from the scaler where there is one, and every build takes them."""
    import numpy as np

    from convert.bench.run import bench_rows

    names = ["rsi", "return_1h"]
    wide = {"feature_names": names, "domain": {"lo": [-650.0, -0.4], "hi": [750.0, 0.4]}}
    narrow = {"feature_names": names, "domain": {"lo": [40.0, -0.4], "hi": [750.0, 0.001]}}
    mean, scale = (np.array([50.0, 0.0]), np.array([7.0, 0.004])) if scaler else (None, None)
    rows = bench_rows([wide, narrow], mean, scale, 512)
    assert rows.shape == (512, 2)
    assert ((rows >= [40.0, -0.4]) & (rows <= [750.0, 0.001])).all()  # inside both domains
    assert (rows.std(axis=0) > 0).all()
    if scaler:  # drawn on the scaler's scale: a 1-hour return of 0.004 a deviation, not 1
        assert np.abs(rows[:, 1]).max() < 0.1 and np.abs(rows[:, 0] - 50).max() < 60


def test_bench_refuses_models_the_artifacts_did_not_come_from(models_copy, demo_artifacts, tmp_path):
    (models_copy / f"xgboost_{STAMP}.pkl").write_bytes(b"other")
    result = invoke("bench", demo_artifacts, "--models", models_copy, "--quick", "--out", tmp_path)
    assert result.exit_code == 1 and f"xgboost_{STAMP}.pkl" in result.output


def test_graph_cost_counts_every_weight_of_the_exported_members(demo_models, demo_artifacts):
    """Counted independently from the torch modules' own parameters."""
    import torch

    from convert.members import MemberSource, nhits
    from runtime.bench.floors import graph_cost

    weight_bytes, flops = graph_cost((demo_artifacts / "members" / "nhits.onnx").read_bytes())
    source = MemberSource("nhits", "nhits", demo_models / f"nhits_{STAMP}.pth",
                          demo_models / f"nhits_{STAMP}_meta.json")
    module, _ = nhits.rebuild(source, nhits.read_architecture, nhits.build_module)
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert flops == sum(2 * m.weight.numel() for m in linears)
    assert weight_bytes == sum(p.numel() * 4 for p in module.parameters())


def test_patchtst_export_drops_query_and_key_weights(demo_artifacts):
    """One token: attention is out_proj(v_proj(x)); the folded graph carries no 3-D attention at all."""
    import onnx

    graph = onnx.load(demo_artifacts / "members" / "patchtst.onnx").graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"MatMul", "Transpose", "Reshape", "Unsqueeze", "ReduceMean"}, ops
    assert sum(n.op_type == "LayerNormalization" for n in graph.node) == 8

