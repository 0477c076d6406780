"""The one root of every error ensemble-onnx raises on purpose, with the exit code the command line uses.

`ArtifactError` and `InputError` (the runtime), `ConvertError` and its families (the build) and the few
internal errors the callers turn into those all derive from `EnsembleOnnxError`, so a service can catch the
package's refusals with one `except`, and the CLI turns any of them into its message and `exit_code`, as
click's `ClickException` does. Anything else that escapes is a bug. Every error class of the runtime is
defined here; the modules that raise one re-export it (`runtime.artifacts.ArtifactError` is this `ArtifactError`).
Kept free of imports: `import runtime` stays light, and the build imports this module too.
"""

from __future__ import annotations


class EnsembleOnnxError(Exception):
    """Something ensemble-onnx refused, with a message that names the file, key, field or feature at fault."""

    exit_code = 1  # a refusal; click's usage errors exit 2


def integer_size(value: int) -> str:
    """A huge integer for a message, by its size from its bits (log10(2) = 0.30103): str() of one past Python's
    4,300 digits raises, and printing it whole would bury the message."""
    return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"


def shortened(value: object, keep: int = 40, quoted: bool = True) -> str:
    """A value for a refusal message, cut to `keep` characters and its size: a manifest field or a limit
    variable may hold thousands of digits, which the message must not print in full (and str() of an integer
    past Python's 4,300 digits raises). A string is shown as its repr, or as itself with `quoted=False`."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # past sys.get_int_max_str_digits(): str() raises
            return integer_size(value)
        size = f"{len(text.lstrip('-'))} digits"
    else:
        text = repr(value) if quoted or not isinstance(value, str) else value
        size = f"{len(text)} characters"
        if isinstance(value, str):  # the string's own length, not its repr's
            size = f"{len(value)} {'digits' if value.isascii() and value.isdigit() else 'characters'}"
    return text if len(text) <= keep else f"{text[:keep]}... ({size})"


def shortened_names(names: list[str] | tuple[str, ...], few: int = 5) -> str:
    """A list of names (keys, columns, members) for a message: the first `few`, each cut short, and how many
    more; a file may hold 20,000 keys of 100,000 characters, which the message must not print in full."""
    shown = ", ".join(shortened(n) for n in names[:few])
    return f"[{shown}]" if len(names) <= few else f"[{shown}, ... {len(names) - few:,} more]"


class CannotRunError(EnsembleOnnxError):
    """The command could not do its work, through no fault of its inputs and whatever a check would have
    found: the machine (disk full, a file-size limit, an I/O error) or a check without what it needs (drift
    --fail-psi on a build without training bins). Exit 3, apart from 1 (refused, or the check failed)."""

    exit_code = 3


def install_hint(extra: str) -> str:
    """How to install an extra. ensemble-onnx is not on PyPI yet: it installs from the wheel `make dist` builds
    or from a clone of the repository (README.md, "Install"), so the hint names both."""
    return (f"pip install --find-links dist/ 'ensemble-onnx[{extra}]' (dist/: the folder with the wheel `make dist` "
            f"builds), or pip install '.[{extra}]' in a clone of the repository")


class ArtifactError(EnsembleOnnxError):
    """Artifacts that cannot be trusted or run: missing, corrupt, tampered with, or incompatible."""


class IncomparableError(ArtifactError):
    """Two builds whose outputs cannot be compared row by row (different class sets)."""


class InputError(EnsembleOnnxError, ValueError):
    """Features the ensemble cannot score: missing, unknown, wrong width, non-numeric, NaN or infinite."""

    # The 0-based row of the scored matrix at fault, where the refusal is about one row the caller may know
    # by another number (a line of its file, a row of the whole input scored in chunks).
    row: int | None = None

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


class RepeatedKeyError(EnsembleOnnxError, ValueError):
    """A JSON object names the same key twice: `json` would keep the last silently."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key '{key}' appears more than once in one object")
        self.key = key


class LongIntegerError(ValueError):
    """A JSON number with more digits than Python reads (4,300): said as that, not as Python's advice to
    call sys.set_int_max_str_digits(), which means nothing to whoever wrote the file."""


class LoneSurrogateError(ValueError):
    """A JSON string escape that is half of a character (a lone `\\ud800`): json reads it, but no output (CSV,
    JSON lines, Parquet, a terminal) can write it as UTF-8, so the run would fail at its first write."""


class FieldError(EnsembleOnnxError, ValueError):
    """A manifest field that is missing or of the wrong type; `path` names it (`members.nhits.weight`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"field '{shortened(path, 100, quoted=False)}' {message}")  # a path holds keys: any length
        self.path = path


class SignatureError(EnsembleOnnxError, ValueError):
    """A key or signature that cannot be used; the caller turns it into its own error family."""
