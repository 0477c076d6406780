"""A structural check of LightGBM model text, run before LightGBM (or the exporter) reads it.

LightGBM's text parser trusts the file: a `left_child` that names leaf 8 of a 2-leaf tree makes it read past
its leaf array (the build then bakes in whatever memory it found), an out-of-range `split_feature` or child
aborts the process, a cycle of children loops forever, a `num_tree_per_iteration` of 0 divides by zero. And
where it does refuse, it quotes its own source file and line, not the field. So the text is checked here
first, the way LightGBM 4 reads it (`GBDT::LoadModelFromString`, `Tree::Tree(const char*)`), and any
violation is a `ModelFileError` naming the file, the tree and the field. What LightGBM itself refuses before
reading any tree (no `num_class`, not a model at all) is left to LightGBM, which says so cleanly.

Checked: the header's num_class, num_tree_per_iteration and max_feature_idx, and the tree count against them;
`tree_sizes` (which LightGBM uses to jump to each tree) against the trees as written; per tree, every array's
length against num_leaves, numbers that parse (finite where a prediction uses them), every child an internal
node in [0, num_leaves - 2] or a leaf ~k with k in [0, num_leaves - 1], each node reached exactly once from
the root (a tree: no cycle, no orphan, no shared subtree), split features in [0, max_feature_idx], decision
types LightGBM defines, and categorical splits' bitset ranges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"[-+]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|inf|nan)")  # as LightGBM writes doubles
_NEWLINE = re.compile(r"\r\n?|\n")  # LightGBM's line ends: GetLine stops at \r or \n, SkipNewLine eats \r\n
_TREE_LINES = 22  # Tree::Tree reads at most this many key=value lines; more would be read as the next tree
_INT32 = 2**31 - 1


class _Refusal(Exception):
    """A violation inside one tree or the header; the caller adds the file (and tree) to the message."""


def _int(value: str, field: str, low: int = -_INT32 - 1, high: int = _INT32) -> int:
    if not _INT.fullmatch(value):
        raise _Refusal(f"{field} = {value[:40]!r} is not an integer")
    n = int(value)
    if not low <= n <= high:
        raise _Refusal(f"{field} = {n} is outside [{low}, {high}]")
    return n


def _array(fields: dict[str, str], key: str, length: int, parse: Callable[[str, str], Any]) -> list[Any]:
    # LightGBM splits on single spaces and skips empty pieces (a linear tree's leaf_features has runs of them).
    tokens = [t for t in fields[key].split(" ") if t]
    if len(tokens) != length:
        raise _Refusal(f"{key} has {len(tokens)} values, but the tree needs {length}")
    return [parse(t, f"{key}[{i}]") for i, t in enumerate(tokens)]


def _number(value: str, field: str) -> float:
    if not _FLOAT.fullmatch(value):
        raise _Refusal(f"{field} = {value[:40]!r} is not a number")
    return float(value)


def _ordered(value: str, field: str) -> float:
    x = _number(value, field)
    if math.isnan(x):  # a threshold of +-inf is LightGBM's own (a split that parts NaN from every value)
        raise _Refusal(f"{field} = {value[:40]} is not a number a split can compare with")
    return x


def _finite(value: str, field: str) -> float:
    x = _number(value, field)
    if not math.isfinite(x):  # a leaf LightGBM adds up: inf, nan, or a decimal past a double (1e999)
        raise _Refusal(f"{field} = {value[:40]} is not finite")
    return x


def _check_tree(lines: list[str], max_feature: int) -> None:
    """One tree's key=value lines (the block after its `Tree=N` line, up to the blank line)."""
    fields: dict[str, str] = {}
    for line in lines:
        key, eq, value = line.partition("=")
        if not eq:  # LightGBM scans on for an '=' past the end of the line, into the next ones
            raise _Refusal(f"line {line[:40]!r} is not key=value")
        if key in fields:
            raise _Refusal(f"{key} is written twice")
        fields[key] = value
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in fields:
            raise _Refusal(f"no {key}")
    leaves = _int(fields["num_leaves"], "num_leaves", 1)
    num_cat = _int(fields["num_cat"], "num_cat", 0)
    _array(fields, "leaf_value", leaves, _finite)
    if "shrinkage" in fields:
        _finite(fields["shrinkage"], "shrinkage")
    linear = _int(fields.get("is_linear", "0"), "is_linear", 0, 1) == 1
    if leaves == 1 and not linear:
        return  # LightGBM reads nothing more of a one-leaf tree
    inner = leaves - 1
    for key in ("left_child", "right_child", "split_feature", "threshold"):
        if key not in fields:
            raise _Refusal(f"no {key}")
    left = _array(fields, "left_child", inner, _int)
    right = _array(fields, "right_child", inner, _int)
    _array(fields, "split_feature", inner, lambda v, f: _int(v, f, 0, max_feature))  # out of range: SIGSEGV
    thresholds = _array(fields, "threshold", inner, _ordered)
    for key, parse in (("split_gain", _number), ("internal_value", _number), ("internal_weight", _number),
                       ("internal_count", _int), ("decision_type", _int)):
        if key in fields:
            _array(fields, key, inner, parse)
    for key, parse in (("leaf_weight", _number), ("leaf_count", _int)):
        if key in fields:
            _array(fields, key, leaves, parse)
    decisions = _array(fields, "decision_type", inner, _int) if "decision_type" in fields else [0] * inner
    for i, d in enumerate(decisions):
        # bit 0 categorical, bit 1 default left, bits 2-3 the missing type (0 none, 1 zero, 2 NaN)
        if not 0 <= d <= 11 or (d >> 2) & 3 == 3:
            raise _Refusal(f"decision_type[{i}] = {d} is not a decision LightGBM defines")
    if inner:  # a one-leaf linear tree has no internal node
        _check_shape(left, right, leaves)
    if linear:
        counts = _array(fields, "num_features", leaves, lambda v, f: _int(v, f, 0)) if "num_features" in fields \
            else []
        if "leaf_const" in fields:
            _array(fields, "leaf_const", leaves, _finite)
        if counts:
            for key in ("leaf_features", "leaf_coeff"):
                if key in fields:
                    _array(fields, key, sum(counts), (lambda v, f: _int(v, f, 0, max_feature)) if key == "leaf_features"
                           else _finite)
    categorical = [i for i, d in enumerate(decisions) if d & 1]
    if num_cat > 0 or categorical:
        for key in ("cat_boundaries", "cat_threshold"):
            if key not in fields:
                raise _Refusal(f"num_cat = {num_cat} but no {key}")
        bounds = _array(fields, "cat_boundaries", num_cat + 1, lambda v, f: _int(v, f, 0))
        if bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:], strict=False)):
            raise _Refusal("cat_boundaries do not rise from 0")
        _array(fields, "cat_threshold", bounds[-1], lambda v, f: _int(v, f, 0, 2**32 - 1))
        for i in categorical:  # a categorical split's threshold is the index of its bitset
            if not 0 <= thresholds[i] < num_cat or thresholds[i] != int(thresholds[i]):
                raise _Refusal(f"threshold[{i}] = {thresholds[i]} of a categorical split names no bitset "
                               f"(num_cat = {num_cat})")


