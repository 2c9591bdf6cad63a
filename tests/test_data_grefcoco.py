"""`remamber prepare grefcoco`: gRefCOCO (generalized RIS) into manifests, and the training
dataset's targets for sentences that name no, one or several objects.

The fixture is written in the real release format (``grefs(unc).json`` and ``instances.json``
in the REFER folder layout, as henghuiding/ReLA's grefer.py reads them): ``ann_id`` and
``category_id`` lists, ``[-1]`` with ``no_target: true`` for none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _rect as conftest_rect
from conftest import _uncompressed_rle
from model_fixtures import assert_one_line_error, run_cli
from PIL import Image
from pycocotools import mask as coco_mask

from remamber.data.dataset import ReferringDataset
from remamber.data.manifest import PreparedDataset, target_kind
from remamber.data.masks import decode_rle
from remamber.data.prepare import prepare_refer
from remamber.utils.errors import InputError

H, W = 40, 50


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return conftest_rect(H, W, x0, y0, x1, y1)


def _box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@dataclass
class GrefFixture:
    home: Path  # a data home: refer/grefcoco/, coco/train2014/
    # sent_id -> (split, kind, ann_ids, expected mask)
    expected: dict = field(default_factory=dict)

    @property
    def refer_root(self) -> Path:
        return self.home / "refer"

    @property
    def images_root(self) -> Path:
        return self.home / "coco" / "train2014"

    @property
    def grefs_path(self) -> Path:
        return self.refer_root / "grefcoco" / "grefs(unc).json"

    def write_grefs(self, refs: list) -> None:
        self.grefs_path.write_text(json.dumps(refs), encoding="utf-8")

    def grefs(self) -> list:
        return json.loads(self.grefs_path.read_text(encoding="utf-8"))


def _annotations() -> dict[int, tuple[int, int, object, np.ndarray, int]]:
    """ann id -> (image id, category id, segmentation, mask, iscrowd)."""
    blob = np.zeros((H, W), dtype=np.uint8)
    blob[30:38, 5:45] = 1
    crowd = np.zeros((H, W), dtype=np.uint8)
    crowd[2:6, 30:48] = 1
    compressed = coco_mask.encode(np.asfortranarray(blob))
    return {
        11: (1, 1, [_box_polygon(2, 2, 12, 20)], _rect(2, 2, 12, 20), 0),
        12: (
            1,
            1,
            [_box_polygon(15, 4, 22, 18), _box_polygon(24, 10, 28, 14)],
            _rect(15, 4, 22, 18) | _rect(24, 10, 28, 14),
            0,
        ),
        13: (1, 1, {"size": [H, W], "counts": _uncompressed_rle(crowd)["counts"]}, crowd, 1),
        14: (1, 3, {"size": [H, W], "counts": compressed["counts"].decode()}, blob, 0),
        21: (2, 3, [_box_polygon(0, 0, 10, 10)], _rect(0, 0, 10, 10), 0),
    }


# ref id, ann ids as in the file ([-1]: none), split, sentences
REFS = [
    (0, [11], "train", ["man on the left", "the man"]),
    (1, [11, 12, 14], "val", ["everyone and the car", "alle Dinge außer dem Himmel"]),
    (2, [-1], "testA", ["the dog on the sofa"]),
    (3, [12, 13], "testB", ["the person and the crowd"]),  # the crowd region is left out of the mask
    (4, [21], "val", ["the car"]),
    (5, [-1], "train", ["the blue bus"]),
]


def _write(home: Path) -> GrefFixture:
    fx = GrefFixture(home)
    fx.grefs_path.parent.mkdir(parents=True)
    fx.images_root.mkdir(parents=True)
    anns = _annotations()
    images = {1: (H, W), 2: (H, W)}
    for image_id, (h, w) in images.items():
        Image.new("RGB", (w, h), (60 * image_id, 90, 160)).save(fx.images_root / _image_name(image_id))
    instances = {
        "images": [{"id": i, "file_name": _image_name(i), "height": h, "width": w} for i, (h, w) in images.items()],
        "annotations": [
            {
                "id": a,
                "image_id": img,
                "category_id": cat,
                "segmentation": seg,
                "iscrowd": crowd,
                "area": 1,
                "bbox": [0, 0, 1, 1],
            }
            for a, (img, cat, seg, _m, crowd) in anns.items()
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
    }
    (fx.refer_root / "grefcoco" / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    refs, sent_id = [], 100
    for ref_id, ann_ids, split, texts in REFS:
        none = ann_ids == [-1]
        image_id = 2 if ann_ids == [21] else 1
        sentences = []
        for text in texts:
            sentences.append({"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id})
            named = [] if none else ann_ids
            union = np.zeros((H, W), dtype=np.uint8)
            for a in named:
                if not anns[a][4]:
                    union |= anns[a][3]
            kind = "none" if none else "multi" if len(named) > 1 else "single"
            fx.expected[sent_id] = (split, kind, named, union)
            sent_id += 1
        refs.append(
            {
                "ann_id": ann_ids,
                "category_id": [-1] if none else [anns[a][1] for a in ann_ids],
                "file_name": f"{_image_name(image_id)[:-4]}_{ref_id}.jpg",
                "image_id": image_id,
                "no_target": none,
                "ref_id": ref_id,
                "sent_ids": [s["sent_id"] for s in sentences],
                "sentences": sentences,
                "split": split,
            }
        )
    fx.write_grefs(refs)
    return fx


def _image_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


@pytest.fixture
def gref(tmp_path: Path) -> GrefFixture:
    return _write(tmp_path / "home")


def _prepare(fx: GrefFixture, out: Path, **kw):
    return prepare_refer(fx.refer_root, "grefcoco", fx.images_root, out, **kw)


def test_records_carry_target_sets_and_union_masks(gref, tmp_path):
    result = _prepare(gref, tmp_path / "out")
    assert list(result.splits) == ["train", "val", "testA", "testB"]
    prepared = PreparedDataset.open(tmp_path / "out")
    seen = {}
    for split in prepared.splits:
        for rec in prepared.records(split):
            exp_split, kind, ann_ids, mask = gref.expected[rec["sent_id"]]
            assert split == exp_split and target_kind(rec) == kind
            assert rec["ann_ids"] == ann_ids and rec["no_target"] is (kind == "none")
            assert rec["ann_id"] == (ann_ids[0] if ann_ids else -1)
            assert rec["category"] == ("" if kind == "none" else {11: "person", 12: "person", 21: "car"}[ann_ids[0]])
            got = decode_rle(rec["mask"])
            assert got.shape == (H, W)
            np.testing.assert_array_equal(got, mask)  # pixelwise: the union, crowd left out
            seen[rec["sent_id"]] = kind
    assert seen.keys() == gref.expected.keys()
    assert {"none", "single", "multi"} <= set(seen.values())
    info = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert info["name"] == "grefcoco" and info["sources"]["refs"]["path"].endswith("grefs(unc).json")
    for split, entry in info["splits"].items():
        kinds = [k for s, k, _a, _m in gref.expected.values() if s == split]
        assert entry["target_kinds"] == {k: kinds.count(k) for k in ("none", "single", "multi")}
    empty = next(r for r in prepared.records("testA") if r["no_target"])
    assert decode_rle(empty["mask"]).sum() == 0 and empty["category_id"] == -1


def test_a_bare_ann_id_is_read_as_a_list(gref, tmp_path):
    refs = gref.grefs()
    for ref in refs:  # the older form: one id as a number, no flag
        if len(ref["ann_id"]) == 1 and ref["ann_id"] != [-1]:
            ref["ann_id"], ref["category_id"] = ref["ann_id"][0], ref["category_id"][0]
            del ref["no_target"]
    gref.write_grefs(refs)
    _prepare(gref, tmp_path / "out")
    train = PreparedDataset.open(tmp_path / "out").records("train")
    assert [r["ann_ids"] for r in train] == [[11], [11], []]


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda r: r[1].update(no_target=True), "has no_target true but ann_id [11, 12, 14]"),
        (lambda r: r[2].update(no_target=False), "has no_target false but ann_id [-1]"),
        (lambda r: r[1].update(ann_id=[11, -1]), "names no object (ann_id -1) and some objects at once"),
        (lambda r: r[1].update(ann_id=[]), "neither an integer nor a non-empty list"),
        (lambda r: r[1].update(ann_id=[11, 99]), "names ann_id 99, which instances.json does not have"),
        (lambda r: r[4].update(ann_id=[11]), "annotation 11 belongs to image 1, not 2"),
        (lambda r: r[0].update(no_target="no"), "no_target that is not true or false"),
    ],
)
def test_bad_refs_are_one_line_input_errors(gref, tmp_path, damage, fragment):
    refs = gref.grefs()
    damage(refs)
    gref.write_grefs(refs)
    with pytest.raises(InputError, match="grefs") as e:
        _prepare(gref, tmp_path / "out")
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_training_dataset_targets_none_and_union(gref, tmp_path):
    _prepare(gref, tmp_path / "out")
    ds = ReferringDataset(tmp_path / "out", "val", image_size=W)
    kinds = [target_kind(ds.record(i)) for i in range(len(ds))]
    assert kinds.count("multi") == 2
    for i in range(len(ds)):
        _s, _k, _a, union = gref.expected[ds.record(i)["sent_id"]]
        nearest = np.asarray(Image.fromarray(union).resize((W, W), Image.NEAREST))
        np.testing.assert_array_equal(ds[i]["mask"][0].numpy(), nearest)
    torch.manual_seed(0)
    for split in ("train", "testA"):  # no-target samples: an empty target, also with augmentation
        for train in (False, True):
            ds = ReferringDataset(tmp_path / "out", split, image_size=32, train=train)
            for i in range(len(ds)):
                item = ds[i]
                assert item["mask"].shape == (1, 32, 32)
                assert bool(item["mask"].sum() == 0) is ds.record(i)["no_target"]


def test_cli_prepares_from_the_data_home_and_names_the_source(gref, tmp_path):
    env = {"REMAMBER_HOME": str(gref.home), "COLUMNS": "200"}
    done = run_cli("prepare", "grefcoco", env=env)
    assert done.code == 0, done.stderr
    assert "grefcoco (unc) prepared" in done.stdout and "name no object" in done.stdout
    again = run_cli("prepare", "grefcoco", "--json", env=env)
    assert again.code == 0 and json.loads(again.stdout)["status"] == "up-to-date"
    gref.grefs_path.unlink()
    missing = run_cli("prepare", "grefcoco", "--force", env=env)
    assert_one_line_error(missing, "grefs(unc).json", "github.com/henghuiding/gRefCOCO")
    gref.grefs_path.write_text("[{", encoding="utf-8")
    assert_one_line_error(run_cli("prepare", "grefcoco", "--force", env=env), "not valid JSON")


def test_cli_offers_no_download_for_grefcoco(tmp_path):
    """gRefCOCO has no archived zip to fetch: --download is not in its help, and given anyway it
    is refused with where to get the files, before anything is written."""
    env = {"REMAMBER_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    shown = run_cli("prepare", "grefcoco", "--help", env=env)
    assert shown.code == 0 and "--download" not in shown.stdout and "--refer-url" not in shown.stdout
    assert "--download" in run_cli("prepare", "refcoco", "--help", env=env).stdout
    refused = run_cli("prepare", "grefcoco", "--download", env=env)
    assert_one_line_error(refused, "does not fetch dataset 'grefcoco'", "github.com/henghuiding/gRefCOCO")
    assert not (tmp_path / "home").exists()
