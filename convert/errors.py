"""One exception family per way a build can be refused. Every message names the file, key or field at fault.

The command line turns any `ConvertError` into exit code 1 with the message on stderr (`--debug` adds the
traceback). `member_step` turns an exception a framework raises while reading, exporting or predicting a
member into a `FrameworkError` that names the member, the file and the step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime.errors import EnsembleOnnxError


class ConvertError(EnsembleOnnxError):
    """A build that was refused. Subclasses say which family of problem it was."""


class PlanError(ConvertError):
    """The models folder or ensemble.json does not say unambiguously what to build."""


class MetadataError(ConvertError):
    """A `_meta.json`, ensemble.json or scaler JSON is malformed or contradicts the weights."""


class StateDictError(ConvertError):
    """A torch state_dict is missing tensors, has unexpected ones, or has shapes that do not fit."""


class ModelFileError(ConvertError):
    """A model file cannot be read at all: truncated, corrupt, or not the format its name says."""


class UnsafeFileError(ConvertError):
    """A file asked to run code (a pickle global outside the allowlist, a non-tensor .pth payload)."""


class UnsupportedModelError(ConvertError):
    """A model uses a feature that ONNX cannot reproduce faithfully, so converting it would be wrong."""


class UserCodeError(ConvertError):
    """The training code a `torch` member names failed while imported, built or run: names its file and line."""


class ParityError(ConvertError):
    """The ONNX export does not reproduce the original framework within tolerance."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


class VerifyError(ConvertError):
    """Existing artifacts do not match the model files they claim to come from, or no longer pass parity."""


class FrameworkError(ConvertError):
    """A framework (a member kind's own, scikit-learn, the ONNX converters) raised while reading,
    exporting or predicting one member: a problem with that model, named with the member, file and step."""


# Packages whose exceptions mean "this model file is a problem", not "ensemble-onnx has a bug": these, which the
# scaler, the stacker and the export use, and each member kind's own (`frameworks` on its registry entry).
# numpy is not among them: an exception that only passes through numpy came from our own arithmetic.
FRAMEWORKS = ("sklearn", "onnx", "onnxruntime", "onnxmltools", "onnxconverter_common", "skl2onnx", "joblib", "scipy",
              "pandas")


def frameworks() -> frozenset[str]:
    from .members import kind_facts  # imported here: the registry imports this module

    return frozenset(FRAMEWORKS + kind_facts("frameworks"))


def raised_in_framework(exc: BaseException) -> str | None:
    """The framework whose code the exception came through (innermost first), if any."""
    tb, found, known = exc.__traceback__, None, frameworks()
    while tb is not None:
        top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if top in known:
            found = top
        tb = tb.tb_next
    module = type(exc).__module__.split(".")[0]
    return found or (module if module in known else None)


@contextmanager
def member_step(member: str, file: object, step: str) -> Iterator[None]:
    """Turn what a framework raises during `step` into a FrameworkError naming the member and file.
    Refusals pass as they are; an exception that never entered a framework is our bug and passes too."""
    try:
        yield
    except ConvertError:
        raise
    except Exception as exc:
        framework = raised_in_framework(exc)
        if framework is None:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise FrameworkError(f"member {member} ({file}): {framework} raised while {step}: "
                             f"{type(exc).__name__}: {first}. Run with --debug for the traceback.") from exc


class SigningError(ConvertError):
    """A signing key that cannot sign (unreadable, encrypted, not an EC key on P-256/384/521), or `[signing]` not
    installed."""


class OutputError(ConvertError):
    """The output folder may not be replaced: it is not a previous build, or replacing it would delete the
    models, the current folder, the home folder or an ancestor of one of them."""