def _check_shape(left: list[int], right: list[int], leaves: int) -> None:
    """Every child in range, and every internal node and leaf reached exactly once from the root (node 0)."""
    seen_nodes, seen_leaves = {0}, set()
    stack = [0]
    while stack:
        node = stack.pop()
        for side, child in (("left_child", left[node]), ("right_child", right[node])):
            where = f"{side}[{node}] = {child}"
            if child >= 0:
                if child >= leaves - 1:
                    raise _Refusal(f"{where} names internal node {child}, but the tree has {leaves - 1} internal nodes")
                if child in seen_nodes:
                    raise _Refusal(f"{where} reaches node {child} a second time (a cycle or a shared subtree)")
                seen_nodes.add(child)
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= leaves:
                    raise _Refusal(f"{where} names leaf {leaf}, but the tree has {leaves} leaves")
                if leaf in seen_leaves:
                    raise _Refusal(f"{where} reaches leaf {leaf} a second time")
                seen_leaves.add(leaf)
    orphans = sorted(set(range(leaves - 1)) - seen_nodes)
    if orphans:  # with every reached child distinct and in range, a missed node means a missed leaf too
        raise _Refusal(f"internal node {orphans[0]} is not reachable from the root")


def check_model_text(data: bytes, file: Path | str) -> None:
    """Refuse, as a ModelFileError naming the file, tree and field, model text LightGBM would misread.

    `data` is the model as LightGBM gets it: a .txt file's bytes, or the UTF-8 of the string an
    LGBMClassifier pickle carries. Read as latin-1, one character per byte, so offsets are `tree_sizes`'s."""
    text = data.decode("latin-1")
    lines = _NEWLINE.split(text)
    offsets = [0]
    for m in _NEWLINE.finditer(text):
        offsets.append(m.end())
    # The header: LightGBM reads key=value lines up to the first line that starts with "Tree=".
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and not lines[i].startswith("Tree="):
        key, _, value = lines[i].partition("=")
        header[key] = value
        i += 1
    if any(k not in header for k in ("num_class", "max_feature_idx", "label_index", "feature_names",
                                     "feature_infos")):
        return  # LightGBM refuses it, by itself and cleanly, before it reads any tree

    def refuse(where: str, why: str) -> ModelFileError:
        return ModelFileError(f"{file}: {where}{why}; the model text is malformed. Re-save the model from LightGBM.")

    if "\0" in text:  # LightGBM reads a C string: it would stop there and read less than was checked
        raise refuse("", f"a NUL byte at offset {text.index(chr(0))}")

    try:
        num_class = _int(header["num_class"], "num_class", 1)
        per_iteration = _int(header.get("num_tree_per_iteration", header["num_class"]), "num_tree_per_iteration", 1)
        max_feature = _int(header["max_feature_idx"], "max_feature_idx", 0)
        if per_iteration != num_class:
            raise _Refusal(f"num_tree_per_iteration = {per_iteration} but num_class = {num_class}")
        for token in header.get("objective", "").split(" "):  # "multiclass num_class:3": the softmax's width
            if token.startswith("num_class:") and token != f"num_class:{num_class}":
                raise _Refusal(f"objective says {token} but num_class = {num_class}")
    except _Refusal as exc:
        raise refuse("", str(exc)) from None
    # The trees, as LightGBM reads them without tree_sizes: a "Tree=" line, key=value lines up to a blank
    # line, blank lines, the next "Tree=" line or the end of the trees.
    starts: list[int] = []
    while i < len(lines) and lines[i].startswith("Tree="):
        n = len(starts)
        where = f"Tree={n}: "
        if lines[i] != f"Tree={n}":
            raise refuse("", f"tree {n} is headed {lines[i][:40]!r}, expected 'Tree={n}'")
        starts.append(offsets[i])
        body = i + 1
        end = body
        while end < len(lines) and lines[end] != "":
            end += 1
        if end - body > _TREE_LINES:
            raise refuse(where, f"{end - body} lines; LightGBM reads at most {_TREE_LINES}")
        try:
            _check_tree(lines[body:end], max_feature)
        except _Refusal as exc:
            raise refuse(where, str(exc)) from None
        i = end
        while i < len(lines) and lines[i] == "":
            i += 1
    if i >= len(lines) or lines[i] != "end of trees":
        met = "the end of the text" if i >= len(lines) else repr(lines[i][:40])
        raise refuse("", f"after {len(starts)} trees, {met} where 'end of trees' belongs")
    if len(starts) % per_iteration:
        raise refuse("", f"{len(starts)} trees is not a whole number of iterations of {per_iteration} "
                         f"(num_tree_per_iteration)")
    if "tree_sizes" in header:  # LightGBM jumps to each tree by these sizes: they must land on the trees above
        try:
            sizes = _array(header, "tree_sizes", len(starts), lambda v, f: _int(v, f, 0))
        except _Refusal as exc:
            raise refuse("", str(exc)) from None
        written = [b - a for a, b in zip(starts, [*starts[1:], offsets[i]], strict=True)]
        for n, (size, actual) in enumerate(zip(sizes, written, strict=True)):
            if size != actual:
                raise refuse("", f"tree_sizes[{n}] = {size}, but Tree={n} is {actual} bytes long")


