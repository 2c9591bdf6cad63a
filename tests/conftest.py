"""Shared pytest fixtures."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- REFER fixture


def _rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int):
    """A mask with pixels x0 <= x < x1, y0 <= y < y1 set (what pycocotools draws for
    the axis-aligned polygon with those corners)."""
    import numpy as np

    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _uncompressed_rle(mask) -> dict:
    """COCO uncompressed RLE written by hand: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F").tolist()
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@dataclass
class ReferFixture:
    """A small RefCOCO-like dataset written in the real REFER format."""

    refer_root: Path
    images_root: Path
    dataset: str = "refcoco"
    split_by: str = "unc"
    # sent_id -> (split, sentence, expected mask (h, w) uint8, ref_id, category name)
    expected: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # split -> {samples, refs, images}

    @property
    def refs_path(self) -> Path:
        return self.refer_root / self.dataset / f"refs({self.split_by}).p"

    @property
    def instances_path(self) -> Path:
        return self.refer_root / self.dataset / "instances.json"

    def image_path(self, image_id: int) -> Path:
        return self.images_root / f"COCO_train2014_{image_id:012d}.jpg"

    def write_refs(self, refs) -> None:
        self.refs_path.write_bytes(pickle.dumps(refs, protocol=2))

    def load_instances(self) -> dict:
        return json.loads(self.instances_path.read_text(encoding="utf-8"))

    def write_instances(self, instances: dict) -> None:
        self.instances_path.write_text(json.dumps(instances), encoding="utf-8")


def _refer_scene():
    """(images, annotations with expected masks, refs) of the fixture."""
    import numpy as np
    from pycocotools import mask as coco_mask

    images = {1: (40, 50), 2: (30, 30), 3: (20, 24)}  # id -> (h, w)
    blob = np.zeros((30, 30), dtype=np.uint8)
    blob[4:20, 6:9] = 1
    blob[10:12, 6:25] = 1
    crowd = np.zeros((30, 30), dtype=np.uint8)
    crowd[20:28, 2:29:3] = 1  # striped: many runs
    compressed = coco_mask.encode(np.asfortranarray(blob))
    anns = {
        # polygon
        101: (1, 1, [[5, 5, 20, 5, 20, 15, 5, 15]], _rect(40, 50, 5, 5, 20, 15)),
        # multi-polygon: two parts, one mask
        102: (
            1,
            3,
            [[25, 5, 30, 5, 30, 10, 25, 10], [35, 20, 45, 20, 45, 30, 35, 30]],
            _rect(40, 50, 25, 5, 30, 10) | _rect(40, 50, 35, 20, 45, 30),
        ),
        # compressed RLE (counts a string)
        201: (2, 1, {"size": [30, 30], "counts": compressed["counts"].decode()}, blob),
        # uncompressed RLE (counts a list), as for crowd annotations
        202: (2, 3, _uncompressed_rle(crowd), crowd),
        301: (3, 1, [[2, 3, 10, 3, 10, 12, 2, 12]], _rect(20, 24, 2, 3, 10, 12)),
        302: (3, 3, [[12, 3, 20, 3, 20, 12, 12, 12]], _rect(20, 24, 12, 3, 20, 12)),
    }
    refs = [  # (ref_id, ann_id, split, sentences)
        (1, 101, "train", ["man on the left", "café chair ☕"]),
        (2, 102, "val", ["two parts", "Übergröße thing", "日本語の文"]),
        (3, 201, "testA", ["person with a cross shape"]),
        (4, 202, "testB", ["striped crowd", "the stripes"]),
        (5, 301, "train", ["left box"]),
        (6, 302, "val", ["right box"]),
    ]
    return images, anns, refs


def _write_refer(root: Path) -> ReferFixture:
    from PIL import Image

    fx = ReferFixture(refer_root=root / "refer", images_root=root / "coco" / "train2014")
    fx.refs_path.parent.mkdir(parents=True)
    fx.images_root.mkdir(parents=True)
    images, anns, refs = _refer_scene()
    categories = {1: "person", 3: "car"}
    for image_id, (h, w) in images.items():
        Image.new("RGB", (w, h), (image_id * 40, 90, 160)).save(fx.image_path(image_id))
    fx.write_instances(
        {
            "images": [
                {"id": i, "file_name": fx.image_path(i).name, "height": h, "width": w} for i, (h, w) in images.items()
            ],
            "annotations": [
                {
                    "id": a,
                    "image_id": img,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": int(m.sum()),
                    "iscrowd": int(isinstance(seg, dict)),
                    "bbox": [0, 0, 1, 1],
                }
                for a, (img, cat, seg, m) in anns.items()
            ],
            "categories": [{"id": c, "name": n, "supercategory": n} for c, n in categories.items()],
        }
    )
    pickled_refs, sent_id = [], 1000
    for ref_id, ann_id, split, texts in refs:
        image_id, cat, _, mask = anns[ann_id]
        sentences = []
        for text in texts:
            sent_id += 1
            sentences.append({"tokens": text.split(), "raw": text.upper(), "sent": text, "sent_id": sent_id})
            fx.expected[sent_id] = (split, text, mask, ref_id, categories[cat])
        pickled_refs.append(
            {
                "ref_id": ref_id,
                "ann_id": ann_id,
                "image_id": image_id,
                "category_id": cat,
                "split": split,
                "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                "sent_ids": [s["sent_id"] for s in sentences],
                "sentences": sentences,
            }
        )
        counts = fx.counts.setdefault(split, {"samples": 0, "refs": 0, "images": set()})
        counts["samples"] += len(texts)
        counts["refs"] += 1
        counts["images"].add(image_id)
    for counts in fx.counts.values():
        counts["images"] = len(counts["images"])
    fx.write_refs(pickled_refs)
    return fx


@pytest.fixture
def refer_fixture(tmp_path: Path) -> ReferFixture:
    """A RefCOCO-like REFER dataset (pickle protocol 2; polygon, multi-polygon, compressed
    and uncompressed RLE; several sentences per ref; unicode; train/val/testA/testB) under
    ``tmp_path/refer/refcoco`` with images in ``tmp_path/coco/train2014``."""
    return _write_refer(tmp_path)
