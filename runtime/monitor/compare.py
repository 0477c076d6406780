"""Two builds on the same recorded rows, before the new one replaces the old: how the actions move (the
transition matrix, flip rates, class shares), how confident each build is, and how far each member's
probabilities moved. Runtime only (onnxruntime + numpy).

Builds may name their features in another order or take more or fewer of them: each build reads its own
features from the rows by name, so the rows must carry every feature either build needs. Builds whose
class sets differ are refused (a transition matrix between different actions means nothing); the same class
names in another order are aligned by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IncomparableError as IncomparableError  # defined in errors.py; importable from here
from ..errors import InputError
from ..records import at_line, records_to_matrix
from .report import Records, esc, heat_map, histogram, page, table

if TYPE_CHECKING:
    from .. import Ensemble

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_EDGES = tuple(np.round(np.linspace(0.0, 1.0, 11), 1).tolist())  # confidence in tenths


def score_records(ens: Ensemble, records: Records, passthrough: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every output of the ensemble graph for the records; `passthrough` None = ignore every column that is
    not one of the build's features (the rows may carry another build's features, labels, timestamps)."""
    if passthrough is None:
        passthrough = sorted({str(k) for _, r in records for k in r} - set(ens.feature_names))
    # NaN passes to ens.run, which scores it where the build's domain takes it and refuses it otherwise.
    x = records_to_matrix(records, ens.feature_names, passthrough, missing=True)
    try:  # one call (it runs RUN_CHUNK rows at a time): an overflow refusal counts every row, as predict's does
        return ens.run(x)
    except InputError as exc:  # a row a member overflows on: its line, not its place in the matrix
        raise at_line(exc, records) from None


def _scored_by(ens: Ensemble, records: Records) -> dict[str, np.ndarray]:
    """score_records, a refusal naming the build that refused (one may take a NaN the other cannot)."""
    try:
        return score_records(ens, records)
    except InputError as exc:
        raise InputError(f"{ens.path}: {exc}") from None


def class_order(old: Sequence[str], new: Sequence[str], old_path: str, new_path: str) -> list[int]:
    """For each of old's classes, its index in new; IncomparableError when the class sets differ."""
    if set(old) != set(new) or len(old) != len(new):
        raise IncomparableError(f"{old_path} predicts {list(old)}, {new_path} predicts {list(new)}: different "
                                f"class sets, so no action of one maps onto an action of the other; compare "
                                f"builds with the same classes.")
    return [list(new).index(c) for c in old]


def confidence_summary(confidence: np.ndarray) -> dict[str, Any]:
    counts, _ = np.histogram(confidence, bins=HIST_EDGES)
    return {"mean": float(confidence.mean()),
            "quantiles": {f"p{round(q * 100):02d}": float(v)
                          for q, v in zip(QUANTILES, np.quantile(confidence, QUANTILES), strict=True)},
            "histogram": {"edges": list(HIST_EDGES), "counts": [int(c) for c in counts]}}


def compare(old: Ensemble, new: Ensemble, records: Records) -> dict[str, Any]:
    """The comparison of two loaded builds on recorded rows (see the module docstring)."""
    order = class_order(old.classes, new.classes, old.path, new.path)
    classes = list(old.classes)
    k = len(classes)
    a, b = (_scored_by(build, records) for build in (old, new))
    n = len(a["label"])
    old_label = a["label"].astype(np.int64)
    new_label = np.asarray(order).argsort()[b["label"].astype(np.int64)]  # new's index -> old's index
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (old_label, new_label), 1)
    flips = old_label != new_label
    old_share, new_share = counts.sum(axis=1) / n, counts.sum(axis=0) / n
    members: dict[str, Any] = {}
    for name in old.member_order:
        if name in new.member_order:
            move = np.abs(b["member_probabilities"][:, new.member_order.index(name)][:, order]
                          - a["member_probabilities"][:, old.member_order.index(name)])
            members[name] = {"mean_abs_move": float(move.mean()), "max_abs_move": float(move.max())}
    ensemble_move = np.abs(b["probabilities"][:, order] - a["probabilities"])
    return {
        "old": old.path, "new": new.path, "rows": n, "classes": classes,
        "features": {"only_old": [f for f in old.feature_names if f not in new.feature_names],
                     "only_new": [f for f in new.feature_names if f not in old.feature_names],
                     "same_order": list(old.feature_names) == list(new.feature_names)},
        "transitions": {"counts": counts.tolist(), "rates": (counts / n).tolist()},
        "flip_rate": float(flips.mean()),
        "flip_rate_by_class": {c: (float(flips[old_label == i].mean()) if (old_label == i).any() else None)
                               for i, c in enumerate(classes)},
        "share": {c: {"old": float(old_share[i]), "new": float(new_share[i]),
                      "shift": float(new_share[i] - old_share[i])}
                  for i, c in enumerate(classes)},
        "confidence": {"old": confidence_summary(a["confidence"]), "new": confidence_summary(b["confidence"])},
        "ensemble": {"mean_abs_move": float(ensemble_move.mean()), "max_abs_move": float(ensemble_move.max())},
        "members": members,
        "members_only_old": [m for m in old.member_order if m not in new.member_order],
        "members_only_new": [m for m in new.member_order if m not in old.member_order],
    }


