"""One exception family per way a build can be refused. Every message names the file, key or field at fault.

The command line turns any `ConvertError` into exit code 1 with the message on stderr.
"""

from __future__ import annotations


class ConvertError(Exception):
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


class ParityError(ConvertError):
    """The ONNX export does not reproduce the original framework within tolerance."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report


class VerifyError(ConvertError):
    """Existing artifacts do not match the model files they claim to come from, or no longer pass parity."""


class OutputError(ConvertError):
    """The output folder may not be replaced: it is not a previous build, or replacing it would delete the
    models, the current folder, the home folder or an ancestor of one of them."""
