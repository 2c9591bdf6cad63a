"""`remamber prepare refcoco-mix`: the leak-free union of the RefCOCO family's train splits."""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import assert_one_line_error, run_cli

from remamber.data.catalog import MIX_ID_STRIDE, MIX_SOURCE_CODES
from remamber.data.manifest import PreparedDataset
from remamber.data.masks import decode_rle
from remamber.data.mix import parse_sources, prepare_mix
from remamber.utils.errors import InputError

# dataset -> refs (ref_id, image_id, split, sentences). Every dataset numbers its refs and sentences
# from 1, so ids collide between them as in the real files. Images shared across datasets:
# 2 is in refcoco val, refcoco+ train and refcocog train; 3 in refcoco testA and refcoco+ train;
# 4 in refcoco train and refcocog test. Only images 1 and 6 may stay in the mixed train.
SCENE = {
    "refcoco": [
        (1, 1, "train", ["a man", "the man left"]),
        (2, 2, "val", ["red car"]),
        (3, 3, "testA", ["woman"]),
        (4, 4, "train", ["blue chair"]),
    ],
    "refcoco+": [
        (1, 1, "train", ["man in black"]),
        (2, 2, "train", ["car behind", "car color red"]),
        (3, 5, "val", ["dog"]),
        (4, 3, "train", ["lady"]),
    ],
    "refcocog": [
        (1, 2, "train", ["a red car parked on the street"]),
        (2, 4, "test", ["a blue chair near the wall"]),
        (3, 6, "train", ["a cat sleeping on a sofa", "the grey cat"]),
        (4, 7, "val", ["a tall lamp in the corner"]),
    ],
}
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
# What the mix must hold: per source, (train samples, refs, images) kept and removed.
KEPT = {"refcoco": (2, 1, 1), "refcoco+": (1, 1, 1), "refcocog": (2, 1, 1)}
REMOVED = {"refcoco": (1, 1, 1), "refcoco+": (3, 2, 2), "refcocog": (1, 1, 1)}


@dataclass
class MixFixture:
    refer_root: Path
    images_root: Path

    def refs_path(self, dataset: str) -> Path:
        return self.refer_root / dataset / f"refs({SPLIT_BY[dataset]}).p"


def _box(image_id: int) -> tuple[int, int, int, int]:
    return (image_id, 2, image_id + 6, 9)  # x0, y0, x1, y1: a different box per image


