"""The model-variant matrix: tiny models trained the many ways users train them, each in its own folder.

Every `Variant` names a framework, the training option it exercises, the file format it is saved in, and
what `convert` must do with it, written by hand: "converts" (within 1e-5, identical labels) or the words a
refusal must contain. `tests/convert/members/test_matrix.py` runs the real `convert` on each; `python -m tests.variants
--markdown` writes the README's table from the same list, between the markers below.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES, N_ROWS, SEED = 8, 400, 3
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
CONVERTS = "converts"
README_BEGIN, README_END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
CLASS_SETS = {2: ["DOWN", "UP"], 3: ["SELL", "HOLD", "BUY"], 4: ["SELL", "HOLD", "BUY", "STRONG_BUY"],
              5: ["STRONG_SELL", "SELL", "HOLD", "BUY", "STRONG_BUY"]}


@dataclass(frozen=True)
class Variant:
    framework: str                 # xgboost | lightgbm | sklearn | scaler | nhits | patchtst
    option: str                    # what a user would call the option, as the README shows it
    params: tuple = ()             # (name, value) pairs handed to the framework
    fmt: str = "pkl"               # the saved format: pkl, joblib, json, ubj, txt
    expect: str = CONVERTS         # "converts", or words the refusal must contain (besides the file name)
    classes: int = 3
    data: str = "plain"            # plain | nan | zeros | categorical | scaled
    fit: tuple = ()                # extra (name, value) pairs for fit()
    scaler: tuple | None = None    # StandardScaler kwargs as pairs, or None for raw features
    entry: tuple = ()              # (name, value) pairs added to the member's ensemble.json entry

    @property
    def id(self) -> str:
        extra = f"-k{self.classes}" if self.classes != 3 else ""
        return f"{self.framework}-{self.option.replace(' ', '_')}{extra}-{self.fmt}"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


def _v(framework: str, option: str, params: dict | None = None, fmts: tuple[str, ...] = ("pkl",),
       **kw: Any) -> list[Variant]:
    return [Variant(framework, option, tuple(sorted((params or {}).items())), f, **kw) for f in fmts]


XGB_ALL, LGB_ALL = ("pkl", "joblib", "json", "ubj"), ("pkl", "joblib", "txt")
UNSUPPORTED = "UnsupportedModelError"

VARIANTS: list[Variant] = [
    *_v("xgboost", "default", {}, XGB_ALL),
    *_v("xgboost", "binary", {}, ("pkl", "json"), classes=2),
    *_v("xgboost", "4 classes", {}, ("json",), classes=4),
    *_v("xgboost", "5 classes", {}, ("ubj",), classes=5),
    *_v("xgboost", "nan in training", {}, ("pkl", "json"), data="nan"),
    *_v("xgboost", "dart", {"booster": "dart", "rate_drop": 0.3, "skip_drop": 0.0}, ("pkl", "json", "ubj")),
    *_v("xgboost", "random forest", {"num_parallel_tree": 4, "subsample": 0.8, "colsample_bynode": 0.8,
                                     "learning_rate": 1.0}, ("pkl", "json")),
    *_v("xgboost", "XGBRFClassifier", {"rf": True}, ("pkl", "json")),
    *_v("xgboost", "stumps", {"max_depth": 1, "min_child_weight": 1e6}, ("json",)),
    *_v("xgboost", "subsampling", {"subsample": 0.6, "colsample_bytree": 0.6, "colsample_bylevel": 0.7}, ("json",)),
    *_v("xgboost", "tree_method approx", {"tree_method": "approx"}, ("json",)),
    *_v("xgboost", "tree_method exact", {"tree_method": "exact"}, ("json",)),
    *_v("xgboost", "max_bin 8", {"max_bin": 8}, ("json",)),
    *_v("xgboost", "early stopping", {"early_stopping_rounds": 3}, ("pkl", "json")),
    # xgb.train(early_stopping_rounds=...) and Booster.save_model: Booster.predict uses every round, so does the
    # build; "rounds" in ensemble.json says the service called predict(iteration_range=(0, rounds)).
    *_v("xgboost", "early stopping, xgb.train + Booster.save_model", {}, ("json", "ubj"), fit=(("api", "native"),)),
    *_v("xgboost", "early stopping, Booster file, rounds named in ensemble.json", {}, ("json",),
        fit=(("api", "native"),), entry=(("rounds", 2),)),
    *_v("xgboost", "base_score", {"base_score": 0.3}, ("json",), classes=2),
    *_v("xgboost", "monotone constraints", {"monotone_constraints": "(1,0,0,0,0,0,0,-1)"}, ("json",)),
    # A pickle keeps `missing`: its predict reads 0.0 as absent, and so does the export (0.0 becomes NaN first).
    *_v("xgboost", "missing=0", {"missing": 0.0}, ("pkl",), data="zeros"),
    # A native file does not keep `missing`: XGBClassifier().load_model predicts with NaN, and so does the export.
    *_v("xgboost", "missing=0", {"missing": 0.0}, ("json",), data="zeros"),
    *_v("xgboost", "missing=-999", {"missing": -999.0}, ("pkl",), data="sentinel"),
    # ... unless ensemble.json says how the service called it.
    *_v("xgboost", "missing=-999, named in ensemble.json", {"missing": -999.0}, ("json",),
        data="sentinel", entry=(("missing", -999.0),)),
    *_v("xgboost", "categorical", {"enable_categorical": True, "tree_method": "hist"}, ("json",),
        data="categorical", expect=f"{UNSUPPORTED} categorical"),
    *_v("xgboost", "gblinear", {"booster": "gblinear"}, ("pkl", "json"), expect=f"{UNSUPPORTED} gblinear"),
    *_v("xgboost", "multi_output_tree", {"multi_strategy": "multi_output_tree", "tree_method": "hist"},
        ("json",), expect=f"{UNSUPPORTED} multi_output_tree"),
    *_v("lightgbm", "default", {}, LGB_ALL),
    *_v("lightgbm", "binary", {}, ("pkl", "txt"), classes=2),
    *_v("lightgbm", "binary sigmoid=2.0", {"sigmoid": 2.0}, ("pkl", "txt"), classes=2),
    *_v("lightgbm", "4 classes", {}, ("txt",), classes=4),
    *_v("lightgbm", "5 classes", {}, ("txt",), classes=5),
    *_v("lightgbm", "nan in training", {}, ("pkl", "txt"), data="nan"),
    *_v("lightgbm", "nan in training, scaled members", {}, ("txt",), data="nan", scaler=()),
    *_v("lightgbm", "dart", {"boosting_type": "dart", "drop_rate": 0.3}, ("pkl", "txt")),
    *_v("lightgbm", "goss extra_trees", {"data_sample_strategy": "goss", "extra_trees": True}, ("pkl", "txt")),
    *_v("lightgbm", "random forest", {"boosting_type": "rf", "bagging_freq": 1, "bagging_fraction": 0.7},
        ("pkl", "txt")),
    *_v("lightgbm", "stumps", {"min_child_samples": 10_000}, ("txt",)),
    *_v("lightgbm", "subsampling", {"subsample": 0.6, "subsample_freq": 1, "colsample_bytree": 0.6}, ("txt",)),
    *_v("lightgbm", "max_bin 7", {"max_bin": 7}, ("txt",)),
    *_v("lightgbm", "early stopping", {}, ("pkl", "txt"), fit=(("early_stopping", 3),)),
    *_v("lightgbm", "monotone constraints", {"monotone_constraints": (1, 0, 0, 0, 0, 0, 0, -1)}, ("txt",)),
    *_v("lightgbm", "zero_as_missing", {"zero_as_missing": True}, ("txt",), data="zeros",
        expect=f"{UNSUPPORTED} zero_as_missing"),
    *_v("lightgbm", "categorical", {}, ("txt",), data="categorical", expect=f"{UNSUPPORTED} categorical"),
    *_v("lightgbm", "linear_tree", {"linear_tree": True}, ("txt",), expect=f"{UNSUPPORTED} linear_tree"),
    *_v("sklearn", "RandomForestClassifier", {"estimator": "RandomForestClassifier", "n_estimators": 5,
                                              "max_depth": 4}, ("pkl", "joblib")),
    *_v("sklearn", "ExtraTreesClassifier", {"estimator": "ExtraTreesClassifier", "n_estimators": 5}, ("pkl",),
        classes=2),
    *_v("sklearn", "HistGradientBoostingClassifier", {"estimator": "HistGradientBoostingClassifier",
                                                      "max_iter": 10}, ("pkl",), data="nan"),
    *_v("sklearn", "HistGradientBoostingClassifier", {"estimator": "HistGradientBoostingClassifier",
                                                      "max_iter": 10}, ("joblib",), classes=2),
    *_v("sklearn", "HistGradientBoostingClassifier categorical_features",
        {"estimator": "HistGradientBoostingClassifier", "max_iter": 5, "categorical_features": (2,)}, ("pkl",),
        data="categorical", expect=f"{UNSUPPORTED} categorical_features"),
    *_v("sklearn", "LogisticRegression", {"estimator": "LogisticRegression"}, ("pkl",), classes=4, scaler=()),
    *_v("scaler", "constant column", {}, ("pkl",), data="constant", scaler=()),
    *_v("scaler", "with_mean=False", {}, ("joblib",), scaler=(("with_mean", False),)),
    *_v("scaler", "with_std=False", {}, ("pkl",), scaler=(("with_std", False),)),
    *_v("nhits", "hidden 2, 1 stack", {"hidden_size": 2, "num_stacks": 1}, ("pth",), scaler=()),
    *_v("nhits", "input_size == hidden_size", {"hidden_size": N_FEATURES, "num_stacks": 2}, ("pth",), scaler=()),
    *_v("nhits", "binary", {"hidden_size": 4, "num_stacks": 1}, ("pth",), classes=2, scaler=()),
    # LayerNorm over 2 values: torch answers a row alone otherwise than in a batch by 1e-2, past any parity proof.
    *_v("patchtst", "d_model 2, 1 head, 1 layer", {"d_model": 2, "n_heads": 1, "n_layers": 1,
                                                     "dim_feedforward": 4}, ("pth",), scaler=(),
        expect="ParityError its own framework answers"),
    *_v("patchtst", "d_model == input_dim", {"d_model": N_FEATURES, "n_heads": 2, "n_layers": 2,
                                              "dim_feedforward": 8}, ("pth",), scaler=()),
    *_v("patchtst", "5 classes", {"d_model": 4, "n_heads": 2, "n_layers": 1, "dim_feedforward": 8}, ("pth",),
        classes=5, scaler=()),
]


def training_data(variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels 0..K-1 with some structure, so trees have splits to learn."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((N_ROWS, N_FEATURES))
    score = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 7] + 0.3 * rng.standard_normal(N_ROWS)
    edges = np.quantile(score, np.linspace(0, 1, variant.classes + 1)[1:-1])
    y = np.searchsorted(edges, score)
    if variant.data == "nan":  # missing at random, and informatively: a NaN in f3 says class 0
        x[rng.random(x.shape) < 0.15] = np.nan
        x[(y == 0) & (rng.random(N_ROWS) < 0.6), 3] = np.nan
    elif variant.data == "zeros":
        x[rng.random(x.shape) < 0.2] = 0.0
    elif variant.data == "sentinel":
        x[rng.random(x.shape) < 0.2] = -999.0
    elif variant.data == "categorical":
        x[:, 2] = rng.integers(0, 5, N_ROWS).astype(np.float64)
        y = np.where(x[:, 2] == 3, 0, y)
    elif variant.data == "constant":
        x[:, 4] = 2.5
    return x, y


def _tree_model(variant: Variant, x: np.ndarray, y: np.ndarray) -> Any:
    kwargs = variant.kwargs
    fit = dict(variant.fit)
    if variant.framework in ("xgboost", "scaler"):
        import xgboost
        cls = xgboost.XGBRFClassifier if kwargs.pop("rf", False) else xgboost.XGBClassifier
        kwargs.setdefault("n_estimators", 12)
        kwargs.setdefault("max_depth", 3)
        model = cls(random_state=SEED, n_jobs=1, **kwargs)
        if variant.data == "categorical":
            import pandas as pd
            frame = pd.DataFrame(x, columns=FEATURES).astype({"f2": "int64"}).astype({"f2": "category"})
            model.fit(frame, y)
            return model
        if fit.get("api") == "native":
            return xgboost.train({"objective": "multi:softprob", "num_class": variant.classes, "max_depth": 3,
                                  "eta": 0.5, "seed": SEED, "nthread": 1},
                                 xgboost.DMatrix(x[:300], y[:300]), 200,
                                 evals=[(xgboost.DMatrix(x[300:], y[300:]), "valid")], early_stopping_rounds=3,
                                 verbose_eval=False)
        if "early_stopping_rounds" in kwargs:
            model.set_params(n_estimators=200)
            model.fit(x[:300], y[:300], eval_set=[(x[300:], y[300:])], verbose=False)
            return model
        model.fit(x, y)
        return model
    import lightgbm
    kwargs.setdefault("n_estimators", 12)
    kwargs.setdefault("num_leaves", 7)
    kwargs.setdefault("min_child_samples", 5)
    model = lightgbm.LGBMClassifier(random_state=SEED, n_jobs=1, verbose=-1, **kwargs)
    if "early_stopping" in fit:
        model.set_params(n_estimators=200)
        model.fit(x[:300], y[:300], eval_set=[(x[300:], y[300:])],
                  callbacks=[lightgbm.early_stopping(fit["early_stopping"], verbose=False)])
    elif variant.data == "categorical":
        model.fit(x, y, categorical_feature=[2])
    else:
        model.fit(x, y)
    return model


def _sklearn_model(variant: Variant, x: np.ndarray, y: np.ndarray) -> Any:
    import sklearn.ensemble
    import sklearn.linear_model

    kwargs = variant.kwargs
    name = kwargs.pop("estimator")
    cls = getattr(sklearn.ensemble, name, None) or getattr(sklearn.linear_model, name)
    if "categorical_features" in kwargs:
        kwargs["categorical_features"] = list(kwargs["categorical_features"])
    if name != "LogisticRegression":
        kwargs["random_state"] = SEED
    return cls(**kwargs).fit(x, y)


def _save_tree(variant: Variant, model: Any, stem: Path) -> Path:
    path = stem.with_suffix(f".{variant.fmt}")
    if variant.fmt == "pkl":
        path.write_bytes(pickle.dumps(model))
    elif variant.fmt == "joblib":
        import joblib
        joblib.dump(model, path)
    elif variant.fmt == "txt":
        model.booster_.save_model(path, num_iteration=model.best_iteration_ or None)
    else:
        model.save_model(path)
    return path


def _torch_model(variant: Variant, x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    from convert.demo import _torch_classes

    nhits, patchtst = _torch_classes()
    torch.manual_seed(SEED)
    kw = variant.kwargs
    if variant.framework == "nhits":
        model = nhits(N_FEATURES, kw["hidden_size"], kw["num_stacks"], num_classes=variant.classes)
    else:
        model = patchtst(N_FEATURES, kw["d_model"], kw["n_heads"], kw["n_layers"], num_classes=variant.classes,
                         dim_feedforward=kw["dim_feedforward"])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    return model.eval()


def write_variant(variant: Variant, folder: Path) -> Path:
    """A models folder holding this variant alone, its ensemble.json, and a scaler if it has one."""
    from sklearn.preprocessing import StandardScaler

    folder.mkdir(parents=True, exist_ok=True)
    x, y = training_data(variant)
    scaler_file = None
    if variant.scaler is not None:
        scaler = StandardScaler(**dict(variant.scaler)).fit(x)
        scaler_file = folder / f"scaler.{variant.fmt if variant.fmt in ('pkl', 'joblib') else 'pkl'}"
        scaler_file.write_bytes(pickle.dumps(scaler))
        if variant.framework != "lightgbm":  # the NaN-trained LightGBM takes raw features beside scaled members
            x = scaler.transform(x)
    name = variant.framework if variant.framework != "scaler" else "xgboost"
    kind = name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind in ("nhits", "patchtst"):
            import torch
            file = folder / f"{kind}.pth"
            torch.save(_torch_model(variant, x, y).state_dict(), file)
            if kind == "patchtst":  # n_heads is the one thing the shapes cannot tell
                (folder / "patchtst_meta.json").write_text(json.dumps({"architecture": {
                    "n_heads": variant.kwargs["n_heads"]}}))
        elif kind == "sklearn":
            file = _save_tree(variant, _sklearn_model(variant, x, y), folder / kind)
        else:
            file = _save_tree(variant, _tree_model(variant, x, y), folder / kind)
    members = {name: {"kind": kind, "file": file.name,
                      "scaler": scaler_file.name if scaler_file and variant.framework != "lightgbm" else None,
                      **dict(variant.entry)}}
    if variant.data == "nan" and variant.scaler is not None:
        # a member that shares the scaler, so the gate's rows reach a scaler too
        import xgboost
        xs = scaler.transform(np.nan_to_num(x))
        helper = xgboost.XGBClassifier(n_estimators=4, max_depth=2, n_jobs=1, random_state=SEED).fit(xs, y)
        helper.save_model(folder / "xgboost_scaled.json")
        members["scaled"] = {"kind": "xgboost", "file": "xgboost_scaled.json", "scaler": scaler_file.name}
    spec = {"feature_names": FEATURES, "classes": CLASS_SETS[variant.classes], "members": members}
    (folder / "ensemble.json").write_text(json.dumps(spec, indent=1))
    return folder


_FOLDERS: dict[tuple[Variant, Path], Path] = {}


def cached_folder(variant: Variant, root: Path) -> Path:
    """`write_variant` once (the disk cache keeps it across runs: tests/model_cache.py), copied once per session
    and root; callers copy it before changing anything."""
    import convert.demo  # its torch classes train the nhits and patchtst variants
    from tests.model_cache import disk_cached, session_copy

    if (variant, root) not in _FOLDERS:
        cached = disk_cached("variants", variant, (Path(__file__), Path(convert.demo.__file__)),
                             lambda folder: write_variant(variant, folder))
        _FOLDERS[variant, root] = session_copy(cached, root / variant.id / "models")
    return _FOLDERS[variant, root]


def by_id(variant_id: str) -> Variant:
    return next(v for v in VARIANTS if v.id == variant_id)


def markdown() -> str:
    """The README's table: one row per framework and option, the formats tried, and the outcome."""
    rows: dict[tuple[str, str, int, str], list[str]] = {}
    for v in VARIANTS:
        rows.setdefault((v.framework, v.option, v.classes, v.expect), []).append(v.fmt)
    lines = ["| framework | option | classes | formats | outcome |", "|---|---|---|---|---|"]
    for (framework, option, classes, expect), fmts in rows.items():
        outcome = "converts (1e-5, same labels)" if expect == CONVERTS else \
            "refused: " + expect.replace(UNSUPPORTED, "").strip()
        lines.append(f"| {framework} | {option} | {classes} | {', '.join(fmts)} | {outcome} |")
    return "\n".join(lines)


def write_readme(readme: Path) -> bool:
    """Replace the table between the markers; True when the file changed."""
    text = readme.read_text()
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_BEGIN}\n{markdown()}\n{README_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        changed = write_readme(Path(__file__).resolve().parent.parent / "README.md")
        print("README.md table " + ("rewritten" if changed else "already current"))
    elif len(sys.argv) == 3:  # python -m tests.variants ID FOLDER: write one case, for a look by hand
        print(write_variant(next(v for v in VARIANTS if v.id == sys.argv[1]), Path(sys.argv[2])))
    else:
        print("\n".join(v.id for v in VARIANTS))
