"""The shipped default model on the README's examples, and the examples' own ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import run_cli
from PIL import Image

from remamber.cli.weights import DEMO_NOTE, default_weights
from remamber.data.masks import decode_rle
from remamber.data.shapes import generate_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ENTRIES = json.loads((EXAMPLES / "examples.json").read_text())
CHECKED = "the big yellow object"  # the quick start's example


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_examples_are_the_generator_output_with_exact_masks():
    for index in range(4):
        gen = generate_image(2024, "test", index)
        with Image.open(EXAMPLES / f"shapes-{index + 1}.png") as im:
            assert np.array_equal(np.asarray(im), gen.image)
    for entry in ENTRIES:
        mask = decode_rle(entry["mask"]).astype(bool)
        gen = generate_image(2024, "test", int(entry["image"].removeprefix("shapes-").removesuffix(".png")) - 1)
        matches = [k for k, _ in gen.refs if np.array_equal(mask, gen.labels == k + 1)]
        assert len(matches) == 1, entry["text"]  # the mask is exactly one generated object
        sentences = {text for k, exprs in gen.refs if k == matches[0] for _, text in exprs}
        assert entry["text"] in sentences  # and the phrase is one the generator wrote for it
    assert {e["expr_type"] for e in ENTRIES} == {"attribute", "position", "ordinal", "relation"}
    assert CHECKED in {e["text"] for e in ENTRIES}


@pytest.fixture(scope="module")
def default_model_results(tmp_path_factory):
    assert default_weights() is not None, "the shipped default model is missing from remamber/pretrained/"
    out = tmp_path_factory.mktemp("examples")
    jobs = out / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"image": str(EXAMPLES / e["image"]), "text": e["text"]}) for e in ENTRIES))
    # no --weights: the default model; on the CPU also where a GPU is (the CUDA test compares with it)
    res = run_cli("segment", "--batch", str(jobs), "--out", str(out), "--json", "--device", "cpu")
    assert res.code == 0, res.stderr
    results = [json.loads(line) for line in res.stdout.splitlines()]  # the demo note is not on stdout
    assert [r["text"] for r in results] == [e["text"] for e in ENTRIES]
    assert res.stderr.count(DEMO_NOTE) == 1  # once for the whole batch
    return out, results


def test_segment_without_weights_runs_every_example(default_model_results):
    _, results = default_model_results
    for entry, result in zip(ENTRIES, results):
        with Image.open(result["mask"]) as mask, Image.open(EXAMPLES / entry["image"]) as image:
            assert mask.size == image.size
        assert result["seconds"] > 0


def test_segment_prints_where_it_wrote_and_how_long(tmp_path):
    res = run_cli("segment", str(EXAMPLES / "shapes-3.png"), CHECKED, "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    mask = tmp_path / "shapes-3.the-big-yellow-object.mask.png"
    overlay = tmp_path / "shapes-3.the-big-yellow-object.overlay.jpg"
    assert f"wrote mask {mask} and overlay {overlay}" in res.stdout and res.stdout.rstrip().endswith(" s")
    assert mask.is_file() and overlay.is_file()


def test_default_model_mask_matches_the_ground_truth(default_model_results):
    _, results = default_model_results
    entry, result = next((e, r) for e, r in zip(ENTRIES, results) if e["text"] == CHECKED)
    with Image.open(result["mask"]) as im:
        predicted = np.asarray(im) > 127
    assert _iou(predicted, decode_rle(entry["mask"]).astype(bool)) >= 0.8


def test_default_model_reads_the_words(default_model_results):
    """Sentences naming different objects of one image get different masks (an earlier default
    model gave nearly the same mask for every sentence)."""
    _, results = default_model_results
    masks = {}
    for entry, result in zip(ENTRIES, results):
        with Image.open(result["mask"]) as im:
            masks[entry["text"]] = np.asarray(im) > 127
    pairs = [
        (a, b)
        for i, a in enumerate(ENTRIES)
        for b in ENTRIES[i + 1 :]
        if a["image"] == b["image"] and not (decode_rle(a["mask"]) & decode_rle(b["mask"])).any()
    ]
    assert len(pairs) >= 6
    for a, b in pairs:
        assert _iou(masks[a["text"]], masks[b["text"]]) < 0.5, (a["text"], b["text"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segment_on_cuda_gives_the_cpu_masks(default_model_results, tmp_path):
    """`--device cuda` (mamba-ssm's scan when installed) gives the CPU's masks on every example."""
    out, cpu_results = default_model_results
    res = run_cli("segment", "--batch", str(out / "jobs.jsonl"), "--out", str(tmp_path), "--json", "--device", "cuda")
    assert res.code == 0, res.stderr
    gpu_results = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(gpu_results) == len(cpu_results) == len(ENTRIES)
    for cpu, gpu in zip(cpu_results, gpu_results):
        with Image.open(cpu["mask"]) as a, Image.open(gpu["mask"]) as b:
            on_cpu, on_gpu = np.asarray(a) > 127, np.asarray(b) > 127
        assert on_cpu.any() and _iou(on_cpu, on_gpu) >= 0.99, cpu["text"]
