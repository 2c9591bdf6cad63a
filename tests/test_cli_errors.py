"""Exit codes and messages scripts can trust: usage errors, bad text, bad settings and model
configs, run folders, output folders, internal errors, help layout (issue 27, section 2)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import REPO, assert_one_line_error, run_cli

from remamber.cli.main import main
from remamber.data.catalog import KNOWN_DATASETS
from remamber.utils.errors import EXIT_INTERNAL, InputError, RemamberError, check_threshold

TRAIN_FAST = ["--preset", "tiny", "--image-size", "64", "--batch-size", "4", "--val-split", "", "--max-steps", "1"]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), out, err


def _assert_usage_error(code: int, out: str, err: str, command: str, fragment: str) -> None:
    """Exit 2, nothing on stdout, and on stderr the command's usage line and one error line."""
    lines = err.splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 2, err
    assert lines[0].startswith(f"Usage: remamber {command}"), lines[0]
    assert lines[1].startswith("error: ") and fragment in lines[1] and "--help" in lines[1], lines[1]


REFER = [f"prepare {name}" for name in KNOWN_DATASETS]


@pytest.mark.parametrize(
    "command, args, fragment",
    [
        ("segment", [], "missing IMAGE and TEXT"),
        ("segment", ["photo.jpg"], "missing TEXT"),
        ("segment", ["photo.jpg", "x", "--batch", "jobs.jsonl"], "not both"),
        ("eval", [], "Missing option '--split'"),
        ("prepare", [], "Missing command"),
        ("prepare shapes", ["--out"], "requires an argument"),
        *[(name, ["--out"], "requires an argument") for name in REFER],
        ("train", ["--out"], "requires an argument"),
        ("export", [], "Missing option '--out'"),
    ]
    + [
        (command, [], "No such option: --bogus")
        for command in ("segment", "eval", "prepare", "prepare shapes", *REFER, "train", "export")
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(capsys, command, args, fragment):
    argv = [*command.split(), *args] + (["--bogus"] if fragment.startswith("No such option") else [])
    _assert_usage_error(*_main(capsys, *argv), command, fragment)


def test_bare_remamber_shows_the_help(capsys):
    code, out, err = _main(capsys)
    assert code == 0 and "Usage: remamber" in out and out.count("Usage:") == 1 and err == ""


def test_text_that_is_not_utf8_is_one_error(capsys, rgb_image, tmp_path):
    # on Linux the argv bytes b"\xff" arrive as the lone surrogate "\udcff"
    code, out, err = _main(capsys, "segment", str(rgb_image), "red \udcff", "--out", str(tmp_path / "o"))
    assert code == 2 and out == "" and err.startswith("error: the text is not valid UTF-8"), err
    assert not (tmp_path / "o").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "remamber", "segment", str(rgb_image), b"\xff", "--out", str(tmp_path / "o")],
        capture_output=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


def test_batch_fails_only_the_bad_line_and_reads_paths_from_the_list_folder(tiny_model_dir, rgb_image, tmp_path):
    lists = tmp_path / "lists"
    (lists / "images").mkdir(parents=True)
    shutil.copy(rgb_image, lists / "images" / "photo.jpg")
    (lists / "jobs.jsonl").write_bytes(
        b'{"image": "images/photo.jpg", "text": "red circle"}\n'
        b'{"image": "images/photo.jpg", "text": "bad \xff byte"}\n'
        b'{"image": "images/photo.jpg", "text": "a lone \\udcff surrogate"}\n'
        b'{"image": "images/photo.jpg", "text": "blue square"}\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run_cli(
        "segment", "--batch", "../lists/jobs.jsonl", "-w", str(tiny_model_dir), "--out", "o", "--json", cwd=elsewhere
    )
    assert res.code == 1, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r.get("line") for r in records] == [None, 2, 3, None]
    assert records[0]["image"] == str(Path("..", "lists", "images", "photo.jpg"))
    assert records[2]["text"] == "a lone \\udcff surrogate"  # shown escaped, not an encoding crash
    assert "error: line 2: not valid UTF-8" in res.stderr and "error: line 3: the text is not valid UTF-8" in res.stderr
    assert "Traceback" not in res.stderr
    written = sorted(p.name for p in (elsewhere / "o").glob("*.mask.png"))
    assert written == ["photo.blue-square.mask.png", "photo.red-circle.mask.png"]
    # stdin: relative to the current folder
    job = json.dumps({"image": "lists/images/photo.jpg", "text": "star"}) + "\n"
    res = run_cli("segment", "--batch", "-", "--weights", str(tiny_model_dir), "--out", "o", stdin=job, cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert (tmp_path / "o" / "photo.star.mask.png").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_train_refuses_bad_numbers(capsys, tmp_path, value):
    code, out, err = _main(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--lr", value)
    _assert_usage_error(code, out, err, "train", "--lr must be a finite number")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["--nproc", "0"], ["--nproc", "-2"], ["--ema", "1"], ["--min-lr", "1"]])
