"""The lightgbm kind (`convert/members/lightgbm.py`): LightGBM compares float32 inputs with double thresholds,
and the export's thresholds agree with it at every boundary of the demo model."""

from __future__ import annotations

import numpy as np

from convert.demo import DemoSpec
from convert.loaders import load_pickle
from convert.members import MemberSource, get_kind

STAMP = DemoSpec().stamp


def test_lightgbm_thresholds_are_exact_for_float32_inputs(demo_models):
    """LightGBM compares float32 inputs with double thresholds; the export must agree at every boundary."""
    from convert.members.lightgbm import onnx_threshold
    from convert.members.trees import floor_float32

    member = get_kind("lightgbm").load(MemberSource("l", "lightgbm", demo_models / f"lightgbm_{STAMP}.pkl"))
    dump = load_pickle(demo_models / f"lightgbm_{STAMP}.pkl", "lightgbm").booster_.dump_model()
    doubles = [n["threshold"] for t in dump["tree_info"] for n in _splits(t["tree_structure"])]
    rounded_up = [t for t in doubles if float(np.float32(t)) > t]
    assert rounded_up, "the demo model should have thresholds that float32 rounding moves up"
    for t in rounded_up[:50]:
        v = np.float32(floor_float32(t))
        assert float(v) <= t < float(np.nextafter(v, np.float32(np.inf)))
    assert {(n["split_feature"], onnx_threshold(n["threshold"])) for t in dump["tree_info"]
            for n in _splits(t["tree_structure"])} == set(member.thresholds)


def _splits(node):
    if "split_index" in node:
        yield node
        yield from _splits(node["left_child"])
        yield from _splits(node["right_child"])

