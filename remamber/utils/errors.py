"""Errors that the CLI turns into one line on stderr and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the work ran but something failed (a batch with bad items, a diverged training)
EXIT_BAD_INPUT = 2  # the user's input, configuration or command line is wrong
EXIT_INTERNAL = 70  # an unexpected error, a bug: EX_SOFTWARE of sysexits.h, so scripts can tell it from 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipe's reader going away


class RemamberError(Exception):
    """An error the user can fix; its message is one line, shown without a traceback.

    A message names a setting in backticks (`allow_large`, `resume`): the command line shows it as
    the flag of the command that ran (--allow-large), so library code never names flags."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(RemamberError):
    """A model config or preset that cannot be built."""


class WeightsError(RemamberError):
    """Model weights that are missing, corrupt or do not match their config."""


class InputError(RemamberError):
    """A bad image, text, or data file given by the user."""


class UsageError(InputError):
    """A command line that does not say what to do (missing or clashing arguments); the CLI
    shows the command's usage line above the message."""


def check_threshold(threshold: float) -> float:
    """The mask threshold as a float, or InputError when it is not strictly between 0 and 1."""
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise InputError(f"threshold must be between 0 and 1, exclusive (got {threshold})")
    return float(threshold)


def check_presence_threshold(threshold: float) -> float:
    """The presence threshold as a float (0 <= threshold < 1; 0 never empties a mask), or InputError."""
    if isinstance(threshold, bool) or not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
        raise InputError(f"presence_threshold must be at least 0 and below 1 (got {threshold})")
    return float(threshold)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