@pytest.fixture
def mix_fixture(tmp_path: Path) -> MixFixture:
    """The three REFER datasets of SCENE under tmp_path/refer, images under tmp_path/coco/train2014."""
    from PIL import Image

    fx = MixFixture(tmp_path / "refer", tmp_path / "coco" / "train2014")
    fx.images_root.mkdir(parents=True)
    images = range(1, 8)
    for i in images:
        Image.new("RGB", (20, 12), (i * 30, 0, 0)).save(fx.images_root / f"COCO_train2014_{i:012d}.jpg")
    instances = {
        "images": [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 12, "width": 20} for i in images],
        "annotations": [
            {"id": 100 + i, "image_id": i, "category_id": 1, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}
            for i in images
            for x0, y0, x1, y1 in [_box(i)]
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    for dataset, refs in SCENE.items():
        (fx.refer_root / dataset).mkdir(parents=True)
        (fx.refer_root / dataset / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
        pickled, sent_id = [], 0
        for ref_id, image_id, split, texts in refs:
            sentences = []
            for text in texts:
                sent_id += 1
                sentences.append({"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id})
            pickled.append(
                {
                    "ref_id": ref_id,
                    "ann_id": 100 + image_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "split": split,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                }
            )
        fx.refs_path(dataset).write_bytes(pickle.dumps(pickled, protocol=2))
    return fx


def _prepare(fx: MixFixture, out: Path, **kw):
    return prepare_mix(fx.refer_root, fx.images_root, out, **kw)


def _counts(entry: dict) -> tuple[int, int, int]:
    return entry["samples"], entry["refs"], entry["images"]


def test_leaked_images_vanish_and_are_counted(mix_fixture, tmp_path):
    out = tmp_path / "mix"
    result = _prepare(mix_fixture, out)
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert list(info["splits"]) == ["train", "val"]
    for name in SCENE:
        assert _counts(info["sources"][name]["removed"]) == REMOVED[name], name
        assert _counts(info["splits"]["train"]["by_source"][name]) == KEPT[name], name
        assert _counts(result.sources[name]["removed"]) == REMOVED[name]
    assert info["sources"]["refcoco"]["eval_splits"] == ["val", "testA"]
    assert info["sources"]["refcocog"]["split_by"] == "umd"
    # images 2, 3 and 4 were removed; image 2 from two sources, counted once
    assert _counts(info["removed"]) == (5, 4, 3) == _counts(result.removed)
    assert _counts(info["splits"]["train"]) == (5, 3, 2)
    assert _counts(info["splits"]["val"]) == (3, 3, 3)

    prepared = PreparedDataset.open(out)
    train = prepared.records("train")
    eval_images = {image for refs in SCENE.values() for _, image, split, _ in refs if split != "train"}
    assert {r["image_id"] for r in train} == {1, 6} and not eval_images & {r["image_id"] for r in train}
    expected = {
        (name, text)
        for name, refs in SCENE.items()
        for _, image, split, texts in refs
        for text in texts
        if split == "train" and image not in eval_images
    }
    assert {(r["source"], r["sentence"]) for r in train} == expected
    for record in train:  # the masks are those of the referent, at the image size
        x0, y0, x1, y1 = _box(record["image_id"])
        mask = decode_rle(record["mask"])
        assert mask.shape == (12, 20) and mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
    val = prepared.records("val")
    assert sorted((r["source"], r["sentence"]) for r in val) == [
        ("refcoco", "red car"),
        ("refcoco+", "dog"),
        ("refcocog", "a tall lamp in the corner"),
    ]


def test_ids_unique_and_namespaced(mix_fixture, tmp_path):
    out = tmp_path / "mix"
    _prepare(mix_fixture, out)
    prepared = PreparedDataset.open(out)
    records = [r for split in prepared.splits for r in prepared.records(split)]
    assert len({r["sent_id"] for r in records}) == len(records)  # the originals collide: 1, 1, 1, ...
    assert len({r["ref_id"] for r in records}) == len({(r["source"], r["ref_id"]) for r in records})
    originals = {}
    for name, refs in SCENE.items():
        sent_id = 0
        for ref_id, _, _, texts in refs:
            for text in texts:
                sent_id += 1
                originals[(name, text)] = (ref_id, sent_id)
    for r in records:
        offset = MIX_SOURCE_CODES[r["source"]] * MIX_ID_STRIDE
        assert (r["ref_id"] - offset, r["sent_id"] - offset) == originals[(r["source"], r["sentence"])]


def test_deterministic_and_up_to_date(mix_fixture, tmp_path):
    fx = mix_fixture
    first, second = tmp_path / "a", tmp_path / "b"
    _prepare(fx, first)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert _prepare(fx, first).up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps
    # the order of the sources given does not matter
    _prepare(fx, second, sources=["refcocog", "refcoco+:unc", "refcoco"], force=True)
    for name in ("train.jsonl", "val.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    _prepare(fx, first, force=True)
    assert (first / "dataset.json").read_bytes() == (second / "dataset.json").read_bytes()
    # a changed source is seen
    refs = pickle.loads(fx.refs_path("refcocog").read_bytes())
    refs[2]["split"] = "val"  # image 6 is held out now: nothing of refcocog stays in train
    fx.refs_path("refcocog").write_bytes(pickle.dumps(refs, protocol=2))
    result = _prepare(fx, first)
    assert not result.up_to_date and result.splits["train"]["by_source"]["refcocog"]["samples"] == 0


def test_limit_and_fewer_sources(mix_fixture, tmp_path):
    shutil.rmtree(mix_fixture.refer_root / "refcoco+")  # not a source here: not needed
    result = _prepare(mix_fixture, tmp_path / "mix", sources=["refcoco", "refcocog"], limit=1)
    assert list(result.sources) == ["refcoco", "refcocog"]
    # image 2 (refcoco val) still leaves refcocog's train
    assert _counts(result.sources["refcocog"]["removed"]) == REMOVED["refcocog"]
    assert result.splits["train"]["refs"] == 2 and result.splits["val"]["refs"] == 2


def test_missing_image_refused_or_skipped(mix_fixture, tmp_path):
    (mix_fixture.images_root / "COCO_train2014_000000000006.jpg").unlink()
    with pytest.raises(InputError, match="refcocog: 1 of .* images referenced are missing"):
        _prepare(mix_fixture, tmp_path / "mix")
    assert not (tmp_path / "mix").exists()
    result = _prepare(mix_fixture, tmp_path / "mix", skip_missing=True)
    assert result.missing_images == 1 and result.skipped_samples == 2
    assert result.splits["train"]["by_source"]["refcocog"]["samples"] == 0


@pytest.mark.parametrize(
    "specs, message",
    [
        (["refcoco", "refclef"], "unknown dataset 'refclef'"),
        (["refcoco", "refcoco:google"], "refcoco is given twice"),
        (["refcoco+:google"], "no split_by 'google'"),
    ],
)
def test_bad_sources(specs, message):
    with pytest.raises(InputError, match=message):
        parse_sources(specs)


def test_id_beyond_the_namespace_refused(mix_fixture, tmp_path):
    path = mix_fixture.refs_path("refcoco")
    refs = pickle.loads(path.read_bytes())
    refs[0]["sentences"][0]["sent_id"] = MIX_ID_STRIDE
    path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(InputError, match="sent_id 10000000 is outside"):
        _prepare(mix_fixture, tmp_path / "mix")
    assert not (tmp_path / "mix").exists()


# --------------------------------------------------------------------------- command line


def _home_env(fx: MixFixture) -> dict:
    return {"REMAMBER_HOME": str(fx.refer_root.parent), "COLUMNS": "250", "NO_COLOR": "1"}


def test_cli_default_places_table_and_json(mix_fixture):
    env = _home_env(mix_fixture)
    text = run_cli("prepare", "refcoco-mix", env=env)
    assert text.code == 0, text.stderr
    rows = {line.split()[0]: line.split() for line in text.stdout.splitlines()[2:5]}
    for name in SCENE:  # kept samples/refs/images, then removed samples/refs/images
        assert [int(v) for v in rows[name][2:]] == [*KEPT[name], *REMOVED[name]], rows[name]
    out = mix_fixture.refer_root.parent / "datasets" / "refcoco-mix"
    assert (out / "dataset.json").is_file()
    again = run_cli("prepare", "refcoco-mix", "--json", env=env)
    assert again.code == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["status"] == "up-to-date"
    assert {name: _counts(s["removed"]) for name, s in result["sources"].items()} == REMOVED


def test_cli_missing_source_one_line_nothing_written(mix_fixture):
    shutil.rmtree(mix_fixture.refer_root / "refcoco+")
    result = run_cli("prepare", "refcoco-mix", env=_home_env(mix_fixture))
    assert_one_line_error(result, "refcoco+ (unc)", "refs(unc).p", "web.archive.org", "refcoco+.zip")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "refcocog" not in result.stderr  # only what is missing is named
    assert not (mix_fixture.refer_root.parent / "datasets").exists()


def test_cli_help_and_bad_source(tmp_path):
    env = {"REMAMBER_HOME": str(tmp_path), "COLUMNS": "250", "NO_COLOR": "1"}
    help_text = " ".join(run_cli("prepare", "refcoco-mix", "--help", env=env).stdout.split())
    for fragment in (
        "--source",
        "refcoco:unc, refcoco+:unc, refcocog:umd",
        str(tmp_path / "datasets" / "refcoco-mix"),
        "val or test split",
        "web.archive.org/web/20220413011718/https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip",
        "down since 2022",
    ):
        assert fragment in help_text, fragment
    assert_one_line_error(run_cli("prepare", "refcoco-mix", "--source", "refclef", env=env), "--source", "refclef")
    assert not (tmp_path / "datasets").exists()


def test_masks_match_the_single_dataset_prepare(mix_fixture, tmp_path):
    """A record of the mix is the single-dataset record plus `source`, with namespaced ids."""
    from remamber.data.prepare import prepare_refer

    fx = mix_fixture
    prepare_refer(fx.refer_root, "refcocog", fx.images_root, tmp_path / "g")
    _prepare(fx, tmp_path / "mix")
    single = {r["sent_id"]: r for r in PreparedDataset.open(tmp_path / "g").records("train")}
    offset = MIX_SOURCE_CODES["refcocog"] * MIX_ID_STRIDE
    mixed = [r for r in PreparedDataset.open(tmp_path / "mix").records("train") if r["source"] == "refcocog"]
    assert mixed
    for record in mixed:
        expected = {**single[record["sent_id"] - offset], "source": "refcocog"}
        expected.update(sent_id=record["sent_id"], ref_id=expected["ref_id"] + offset)
        assert record == expected
        assert np.array_equal(decode_rle(record["mask"]), decode_rle(expected["mask"]))
