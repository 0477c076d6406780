"""The output columns the commands write, named in one place: `predict --format csv` and `score`.

They belong to the commands, not to the artifact contract: a build loads whatever its class and member names,
and a writer refuses (ArtifactError, nothing written) only a build whose names would give one of its own
columns twice. `convert` refuses such names at planning already (`output_column_clashes`), so a build it
writes never meets the refusal.
"""

from __future__ import annotations

import collections

from ..errors import ArtifactError, shortened_names

Names = list[str] | tuple[str, ...]


def _predict_csv(classes: Names, members: Names) -> list[str]:
    return ["symbol", "action", "confidence", *classes, *(f"{m}_{c}" for m in members for c in classes)]


def _score(classes: Names, members: Names) -> list[str]:
    return ["action", "confidence", *(f"p_{c}" for c in classes), *(f"p_{m}_{c}" for m in members for c in classes)]


def _repeated(columns: list[str]) -> list[str]:
    return sorted(c for c, n in collections.Counter(columns).items() if n > 1)


def _distinct(columns: list[str], classes: Names, members: Names, writer: str) -> list[str]:
    if clash := _repeated(columns):
        raise ArtifactError(f"classes {shortened_names(list(classes))} with members {shortened_names(list(members))} "
                            f"name the output column(s) {shortened_names(clash)} more than once, which {writer} "
                            f"cannot write; rename a class or a member and convert again.")
    return columns


def predict_csv_columns(classes: Names, members: Names) -> list[str]:
    """The header `predict --format csv` writes: one column per class, then one per member and class;
    ArtifactError when the names give a column twice."""
    return _distinct(_predict_csv(classes, members), classes, members, "predict --format csv")


def score_columns(classes: Names, members: Names) -> list[str]:
    """The score columns `score` writes (`members` empty without --members), before the passthrough columns;
    ArtifactError when the names give a column twice."""
    return _distinct(_score(classes, members), classes, members, "score")


def output_column_clashes(classes: Names, members: Names) -> list[str]:
    """Output column names that classes and members would give twice (a class named 'action'; classes 'x' and
    'm1_x' with a member 'm1'): a reader would take one column's values for the other's, and a table writer
    keeps only one. With every member's columns, which hold the columns without them too."""
    repeated: set[str] = set()
    for columns in (_predict_csv(classes, members), _score(classes, members)):
        repeated |= set(_repeated(columns))
    return sorted(repeated)
