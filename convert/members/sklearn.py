"""scikit-learn classifiers (random forest, extra trees, HistGradientBoosting, logistic regression): a pickle or
joblib file read through the allowlist, converted by skl2onnx, held to the same gate as every member.

The fifth kind proves the registry: one module, one `register` line. Random and extra trees cast the
service's float64 rows to float32 themselves and compare them with float64 thresholds (`x <= t`): their
graphs read float32 and each split holds the largest float32 not above t (`_floor_thresholds`).
HistGradientBoosting compares the float64 rows with its double thresholds, and LogisticRegression computes
with them in float64: their graphs read float64 (`takes_float64`), the trees with each split's exact double.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsafeFileError, UnsupportedModelError
from ..loaders import load_pickle, read_checked
from . import LoadedMember, MemberKind, MemberSource, register
from .export import CONTRACT, to_contract
from .trees import check_classes, floor_float32, margins_graph

SUPPORTED = ("RandomForestClassifier", "ExtraTreesClassifier", "HistGradientBoostingClassifier", "LogisticRegression")
TREES = frozenset({"RandomForestClassifier", "ExtraTreesClassifier", "HistGradientBoostingClassifier"})
TAKES_NAN = frozenset({"HistGradientBoostingClassifier"})  # learns where missing values go at each split
# Read the float64 rows as doubles (scikit-learn's RandomForest/ExtraTrees cast X to float32 first).
TAKES_FLOAT64 = frozenset({"HistGradientBoostingClassifier", "LogisticRegression"})


def only_compares(member: LoadedMember) -> bool:
    """The tree ensembles only compare their inputs with split values; LogisticRegression computes with them."""
    return member.hyperparameters.get("estimator") in TREES


def takes_nan(member: LoadedMember) -> bool:
    return member.hyperparameters.get("estimator") in TAKES_NAN


def takes_float64(member: LoadedMember) -> bool:
    return member.hyperparameters.get("estimator") in TAKES_FLOAT64


# HistGradientBoosting trained with categorical_features pickles the ColumnTransformer that encodes them.
_CATEGORICAL_ENCODER = "'sklearn.compose._column_transformer.ColumnTransformer'"


def read_model(source: MemberSource) -> Any:
    try:
        model = load_pickle(source.file, "sklearn")
    except UnsafeFileError as exc:
        if _CATEGORICAL_ENCODER in str(exc) and b"HistGradientBoostingClassifier" in read_checked(source.file, "model",
                                                                                                "sklearn pickle"):
            raise UnsupportedModelError(
                f"{source.file}: a HistGradientBoostingClassifier trained with categorical_features (it carries "
                f"the ColumnTransformer that encodes them); the ONNX tree operator has no category sets. Retrain "
                f"with categorical_features=None on encoded features.") from exc
        raise
    if type(model).__name__ not in SUPPORTED or not hasattr(model, "classes_"):
        raise ModelFileError(f"{source.file}: holds a {type(model).__name__}, expected a fitted "
                             f"{', '.join(SUPPORTED)}.")
    return model


def _binary_logistic(model: Any) -> bool:
    return type(model).__name__ == "LogisticRegression" and len(model.classes_) == 2


def _binary_boosting(model: Any) -> bool:
    return type(model).__name__ == "HistGradientBoostingClassifier" and len(model.classes_) == 2


def _proba(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    if _binary_logistic(model) or _binary_boosting(model):  # from its own logit: a confident row keeps its small p
        from .trees import margin_probabilities
        return lambda x: margin_probabilities(model.decision_function(x))
    return lambda x: np.asarray(model.predict_proba(x), dtype=np.float64)


def logistic_graph(model: Any, n_features: int, name: str) -> Any:
    """A LogisticRegression as scikit-learn computes it on the float64 rows: the logits in float64
    (x @ coef.T + intercept), then for two classes binary_head's [1 - p, p], each side on its own, for more
    the softmax in float64 (scikit-learn's multinomial predict_proba)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .trees import binary_head

    n_classes = len(model.classes_)
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(-1, n_features).T
    intercept = np.asarray(model.intercept_, dtype=np.float64).reshape(1, -1)
    nodes = [helper.make_node("MatMul", [CONTRACT.input_name, "coef"], ["dot"], name="Dot"),
             helper.make_node("Add", ["dot", "intercept"], ["logit64"], name="Intercept")]
    if n_classes == 2:
        head, inits = binary_head("logit", CONTRACT.output_name)
        nodes += [helper.make_node("Cast", ["logit64"], ["logit"], to=TensorProto.FLOAT, name="Logit"), *head]
    else:
        inits = []
        nodes += [helper.make_node("Softmax", ["logit64"], ["p64"], axis=1, name="Softmax"),
                  helper.make_node("Cast", ["p64"], [CONTRACT.output_name], to=TensorProto.FLOAT, name="Probabilities")]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(CONTRACT.input_name, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(CONTRACT.output_name, TensorProto.FLOAT, [None, n_classes])],
        [numpy_helper.from_array(coef, "coef"), numpy_helper.from_array(intercept, "intercept"), *inits])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", CONTRACT.opset)])


