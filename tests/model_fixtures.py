"""Fixtures for model tests: a random tiny model folder, test images, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict | None = None, stdin: str | None = None, cwd: str | Path | None = None) -> CliResult:
    """Run ``python -m remamber ARGS`` as a subprocess (the real CLI, a fresh interpreter); without
    ``cwd``, in a fresh empty directory, so that a default output path never lands in the repository."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("REMAMBER_DEBUG", None)
    with tempfile.TemporaryDirectory(prefix="remamber-cli-") as scratch:
        proc = subprocess.run(
            [sys.executable, "-m", "remamber", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd if cwd is not None else scratch,
            timeout=300,
        )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: CliResult, *fragments: str, code: int = 2) -> None:
    """A bad input: the given exit code, one 'error:' line on stderr, no traceback."""
    assert result.code == code, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.fixture(scope="session")
def tiny_model():
    """A random-weight tiny ReMamber (seeded), with its tokenizer."""
    import torch

    from remamber.modeling.presets import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny model saved as a model folder."""
    from remamber.hub.folders import save_pretrained

    return save_pretrained(tiny_model, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture()
def rgb_image(tmp_path) -> Path:
    """A 90x120 (h x w) JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory) -> Path:
    """A small prepared synthetic dataset (train/val/test) made through the real CLI."""
    out = tmp_path_factory.mktemp("data") / "shapes"
    res = run_cli("prepare", "shapes", "--out", str(out), "--train", "6", "--val", "2", "--test", "2", "--size", "64")
    assert res.code == 0, res.stderr
    return out


def make_generalized(src: Path, dst: Path, split: str, kinds: dict[int, str]) -> list[dict]:
    """A copy of the prepared folder ``src`` at ``dst`` whose ``split`` has generalized (GRES) records,
    as ``prepare grefcoco`` writes them: every record gets ``ann_ids`` and ``no_target``; ``kinds``
    maps a record's index to ``none`` (no object: ``ann_id`` -1, an all-zero mask) or ``multi`` (its
    object and another object of the same image, from any split: the union of their masks). Returns
    the new records of ``split``."""
    import json
    import shutil

    from remamber.data.manifest import INFO_FILE, PreparedDataset, write_manifest
    from remamber.data.masks import decode_rle, encode_mask

    shutil.copytree(src, dst)
    prepared = PreparedDataset.open(dst)
    every = [r for s in prepared.splits for r in prepared.records(s)]
    records = prepared.records(split)
    for i, rec in enumerate(records):
        kind = kinds.get(i, "single")
        mask = decode_rle(rec["mask"])
        rec["ann_ids"], rec["no_target"] = [rec["ann_id"]], kind == "none"
        if kind == "none":
            rec["ann_id"], rec["ann_ids"], mask = -1, [], np.zeros_like(mask)
        elif kind == "multi":
            other = next(r for r in every if r["image_id"] == rec["image_id"] and r["ann_id"] != rec["ann_id"])
            rec["ann_ids"].append(other["ann_id"])
            mask = mask | decode_rle(other["mask"])
        rec["mask"] = encode_mask(mask)
    info = json.loads((dst / INFO_FILE).read_text(encoding="utf-8"))
    info["splits"][split].update(write_manifest(dst / info["splits"][split]["manifest"], records))
    (dst / INFO_FILE).write_text(json.dumps(info), encoding="utf-8")
    return records
