"""The embedded demo model set: plays the *training side* of the service.

It defines the v5 N-HiTS and PatchTST classifiers the way the training scripts do, trains them briefly on
synthetic market-like data (about 80% HOLD), fits a StandardScaler, an XGBClassifier and an
LGBMClassifier, and writes a models folder in the layout of DESIGN.md. The classes here are deliberately
written independently of `convert.members`: the converter must rebuild modules from bare state_dicts, and
the tests compare its rebuild against these originals.

Everything is seeded and single-threaded, so the same spec writes the same models.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CLASS_NAMES = ("SELL", "HOLD", "BUY")  # class index 0, 1, 2, as DESIGN.md fixes them
FEATURE_NAMES: tuple[str, ...] = (
    "rsi_14", "macd", "macd_signal", "macd_hist", "bb_width", "bb_position",
    "atr_14", "volume_ratio", "return_1h", "return_4h", "return_24h", "volatility_24h",
    "ema_9_dist", "ema_21_dist", "sma_50_dist", "stoch_k", "stoch_d", "adx_14",
)
DEFAULT_STAMP = "v20260205_231109_v5"
# Each feature's typical level and spread as the service computes it (RSI, stochastics and ADX in their 0-100
# units, Bollinger position 0 at the lower band and 1 at the upper, MACD and ATR in the price units of a
# ~$100 asset, returns and distances to moving averages as fractions): the demo market is level + spread *
# a standard score, so a row a user writes from these ranges is one the demo models have seen. A feature past
# these 18 (DemoSpec(n_features > 18)) is a standard score itself.
FEATURE_SCALES: dict[str, tuple[float, float]] = {
    "rsi_14": (50.0, 10.0), "macd": (0.0, 0.4), "macd_signal": (0.0, 0.35), "macd_hist": (0.0, 0.15),
    "bb_width": (0.05, 0.01), "bb_position": (0.5, 0.25), "atr_14": (2.0, 0.35), "volume_ratio": (1.0, 0.2),
    "return_1h": (0.0, 0.004), "return_4h": (0.0, 0.008), "return_24h": (0.0, 0.02),
    "volatility_24h": (0.025, 0.005), "ema_9_dist": (0.0, 0.004), "ema_21_dist": (0.0, 0.008),
    "sma_50_dist": (0.0, 0.015), "stoch_k": (50.0, 10.0), "stoch_d": (50.0, 9.0), "adx_14": (25.0, 5.0),
}


@dataclass(frozen=True)
class DemoSpec:
    """What to train and how to write it. The defaults are the service's v5 models."""

    n_features: int = 18
    n_rows: int = 3000
    seed: int = 7
    stamp: str = DEFAULT_STAMP
    nhits_hidden: int = 128
    nhits_stacks: int = 4
    patchtst_d_model: int = 128
    patchtst_heads: int = 8
    patchtst_layers: int = 4
    patchtst_ff: int = 2048
    epochs: int = 2
    n_trees: int = 40
    # tree_format: "pkl" | "native" (xgboost .json, lightgbm .txt) | "ubj" (xgboost .ubj, lightgbm .txt)
    tree_format: str = "pkl"
    scaler_format: str = "pkl"        # "pkl" | "joblib" | "json"
    early_stopping: bool = False      # what many training scripts do; predict_proba then uses best_iteration
    full_metadata: bool = True        # False: metadata states only what the shapes cannot tell
    kinds: tuple[str, ...] = field(default=("nhits", "patchtst", "xgboost", "lightgbm"))

    @property
    def feature_names(self) -> list[str]:
        if self.n_features <= len(FEATURE_NAMES):
            return list(FEATURE_NAMES[: self.n_features])
        return list(FEATURE_NAMES) + [f"extra_{i}" for i in range(self.n_features - len(FEATURE_NAMES))]


def feature_scales(spec: DemoSpec) -> tuple[np.ndarray, np.ndarray]:
    """(centers, scales) of the spec's features: FEATURE_SCALES, and 0 +- 1 for the extra ones."""
    pairs = [FEATURE_SCALES.get(name, (0.0, 1.0)) for name in spec.feature_names]
    return np.array([c for c, _ in pairs]), np.array([s for _, s in pairs])


