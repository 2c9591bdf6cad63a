"""`remamber prepare` through the real command line (python -m remamber, subprocess)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REMAMBER_HOME": str(home), "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("REMAMBER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "remamber", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _out(home: Path) -> Path:
    return home / "datasets" / "refcoco"


def test_default_places_then_nothing_to_do(refer_fixture, tmp_path):
    # The fixture sits in the documented layout of the data home: no flag needed.
    proc = run_cli(tmp_path, "prepare", "refcoco")
    assert proc.returncode == 0, proc.stderr
    assert "prepared" in proc.stdout and "testB" in proc.stdout
    out = _out(tmp_path)
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["splits"]["val"]["samples"] == refer_fixture.counts["val"]["samples"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = run_cli(tmp_path, "prepare", "refcoco", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "up-to-date"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # not rewritten
    text = run_cli(tmp_path, "prepare", "refcoco")
    assert "nothing to do" in text.stdout


def test_path_flags_override_defaults(refer_fixture, tmp_path):
    fx = refer_fixture
    moved = tmp_path / "elsewhere"
    fx.refer_root.rename(moved)
    proc = run_cli(
        tmp_path / "empty-home",
        "prepare",
        "refcoco",
        "--refer-root",
        str(moved),
        "--coco-images",
        str(fx.images_root),
        "--out",
        str(tmp_path / "o"),
        "--limit",
        "1",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "written" and result["splits"]["train"]["refs"] == 1
    assert (tmp_path / "o" / "dataset.json").is_file()


def test_missing_files_listed_with_hints(tmp_path):
    err = assert_one_line_error(
        run_cli(tmp_path, "prepare", "refcoco"),
        "refs(unc).p",
        "instances.json",
        "refcoco.zip",
        "train2014",
        "cocodataset.org",
    )
    assert "lichengunc/refer" in err
    assert not (tmp_path / "datasets").exists()


def _corrupt_pickle(fx):
    fx.refs_path.write_bytes(fx.refs_path.read_bytes()[:200])


def _global_pickle(fx):
    marker = fx.refer_root.parent / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    fx.refs_path.write_bytes(pickle.dumps([{"ref_id": 1, "oops": Evil()}], protocol=2))
    return marker


def _missing_ann(fx):
    instances = fx.load_instances()
    instances["annotations"] = [a for a in instances["annotations"] if a["id"] != 102]
    fx.write_instances(instances)


def _missing_image(fx):
    fx.image_path(2).unlink()


@pytest.mark.parametrize(
    "break_it, fragments",
    [
        (_corrupt_pickle, ("refs(unc).p", "not a readable pickle")),
        (_global_pickle, ("refused to load", "io.open")),
        (_missing_ann, ("ref 2", "ann_id 102", "instances.json")),
        (_missing_image, ("1 of 3 images", "missing", "--skip-missing")),
    ],
    ids=["corrupt-pickle", "pickle-global", "missing-ann-id", "missing-image"],
)
def test_bad_inputs_one_line_error_nothing_written(refer_fixture, tmp_path, break_it, fragments):
    marker = break_it(refer_fixture)
    assert_one_line_error(run_cli(tmp_path, "prepare", "refcoco"), *fragments)
    assert not _out(tmp_path).exists()
    if marker is not None:
        assert not marker.exists()  # the global was refused, not executed


def test_skip_missing_goes_on(refer_fixture, tmp_path):
    _missing_image(refer_fixture)
    proc = run_cli(tmp_path, "prepare", "refcoco", "--skip-missing", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["missing_images"] == 1 and result["skipped_samples"] == 3
    # image 2 held the only testA and testB refs: those splits stay, empty
    samples = [result["splits"][s]["samples"] for s in ("train", "val", "testA", "testB")]
    assert samples == [3, 4, 0, 0]


def test_bad_input_keeps_previous_output(refer_fixture, tmp_path):
    assert run_cli(tmp_path, "prepare", "refcoco").returncode == 0
    before = (_out(tmp_path) / "dataset.json").read_bytes()
    _corrupt_pickle(refer_fixture)
    assert_one_line_error(run_cli(tmp_path, "prepare", "refcoco"), "not a readable pickle")
    assert (_out(tmp_path) / "dataset.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("prepare", "refcocoz"), ("unknown dataset 'refcocoz'", "refcoco+", "shapes")),
        (("prepare", "refcoco+", "--split-by", "google"), ("no split_by 'google'", "unc")),
        (("prepare", "refcoco", "--limit", "0"), ("limit must be at least 1",)),
        (("prepare", "shapes", "--size", "10"), ("size must be between",)),
    ],
    ids=["unknown-dataset", "bad-split-by", "bad-limit", "bad-size"],
)
def test_bad_names_and_values(tmp_path, args, fragments):
    assert_one_line_error(run_cli(tmp_path, *args), *fragments)
    assert not (tmp_path / "datasets").exists()


def test_help_documents_sources_layout_and_defaults(tmp_path):
    home = tmp_path
    main = run_cli(home, "prepare", "--help")
    assert main.returncode == 0
    for fragment in (
        "refs(unc).p",
        "refs(umd).p",
        "instances.json",
        "lichengunc/refer",
        "LAVT",
        "cocodataset.org",
        "train2014.zip",
        "refer/refcoco/",
        "coco/train2014/",
        "datasets/<name>/",
        "REMAMBER_HOME",
        str(home),
    ):
        assert fragment in main.stdout, fragment
    for name, split_by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        sub = run_cli(home, "prepare", name, "--help")
        assert sub.returncode == 0
        text = " ".join(sub.stdout.split())
        for fragment in (
            str(home / "refer"),
            str(home / "coco" / "train2014"),
            str(home / "datasets" / name),
            f"[default: ({split_by})]",
            "refs(unc).p",
            "cocodataset.org",
            "lichengunc/refer",
            "--skip-missing",
            "--limit",
        ):
            assert fragment in text, (name, fragment)
    shapes = " ".join(run_cli(home, "prepare", "shapes", "--help").stdout.split())
    expected = (str(home / "datasets" / "shapes"), "[default: 600]", "[default: 256]", "--seed")
    for fragment in expected:
        assert fragment in shapes, fragment


def test_shapes_command_and_idempotency(tmp_path):
    args = ("prepare", "shapes", "--train", "3", "--val", "2", "--test", "1", "--json")
    first = run_cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["status"] == "written" and result["name"] == "shapes"
    assert result["splits"]["train"]["samples"] > 0
    out = tmp_path / "datasets" / "shapes"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = run_cli(tmp_path, *args)
    assert json.loads(second.stdout)["status"] == "up-to-date"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
