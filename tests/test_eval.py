"""Evaluation engine (library) and ``remamber eval`` (subprocess) on a tiny shapes dataset."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import REPO, assert_one_line_error, make_generalized, run_cli

from remamber.engine.evaluate import (
    GENERALIZED_ROW_FIELDS,
    ROW_FIELDS,
    EvalResult,
    evaluate,
    histogram_counts,
    write_report,
)
from remamber.engine.metrics import METRIC_KEYS, MetricAccumulator
from remamber.modeling.remamber import ReMamberOutput

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # light on shared CPUs, and the same numerics in every process


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A tiny prepared shapes dataset: one 64x64 image per split (about 7 sentences each), every
    sentence naming one object (the hand-checked sums below; generalized splits are tested apart)."""
    from remamber.data.shapes import prepare_shapes

    out = tmp_path_factory.mktemp("evaldata") / "shapes"
    prepare_shapes(out, {"train": 1, "val": 1, "test": 1}, seed=0, size=64, no_target_share=0, multi_target_share=0)
    return out


def _records(folder: Path, split: str) -> list[dict]:
    lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session")
def odd_split(shapes_dir) -> str:
    """A split with an odd number of sentences (> 1), so two processes get unequal shards."""
    for split in ("val", "test", "train"):
        if len(_records(shapes_dir, split)) % 2 == 1 and len(_records(shapes_dir, split)) > 1:
            return split
    pytest.fail("no split of the tiny shapes dataset has an odd number of sentences")


# --------------------------------------------------------------------------- library


class ConstantModel(torch.nn.Module):
    """A stand-in model whose logits are one constant everywhere (hand-checkable metrics)."""

    def __init__(self, value: float, size: int = 128) -> None:
        super().__init__()
        self.value = value
        self.weight = torch.nn.Parameter(torch.zeros(()))

        class Cfg:
            image_size = size

        self.config = Cfg()

    def tokenize(self, texts):
        n = len(texts)
        return torch.zeros(n, 4, dtype=torch.long), torch.ones(n, 4, dtype=torch.long), [False] * n

    def forward(self, images, input_ids, attention_mask, return_presence=False):
        b, _, h, w = images.shape
        logits = torch.full((b, 1, h, w), self.value) + 0 * self.weight
        return ReMamberOutput(logits, None) if return_presence else logits  # no presence head


def _dataset(folder: Path, split: str, size: int = 128):
    from remamber.data.dataset import ReferringDataset

    return ReferringDataset(folder, split, size)


def test_constant_model_hand_checked_original_and_input(shapes_dir):
    ds = _dataset(shapes_dir, "val")
    n = len(ds)
    areas = [int(ds.load_mask(i).sum()) for i in range(n)]
    h, w = ds.record(0)["height"], ds.record(0)["width"]

    everything = evaluate(ConstantModel(5.0), ds, progress=False)  # predicts every pixel
    assert [(r["I"], r["U"]) for r in everything.rows] == [(a, h * w) for a in areas]
    assert everything.summary["oIoU"] == pytest.approx(sum(areas) / (n * h * w))
    assert everything.summary["mIoU"] == pytest.approx(sum(a / (h * w) for a in areas) / n)

    # logit 0 -> probability exactly 0.5 -> not in the mask at threshold 0.5: empty prediction
    at_edge = evaluate(ConstantModel(0.0), ds, threshold=0.5, progress=False)
    assert [(r["I"], r["U"]) for r in at_edge.rows] == [(0, a) for a in areas]
    assert at_edge.summary["mIoU"] == 0.0 and at_edge.summary["P@50"] == 0.0
    # ... and in it just below 0.5
    below = evaluate(ConstantModel(0.0), ds, threshold=0.4999, progress=False, limit=2)
    assert [r["U"] for r in below.rows] == [h * w] * 2

    # at the input size the ground truth is the nearest-resized mask
    inputs = evaluate(ConstantModel(5.0), ds, eval_size="input", progress=False, limit=3)
    for row in inputs.rows:
        gt = ds[row["index"]]["mask"]
        assert (row["I"], row["U"]) == (int(gt.sum()), 128 * 128)


