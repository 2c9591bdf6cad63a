"""Entry point of the ``remamber`` command: the Typer app and the error boundary.

Only light modules are imported here so that ``remamber --help`` answers fast; each
command imports torch and friends inside its own function.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from remamber import __version__
from remamber.cli import evaluate, export, prepare, segment, serve, train
from remamber.cli.options import Command, Group
from remamber.utils.errors import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    RemamberError,
    UsageError,
)


def _click_errors() -> tuple[type, ...]:
    """Usage-error classes: Typer >= 0.20 vendors its own click, older ones use click."""
    found: list[type] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            pass
    return tuple(found)


USAGE_ERRORS = _click_errors()

app = typer.Typer(
    name="remamber",
    cls=Group,
    help=(
        "Referring image segmentation with ReMamber: give an image and a phrase "
        '("man in red shirt"), get the mask of the object it names.\n\n'
        "segment an image; prepare RefCOCO or a synthetic dataset; train on a CPU, a GPU or many; evaluate any split (mIoU, oIoU, P@X); export for the Hub or ONNX; serve a web page and an HTTP API.\n\n"
        f"Exit codes: 0 success; 1 the work ran but some of it failed (batch items, a diverged training); "
        f"2 bad input or usage (one error: line on stderr); {EXIT_INTERNAL} an internal error (a bug; "
        f"--debug shows the traceback); {EXIT_INTERRUPTED} interrupted; {EXIT_BROKEN_PIPE} stdout closed by its reader."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"remamber {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show full tracebacks instead of one-line errors (may also follow the command; or set REMAMBER_DEBUG=1).",
    ),
) -> None:
    """remamber command line."""


app.command(name="segment", help=segment.HELP, cls=Command)(segment.segment)
app.add_typer(prepare.app, name="prepare")
app.command(name="eval", help=evaluate.HELP, cls=Command)(evaluate.evaluate)
app.command(name="train", help=train.HELP, cls=Command)(train.train)
app.command(name="export", help=export.HELP, cls=Command)(export.export)
app.command(name="serve", help=serve.HELP, cls=Command)(serve.serve)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _command_context(args: list[str]):
    """The click context of the (sub)command that ``args`` name, parsed leniently: what a usage
    line is printed for when a command itself reports a usage error."""
    import typer.main

    command = typer.main.get_command(app)
    ctx = command.make_context("remamber", [], resilient_parsing=True)
    for arg in args:
        sub = command.get_command(ctx, arg) if hasattr(command, "get_command") else None
        if sub is None:
            if arg.startswith("-"):
                continue
            break
        command, ctx = sub, sub.make_context(arg, [], parent=ctx, resilient_parsing=True)
    return ctx


def _as_flags(message: str, args: list[str]) -> str:
    """A library message with its settings named as flags: library code names a setting in
    backticks (`allow_large`); the command whose parameter it is shows its flag (--allow-large),
    any other command the name alone. Only the CLI speaks of flags."""
    if "`" not in message:
        return message
    import re

    try:
        params = {p.name: p.opts[0] for p in _command_context(args).command.params if p.opts}
    except Exception:  # noqa: BLE001 - the message matters more than its wording
        params = {}
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: params.get(m.group(1), m.group(1)), message)


def _usage_error(message: str, ctx) -> None:
    """Print a usage error: the command's usage line, one ``error:`` line; exit 2."""
    sys.stderr.write(f"{ctx.get_usage()}\n")
    sys.stderr.write(f"error: {_one_line(message)} (see `{ctx.command_path} --help`)\n")
    sys.exit(EXIT_BAD_INPUT)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors become one line on stderr and an exit code (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("REMAMBER_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="remamber", standalone_mode=False)
    except USAGE_ERRORS as e:  # usage errors: the usage line and one error line, exit 2
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `remamber`: the help, exit 0
            text = e.format_message()  # the help; empty when Rich has printed it already
            if text.strip():
                sys.stdout.write(text + "\n")
            sys.exit(0)
        if e.exit_code != EXIT_BAD_INPUT:  # not about the command line (e.g. a file error)
            sys.stderr.write(f"error: {_one_line(e.format_message())}\n")
            sys.exit(e.exit_code)
        _usage_error(e.format_message(), ctx if ctx is not None else _command_context(args))
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except UsageError as e:
        if debug:
            traceback.print_exc()
        _usage_error(str(e), _command_context(args))
    except RemamberError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {_one_line(_as_flags(str(e), args))}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `remamber ... --json | head -1`: the reader left; not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(EXIT_BROKEN_PIPE)
    except Exception as e:  # an unexpected failure (a bug): its own exit code, one line unless --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {_one_line(str(e))}{hint}\n")
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