def reference(source: MemberSource) -> Callable[[np.ndarray], np.ndarray]:
    return _proba(read_model(source))


def exact_thresholds(onx: Any) -> list[tuple[int, float]]:
    """Every tree split's threshold as the graph compares with it (x <= t): the floored float32 one, or the
    exact double of a graph that reads float64; the (feature, value) pairs."""
    from onnx import numpy_helper

    found = []
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values_as_tensor" in attrs:
            values = [float(v) for v in numpy_helper.to_array(attrs["nodes_values_as_tensor"].t)]
        elif "nodes_values" in attrs:
            values = list(attrs["nodes_values"].floats)
        else:
            raise UnsupportedModelError(f"{node.name}: a tree operator without split values")
        modes = attrs["nodes_modes"].strings
        features = attrs["nodes_featureids"].ints
        for i, mode in enumerate(modes):
            if mode == b"LEAF":
                continue
            if mode != b"BRANCH_LEQ":
                raise UnsupportedModelError(f"{node.name}: split mode {mode.decode()} where x <= t was expected")
            found.append((int(features[i]), values[i]))
    return sorted(set(found))


@contextmanager
def _integer_missing_flags() -> Iterator[None]:
    """skl2onnx (1.20) hands a Python bool as a HistGradientBoosting leaf's missing-value flag, which onnx
    refuses ('Expected an int, got a boolean'): every such model fails to convert. The flag is cast to int
    for the length of one conversion; nothing else about the converter changes."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def load(source: MemberSource) -> LoadedMember:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = read_model(source)
    n_features, n_classes = int(model.n_features_in_), len(model.classes_)
    check_classes(model.classes_, n_classes, source.file)
    if type(model).__name__ == "LogisticRegression":
        _check_multinomial(model, source.file)
        return LoadedMember(
            source=source, n_features=n_features, n_classes=n_classes,
            hyperparameters={"estimator": "LogisticRegression", "trees": 0}, reference=_proba(model),
            onnx_model=to_contract(logistic_graph(model, n_features, source.name), str(source.file)),
            feature_names=[str(n) for n in model.feature_names_in_] if hasattr(model, "feature_names_in_") else None,
            notes=["LogisticRegression: its logits in float64 from the float64 row"
                   + (", each class's probability from it" if n_classes == 2 else ", then the softmax")])
    with _integer_missing_flags():
        onx = to_onnx(model, initial_types=[(CONTRACT.input_name, FloatTensorType([None, n_features]))],
                      target_opset={"": CONTRACT.opset, "ai.onnx.ml": CONTRACT.ml_opset},
                      options={id(model): {"zipmap": False}}, naming=f"{source.name}_")
    onx = to_contract(onx, str(source.file))
    splits64 = _floor_thresholds(onx, model, source.file)
    notes = [f"{type(model).__name__} via skl2onnx"]
    if type(model).__name__ == "HistGradientBoostingClassifier":
        # The raw scores with every split in double on the float64 row; binary: each class's probability from
        # the raw score on its own, as binary_head says.
        onx = to_contract(margins_graph(onx, n_features, n_classes, 1.0, source.name, splits64), str(source.file))
        notes.append("float64 row, exact double splits" + (", each class's probability from its raw score"
                                                              if n_classes == 2 else ""))
    trees = (len(model.estimators_) if hasattr(model, "estimators_")
             else sum(len(p) for p in model._predictors) if hasattr(model, "_predictors") else 0)
    return LoadedMember(
        source=source, n_features=n_features, n_classes=n_classes,
        hyperparameters={"estimator": type(model).__name__, "trees": int(trees)},
        reference=_proba(model), onnx_model=onx,
        feature_names=[str(n) for n in model.feature_names_in_] if hasattr(model, "feature_names_in_") else None,
        notes=notes, thresholds=exact_thresholds(onx))


def _check_multinomial(model: Any, file: Any) -> None:
    """The graph's softmax is scikit-learn's multinomial predict_proba; a one-vs-rest model normalises otherwise."""
    multi_class = getattr(model, "multi_class", "deprecated")
    if len(model.classes_) > 2 and multi_class == "ovr":
        raise UnsupportedModelError(f"{file}: a one-vs-rest LogisticRegression (multi_class='ovr') is not exported; "
                                    f"retrain it multinomial (the default).")


def _floor_thresholds(onx: Any, model: Any, file: Any) -> list[float] | None:
    """Replace each float32-rounded split value with the largest float32 not above the model's float64 one,
    and return every node's exact double (the split value; a leaf's its converted one) for a graph that reads
    float64. Splits are matched by (tree id, node id) to the model's own arrays, and must agree on the rounded
    value."""
    originals = _float64_thresholds(model)
    if originals is None:
        return None
    splits64: list[float] = []
    for node in (n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble")):
        attrs = {a.name: a for a in node.attribute}
        values = attrs["nodes_values"].floats
        for i, (tree, nid, mode) in enumerate(zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints,
                                                   attrs["nodes_modes"].strings, strict=True)):
            if mode == b"LEAF":
                splits64.append(float(values[i]))
                continue
            t = originals[tree][nid] if tree < len(originals) and nid < len(originals[tree]) else np.nan
            # skl2onnx already floors (recent versions) or rounds to nearest (older ones): either is this split.
            if np.float32(values[i]) not in (np.float32(t), np.float32(floor_float32(t))):
                raise UnsupportedModelError(f"{file}: cannot align converted split {nid} of tree {tree} with the "
                                            "model.")
            values[i] = floor_float32(t)
            splits64.append(float(t))
    return splits64


def _float64_thresholds(model: Any) -> list[np.ndarray] | None:
    """Each tree's float64 split values by node index, in skl2onnx's tree order; None without trees."""
    if hasattr(model, "estimators_"):
        return [np.asarray(tree.tree_.threshold, dtype=np.float64) for tree in model.estimators_]
    if hasattr(model, "_predictors"):
        return [np.asarray(p.nodes["num_threshold"], dtype=np.float64)
                for per_iter in model._predictors for p in per_iter]
    return None


register(MemberKind(
    "sklearn", (".pkl", ".joblib"), load, reference,
    # The classifiers skl2onnx converts, and what their fitted state pickles.
    pickle_globals=frozenset({
        ("sklearn.ensemble._forest", "RandomForestClassifier"), ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
        ("sklearn.tree._classes", "DecisionTreeClassifier"), ("sklearn.tree._classes", "ExtraTreeClassifier"),
        ("sklearn.tree._tree", "Tree"), ("sklearn.linear_model._logistic", "LogisticRegression"),
        ("sklearn.ensemble._hist_gradient_boosting.gradient_boosting", "HistGradientBoostingClassifier"),
        ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
        ("sklearn.ensemble._hist_gradient_boosting.binning", "_BinMapper"),
        ("sklearn._loss.loss", "HalfBinomialLoss"), ("sklearn._loss.loss", "HalfMultinomialLoss"),
        ("sklearn._loss.link", "LogitLink"), ("sklearn._loss.link", "MultinomialLogit"),
        ("sklearn._loss.link", "Interval"), ("sklearn._loss._loss", "CyHalfBinomialLoss"),
        ("sklearn._loss._loss", "CyHalfMultinomialLoss"), ("sklearn._loss._loss", "__pyx_unpickle_CyHalfBinomialLoss"),
        ("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss"),
        ("sklearn.preprocessing._label", "LabelEncoder"),
        # HistGradientBoosting keeps a numpy Generator: these rebuild a bit generator from its saved state.
        ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pcg64", "PCG64"), ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("numpy.random.bit_generator", "SeedSequence"),
    }),
    frameworks=("sklearn",), distributions=("scikit-learn",), build_modules=("sklearn", "skl2onnx"),
    only_compares=only_compares, takes_nan=takes_nan, takes_float64=takes_float64))