def gate(result: dict[str, Any], max_flip_rate: float | None, max_share_shift: float | None) -> list[str]:
    """The figures past their limits, one line each; empty when the new build may be promoted."""
    failures = []
    if max_flip_rate is not None and result["flip_rate"] > max_flip_rate:
        failures.append(f"flip rate {result['flip_rate']:.2%} > --max-flip-rate {max_flip_rate:.2%}")
    if max_share_shift is not None:
        failures += [f"{c} share {s['old']:.2%} -> {s['new']:.2%} (shift {s['shift']:+.2%}) exceeds "
                     f"--max-share-shift {max_share_shift:.2%}"
                     for c, s in result["share"].items() if abs(s["shift"]) > max_share_shift]
    return failures


def text(result: dict[str, Any]) -> list[str]:
    """The comparison as terminal lines."""
    classes = result["classes"]
    width = max(8, *(len(c) + 1 for c in classes))
    corner = "old \\ new"
    lines = [f"{result['rows']} rows: {result['old']} (rows) -> {result['new']} (columns)",
             f"{corner:<{width}}" + "".join(f"{c:>{width + 7}}" for c in classes)]
    for i, c in enumerate(classes):
        lines.append(f"{c:<{width}}" + "".join(f"{n:>{width}} {r:>6.1%}" for n, r in
                                                zip(result["transitions"]["counts"][i],
                                                    result["transitions"]["rates"][i], strict=True)))
    lines.append(f"flip rate {result['flip_rate']:.2%}; by old class: "
                 + ", ".join(f"{c} {'-' if v is None else format(v, '.2%')}"
                             for c, v in result["flip_rate_by_class"].items()))
    lines.append("share old -> new: " + ", ".join(f"{c} {s['old']:.1%} -> {s['new']:.1%} ({s['shift']:+.1%})"
                                                  for c, s in result["share"].items()))
    for side in ("old", "new"):
        q = result["confidence"][side]["quantiles"]
        lines.append(f"confidence {side}: mean {result['confidence'][side]['mean']:.3f}, "
                     + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
    lines.append(f"ensemble probabilities moved: mean {result['ensemble']['mean_abs_move']:.4f}, "
                 f"max {result['ensemble']['max_abs_move']:.4f}")
    for name, m in result["members"].items():
        lines.append(f"  member {name:<10} mean {m['mean_abs_move']:.4f}, max {m['max_abs_move']:.4f}")
    for side in ("old", "new"):
        if result[f"members_only_{side}"]:
            lines.append(f"  members only in {side}: {', '.join(result[f'members_only_{side}'])}")
    if result["features"]["only_old"] or result["features"]["only_new"]:
        lines.append(f"features only in old: {result['features']['only_old']}, only in new: "
                     f"{result['features']['only_new']}")
    return lines


def html(result: dict[str, Any], failures: Sequence[str] = ()) -> str:
    """A self-contained page: the transition heat map, confidence histograms, shares and member moves."""
    classes, conf = result["classes"], result["confidence"]
    verdict = ("<p class='fail'>" + "<br>".join(esc(f) for f in failures) + "</p>") if failures else ""
    share = table(["class", "old share", "new share", "shift", "flip rate (old class)"],
                  [[c, f"{s['old']:.2%}", f"{s['new']:.2%}", f"{s['shift']:+.2%}",
                    "-" if result["flip_rate_by_class"][c] is None else f"{result['flip_rate_by_class'][c]:.2%}"]
                   for c, s in result["share"].items()])
    shares = {side: [c / result["rows"] for c in conf[side]["histogram"]["counts"]] for side in ("old", "new")}
    members = table(["member", "mean |move|", "max |move|"],
                    [[n, f"{m['mean_abs_move']:.4f}", f"{m['max_abs_move']:.4f}"] for n, m in result["members"].items()]
                    + [[n, f"only in {side}", ""] for side in ("old", "new") for n in result[f"members_only_{side}"]])
    quantiles = table(["build", "mean", *conf["old"]["quantiles"]],
                      [[side, f"{conf[side]['mean']:.3f}", *(f"{v:.3f}" for v in conf[side]["quantiles"].values())]
                       for side in ("old", "new")])
    return page("ensemble-onnx compare", [
        (f"<p>{result['rows']} rows. old: <code>{esc(result['old'])}</code>, new: <code>{esc(result['new'])}</code>. "
         f"Flip rate <b>{result['flip_rate']:.2%}</b>.</p>"), verdict,
        "<h2>Actions, old (rows) to new (columns)</h2>",
        heat_map(classes, classes, result["transitions"]["counts"], "old \\ new"),
        "<h2>Class shares</h2>", share,
        "<h2>Confidence</h2>", histogram(shares, conf["old"]["histogram"]["edges"]), quantiles,
        "<h2>How far the probabilities moved</h2>", members])
