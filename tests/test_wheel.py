"""Installed like any package: the wheel of the tracked files, installed in a fresh virtual
environment, segments the quick start's example from an unrelated folder with its shipped model,
through the ``remamber`` command and through the README's Python snippet."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from remamber.cli.weights import DEMO_NOTE
from remamber.hub.shipped import SHIPPED_MODELS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "shapes-3.png"
TEXT = "the big yellow object"
AREA = 2523  # the quick start's output in README.md
MODEL_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "training.json",
}


def _run(*args: str | Path, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}\n--- stdout\n{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return proc


def _source_copy(dest: Path) -> Path:
    """The files git tracks (what a release is built from: a file that was never added fails here),
    or, outside a git checkout, the files the build reads."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = ["pyproject.toml", "README.md", *(str(p.relative_to(REPO)) for p in (REPO / "remamber").rglob("*"))]
    for name in files:
        src = REPO / name
        if src.is_file() and "__pycache__" not in src.parts:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _readme_python_snippet() -> str:
    """The README's "From Python" block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"From Python:\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block after 'From Python:'"
    return match.group(1)


@pytest.mark.slow
def test_wheel_installs_and_segments_from_anywhere(tmp_path):
    # PYTHONPATH (how a development shell points at a checkout) would hide the installed copy.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REMAMBER_DEBUG")}
    env["HF_HUB_OFFLINE"] = "1"
    dist = tmp_path / "dist"
    source = _source_copy(tmp_path / "src")
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        source,
        "--no-deps",
        "--no-build-isolation",
        "-w",
        dist,
        "-q",
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("remamber-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    for model in SHIPPED_MODELS:  # every shipped model, the default first
        assert MODEL_FILES <= {Path(n).name for n in names if n.startswith(f"remamber/pretrained/{model}/")}, model

    # The system's packages (torch and friends) stay visible, so nothing is downloaded; the
    # system's pip installs into the venv, which has none of its own (--without-pip is faster).
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    # --ignore-installed: a development install of remamber in the system packages is left alone
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
        "-q",
        wheel,
        cwd=tmp_path,
        env=env,
    )

    elsewhere = tmp_path / "elsewhere"  # unrelated to the source tree; the example image is copied in
    (elsewhere / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, elsewhere / "examples" / EXAMPLE.name)

    res = _run(venv / "bin" / "remamber", "segment", EXAMPLE, TEXT, "--out", tmp_path / "out", cwd=elsewhere, env=env)
    assert f"({AREA} px)" in res.stdout, res.stdout
    assert (tmp_path / "out" / "shapes-3.the-big-yellow-object.mask.png").is_file()
    assert res.stderr.count(DEMO_NOTE) == 1

    check = (
        "import sys, remamber\n"
        "assert 'torch' not in sys.modules\n"
        "print(remamber.__file__)\n" + _readme_python_snippet() + "print(pred.area)\n"
        "from remamber import ReMamber, load_pretrained\n"
        "assert ReMamber.from_pretrained('remamber-tiny-gshapes').config == load_pretrained().config\n"
        "assert not load_pretrained('remamber-tiny-shapes').config.presence_head\n"
    )
    res = _run(python, "-c", check, cwd=elsewhere, env=env)
    installed_at, area = res.stdout.split()[-2:]
    assert Path(installed_at).resolve().is_relative_to(venv.resolve()), installed_at  # not the source tree
    assert int(area) == AREA
