"""XGBoost: an XGBClassifier / XGBRFClassifier pickle (allowlisted) or a native .json / .ubj, exported from
the model's own JSON into one ONNX TreeEnsembleRegressor (the margins) and a softmax or sigmoid.

The export reads every tree off `save_raw("json")`, which is what XGBoost itself predicts with: each tree's
class comes from `tree_info` (a random forest, `num_parallel_tree` > 1, grows several trees per class and
round, which a tree-index-modulo-classes layout would misassign), a dart booster's trees are scaled by their
`weight_drop`, the base score is the model's own (a probability for binary:logistic, a margin otherwise),
and a model trained with early stopping keeps the trees up to `best_iteration`, as `predict_proba` does.
XGBoost splits on `x < threshold` with float32 thresholds, so BRANCH_LT on float32 inputs is exact.
What ONNX cannot express is refused by name: gblinear, multi-output trees, categorical splits, and a
`missing` value other than NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedModelError
from ..loaders import load_pickle
from . import LoadedMember, MemberKind, MemberSource, register
from .export import CONTRACT, to_contract

SUPPORTED_OBJECTIVES = ("multi:softprob", "multi:softmax", "binary:logistic")


def read_model(source: MemberSource) -> Any:
    import xgboost

    if source.file.suffix in (".json", ".ubj"):
        if source.file.suffix == ".json":
            check_json_trees(source.file)  # libxgboost trusts the file: a bad tree id corrupts its heap
        model = xgboost.XGBClassifier()
        try:
            model.load_model(source.file)
        except xgboost.core.XGBoostError as exc:
            raise ModelFileError(f"{source.file}: not a readable XGBoost model ({str(exc).splitlines()[0]}).") from exc
        except TypeError as exc:  # xgboost refuses to load a regressor's file into a classifier
            raise UnsupportedModelError(f"{source.file}: not a classifier ({exc}); the ensemble needs class "
                                        f"probabilities.") from exc
        return model
    model = load_pickle(source.file, "xgboost")
    if not isinstance(model, xgboost.XGBClassifier):
        raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected an XGBClassifier.")
    return model


def _int(value: Any) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        return None


def check_json_trees(file: Any) -> None:
    """The tree structure of an XGBoost JSON model, checked before libxgboost reads it: it indexes its
    arrays with the file's tree ids and child ids unchecked (a negative `tree_info` aborts the process with
    heap corruption; a child pointing back up loops forever)."""
    from ..loaders import read_checked

    try:  # the C parser: model files run to many megabytes; the model-file size limit applies
        raw = json.loads(read_checked(file, "model", "XGBoost JSON model"))
    except (ValueError, RecursionError):
        return  # not JSON at all: xgboost's own reader refuses it with its message
    try:
        learner = raw["learner"]
        param = learner["learner_model_param"]
        booster = learner["gradient_booster"]
        model = booster["gbtree"]["model"] if booster.get("name") == "dart" else booster.get("model")
    except (KeyError, TypeError):
        raise ModelFileError(f"{file}: not an XGBoost JSON model (no learner.gradient_booster).") from None
    if not isinstance(model, dict) or "trees" not in model:
        return  # gblinear and others: refused by name once loaded
    if any(str((t.get("tree_param") or {}).get("size_leaf_vector", "1")) not in ("0", "1")
           for t in (model["trees"] if isinstance(model["trees"], list) else []) if isinstance(t, dict)):
        return  # vector leaves (multi_output_tree), laid out otherwise: refused by name once loaded
    groups = max(1, _int(param.get("num_class")) or 0, _int(param.get("num_target")) or 0)
    n_features = _int(param.get("num_feature"))
    trees, info = model.get("trees"), model.get("tree_info")
    if not isinstance(trees, list) or not isinstance(info, list) or len(info) != len(trees):
        raise ModelFileError(f"{file}: gradient_booster: 'trees' and 'tree_info' must be lists of one length.")
    for t, group in enumerate(info):
        if _int(group) is None or not 0 <= int(group) < groups:
            raise ModelFileError(f"{file}: tree_info[{t}] is {str(group)[:40]}; it must be a class index from 0 to "
                                 f"{groups - 1}.")
    for t, tree in enumerate(trees):
        try:
            left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
            n = len(left)
            ok = isinstance(left, list) and len(right) == n and len(split) == n and n > 0
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise ModelFileError(f"{file}: tree {t}: left_children, right_children and split_indices must be lists "
                                 f"of one length.")
        for node, (lc, rc, f) in enumerate(zip(left, right, split, strict=True)):
            lc, rc, f = _int(lc), _int(rc), _int(f)
            leaf = lc == -1 and rc == -1
            # XGBoost numbers a node's children after the node itself: anything else is a cycle or out of range.
            if not leaf and not (lc is not None and rc is not None and node < lc < n and node < rc < n
                                 and f is not None and 0 <= f and (n_features is None or f < n_features)):
                raise ModelFileError(f"{file}: tree {t}, node {node}: children ({left[node]}, {right[node]}) or "
                                     f"split feature {split[node]} out of range; the file is corrupt.")


def _check_expressible(model: Any, config: dict[str, Any], file: Any) -> str:
    """The objective, once every option ONNX cannot express has been refused by name."""
    learner = config["learner"]
    booster = learner["gradient_booster"]["name"]
    if booster == "gblinear":
        raise UnsupportedModelError(f"{file}: booster 'gblinear' (a linear model, no trees) is not exported; "
                                    f"retrain with booster='gbtree' or 'dart'.")
    if learner.get("learner_train_param", {}).get("multi_strategy") == "multi_output_tree":
        raise UnsupportedModelError(f"{file}: multi_strategy 'multi_output_tree' (vector leaves) has no ONNX tree "
                                    f"equivalent here; retrain with multi_strategy='one_output_per_tree'.")
    missing = getattr(model, "missing", math.nan)
    if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
        raise UnsupportedModelError(f"{file}: trained with missing={missing!r}; XGBoost then treats that value as "
                                    f"absent, which the ONNX tree operator cannot (it knows only NaN). Retrain "
                                    f"with the default missing=nan.")
    objective = learner["objective"]["name"]
    if objective not in SUPPORTED_OBJECTIVES:
        raise UnsupportedModelError(f"{file}: objective '{objective}' gives no class probabilities the ensemble "
                                    f"can use ({', '.join(SUPPORTED_OBJECTIVES)}).")
    return objective


def _tree_model(raw: dict[str, Any]) -> dict[str, Any]:
    booster = raw["learner"]["gradient_booster"]
    return booster["gbtree"]["model"] if booster["name"] == "dart" else booster["model"]


def _trees(raw: dict[str, Any], rounds: int) -> tuple[list[dict[str, Any]], list[int], list[float]]:
    """(trees, class of each tree, weight of each tree) for the first `rounds` boosting rounds."""
    booster, model = raw["learner"]["gradient_booster"], _tree_model(raw)
    count = int(model["iteration_indptr"][rounds])
    weights = booster.get("weight_drop", [1.0] * len(model["trees"]))
    return model["trees"][:count], [int(c) for c in model["tree_info"][:count]], [float(w) for w in weights[:count]]


def split_thresholds(trees: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """Every (feature index, float32 threshold) the trees split on."""
    return sorted({(int(f), float(np.float32(c)))
                   for tree in trees
                   for f, c, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"],
                                         strict=True)
                   if left != -1})


def _base_margins(raw: dict[str, Any], objective: str, n_groups: int) -> list[float]:
    text = raw["learner"]["learner_model_param"]["base_score"]
    values = [float(v) for v in (json.loads(text) if text.startswith("[") else [text])]
    if objective == "binary:logistic":  # stored as a probability; XGBoost adds its logit to the margin
        values = [math.log(v / (1.0 - v)) for v in values]
    return values * n_groups if len(values) == 1 else values


def tree_ensemble(trees: list[dict[str, Any]], groups: list[int], weights: list[float], n_groups: int,
                  base: list[float], file: Any) -> Any:
    """The ai.onnx.ml TreeEnsembleRegressor that sums each group's (class's) tree outputs into its margin."""
    from onnx import helper

    a: dict[str, Any] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes", "nodes_truenodeids",
        "nodes_falsenodeids", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t, (tree, group, weight) in enumerate(zip(trees, groups, weights, strict=True)):
        if int(tree["tree_param"].get("size_leaf_vector", 1)) > 1:  # a saved file forgets multi_strategy
            raise UnsupportedModelError(f"{file}: tree {t} has vector leaves (multi_strategy='multi_output_tree'); "
                                        f"the export handles one output per tree. Retrain with "
                                        f"multi_strategy='one_output_per_tree'.")
        if any(int(s) != 0 for s in tree.get("split_type", [])):
            raise UnsupportedModelError(f"{file}: tree {t} has categorical splits (enable_categorical=True); the "
                                        f"ONNX tree operator has no category sets. Retrain on encoded features.")
        left, right = tree["left_children"], tree["right_children"]
        for n, (lc, rc) in enumerate(zip(left, right, strict=True)):
            leaf = lc == -1
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(n)
            a["nodes_featureids"].append(0 if leaf else int(tree["split_indices"][n]))
            a["nodes_values"].append(0.0 if leaf else float(np.float32(tree["split_conditions"][n])))
            a["nodes_modes"].append("LEAF" if leaf else "BRANCH_LT")
            a["nodes_truenodeids"].append(0 if leaf else int(lc))
            a["nodes_falsenodeids"].append(0 if leaf else int(rc))
            a["nodes_missing_value_tracks_true"].append(0 if leaf else int(tree["default_left"][n]))
            if leaf:  # dart: XGBoost multiplies in float32, as here
                a["target_treeids"].append(t)
                a["target_nodeids"].append(n)
                a["target_ids"].append(group)
                a["target_weights"].append(float(np.float32(tree["split_conditions"][n]) * np.float32(weight)))
    return helper.make_node("TreeEnsembleRegressor", [CONTRACT.input_name], ["margins"], domain="ai.onnx.ml",
                            name="trees", n_targets=n_groups, aggregate_function="SUM", post_transform="NONE",
                            base_values=[float(v) for v in base], **a)


def export(trees: list[dict[str, Any]], groups: list[int], weights: list[float], objective: str,
           n_classes: int, base: list[float], n_features: int, name: str, file: Any) -> Any:
    """float32 [N, F] -> probabilities [N, n_classes]: softmax of the margins, or [1 - p, p] for binary."""
    from onnx import TensorProto, helper, numpy_helper

    n_groups = 1 if objective == "binary:logistic" else n_classes
    nodes = [tree_ensemble(trees, groups, weights, n_groups, base, file)]
    inits = []
    if n_groups == 1:
        inits.append(numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), "one"))
        nodes += [helper.make_node("Sigmoid", ["margins"], ["p1"], name="Sigmoid"),
                  helper.make_node("Sub", ["one", "p1"], ["p0"], name="Complement"),
                  helper.make_node("Concat", ["p0", "p1"], [CONTRACT.output_name], axis=1, name="Probabilities")]
    else:
        nodes.append(helper.make_node("Softmax", ["margins"], [CONTRACT.output_name], axis=1, name="Probabilities"))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(CONTRACT.input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(CONTRACT.output_name, TensorProto.FLOAT, [None, n_classes])], inits)
    return to_contract(helper.make_model(graph, opset_imports=[helper.make_opsetid("", CONTRACT.opset)]), "xgboost")


def _proba(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x32: model.predict_proba(x32).astype(np.float64)  # stops at best_iteration by itself


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return _proba(read_model(source))


def load(source: MemberSource) -> LoadedMember:
    from .trees import check_classes

    model = read_model(source)
    booster = model.get_booster()
    config = json.loads(booster.save_config())
    objective = _check_expressible(model, config, source.file)
    n_classes = max(2, int(config["learner"]["learner_model_param"]["num_class"]))
    check_classes(getattr(model, "classes_", None), n_classes, source.file)
    raw = json.loads(booster.save_raw("json"))
    rounds = booster.num_boosted_rounds()
    best = int(booster.attr("best_iteration")) + 1 if booster.attr("best_iteration") is not None else rounds
    if not 1 <= best <= rounds:
        raise ModelFileError(f"{source.file}: best_iteration {best - 1} is outside the {rounds} boosting rounds the "
                             f"model holds.")
    trees, groups, weights = _trees(raw, best)
    n_groups = 1 if objective == "binary:logistic" else n_classes
    base = _base_margins(raw, objective, n_groups)
    if not all(math.isfinite(b) for b in base) or len(base) != n_groups:
        raise ModelFileError(f"{source.file}: base_score {raw['learner']['learner_model_param']['base_score']!r} "
                             f"gives no finite margin for each of the {n_groups} output(s).")
    if any(f >= booster.num_features() for f, _ in split_thresholds(trees)):
        raise ModelFileError(f"{source.file}: a tree splits on a feature index beyond the model's "
                             f"{booster.num_features()} features; the file is corrupt.")
    onx = export(trees, groups, weights, objective, n_classes, base,
                 booster.num_features(), source.name, source.file)
    booster_name = raw["learner"]["gradient_booster"]["name"]
    parallel = int(_tree_model(raw)["gbtree_model_param"]["num_parallel_tree"])
    return LoadedMember(
        source=source, n_features=booster.num_features(), n_classes=n_classes,
        hyperparameters={"objective": objective, "booster": booster_name, "trees": len(trees),
                         "num_parallel_tree": parallel, "best_iteration": best - 1, "boosted_rounds": rounds},
        reference=_proba(model), onnx_model=onx,
        feature_names=list(booster.feature_names) if booster.feature_names else None,
        notes=[f"{best} of {rounds} boosting rounds (best_iteration)" if best < rounds else f"{rounds} boosting rounds",
               *(["dart: each tree scaled by its weight_drop"] if booster_name == "dart" else []),
               *([f"random forest: {parallel} trees per class and round"] if parallel > 1 else [])],
        thresholds=split_thresholds(trees))


register(MemberKind(
    "xgboost", (".pkl", ".joblib", ".json", ".ubj"), load, reference,
    pickle_globals=frozenset({("xgboost.sklearn", "XGBClassifier"), ("xgboost.sklearn", "XGBRFClassifier"),
                              ("xgboost.core", "Booster")}),
    frameworks=("xgboost",), distributions=("xgboost",), build_modules=("xgboost",), service_weight=0.25))
