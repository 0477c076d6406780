"""The `ensemble-onnx` command line: one entry point, its commands split by audience and each module imported
only when one of its commands runs. Exit 0 on success, 1 when a build, check or input is refused (reason on
stderr), 2 on a usage error.

- `build.py`: the release engineer (convert, verify, inspect, bench); the build stack, imported inside each command;
- `serve.py`: the service (predict), on a serving host that has only the runtime (the package without extras);
- `operate.py`: the operator (score, compare, drift, evaluate), on the runtime.

This module holds what they share: the group and its refusal handling, the options' vocabulary, the output.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from .. import __version__


def _stdout_to_devnull() -> None:
    """stdout pointed at /dev/null, so that the interpreter's last flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (a test runner's)
        pass
    finally:
        os.close(devnull)


def _quiet_broken_pipe(ctx: click.Context) -> None:
    """The reader went away (`predict ... | head -1`): end quietly with 0, as Unix tools do."""
    _stdout_to_devnull()
    ctx.exit(0)


class _ClosedStdout(io.TextIOBase):
    """stdout when the command was started with it closed (`>&-`): what a command prints there is refused (exit
    3), never dropped in silence as click.echo drops it, nor an internal error."""

    encoding, errors = "utf-8", "strict"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from runtime.errors import CannotRunError

        raise CannotRunError("stdout is closed (started with >&-): what the command prints there was not written; "
                             "open stdout, or pass -o FILE where the command takes one.")


def _closed_streams() -> None:
    """A command started with stdout or stderr closed gets None there: stderr then goes to /dev/null (the
    caller chose to drop the messages, as Unix tools do), stdout to _ClosedStdout."""
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # for the life of the process
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()


class RefusalsExitOne(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                                 list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        # --json asked of a command that takes it: a usage error found before its callback ran (a missing
        # folder named first) is printed as JSON too.
        if cmd is not None and any(p.callback is _json_wanted for p in cmd.params):
            ctx.meta["as_json"] = "--json" in rest[:rest.index("--")] if "--" in rest else "--json" in rest
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        _closed_streams()
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed reader is found here, not in the interpreter's exit
            return result
        except click.ClickException as exc:  # a usage error (exit 2), a missing extra: under --json on stdout too
            json_error(ctx, type(exc).__name__, exc.format_message(), exc.exit_code)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe(ctx)
        except KeyboardInterrupt:  # Ctrl-C: each `finally` on the way has cleaned up; the shell's code, not click's 1
            click.echo("interrupted: nothing more was written.", err=True)
            ctx.exit(130)
        except Exception as exc:
            # Imported at the failure, not at the top: `--help` and `--version` load neither numpy nor onnxruntime.
            from runtime.batch.results import environment_fault
            from runtime.errors import EnsembleOnnxError

            fault = environment_fault(exc, getattr(exc, "filename", None) or "output")
            if fault is not None:  # disk full, a file-size limit ...: the machine's, said as such (exit 3)
                exc = fault

            if isinstance(exc, EnsembleOnnxError):  # a refusal: one message and its exit code
                # A machine reading stdout gets the refusal there too, not nothing; unless the result is there
                # already (drift's report, then its --fail-psi refusal): stdout stays one JSON object.
                json_error(ctx, type(exc).__name__, str(exc), exc.exit_code)
                if ctx.params.get("debug"):
                    click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
                refusal = click.ClickException(f"{type(exc).__name__}: {exc}")
                refusal.exit_code = exc.exit_code  # type: ignore[misc]  # click declares it per class; ours is per error
                raise refusal from exc
            # Not a refusal: a bug in ensemble-onnx. Say so plainly, with the traceback, and exit 1.
            click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"internal error: this is a bug in ensemble-onnx {__version__}, not a problem with your "
                       f"files ({type(exc).__name__}: {exc}). Please report it with the traceback above.", err=True)
            ctx.exit(1)