def test_evaluate_tiny_model(tiny_model, shapes_dir, tmp_path, capsys):
    ds = _dataset(shapes_dir, "test", tiny_model.config.image_size)
    tiny_model.train()  # the trainer calls evaluate mid-training: its mode must come back
    res = evaluate(tiny_model, ds, batch_size=2, progress=False, limit=2, save_masks=tmp_path / "m")
    assert tiny_model.training
    tiny_model.eval()
    assert capsys.readouterr() == ("", "")  # quiet with progress=False
    assert isinstance(res, EvalResult) and res.samples == 2 == len(res.rows)
    assert [r["index"] for r in res.rows] == [0, 1]
    assert set(res.rows[0]) == set(GENERALIZED_ROW_FIELDS)  # ROW_FIELDS and the target kind
    assert {r["kind"] for r in res.rows} == {"single"} and not res.generalized
    assert res.settings == {
        "dataset": "shapes",
        "split": "test",
        "threshold": 0.5,
        "presence_threshold": 0.5,
        "eval_size": "original",
    }
    # the summary is the metric of the rows
    acc = MetricAccumulator()
    for r in res.rows:
        acc.add(r["I"], r["U"], r["expr_type"])
        assert r["IoU"] == (r["I"] / r["U"] if r["U"] else 0.0)
    assert acc.summary() == res.summary
    # saved masks are the predictions at the original size: they give back I and U
    from PIL import Image

    files = sorted((tmp_path / "m").iterdir())
    assert len(files) == 2
    for r, f in zip(res.rows, files):
        assert f.name == f"{r['index']:06d}_{r['sent_id']}.png"
        pred = np.asarray(Image.open(f))
        assert pred.shape == (ds.record(r["index"])["height"], ds.record(r["index"])["width"])
        assert set(np.unique(pred)) <= {0, 255}
        gt = ds.load_mask(r["index"]).astype(bool)
        assert (int((pred.astype(bool) & gt).sum()), int((pred.astype(bool) | gt).sum())) == (r["I"], r["U"])


def test_gres_metrics_of_constant_predictions(shapes_dir, tmp_path):
    """A generalized split (two no-target sentences, one naming two objects), with every pixel
    predicted and with none: the GRES metrics worked out from the ground-truth areas."""
    records = make_generalized(shapes_dir, tmp_path / "g", "val", {0: "none", 1: "multi", 2: "none"})
    ds = _dataset(tmp_path / "g", "val")
    n = len(ds)
    areas = [int(ds.load_mask(i).sum()) for i in range(n)]
    assert areas[0] == areas[2] == 0 and areas[1] > int(_dataset(shapes_dir, "val").load_mask(1).sum())
    h, w = records[0]["height"], records[0]["width"]
    targets = range(3, n)

    full = evaluate(ConstantModel(5.0), ds, progress=False)  # every pixel: no "nothing here" is right
    s = full.summary
    assert full.generalized and (s["samples"], s["target_samples"], s["no_target_samples"]) == (n, n - 2, 2)
    assert (s["N-acc"], s["T-acc"]) == (0.0, 1.0)
    assert s["mIoU"] == pytest.approx(sum(areas[i] / (h * w) for i in [1, *targets]) / (n - 2))
    assert s["gIoU"] == pytest.approx(sum(areas[i] / (h * w) for i in [1, *targets]) / n)
    assert s["cIoU"] == pytest.approx(sum(areas) / (n * h * w))  # the no-target samples' pixels count in U
    assert s["oIoU"] == pytest.approx(sum(areas) / ((n - 2) * h * w))
    assert set(s["by_kind"]) == {"none", "single", "multi"} and s["by_kind"]["multi"]["samples"] == 1
    assert [r["kind"] for r in full.rows[:4]] == ["none", "multi", "none", "single"]
    assert full.rows[0]["IoU"] == 0.0 and full.rows[0]["U"] == h * w

    empty = evaluate(ConstantModel(0.0), ds, progress=False)  # nothing predicted
    s = empty.summary
    assert (s["N-acc"], s["T-acc"], s["cIoU"], s["mIoU"]) == (1.0, 0.0, 0.0, 0.0)
    assert s["gIoU"] == pytest.approx(2 / n)  # the two no-target samples score 1 each
    assert [r["IoU"] for r in empty.rows[:3]] == [1.0, 0.0, 1.0]
    csv_path, _ = write_report(empty, tmp_path / "report.csv")
    rows = _report_rows(csv_path)
    assert list(rows[0]) == list(GENERALIZED_ROW_FIELDS)
    assert [r["kind"] for r in rows[:3]] == ["none", "multi", "none"]


def test_bad_library_arguments(shapes_dir):
    from remamber.utils.errors import InputError

    ds = _dataset(shapes_dir, "val")
    for kwargs in ({"threshold": 0.0}, {"threshold": 1.0}, {"eval_size": "native"}, {"batch_size": 0}):
        with pytest.raises(InputError):
            evaluate(ConstantModel(1.0), ds, progress=False, **kwargs)