def market_data(spec: DemoSpec, held_out: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic features on the service's own, very different scales (FEATURE_SCALES), and labels that are
    ~80% HOLD.

    `held_out=n`: n fresh rows of the same market (same loadings, centers, scales and label cut-offs), which
    the models never saw: recorded features for `predict`, labelled rows for `--calibrate`."""
    rng = np.random.default_rng(spec.seed)
    n, f = spec.n_rows, spec.n_features
    signal = rng.standard_normal(n)
    loadings = rng.uniform(-1.0, 1.0, f)
    noise = rng.standard_normal((n, f))
    centers, scales = feature_scales(spec)
    future = 0.9 * signal + 0.5 * rng.standard_normal(n)
    lo, hi = np.quantile(future, [0.1, 0.9])
    if held_out:
        fresh = np.random.default_rng(spec.seed + 1)
        signal, noise = fresh.standard_normal(held_out), fresh.standard_normal((held_out, f))
        future = 0.9 * signal + 0.5 * fresh.standard_normal(held_out)
    x = centers + scales * (signal[:, None] * loadings + 0.7 * noise)
    y = np.where(future < lo, 0, np.where(future > hi, 2, 1)).astype(np.int64)
    return x, y


def _torch_classes():
    """The v5 architectures exactly as the training scripts define them (imported lazily: torch is heavy)."""
    import torch.nn as nn

    class NHiTS(nn.Module):
        def __init__(self, input_size=18, hidden_size=128, num_stacks=4, num_classes=3, dropout=0.1):
            super().__init__()
            self.hidden_size = hidden_size
            self.stacks = nn.ModuleList()
            for i in range(num_stacks):
                self.stacks.append(nn.Sequential(
                    nn.Linear(input_size if i == 0 else hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                    nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout)))
            self.fc = nn.Sequential(nn.Linear(hidden_size, hidden_size // 2), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden_size // 2, num_classes))

        def forward(self, x):
            for stack in self.stacks:
                x = stack(x) + (x if x.shape[-1] == self.hidden_size else 0)
            return self.fc(x)

    class PatchTST(nn.Module):
        def __init__(self, input_dim=18, d_model=128, n_heads=8, n_layers=4, dropout=0.1, num_classes=3,
                     dim_feedforward=2048):
            super().__init__()
            self.embedding = nn.Linear(input_dim, d_model)
            layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=dim_feedforward, dropout=dropout,
                                               batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, num_layers=n_layers, enable_nested_tensor=False)
            self.fc = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(d_model // 2, num_classes))

        def forward(self, x):
            x = self.embedding(x.unsqueeze(1))
            return self.fc(self.transformer(x).mean(dim=1))

    return NHiTS, PatchTST


def build_torch_model(kind: str, spec: DemoSpec):
    """An untrained module of `kind` with the spec's hyperparameters (also used by tests as the original)."""
    NHiTS, PatchTST = _torch_classes()
    if kind == "nhits":
        return NHiTS(spec.n_features, spec.nhits_hidden, spec.nhits_stacks)
    return PatchTST(spec.n_features, spec.patchtst_d_model, spec.patchtst_heads, spec.patchtst_layers,
                    dim_feedforward=spec.patchtst_ff)


def _train_torch(kind: str, spec: DemoSpec, x: np.ndarray, y: np.ndarray):
    import torch

    torch.manual_seed(spec.seed)
    model = build_torch_model(kind, spec)
    weights = torch.tensor(len(y) / (3.0 * np.bincount(y, minlength=3).clip(1)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    order = torch.Generator().manual_seed(spec.seed)
    model.train()
    for _ in range(spec.epochs):
        for idx in torch.randperm(len(yt), generator=order).split(128):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _train_trees(spec: DemoSpec, x: np.ndarray, y: np.ndarray) -> dict:
    import lightgbm
    import xgboost
    from sklearn.utils.class_weight import compute_sample_weight

    split = int(0.8 * len(y))
    fit_x, fit_y, val = x[:split], y[:split], (x[split:], y[split:])
    weight = compute_sample_weight("balanced", fit_y)
    models = {}
    if "xgboost" in spec.kinds:
        xgb = xgboost.XGBClassifier(
            n_estimators=spec.n_trees, max_depth=4, learning_rate=0.1, subsample=0.8, colsample_bytree=0.8,
            objective="multi:softprob", eval_metric="mlogloss", tree_method="hist", random_state=spec.seed,
            n_jobs=1, early_stopping_rounds=3 if spec.early_stopping else None)
        xgb.fit(fit_x, fit_y, sample_weight=weight, eval_set=[val], verbose=False)
        models["xgboost"] = xgb
    if "lightgbm" in spec.kinds:
        lgbm = lightgbm.LGBMClassifier(
            n_estimators=spec.n_trees, num_leaves=15, learning_rate=0.1, subsample=0.8, subsample_freq=1,
            colsample_bytree=0.8, class_weight="balanced", min_child_samples=10, random_state=spec.seed,
            n_jobs=1, verbose=-1, deterministic=True)
        callbacks = [lightgbm.early_stopping(3, verbose=False)] if spec.early_stopping else []
        with warnings.catch_warnings():  # 4.7 renames eval_set; older 4.x only know eval_set
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            # lightgbm types `callbacks` as an invariant list of callables; its own callback objects are what it takes.
            lgbm.fit(fit_x, fit_y, eval_set=[val], callbacks=callbacks)  # type: ignore[arg-type]
        models["lightgbm"] = lgbm
    return models


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _write_scaler(scaler, spec: DemoSpec, out: Path) -> None:
    stem = out / f"scaler_{spec.stamp}"
    if spec.scaler_format == "json":
        _write_json(stem.with_suffix(".json"), {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()})
    elif spec.scaler_format == "joblib":
        import joblib
        joblib.dump(scaler, stem.with_suffix(".joblib"))
    else:
        stem.with_suffix(".pkl").write_bytes(pickle.dumps(scaler))


def _write_trees(models: dict, spec: DemoSpec, out: Path) -> None:
    for kind, model in models.items():
        stem = out / f"{kind}_{spec.stamp}"
        if spec.tree_format == "pkl":
            stem.with_suffix(".pkl").write_bytes(pickle.dumps(model))
        elif kind == "xgboost":
            model.save_model(stem.with_suffix(".ubj" if spec.tree_format == "ubj" else ".json"))
        else:
            # Booster.save_model keeps only the trees up to best_iteration, as predict_proba uses them.
            model.booster_.save_model(stem.with_suffix(".txt"), num_iteration=model.best_iteration_ or None)


def write_demo_models(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Train the demo ensemble and write it to `out` in the DESIGN.md layout. Returns `out`."""
    import torch
    from sklearn.preprocessing import StandardScaler

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    x, y = market_data(spec)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x).astype(np.float32)

    for kind in ("nhits", "patchtst"):
        if kind not in spec.kinds:
            continue
        model = _train_torch(kind, spec, xs, y)
        torch.save(model.state_dict(), out / f"{kind}_{spec.stamp}.pth")
        if kind == "nhits":
            meta = {"num_features": spec.n_features, "feature_names": spec.feature_names,
                    "architecture": {"hidden_size": spec.nhits_hidden, "num_stacks": spec.nhits_stacks}}
        else:
            meta = {"architecture": {"d_model": spec.patchtst_d_model, "n_heads": spec.patchtst_heads,
                                     "n_layers": spec.patchtst_layers, "dropout": 0.1}}
        if not spec.full_metadata:
            # Only what the tensor shapes cannot tell: the feature names and PatchTST's head count.
            meta = ({"architecture": {"n_heads": spec.patchtst_heads}} if kind == "patchtst"
                    else {"feature_names": spec.feature_names})
        _write_json(out / f"{kind}_{spec.stamp}_meta.json", meta)

    _write_trees(_train_trees(spec, xs, y), spec, out)
    _write_scaler(scaler, spec, out)
    _write_json(out / "demo_spec.json", asdict(spec))
    return out


def write_demo_features(path: str | Path, spec: DemoSpec = DemoSpec(), n_rows: int = 64,
                        labelled: bool = False) -> Path:
    """Held-out raw features as a CSV with a header (for `--parity-data` and `predict`); with `labelled`,
    a `label` column of class names too (for `convert --calibrate`)."""
    x, y = market_data(spec, held_out=n_rows)
    path = Path(path)
    header = spec.feature_names + (["label"] if labelled else [])
    lines = [",".join(header)] + [",".join([*(repr(float(v)) for v in row), *([CLASS_NAMES[k]] if labelled else [])])
                                  for row, k in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


# Every name `python -m convert.demo` writes (the default spec: pickled trees and scaler), demo_spec.json the
# stamp that says the folder is the demo's.
DEMO_STAMP_FILE = "demo_spec.json"
DEMO_FILES = frozenset({
    DEMO_STAMP_FILE, "sample_features.csv", "labelled_features.csv",
    *(f"{kind}_{DEFAULT_STAMP}{ext}" for kind in ("nhits", "patchtst") for ext in (".pth", "_meta.json")),
    *(f"{kind}_{DEFAULT_STAMP}.pkl" for kind in ("xgboost", "lightgbm", "scaler")),
})


def check_demo_target(target: Path) -> None:
    """OutputError unless `target` is absent, an empty folder, or a previous demo set (its stamp file there and
    nothing but the files the demo writes): the demo overwrites by name, and must not overwrite someone's
    sample_features.csv or models."""
    from .errors import OutputError

    if not target.exists() and not target.is_symlink():  # a dangling link is refused below, not written through
        return
    if not target.is_dir():
        raise OutputError(f"{target}: not a folder; name a new folder for the demo model set.")
    present = sorted(p.name for p in target.iterdir())
    if not present:
        return
    # A link named like a demo file would be written through (is_file follows it): only plain files count.
    others = [name for name in present if name not in DEMO_FILES or (target / name).is_symlink()
              or not (target / name).is_file()]
    if DEMO_STAMP_FILE not in present or others:
        shown = ", ".join(repr(n) for n in (others or present)[:5])
        raise OutputError(f"{target}: already holds files the demo did not write ({shown}"
                          f"{', ...' if len(others or present) > 5 else ''}); the demo writes only into a new or "
                          f"empty folder, or over a previous demo set. Name a new folder.")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .errors import ConvertError, OutputError

    parser = argparse.ArgumentParser(
        prog="python -m convert.demo",
        description="Train the demo ensemble and write it as a models folder, with sample_features.csv (for "
                    "predict and --parity-data) and labelled_features.csv (for --calibrate). FOLDER must be new, "
                    "empty, or a demo set this command wrote before.")
    parser.add_argument("folder", nargs="?", default="models", metavar="FOLDER",
                        help="the models folder to write (default: models)")
    target = Path(parser.parse_args(argv).folder)
    try:
        check_demo_target(target)
        try:  # made before a minute of training: a path under a file or an unwritable place is said now
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{target}: cannot make the folder ({exc.strerror}); name a folder that can be "
                              f"written.") from None
    except ConvertError as exc:
        print(f"Error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    # Said first: loading torch and the tree libraries and training take from seconds to a minute.
    print(f"training the demo ensemble (N-HiTS, PatchTST, XGBoost, LightGBM) into {target}/ ...", file=sys.stderr,
          flush=True)
    try:
        write_demo_models(target)
    except ImportError as exc:
        from runtime.errors import install_hint

        print(f"Error: the demo needs the build stack ({exc.name or exc} missing): {install_hint('convert')}",
              file=sys.stderr)
        return 1
    write_demo_features(target / "sample_features.csv")
    write_demo_features(target / "labelled_features.csv", n_rows=2000, labelled=True)
    print(f"wrote the demo model set to {target}/, with sample_features.csv (for predict and --parity-data) "
          f"and labelled_features.csv (for --calibrate)")
    return 0


if __name__ == "__main__":
    # `python -m convert.demo models/`: what `make convert` runs when there is no models folder.
    sys.exit(main())