def json_error(ctx: click.Context, kind: str, message: str, exit_code: int) -> None:
    """A refusal on stdout as well, under --json, unless the result is there already (stdout: one object)."""
    from runtime.errors import CannotRunError

    if ctx.meta.get("as_json") and not ctx.meta.get("emitted"):
        ctx.meta["emitted"] = True  # once: a stdout that refused the result refuses this too
        try:
            emit({"error": {"type": kind, "message": message, "exit_code": exit_code}}, True)
        except (CannotRunError, OSError):  # stdout closed (>&-) or its reader gone: said on stderr, as ever
            _stdout_to_devnull()


BUILD_STACK = ("onnx", "sklearn", "skl2onnx", "onnxmltools")  # and each member kind's `build_modules`
BUILD_STACK_STEP = "loading the build stack (the model frameworks, onnx and the converters)"


def require_build_stack(progress: Any = None) -> None:
    """ClickException naming what to install when the build stack is missing. `progress` (a StepProgress) says
    first that it is loading: the imports take seconds (a minute on a busy host) before anything else shows."""
    if progress is not None:
        progress(BUILD_STACK_STEP)
    from ..members import kind_facts  # imported here: `--help` loads no framework

    missing = []
    for module in dict.fromkeys(kind_facts("build_modules") + BUILD_STACK):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        from runtime.errors import install_hint

        raise click.ClickException(f"this command needs the build stack ({', '.join(missing)} missing): "
                                   + install_hint("convert"))


def log_to_stderr(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)


class StepProgress:
    """The progress display: each step of a long command on stderr as it starts, with the time so far
    (`[  4.2s] parity gate: 6373 rows ...`). Silent with -q; stdout stays clean for --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, step: str) -> None:
        if not self.quiet:
            click.secho(f"[{time.monotonic() - self.start:6.1f}s] {step}", err=True, bold=True)


def emit(result: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:  # strict JSON: no NaN or Infinity token a parser would refuse (runtime.batch.results)
        from runtime.batch.results import dumps_strict
        click.echo(dumps_strict(result, indent=2, sort_keys=True))
        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # a refusal after the result is said on stderr alone
            ctx.meta["emitted"] = True
    elif text:
        click.echo(text)


class GateRange(click.FloatRange):
    """click.FloatRange that also refuses nan: every comparison with nan is false, so a gate of nan would
    pass every build (click's range check lets it through for the same reason)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number; a gate of nan would never fail.", param, ctx)
        return number


class KeyPath(click.Path):
    """A key file (exists=True, dir_okay=False), except that a symbolic link that cannot be resolved (a loop, or
    a link to nothing), which click would call missing, is passed on: `runtime.signing` refuses it for what it
    is, as it refuses every other unusable key (exit 1)."""

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, os.PathLike)) and os.path.islink(value) and not os.path.exists(value):
            return Path(value)
        return super().convert(value, param, ctx)


class Aliased(click.Option):
    """An option whose old spellings (`hidden_names`) keep working but are left out of --help: one name per
    thing on every command (docs/cli.md), without breaking a script written against an older one."""

    def __init__(self, *args: Any, hidden_names: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_names = set(hidden_names)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown = self.opts
        self.opts = [o for o in self.opts if o not in self.hidden_names]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


ROWS_HELP = "CSV with a header, JSON lines, or Parquet (.parquet, needs pyarrow); - for stdin."


def rows_in(help: str, required: bool = True, old: tuple[str, ...] = (), default: str | None = None) -> Any:
    """-i/--input: the rows a command reads (a file, or - for stdin), on every command that reads rows."""
    # default only when there is one: click 8.5 takes an explicit default=None as a default given, and then
    # lets a required option be left out (compare, drift, evaluate without -i ran on None: a traceback).
    given = {"default": default, "show_default": True} if default is not None else {}
    return click.option("-i", "--input", *old, "input_file", cls=Aliased, hidden_names=old,
                        required=required and default is None, **given,
                        type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=str), help=help)


def out_file(help: str, required: bool = False) -> Any:
    """-o/--out: the file a command writes (runtime.batch.results: atomic, never an input, a build or an existing
    file without --force); --output is the old spelling."""
    return click.option("-o", "--out", "--output", "out_file", cls=Aliased, hidden_names=("--output",),
                        required=required, type=click.Path(dir_okay=False, path_type=Path), help=help)


