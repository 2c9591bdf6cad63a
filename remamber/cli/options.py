"""Options that several commands share, declared once so that they read the same everywhere.

Metavars follow one scheme in every command: FOLDER (a directory), FILE (a file), PATH (either),
MODEL (a model folder or Hub id), N (an integer), X (a number), TEXT (free text), NAME (one of
the names the help lists). Flags (on/off) show no metavar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from remamber.utils.errors import InputError, check_threshold

WEIGHTS_HELP = (
    "Model: a local folder, owner/name, owner/name@revision or hf://owner/name. Default: the shipped default model."
)


def checked(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A Typer callback running a library check; its InputError becomes a usage error that
    names the flag (click adds "Invalid value for '--flag'")."""

    def callback(value: Any) -> Any:
        try:
            return check(value)
        except InputError as e:
            raise typer.BadParameter(str(e)) from None

    return callback


def weights_option() -> Any:
    """``--weights`` / ``-w``: the model to use (the shipped default when not given)."""
    return typer.Option(None, "--weights", "-w", metavar="MODEL", help=WEIGHTS_HELP, show_default=False)


def device_option() -> Any:
    """``--device``: where the model runs."""
    return typer.Option("auto", "--device", metavar="NAME", help="auto (CUDA if available), cpu, cuda or cuda:N.")


def threshold_option() -> Any:
    """``--threshold``: the mask is sigmoid(logit) > threshold; checked as it is parsed."""
    return typer.Option(
        0.5,
        "--threshold",
        metavar="X",
        callback=checked(check_threshold),
        help="Mask = sigmoid(logit) > X (strictly greater), 0 < X < 1.",
    )