def booster_stand_ins(file: Path) -> dict[tuple[str, str], type]:
    """For `load_pickle`: a lightgbm.Booster that checks the model text a pickle hands it before LightGBM
    parses it, then becomes a plain Booster. A genuine pickle builds a Booster only by `__new__` and
    `__setstate__(state)`, `state["_handle"]` the model text; a pickle that calls `Booster(...)` itself (to
    parse text or open a path past the check) is refused."""
    import lightgbm

    class CheckedBooster(lightgbm.Booster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ModelFileError(f"{file}: the pickle calls lightgbm.Booster(...); a saved LGBMClassifier never "
                                 "does. Re-save the model from LightGBM.")

        def __setstate__(self, state: Any) -> None:
            text = state.get("_handle", state.get("handle")) if isinstance(state, dict) else None
            if not isinstance(state, dict) or not isinstance(text, str | None):
                raise ModelFileError(f"{file}: the Booster in the pickle carries no model text LightGBM could read.")
            if text is not None:
                try:
                    data = text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ModelFileError(f"{file}: the Booster's model text is not valid UTF-8.") from None
                check_model_text(data, file)
            self.__class__ = lightgbm.Booster  # type: ignore[assignment]  # what was read is a plain Booster, as unpickled unchecked
            lightgbm.Booster.__setstate__(self, state)

    return {("lightgbm.basic", "Booster"): CheckedBooster}