def test_report_files_and_histogram(tmp_path):
    rows = [
        {
            "index": i,
            "sent_id": 10 + i,
            "ref_id": 1,
            "image": "a.png",
            "text": t,
            "expr_type": None,
            "I": inter,
            "U": union,
            "IoU": inter / union if union else 0.0,
        }
        for i, (t, inter, union) in enumerate([('a, "quoted" text', 1, 2), ("b", 0, 0), ("ü", 9, 10)])
    ]
    acc = MetricAccumulator()
    for r in rows:
        acc.add(r["I"], r["U"])
    result = EvalResult(acc.summary(), rows, {"dataset": "x", "split": "val"})
    csv_path, png_path = write_report(result, tmp_path / "sub" / "report.csv")
    assert png_path == tmp_path / "sub" / "report.png"
    with open(csv_path, encoding="utf-8", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(ROW_FIELDS)
    assert [r["text"] for r in read] == ['a, "quoted" text', "b", "ü"]
    assert [float(r["IoU"]) for r in read] == [0.5, 0.0, 0.9]
    from PIL import Image

    with Image.open(png_path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert histogram_counts([0.0, 0.05, 0.1, 0.5, 0.9999, 1.0]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert not list((tmp_path / "sub").glob(".*tmp"))  # no temporary files left


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="session")
def single_run(tiny_model_dir, shapes_dir, odd_split, tmp_path_factory):
    """One single-process ``remamber eval --json --report --save-masks`` run (batch size 1)."""
    out = tmp_path_factory.mktemp("eval1")
    res = run_cli(
        "eval",
        "--weights",
        str(tiny_model_dir),
        "--data",
        str(shapes_dir),
        "--split",
        odd_split,
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--json",
        "--report",
        str(out / "report.csv"),
        "--save-masks",
        str(out / "masks"),
        env=ONE_THREAD,
    )
    assert res.code == 0, res.stderr
    return res, out


def test_cli_json_report_and_masks(single_run, shapes_dir, odd_split, tiny_model_dir):
    res, out = single_run
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    records = _records(shapes_dir, odd_split)
    assert result["samples"] == len(records)
    for key in METRIC_KEYS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["P@50"] >= result["P@60"] >= result["P@70"] >= result["P@80"] >= result["P@90"]
    assert result["oIoU"] == (result["I"] / result["U"] if result["U"] else 0.0)
    assert result["weights"] == str(tiny_model_dir)
    assert result["data"] == str(shapes_dir)
    assert (result["split"], result["threshold"], result["eval_size"]) == (odd_split, 0.5, "original")
    types = {r["expr_type"] for r in records}
    assert set(result["by_type"]) == types
    assert sum(v["samples"] for v in result["by_type"].values()) == result["samples"]

    with open(out / "report.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["samples"]
    assert list(rows[0]) == list(ROW_FIELDS)
    assert [int(r["sent_id"]) for r in rows] == [r["sent_id"] for r in records]
    assert sum(int(r["I"]) for r in rows) == result["I"] and sum(int(r["U"]) for r in rows) == result["U"]
    assert math.isclose(sum(float(r["IoU"]) for r in rows) / len(rows), result["mIoU"], abs_tol=1e-5)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == result["samples"]
    from PIL import Image

    with Image.open(masks[0]) as im:
        assert im.size == (records[0]["width"], records[0]["height"])
        assert set(np.unique(np.asarray(im))) <= {0, 255}


def test_cli_table_and_progress_bar(tiny_model_dir, shapes_dir):
    """Without --json: a Rich table in percent (all + one row per expression type); on a
    terminal (TTY_COMPATIBLE=1 tells Rich so) a progress bar over samples on stderr."""
    res = run_cli(
        "eval",
        "-w",
        str(tiny_model_dir),
        "--data",
        str(shapes_dir),
        "--split",
        "test",
        "--device",
        "cpu",
        "--limit",
        "2",
        "--eval-size",
        "input",
        env={**ONE_THREAD, "TTY_COMPATIBLE": "1", "COLUMNS": "160"},
    )
    assert res.code == 0, res.stderr
    for word in ("mIoU %", "oIoU %", "P@50 %", "P@90 %", "all", "2 samples", "input size 128", "shapes test"):
        assert word in res.stdout, (word, res.stdout)
    for t in {r["expr_type"] for r in _records(shapes_dir, "test")[:2]}:
        assert t in res.stdout
    assert "2/2" in res.stderr and "eval shapes test" in res.stderr  # the progress bar
    assert "error" not in res.stderr


def test_cli_help_states_defaults_and_definitions():
    res = run_cli("eval", "--help", env={"COLUMNS": "200"})
    assert res.code == 0
    text = " ".join(res.stdout.split())
    for fragment in (
        "IoU >= X",
        "strictly greater",
        "exactly at the threshold is not in the mask",
        "original image size",
        "--eval-size input",
        "mIoU = mean of the per-sample IoUs",
        "oIoU (overall IoU) = sum I / sum U",
        "[default: 0.5]",
        "[default: original]",
        "[default: refcoco]",
        "[default: 8]",
        "[default: auto]",
        "torchrun",
        "--split all",
        "gIoU = mean IoU over all samples, a no-target sample scoring 1 when predicted empty",
        "cIoU = sum I / sum U over all samples",
        "N-acc = share of no-target samples predicted empty",
        "T-acc = share of target samples not predicted empty",
    ):
        assert fragment in text, fragment


def _report_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_torchrun_two_processes_match_one(single_run, tiny_model_dir, shapes_dir, odd_split, tmp_path):
    """2 CPU processes (gloo), unequal shards: exactly the single-process numbers and rows."""
    one, one_out = single_run
    single = json.loads(one.stdout)
    n = len(_records(shapes_dir, odd_split))
    assert single["samples"] == n and n % 2 == 1  # unequal shards: any double counting would show

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "remamber",
        "eval",
        "--weights",
        str(tiny_model_dir),
        "--data",
        str(shapes_dir),
        "--split",
        odd_split,
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--json",
        "--report",
        str(tmp_path / "report.csv"),
        "--save-masks",
        str(tmp_path / "masks"),
    ]
    env = dict(os.environ, **ONE_THREAD)
    env.pop("REMAMBER_DEBUG", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    multi = json.loads(lines[0])

    assert multi["processes"] == 2 and single["processes"] == 1
    for key in ("samples", "I", "U", "mIoU", "oIoU", "P@50", "P@60", "P@70", "P@80", "P@90", "by_type"):
        assert multi[key] == single[key], key  # exact: integer counts, exactly rounded IoU sums
    # the gathered per-sample report is the single-process report, row for row
    assert _report_rows(tmp_path / "report.csv") == _report_rows(one_out / "report.csv")
    assert (tmp_path / "report.png").is_file()
    masks = sorted(p.name for p in (tmp_path / "masks").glob("*.png"))
    assert masks == sorted(p.name for p in (one_out / "masks").glob("*.png"))
    assert len(masks) == n


# --------------------------------------------------------------------------- bad input


def _eval(*args, env=None):
    return run_cli("eval", *args, env=env)


def test_unknown_split_lists_the_available_ones(shapes_dir):
    assert_one_line_error(_eval("--data", str(shapes_dir), "--split", "testA"), "testA", "train, val, test")


def test_missing_and_unprepared_folders_name_the_prepare_command(tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_line_error(
        _eval("--data", str(missing), "--split", "val", "--dataset", "shapes"),
        "does not exist",
        f"remamber prepare shapes --out {missing}",
    )
    (tmp_path / "half").mkdir()
    assert_one_line_error(
        _eval("--data", str(tmp_path / "half"), "--split", "val"),
        "not a prepared dataset",
        "remamber prepare",
    )
    # exactly as typed: the default model on RefCOCO in the data home
    home = {"REMAMBER_HOME": str(tmp_path / "home")}
    assert_one_line_error(_eval("--split", "testA", env=home), "refcoco", "`remamber prepare refcoco`")
    assert_one_line_error(_eval("--split", "val", "--dataset", "refcocog", env=home), "`remamber prepare refcocog`")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--threshold", "0"), ("--threshold", "between 0 and 1")),
        (("--threshold", "1"), ("--threshold", "between 0 and 1")),
        (("--threshold", "-0.2"), ("--threshold",)),
        (("--dataset", "coco"), ("--dataset", "refcoco, refcoco+, refcocog, grefcoco, shapes")),
        (("--eval-size", "native"), ("--eval-size", "original, input")),
        (("--limit", "-1"), ("--limit",)),
        (("--batch-size", "0"), ("--batch-size",)),
    ],
)
def test_bad_options(shapes_dir, args, fragments):
    assert_one_line_error(_eval("--data", str(shapes_dir), "--split", "val", *args), *fragments)


def test_moved_images_point_at_images_root(shapes_dir, tmp_path):
    res = _eval("--data", str(shapes_dir), "--split", "val", "--images-root", str(tmp_path))
    assert_one_line_error(res, "missing", "--images-root")
    res = _eval("--data", str(shapes_dir), "--split", "val", "--images-root", str(tmp_path / "gone"))
    assert_one_line_error(res, "does not exist", "--images-root")


def test_failure_leaves_nothing_written(shapes_dir, tmp_path):
    out = tmp_path / "out"
    res = _eval(
        "--data",
        str(shapes_dir),
        "--split",
        "val",
        "--weights",
        str(tmp_path / "no-model"),
        "--report",
        str(out / "r.csv"),
        "--save-masks",
        str(out / "masks"),
        "--device",
        "cpu",
    )
    assert_one_line_error(res)
    assert not out.exists()
    res = _eval("--data", str(shapes_dir), "--split", "val", "--report", str(tmp_path / "r.png"))
    assert_one_line_error(res, "--report", "CSV")