FORCE = click.option("--force", is_flag=True,
                     help="Replace an existing result file (never an input or a build's file).")
def check_build_ids(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A pin that is no build id (64 hex digits) can match no build: said at once, not after a load. Hex digits
    in either case name one digest: the pin is compared in the build id's own lower case."""
    pins = (value,) if isinstance(value, str) else value or ()
    for pin in pins:
        if not (len(pin) == 64 and all(c in "0123456789abcdef" for c in pin.lower())):
            raise click.BadParameter(f"{pin!r} is not a build id (64 hex digits, the build_id that convert, "
                                     f"inspect and verify print).", ctx, param)
    return value.lower() if isinstance(value, str) else value and tuple(pin.lower() for pin in pins)


EXPECT_BUILD = click.option("--expect-build-id", metavar="SHA256", callback=check_build_ids,
                            help="Refuse any build but this one (the build_id that convert, inspect and verify print).")
QUIET = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (no progress).")
def _json_wanted(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["as_json"] = value  # shared with the group's context: a refusal is then printed as JSON too
    return value


AS_JSON = click.option("--json", "as_json", is_flag=True, callback=_json_wanted,
                       help="Print the result as JSON on stdout, for machines (a refusal: {\"error\": ...}).")
PUBLIC_KEY = click.option("--public-key", type=KeyPath(),
                          help="An EC public key (PEM): refuse a folder it did not sign, model.sig in the OpenSSF "
                               "model-signing format (needs 'ensemble-onnx[signing]').")
MODELS = click.option("--models", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
                      help="The models folder the artifacts were built from.")


# Each command's module and the first sentence of its help (what `ensemble-onnx --help` lists), so that the list
# imports none of them. tests/convert/cli/test_commands.py checks every entry against the command itself.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("build", "Rebuild, export and parity-check every member in MODELS; write the artifacts folder."),
    "verify": ("build", "Re-run the parity gate of an existing ARTIFACTS folder against the model files it was "
                        "built from: sha256 of every source file first, then the numbers, on the artifacts' own "
                        "ONNX bytes."),
    "inspect": ("build", "Show a state_dict's tensors and the architecture read off them, a models folder's plan, "
                         "or what an artifacts folder holds (--expect-build-id and --public-key apply to an "
                         "artifacts folder)."),
    "bench": ("build", "Time the runtime against the original frameworks on the same rows and threads: one-row "
                       "p50/p99, batch-256 throughput, cold start, peak memory, installed size, each beside this "
                       "machine's floor."),
    "predict": ("serve", "Score rows with the artifacts alone (no torch, no tree libraries)."),
    "score": ("operate", "Backfill: score a whole history file (Parquet, CSV or JSON lines) with the artifacts, "
                         "streaming."),
    "compare": ("operate", "Score the rows in --input with the OLD and NEW artifacts and show how the actions move: "
                           "the transition matrix, flip rates, class shares, confidence, and each member's "
                           "probability move."),
    "drift": ("operate", "Compare live feature rows with what the build was trained on (its statistics.json): per "
                         "feature PSI against the training deciles (or a z-score summary), the share outside the "
                         "training range, and a status ok / warn / drift."),
    "evaluate": ("operate", "Score labelled rows and report accuracy, per-class precision and recall, the confusion "
                            "matrix, the calibration error (ECE) and the action mix, overall and per --window."),
}


class LazyCommands(RefusalsExitOne):
    """The group of COMMANDS: a command's module is imported when that command is invoked (or its --help shown),
    so `predict` on a serving host imports neither the build commands' module nor, through it, the build stack."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = getattr(importlib.import_module(f"{__name__}.{COMMANDS[cmd_name][0]}"), cmd_name)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of commands from the table, each shortened by click as it shortens a command's own help."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit))
                                for name in self.list_commands(ctx)])


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ensemble-onnx")
@click.option("--debug", is_flag=True, help="On a refusal, also print the traceback (of the framework's error).")
def main(debug: bool) -> None:
    """Convert a torch + tree-model ensemble to ONNX behind a parity gate, and score it without torch."""