def test_train_refuses_bad_ranges(capsys, tmp_path, args):
    code, out, err = _main(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args)
    _assert_usage_error(code, out, err, "train", args[0])


@pytest.mark.parametrize(
    "change, field",
    [
        ({"text_config": "clip"}, "text_config"),
        ({"text_config": {"model_type": "clip_text_model", "hidden_size": "big"}}, "text_config.hidden_size"),
        ({"image_size": "big"}, "image_size"),
        ({"pixel_std": [0.0, 0.0, 0.0]}, "pixel_std[0]"),
        ({"drop_path_rate": 2}, "drop_path_rate"),
    ],
)
def test_bad_model_config_is_one_error_naming_the_field(capsys, tiny_model_dir, rgb_image, tmp_path, change, field):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}))
    code, out, err = _main(
        capsys, "segment", str(rgb_image), "x", "--weights", str(model), "--out", str(tmp_path / "o")
    )
    assert code == 2 and out == "", err
    assert err.startswith(f"error: config: {field} must be") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def _run_folder_without_checkpoint(data: Path, run: Path) -> None:
    """What `kill -9` before the first checkpoint leaves: the config and a log line."""
    from remamber.engine.train_config import TrainConfig

    run.mkdir()
    cfg = TrainConfig(data=str(data), out=str(run), image_size=64, batch_size=4, max_steps=1, val_split=None)
    cfg.save(run / "train_config.json")
    (run / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')


def test_a_run_killed_before_its_first_checkpoint_can_go_on(small_shapes, tmp_path):
    run = tmp_path / "run"
    _run_folder_without_checkpoint(small_shapes, run)
    res = run_cli("train", "--data", str(small_shapes), "--out", str(run), *TRAIN_FAST)
    assert_one_line_error(res, "already holds a training run", "--resume", "--overwrite")
    res = run_cli("train", "--out", str(run), "--resume")
    assert res.code == 0, res.stderr
    assert "has no checkpoint yet" in res.stderr and "afresh" in res.stderr
    assert (run / "checkpoints" / "last" / "trainer_state.pt").is_file()
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1]
    res = run_cli("train", "--data", str(small_shapes), "--out", str(run), *TRAIN_FAST, "--overwrite", "--seed", "5")
    assert res.code == 0, res.stderr
    assert json.loads((run / "train_config.json").read_text())["seed"] == 5
    assert len((run / "log.jsonl").read_text().splitlines()) == 1  # the old run's log went with it
    _assert_usage_error(*_main_subprocess("train", "--out", str(run), "--resume", "--overwrite"), "train", "--resume")


def _main_subprocess(*args: str) -> tuple[int, str, str]:
    res = run_cli(*args)
    return res.code, res.stdout, res.stderr


def test_failed_segment_leaves_no_new_out_folder(capsys, tmp_path, rgb_image):
    out = tmp_path / "new" / "deeper"
    for args in (
        [str(tmp_path / "missing.jpg"), "x"],
        [str(rgb_image), "x", "--weights", str(tmp_path / "no-model")],
    ):
        code, _, err = _main(capsys, "segment", *args, "--out", str(out))
        assert code == 2 and err.startswith("error: "), err
        assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    _main(capsys, "segment", str(tmp_path / "missing.jpg"), "x", "--out", str(tmp_path / "kept"))
    assert (tmp_path / "kept").is_dir()


