"""The README cannot rot: every ``remamber`` command in it parses against the real CLI, and
the blocks marked ``<!-- readme:run -->`` run as written (offline, in a scratch folder)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARK = "<!-- readme:run -->"


def _blocks(text: str) -> list[tuple[bool, str]]:
    """``(marked to run, body)`` of every bash code block."""
    found = []
    for m in re.finditer(r"(<!-- [\w:]+ -->\n)?```bash\n(.*?)```", text, re.S):
        found.append((m.group(1) is not None and RUN_MARK in m.group(1), m.group(2)))
    return found


def _commands(block: str) -> list[list[str]]:
    """The argument lists of the ``remamber`` invocations in a block (``remamber ARGS``,
    ``python -m remamber ARGS``, ``torchrun ... -m remamber ARGS``), pipelines and ``&&`` split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|\|\||(?<![<>])\|(?!\|)|;", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            if words and words[0] == "remamber":
                out.append(words[1:])
            elif "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] == "remamber":
                out.append(words[words.index("-m") + 2 :])
    return out


def readme_commands() -> list[list[str]]:
    return [cmd for _, body in _blocks(README.read_text(encoding="utf-8")) for cmd in _commands(body)]


def _parse(args: list[str]) -> None:
    """Parse ``remamber ARGS`` with the real command tree, down to the leaf command."""
    import typer.main

    from remamber.cli.main import app

    command = typer.main.get_command(app)
    try:
        ctx = command.make_context("remamber", list(args))
        while hasattr(command, "get_command"):
            rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
            if not rest:
                break
            sub = command.get_command(ctx, rest[0])
            assert sub is not None, f"no command {rest[0]!r} in: remamber {' '.join(args)}"
            command, ctx = sub, sub.make_context(rest[0], rest[1:], parent=ctx)
    except Exception as e:  # --help exits with code 0; anything else is a README that rotted
        if type(e).__name__ != "Exit" or getattr(e, "exit_code", 1) != 0:
            raise


def test_readme_has_commands_for_every_cli_command():
    used = {cmd[0] for cmd in readme_commands() if cmd}
    assert {"segment", "prepare", "train", "eval", "export"} <= used


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(args):
    _parse(args)


def test_marked_blocks_run_as_written(tmp_path):
    blocks = [body for run, body in _blocks(README.read_text(encoding="utf-8")) if run]
    assert blocks, f"no block is marked {RUN_MARK}"
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "remamber"
    launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m remamber "$@"\n')
    launcher.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "REMAMBER_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    env.pop("REMAMBER_DEBUG", None)
    for body in blocks:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (
            f"README block failed:\n{body}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
