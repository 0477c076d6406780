"""A member that reads float64 (the demo's LightGBM) is fed `PREFIX/float64`, an Identity of its own scaler's
float64 output; verify's deep check (convert/verify_graph.py) refuses any other wiring of it, as it does for the
float32 feeds, and the load refuses what onnxruntime or the manifest's parser can tell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from domain_rows import typical_rows
from forge import rebound

import runtime
from convert.verify_graph import check_combiner
from runtime.artifacts import read_folder


def _node(model: Any, output: str) -> Any:
    return next(n for n in model.graph.node if n.output[0] == output)


def _float64_from_raw_features(model: Any) -> None:
    # scaler0/float64 = Identity(features): the LightGBM member would read unscaled features.
    _node(model, "scaler0/float64").input[0] = "features"


def _float64_cast_to_float32(model: Any) -> None:
    # lightgbm/input = Identity(scaler0/float32): its float64 graph handed the float32 tensor instead.
    _node(model, "lightgbm/input").input[0] = "scaler0/float32"


def _float64_from_another_member(model: Any) -> None:
    from onnx import helper

    model.graph.node.insert(0, helper.make_node("Identity", ["scaler0/div"], ["xgboost/evil"]))
    _node(model, "lightgbm/input").input[0] = "xgboost/evil"


def test_the_demo_feeds_its_lightgbm_the_float64_scaler_output(demo_artifacts):
    import onnx

    graph = onnx.load(str(Path(demo_artifacts) / "ensemble.onnx")).graph
    feeds = {n.output[0]: (n.op_type, list(n.input)) for n in graph.node}
    assert feeds["lightgbm/input"] == ("Identity", ["scaler0/float64"])
    assert feeds["scaler0/float64"] == ("Identity", ["scaler0/div"])
    assert feeds["xgboost/input"] == ("Identity", ["scaler0/float32"])


FED_OTHERWISE = ("'lightgbm/input' is not an Identity of 'scaler0/float64' (its scaler's output, as fields "
                 "'members.lightgbm.scaler' and 'members.lightgbm.input_dtype' of manifest.json and the member "
                 "order say)")


def _input_dtype(value: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["members"]["lightgbm"].update(input_dtype=value)


@pytest.mark.parametrize(("edit", "edit_graph", "says"), [
    (None, _float64_from_raw_features, "'scaler0/float64' is computed by Identity(features), not by "
                                       "Identity(scaler0/div) as convert writes it"),
    (None, _float64_from_another_member, FED_OTHERWISE),
    # The manifest re-bound to say float32: the graph feeds float64, and is not what it says.
    (_input_dtype("float32"), None, "'lightgbm/input' is not an Identity of 'scaler0/float32'"),
])
def test_a_float64_member_reads_only_its_own_scalers_float64_output(demo_artifacts, tmp_path, edit, edit_graph,
                                                                    says):
    folder = rebound(demo_artifacts, tmp_path / "edited", edit or (lambda m: None), edit_graph=edit_graph)
    typed = read_folder(folder).typed  # the load's binding holds: only the deep check can tell
    with pytest.raises(runtime.ArtifactError) as err:
        check_combiner(typed, (folder / "ensemble.onnx").read_bytes(), folder / "ensemble.onnx",
                       folder / "manifest.json")
    assert says in str(err.value)


@pytest.mark.parametrize(("edit", "edit_graph", "says"), [
    # onnxruntime refuses a float32 tensor into double split values.
    (None, _float64_cast_to_float32, "onnxruntime cannot load it"),
    (_input_dtype("float16"), None, "field 'members.lightgbm.input_dtype' is 'float16', not one of ['float32', "
                                    "'float64']"),
])
def test_the_load_refuses_a_float64_feed_it_can_tell_is_wrong(demo_artifacts, tmp_path, edit, edit_graph, says):
    folder = rebound(demo_artifacts, tmp_path / "edited", edit or (lambda m: None), edit_graph=edit_graph)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder)
    assert says in str(err.value)


def test_a_member_without_input_dtype_reads_float32_as_builds_before_it(demo_artifacts):
    # Only a float64 member's record says so: the float32 ones are written as every build before the field wrote
    # them, and read as float32.
    import json

    written = json.loads((Path(demo_artifacts) / "manifest.json").read_text())["members"]
    assert {name: record.get("input_dtype") for name, record in written.items()} == {
        "xgboost": None, "lightgbm": "float64", "nhits": None, "patchtst": None}
    typed = runtime.contract.parse_manifest(json.loads((Path(demo_artifacts) / "manifest.json").read_text()))
    assert {name: record.input_dtype for name, record in typed.members.items()} == {
        "xgboost": "float32", "lightgbm": "float64", "nhits": "float32", "patchtst": "float32"}


def test_a_float64_member_scores_as_before_at_every_batch(demo_artifacts):
    ensemble = runtime.load(demo_artifacts)
    rows = typical_rows(ensemble, 64, seed=3, spread=0.5)
    whole = ensemble.member_probabilities(rows)["lightgbm"]
    alone = np.vstack([ensemble.member_probabilities(rows[i:i + 1])["lightgbm"] for i in range(len(rows))])
    assert np.array_equal(whole, alone)
