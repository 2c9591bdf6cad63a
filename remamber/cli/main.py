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
from remamber.utils.errors import EXIT_FAILURE, EXIT_INTERRUPTED, RemamberError


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
    help=(
        "Referring image segmentation with ReMamber: give an image and a phrase "
        '("man in red shirt"), get the mask of the object it names.\n\n'
        "segment an image; prepare RefCOCO or a synthetic dataset; train on a CPU, a GPU or many; evaluate any split (mIoU, oIoU, P@X); export for the Hub or ONNX."
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


app.command(name="segment", help=segment.HELP, no_args_is_help=True)(segment.segment)
app.add_typer(prepare.app, name="prepare")
app.command(name="eval", help=evaluate.HELP, no_args_is_help=True)(evaluate.evaluate)
app.command(name="train", help=train.HELP)(train.train)
app.command(name="export", help=export.HELP)(export.export)
app.command(name="serve", help=serve.HELP)(serve.serve)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: errors become one line on stderr and an exit code (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("REMAMBER_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="remamber", standalone_mode=False)
    except USAGE_ERRORS as e:  # usage errors: one line, exit 2 (or the help when no arguments)
        if type(e).__name__ == "NoArgsIsHelpError" and getattr(e, "ctx", None) is not None:
            sys.stdout.write(e.ctx.get_help() + "\n")
            sys.exit(0)
        sys.stderr.write(f"error: {_one_line(e.format_message())} (see --help)\n")
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except RemamberError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {_one_line(str(e))}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {type(e).__name__}: {_one_line(str(e))} (run with --debug for the traceback)\n")
        sys.exit(EXIT_FAILURE)
    sys.exit(code if isinstance(code, int) else 0)
