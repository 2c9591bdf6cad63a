"""``remamber eval --split all`` on RefCOCO-like REFER fixtures prepared in a data home, and the GRES
metrics of ``remamber eval`` on a generalized split, through the command line's entry point
(``remamber.cli.main.main``, in this process: one torch import for the file).

The model is the tiny model with its last layer set to predict nothing (logits -50 everywhere),
so every number is known from the ground truth: I = 0 and U = the ground-truth area.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
from conftest import _write_refer
from model_fixtures import CliResult, assert_one_line_error, make_generalized

from remamber.data.manifest import PreparedDataset
from remamber.data.masks import decode_rle
from remamber.data.prepare import prepare_refer


@pytest.fixture(scope="module")
def blind_model_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny model whose masks are always empty (last convolution: weights 0, bias -50)."""
    import torch

    from remamber.hub.folders import save_pretrained

    model = copy.deepcopy(tiny_model)
    last = model.decoder.neck[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)
    return save_pretrained(model, tmp_path_factory.mktemp("models") / "blind")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A data home with RefCOCO (train/val/testA/testB) and G-Ref (umd: train/val/test) prepared
    from the REFER fixture, and RefCOCO+ not prepared."""
    root = tmp_path_factory.mktemp("home")
    fx = _write_refer(root)
    gref = fx.refer_root / "refcocog"
    shutil.copytree(fx.refer_root / "refcoco", gref)
    refs = pickle.loads(fx.refs_path.read_bytes())
    for ref in refs:
        ref["split"] = {"testA": "test", "testB": "test"}.get(ref["split"], ref["split"])
    (gref / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    for name in ("refcoco", "refcocog"):
        prepare_refer(fx.refer_root, name, fx.images_root, root / "datasets" / name)
    return root


def _areas(folder: Path, split: str) -> int:
    """Sum of the ground-truth areas of a split (the U of an empty prediction)."""
    return sum(int(decode_rle(r["mask"]).sum()) for r in PreparedDataset.open(folder).records(split))


@pytest.fixture
def run_eval(monkeypatch, capsys):
    """``remamber eval ARGS`` in this process, with ``env`` set: its exit code, stdout and stderr."""
    from remamber.cli.main import main

    def run(*args: str, env: dict | None = None) -> CliResult:
        monkeypatch.delenv("REMAMBER_DEBUG", raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        try:
            main(["eval", *args])
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def in_home(home, run_eval):
    """``remamber eval ARGS`` with ``home`` as the data home."""
    return lambda *args, env=None: run_eval(*args, env={"REMAMBER_HOME": str(home), **(env or {})})


EXPECTED = [("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"), ("refcocog", "val"), ("refcocog", "test")]


def test_split_all_json_every_standard_split(home, in_home, blind_model_dir, tmp_path):
    res = in_home("--weights", str(blind_model_dir), "--split", "all", "--device", "cpu", "--json")
    assert res.code == 0, res.stderr
    # `remamber export --metrics` takes the file: a card row per split
    from remamber.hub.card import metrics_table
    from remamber.hub.publish import read_metrics

    (tmp_path / "all.json").write_text(res.stdout, encoding="utf-8")
    card = metrics_table(read_metrics([tmp_path / "all.json"]))
    assert "| refcoco | testA | 1 | 0.00 |" in card and "| refcocog | test | 3 | 0.00 |" in card
    assert "note: refcoco+ is not prepared" in res.stderr and "`remamber prepare refcoco+`" in res.stderr
    out = json.loads(res.stdout)
    assert (out["split"], out["weights"], out["threshold"], out["skipped"]) == (
        "all",
        str(blind_model_dir),
        0.5,
        ["refcoco+"],
    )
    assert [(r["dataset"], r["split"]) for r in out["results"]] == EXPECTED
    for r in out["results"]:
        folder = home / "datasets" / r["dataset"]
        assert r["data"] == str(folder)
        assert r["samples"] == len(PreparedDataset.open(folder).records(r["split"]))
        assert (r["I"], r["U"]) == (0, _areas(folder, r["split"]))  # the split's own masks
        assert r["mIoU"] == r["oIoU"] == 0.0 and "gIoU" not in r


def test_split_all_table_and_progress_per_split(home, in_home, blind_model_dir):
    res = in_home(
        "--weights",
        str(blind_model_dir),
        "--split",
        "all",
        "--device",
        "cpu",
        "--limit",
        "2",  # per split
        env={"TTY_COMPATIBLE": "1", "COLUMNS": "160", "NO_COLOR": "1"},
    )
    assert res.code == 0, res.stderr
    for dataset, split in EXPECTED:
        assert f"eval {dataset} {split}" in res.stderr  # a progress bar per split
    lines = re.sub(r"\x1b\[[\d;]*m", "", res.stdout).splitlines()  # no bold
    assert re.search(r"RefCOCO\s.*G-Ref", "".join(lines)), res.stdout
    cells = {line.split()[1]: line.split()[2:] for line in lines if re.match(r"\W*(oIoU|mIoU|samples)\b", line)}
    assert set(cells) == {"oIoU", "mIoU", "samples"}, res.stdout
    clean = {k: [c for c in v if re.fullmatch(r"[\d.]+", c)] for k, v in cells.items()}
    counts = [min(2, len(PreparedDataset.open(home / "datasets" / d).records(s))) for d, s in EXPECTED]
    assert counts == [2, 1, 2, 2, 2]
    assert clean["samples"] == [str(c) for c in counts]  # one column per split, in Table 2 order
    assert clean["oIoU"] == clean["mIoU"] == ["0.00"] * len(EXPECTED)


def test_split_all_of_a_folder_with_reports(home, in_home, blind_model_dir, tmp_path):
    folder = home / "datasets" / "refcoco"
    res = in_home(
        "--weights",
        str(blind_model_dir),
        "--data",
        str(folder),
        "--split",
        "all",
        "--device",
        "cpu",
        "--json",
        "--report",
        str(tmp_path / "r.csv"),
        "--save-masks",
        str(tmp_path / "masks"),
    )
    assert res.code == 0, res.stderr
    assert "note:" not in res.stderr
    out = json.loads(res.stdout)
    assert [r["split"] for r in out["results"]] == ["val", "testA", "testB"]  # all but train
    for r in out["results"]:
        assert r["report"] == str(tmp_path / f"r.refcoco.{r['split']}.csv")
        assert Path(r["histogram"]).is_file() and Path(r["report"]).is_file()
        masks = tmp_path / "masks" / "refcoco" / r["split"]
        assert r["masks"] == str(masks) and len(list(masks.glob("*.png"))) == r["samples"]


def test_split_all_with_nothing_prepared(run_eval, tmp_path):
    res = run_eval("--split", "all", env={"REMAMBER_HOME": str(tmp_path / "empty-home")})
    assert_one_line_error(res, "--split all", "none of refcoco, refcoco+, refcocog", "`remamber prepare refcoco`")
    assert res.stderr.count("note:") == 3


def test_split_all_without_eval_splits(home, run_eval, tmp_path):
    only_train = tmp_path / "train-only"
    shutil.copytree(home / "datasets" / "refcoco", only_train)
    info = json.loads((only_train / "dataset.json").read_text(encoding="utf-8"))
    info["splits"] = {"train": info["splits"]["train"]}
    (only_train / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    assert_one_line_error(run_eval("--data", str(only_train), "--split", "all"), "no split besides train")


# --------------------------------------------------------------------------- GRES


@pytest.fixture(scope="module")
def generalized(home, tmp_path_factory) -> tuple[Path, list[dict]]:
    """RefCOCO's val split made generalized: sentence 0 names nothing, sentence 1 two objects."""
    folder = tmp_path_factory.mktemp("gres") / "grefcoco-like"
    return folder, make_generalized(home / "datasets" / "refcoco", folder, "val", {0: "none", 1: "multi"})


