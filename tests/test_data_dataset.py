"""The torch loader over a prepared folder, and the meaning-keeping transforms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from remamber.data.dataset import ReferringDataset, collate_fn
from remamber.data.masks import decode_rle
from remamber.data.prepare import prepare_refer
from remamber.data.shapes import prepare_shapes
from remamber.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugment,
    brightness_contrast,
    referent_crop,
    swap_left_right,
)
from remamber.utils.errors import InputError

NO_AUGMENT = dict(brightness=0.0, contrast=0.0, crop_scale=(1.0, 1.0))


@pytest.fixture
def refer_prepared(refer_fixture, tmp_path):
    out = tmp_path / "prepared"
    prepare_refer(refer_fixture.refer_root, "refcoco", refer_fixture.images_root, out)
    return out


def test_items_shapes_dtypes_and_normalisation(refer_prepared, refer_fixture):
    ds = ReferringDataset(refer_prepared, "val", image_size=32)
    assert len(ds) == refer_fixture.counts["val"]["samples"]  # one item per sentence
    item = ds[0]
    assert set(item) == {"image", "mask", "text", "index", "present"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["text"] == ds.record(0)["sentence"] and item["index"] == 0
    # the image: bilinear resize, then (x / 255 - mean) / std
    path = refer_fixture.images_root / ds.record(0)["file_name"]
    resized = Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR)
    resized = np.asarray(resized, np.float32)
    expected = (resized / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # the mask: nearest resize of the original-size mask from the record's RLE
    original = decode_rle(ds.record(0)["mask"])
    assert original.shape == (ds.record(0)["height"], ds.record(0)["width"])
    nearest = np.asarray(Image.fromarray(original).resize((32, 32), Image.NEAREST))
    np.testing.assert_array_equal(item["mask"][0].numpy(), nearest)


def test_collate(refer_prepared):
    ds = ReferringDataset(refer_prepared, "val", image_size=24)
    batch = collate_fn([ds[0], ds[2]])
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 1, 24, 24)
    assert batch["text"] == [ds[0]["text"], ds[2]["text"]]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 2]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_fn)
    assert sum(len(b["text"]) for b in loader) == len(ds)


def test_flip_swaps_words_and_mirrors_image_and_mask(refer_prepared):
    plain = ReferringDataset(refer_prepared, "train", image_size=40)
    i = next(k for k in range(len(plain)) if plain.record(k)["sentence"] == "man on the left")
    flipped = ReferringDataset(
        refer_prepared,
        "train",
        image_size=40,
        train=True,
        augment=TrainAugment(flip_prob=1.0, **NO_AUGMENT),
    )
    a, b = plain[i], flipped[i]
    assert b["text"] == "man on the right"
    assert torch.equal(b["image"], a["image"].flip(-1))
    assert torch.equal(b["mask"], a["mask"].flip(-1))
    assert not torch.equal(b["mask"], a["mask"])  # the referent is off-centre: it moved
    never = ReferringDataset(
        refer_prepared,
        "train",
        image_size=40,
        train=True,
        augment=TrainAugment(flip_prob=0.0, **NO_AUGMENT),
    )
    assert never[i]["text"] == "man on the left" and torch.equal(never[i]["image"], a["image"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("man on the left", "man on the right"),
        ("Left guy, right girl", "Right guy, left girl"),
        ("the LEFTMOST cup", "the RIGHTMOST cup"),
        ("second from the right", "second from the left"),
        ("the left-hand side, to the right of it", "the right-hand side, to the left of it"),
        ("leftover pizza, rightly so, copyright", "leftover pizza, rightly so, copyright"),
        ("lefthand and rightside", "righthand and leftside"),
    ],
)
def test_swap_left_right(text, expected):
    assert swap_left_right(text) == expected
    assert swap_left_right(swap_left_right(text)) == text


def test_crop_always_keeps_the_referent():
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (60, 40))
    for _trial in range(50):
        mask = np.zeros((40, 60), dtype=np.uint8)
        x, y = rng.integers(0, 50), rng.integers(0, 30)
        mask[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = 1
        scale = float(rng.uniform(0.3, 1.0))
        crop, cropped = referent_crop(image, mask, scale, (rng.uniform(), rng.uniform()))
        assert cropped.sum() == mask.sum()
        assert crop.size == (cropped.shape[1], cropped.shape[0])
    empty = np.zeros((40, 60), dtype=np.uint8)
    crop, _ = referent_crop(image, empty, 0.5, (1.0, 1.0))
    assert crop.size == (30, 20)


def test_train_mode_defaults_run_and_keep_referent(refer_prepared):
    torch.manual_seed(0)
    ds = ReferringDataset(refer_prepared, "train", image_size=64, train=True)
    for i in range(len(ds)):
        item = ds[i]
        assert item["mask"].sum() > 0
        assert item["text"] in (ds.record(i)["sentence"], swap_left_right(ds.record(i)["sentence"]))


def test_brightness_contrast_keeps_hue_order():
    pixel = torch.tensor([0.8, 0.5, 0.2]).view(3, 1, 1).expand(3, 4, 4).clone()
    out = brightness_contrast(pixel, 1.15, 0.85)
    r, g, b = out[:, 0, 0].tolist()
    assert r > g > b  # colours stay in order: a red stays red


def test_images_root_override_after_moving(refer_prepared, refer_fixture, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(str(refer_prepared), moved)
    shutil.move(str(refer_fixture.images_root), tmp_path / "images2")
    with pytest.raises(InputError, match="does not exist"):
        ReferringDataset(moved, "testA", image_size=16)
    ds = ReferringDataset(moved, "testA", image_size=16, images_root=tmp_path / "images2")
    assert ds[0]["image"].shape == (3, 16, 16)


def test_shapes_folder_moves_as_a_whole(tmp_path):
    prepare_shapes(tmp_path / "a", {"train": 1, "val": 0, "test": 0}, seed=1, size=64)
    shutil.move(str(tmp_path / "a"), tmp_path / "b")
    ds = ReferringDataset(tmp_path / "b", "train", image_size=32)
    assert len(ds) > 0 and ds[0]["mask"].sum() > 0
    assert "expr_type" in ds.record(0)


def test_loader_errors_are_one_line_input_errors(refer_prepared, refer_fixture, tmp_path):
    with pytest.raises(InputError, match="has no split 'testC'; it has: train, val, testA, testB"):
        ReferringDataset(refer_prepared, "testC", image_size=16)
    with pytest.raises(InputError, match="not a prepared dataset"):
        ReferringDataset(tmp_path, "train", image_size=16)
    with pytest.raises(InputError, match="image_size"):
        ReferringDataset(refer_prepared, "train", image_size=0)
    ds = ReferringDataset(refer_prepared, "testB", image_size=16)
    refer_fixture.image_path(ds.record(0)["image_id"]).unlink()
    with pytest.raises(InputError, match="not found"):
        ds[0]


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda info: info.update(splits={"train": "train.jsonl"}), "splits is not a map"),
        (lambda info: info.update(images_root=7), "images_root is not a string"),
        (lambda info: info.update(format_version="2"), "format_version is not an integer"),
    ],
)
def test_a_damaged_dataset_description_is_an_input_error(refer_prepared, damage, fragment):
    import json

    info = json.loads((refer_prepared / "dataset.json").read_text())
    damage(info)
    (refer_prepared / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=fragment):
        ReferringDataset(refer_prepared, "train", image_size=16)


def test_a_damaged_manifest_record_is_an_input_error(refer_prepared):
    import json

    path = refer_prepared / "testB.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    del records[-1]["file_name"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=f"record {len(records)} is damaged \\(no file_name\\)"):
        ReferringDataset(refer_prepared, "testB", image_size=16)