def test_internal_errors_have_their_own_exit_code(capsys, monkeypatch, rgb_image, tmp_path):
    from remamber.cli import segment

    def broken(text):
        raise RuntimeError("a bug")

    monkeypatch.setattr(segment, "_check_text", broken)
    args = ["segment", str(rgb_image), "x", "--out", str(tmp_path / "o")]
    code, out, err = _main(capsys, *args)
    assert code == EXIT_INTERNAL == 70 and out == ""
    assert err == "error: internal error: RuntimeError: a bug (run with --debug for the traceback)\n"
    code, _, err = _main(capsys, *args, "--debug")
    assert code == 70 and "Traceback" in err and "run with --debug" not in err
    assert not (tmp_path / "o").exists()
    top = run_cli("--help", env={"COLUMNS": "200"}).stdout
    assert "Exit codes:" in top and "70 an internal error" in " ".join(top.split())


HELPS = [
    [],
    ["segment"],
    ["eval"],
    ["train"],
    ["export"],
    ["prepare"],
    ["prepare", "shapes"],
    *[c.split() for c in REFER],
]


@pytest.mark.parametrize("command", HELPS, ids=lambda c: " ".join(c) or "remamber")
def test_help_at_80_columns_shows_no_bool_types(command):
    res = run_cli(*command, "--help", env={"COLUMNS": "80"})
    assert res.code == 0, res.stderr
    assert "<bool>" not in res.stdout and "BOOLEAN" not in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    if command == ["eval"]:
        text = " ".join(res.stdout.replace("│", " ").split())
        assert "refcoco, refcoco+, refcocog, grefcoco, shapes" in text  # choices whole, not cut mid-word
        assert "0: all" in text
    if command == ["train"]:
        text = " ".join(res.stdout.replace("│", " ").split())
        assert "0: all" in text and "--overwrite" in text


def test_library_errors_name_parameters_not_flags():
    from remamber.hub.folders import parse_hub_spec, resolve_weights
    from remamber.inference.predictor import resolve_device

    with pytest.raises(InputError, match=r"^threshold must be between 0 and 1"):
        check_threshold(1.5)
    with pytest.raises(InputError, match=r"^device 'tpu': expected auto, cpu"):
        resolve_device("tpu")
    with pytest.raises(RemamberError, match=r"^weights '\./nowhere': no such model folder"):
        resolve_weights("./nowhere")
    with pytest.raises(RemamberError, match=r"^weights 'hf://x': expected"):
        parse_hub_spec("hf://x")


def test_cli_threshold_error_names_the_flag(capsys, rgb_image):
    code, out, err = _main(capsys, "segment", str(rgb_image), "x", "--threshold", "1.5")
    _assert_usage_error(code, out, err, "segment", "'--threshold': threshold must be between 0 and 1")


def test_train_options_come_from_the_train_config():
    """Every TrainConfig field with a flag is a parameter of `remamber train` with the field's
    default and help; and STATE_NAME is the checkpoint's."""
    import inspect

    import typer.main

    from remamber.cli import train as cli_train
    from remamber.cli.main import app
    from remamber.engine.checkpoint import STATE_NAME
    from remamber.engine.train_config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    signature = inspect.signature(cli_train.train).parameters
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["cli"]:
            assert f.name not in signature
            continue
        assert f.name in signature and f"--{f.name.replace('_', '-')}" in options[f.name].opts, f.name
        assert options[f.name].help.startswith(f.metadata["help"].split(".")[0]), f.name
        if f.default is not dataclasses.MISSING:
            assert options[f.name].default == f.default, f.name
    assert cli_train.STATE_NAME == STATE_NAME
    assert (REPO / "remamber" / "engine" / "train_config.py").read_text().count("import torch") == 0


def test_library_settings_are_shown_as_the_commands_flags():
    """Library messages name settings in backticks; the CLI shows the running command's flag."""
    from remamber.cli.main import _as_flags

    message = "too large; pass `allow_large` if you trust it, or `resume`"
    assert _as_flags(message, ["segment", "a.png", "x"]) == "too large; pass --allow-large if you trust it, or resume"
    assert _as_flags("continue with `resume`; try a lower `lr`", ["train", "--out", "r"]) == (
        "continue with --resume; try a lower --lr"
    )
    assert _as_flags("fix `images_root` or pass `skip_missing`", ["prepare", "refcoco"]) == (
        "fix --coco-images or pass --skip-missing"
    )
    assert _as_flags("see `remamber eval --json`", ["eval"]) == "see `remamber eval --json`"  # not a setting name
