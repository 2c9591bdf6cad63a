"""Options that several commands share, declared once so that they read the same everywhere.

Metavars follow one scheme in every command: FOLDER (a directory), FILE (a file), PATH (either),
MODEL (a model folder or Hub id), REPO (a Hub repository, owner/name), N (an integer), X (a
number), TEXT (free text), NAME (one of the names the help lists). Flags (on/off) show none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from remamber.utils.errors import InputError, check_presence_threshold, check_threshold

WEIGHTS_HELP = (
    "Model: a local folder (PyTorch or ONNX), a shipped model's name (remamber-tiny-gshapes, the default, or remamber-tiny-shapes), owner/name, "
    "owner/name@revision or hf://owner/name. Default: the shipped default model."
)


def _hide_flag_types(params: list[Any]) -> list[Any]:
    """Flags take no value: show none (Typer otherwise shows ``<bool>`` beside each)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A command whose help shows no value type beside its flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """A group of commands whose help shows no value type beside its flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_types(super().get_params(ctx))


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


def presence_threshold_option() -> Any:
    """``--presence-threshold``: below it a model with a presence head gives an empty mask."""
    return typer.Option(
        0.5,
        "--presence-threshold",
        metavar="X",
        callback=checked(check_presence_threshold),
        help="Models with a presence head: when the probability that the phrase names anything is below X "
        "(0 <= X < 1; 0: never), the mask is empty and the result says not found.",
    )