def test_cli_gres_json(generalized, run_eval, blind_model_dir):
    folder, records = generalized
    res = run_eval("--weights", str(blind_model_dir), "--data", str(folder), "--split", "val", "--json")
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    n = len(records)
    target_area = sum(int(decode_rle(r["mask"]).sum()) for r in records)
    assert (out["samples"], out["target_samples"], out["no_target_samples"]) == (n, n - 1, 1)
    # nothing predicted: the no-target sentence is right (1), every target sentence wrong (0)
    assert (out["N-acc"], out["T-acc"], out["gIoU"], out["cIoU"]) == (1.0, 0.0, 1 / n, 0.0)
    assert (out["I"], out["U"], out["mIoU"], out["P@50"]) == (0, target_area, 0.0, 0.0)
    kinds = out["by_kind"]
    assert list(kinds) == ["none", "single", "multi"]
    assert [kinds[k]["samples"] for k in kinds] == [1, n - 2, 1]
    assert kinds["none"]["mIoU"] is None and kinds["none"]["gIoU"] == 1.0 and kinds["none"]["T-acc"] is None
    assert kinds["multi"]["N-acc"] is None and kinds["multi"]["U"] == int(decode_rle(records[1]["mask"]).sum())
    from remamber.hub.card import metrics_table

    card = metrics_table([out])
    assert "gIoU | cIoU |" in card and "| val: none | 1 | - | - | - | - | - | 100.00 | 0.00 |" in card


def test_cli_gres_table(generalized, run_eval, blind_model_dir):
    folder, records = generalized
    res = run_eval("-w", str(blind_model_dir), "--data", str(folder), "--split", "val", env={"COLUMNS": "200"})
    assert res.code == 0, res.stderr
    for word in ("gIoU %", "cIoU %", "N-acc %", "T-acc %", "group"):
        assert word in res.stdout, (word, res.stdout)
    rows = {
        line.split()[1]: line.split()[2:]
        for line in res.stdout.splitlines()
        if re.match(r"\W*(all|none|single|multi)\b", line)
    }
    assert set(rows) == {"all", "none", "single", "multi"}, res.stdout
    values = {k: [c for c in v if re.fullmatch(r"[\d.]+|-", c)] for k, v in rows.items()}
    # samples, mIoU, oIoU, P@50..P@90, gIoU, cIoU, N-acc, T-acc
    assert values["none"] == ["1"] + ["-"] * 7 + ["100.00", "0.00", "100.00", "-"]
    assert values["all"][0] == str(len(records)) and values["all"][-4:] == [
        f"{100 / len(records):.2f}",
        "0.00",
        "100.00",
        "0.00",
    ]
