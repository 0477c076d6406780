"""The one root of every error ensemble-onnx raises on purpose, with the exit code the command line uses.

`ArtifactError` and `InputError` (the runtime), `ConvertError` and its families (the build) and the few
internal errors the callers turn into those all derive from `EnsembleOnnxError`, so a service can catch the
package's refusals with one `except`, and the CLI turns any of them into its message and `exit_code`, as
click's `ClickException` does. Anything else that escapes is a bug. Kept free of imports: `import runtime`
stays light, and the build imports this module too.
"""

from __future__ import annotations


class EnsembleOnnxError(Exception):
    """Something ensemble-onnx refused, with a message that names the file, key, field or feature at fault."""

    exit_code = 1  # a refusal; click's usage errors exit 2
