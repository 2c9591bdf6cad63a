"""The synthetic shapes generator: determinism, referents named exactly (none, one or several),
exact masks, resolver."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import assert_one_line_error, run_cli
from PIL import Image

from remamber.data.catalog import SHAPES_DEFAULT_MULTI_TARGET_SHARE, SHAPES_DEFAULT_NO_TARGET_SHARE
from remamber.data.expressions import (
    CLEARANCE,
    Desc,
    Expression,
    Scene,
    SceneObject,
    is_good,
    is_good_set,
    matching,
    mirror_expression,
    mirror_scene,
    render,
    resolve,
)
from remamber.data.manifest import GENERALIZED_FIELDS, PreparedDataset, target_kind
from remamber.data.masks import decode_rle
from remamber.data.refer import load_refs
from remamber.data.shapes import generate_image, load_scene, prepare_shapes
from remamber.data.transforms import swap_left_right
from remamber.utils.errors import InputError

SEED, SIZE = 7, 160
COUNTS = {"train": 8, "val": 4, "test": 2}


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "ds"
    result = prepare_shapes(out, COUNTS, seed=SEED, size=SIZE)
    assert not result.up_to_date
    return out


def _scenes_and_refs(folder: Path):
    """(scene per image id, refs) read back from the REFER files the generator wrote."""
    refs = load_refs(folder / "refer" / "shapes" / "refs(synthetic).p")
    instances = json.loads((folder / "refer" / "shapes" / "instances.json").read_text())
    by_image: dict[int, list] = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sizes = {im["id"]: (im["width"], im["height"]) for im in instances["images"]}
    scenes = {i: load_scene(anns, *sizes[i]) for i, anns in by_image.items()}
    return scenes, refs


def _targets(ann_ids: list[int]) -> list[int]:
    return [a % 10 for a in ann_ids]  # annotation ids are image_id * 10 + object index


def _expressions(folder: Path):
    """Yield (scene, target indices, sentence dict, Expression) for every generated sentence."""
    scenes, refs = _scenes_and_refs(folder)
    for ref in refs:
        scene, targets = scenes[ref["image_id"]], _targets(ref.get("ann_ids", [ref["ann_id"]]))
        for sentence in ref["sentences"]:
            yield scene, targets, sentence, Expression.from_dict(sentence["expr"])


def _files(folder: Path) -> dict[str, bytes]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_same_seed_same_bytes(tmp_path):
    counts = {"train": 3, "val": 1, "test": 1}
    prepare_shapes(tmp_path / "a", counts, seed=11, size=96)
    prepare_shapes(tmp_path / "b", counts, seed=11, size=96, workers=2)  # same bytes in parallel
    prepare_shapes(tmp_path / "c", counts, seed=12, size=96)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    first = "images/shapes_train_000000.png"
    assert a.keys() == c.keys() and a[first] != c[first]
    g1, g2 = generate_image(11, "val", 5, 96), generate_image(11, "val", 5, 96)
    assert np.array_equal(g1.image, g2.image)
    assert [[t for _, t in e] for _, e in g1.refs] == [[t for _, t in e] for _, e in g2.refs]


# sha256 of what `prepare_shapes(out, {"train": 3, "val": 1, "test": 1}, seed=5, size=96)` wrote
# before phrases naming no or several objects existed (the data of the shipped default model's
# recorded evaluation): with both shares 0 it must still write these bytes.
SINGLE_TARGET_SHA256 = {
    "train.jsonl": "ad7ce747fdb847cdec7160b3bc82c1a963cd5045d748e931878609aa4e192591",
    "val.jsonl": "9d69e939968dc55fbf59daf8a3df83a9804d1232253003a8162454d1b6c39ac5",
    "test.jsonl": "578e3e10003985f2029059fa47cc09ffd7d8c819efd83818c9f3e179a69862fc",
    "refer/shapes/refs(synthetic).p": "b2ceefddb3229c1f1e4a17a6268a5450395b8bdebc43034bd42519b0c360f26f",
    "refer/shapes/instances.json": "78556b611f4fe13e3bd18356bfa9a9c6d81833682366fe334ab6a0d82732e72a",
    "pixels": "4e3801ae61bc09d585edcfabb4a45d1ff7f88e485751a140662be062ccbe01e4",  # every image's RGB, by name
}


def _digests(folder: Path) -> dict[str, str]:
    files = [name for name in SINGLE_TARGET_SHA256 if name != "pixels"]
    digests = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files}
    pixels = hashlib.sha256()
    for path in sorted((folder / "images").glob("*.png")):
        pixels.update(np.asarray(Image.open(path).convert("RGB")).tobytes())
    return {**digests, "pixels": pixels.hexdigest()}


def test_zero_shares_write_the_single_target_dataset_byte_for_byte(tmp_path):
    counts = {"train": 3, "val": 1, "test": 1}
    prepare_shapes(tmp_path / "single", counts, seed=5, size=96, no_target_share=0, multi_target_share=0)
    assert _digests(tmp_path / "single") == SINGLE_TARGET_SHA256
    info = PreparedDataset.open(tmp_path / "single").info
    assert "no_target_share" not in info["generator"] and "target_kinds" not in info["splits"]["train"]
    # the defaults add phrases naming no or several objects to the same images and sentences
    prepare_shapes(tmp_path / "gres", counts, seed=5, size=96)
    single, gres = _files(tmp_path / "single"), _files(tmp_path / "gres")
    assert {k: v for k, v in gres.items() if k.startswith("images/")} == {
        k: v for k, v in single.items() if k.startswith("images/")
    }
    generalized = PreparedDataset.open(tmp_path / "gres")
    assert generalized.info["generator"]["no_target_share"] == SHAPES_DEFAULT_NO_TARGET_SHARE
    assert generalized.info["generator"]["multi_target_share"] == SHAPES_DEFAULT_MULTI_TARGET_SHARE
    for split in ("train", "val", "test"):
        before = PreparedDataset.open(tmp_path / "single").records(split)
        after = generalized.records(split)
        ones = [
            {k: v for k, v in r.items() if k not in GENERALIZED_FIELDS} for r in after if target_kind(r) == "single"
        ]
        assert ones == before
        assert len(after) > len(before)


def test_shares_are_checked(tmp_path):
    for shares, fragment in (
        ({"no_target_share": 0.6}, "`no_target_share` must be between 0 and 0.5"),
        ({"multi_target_share": -0.1}, "`multi_target_share` must be between 0 and 0.5"),
        ({"no_target_share": 0.3, "multi_target_share": 0.3}, "together must be at most 0.5"),
    ):
        with pytest.raises(InputError, match=fragment):
            prepare_shapes(tmp_path, {"train": 1, "val": 0, "test": 0}, **shares)
    assert not any(tmp_path.iterdir())


def test_cli_share_flags(tmp_path):
    args = ("prepare", "shapes", "--train", "2", "--val", "0", "--test", "0", "--size", "64", "--json")
    gres = run_cli(*args, "--out", str(tmp_path / "gres"))
    assert gres.code == 0, gres.stderr
    assert sum(json.loads(gres.stdout)["splits"]["train"]["target_kinds"].values()) > 0
    single = run_cli(*args, "--out", str(tmp_path / "one"), "--no-target-share", "0", "--multi-target-share", "0")
    assert single.code == 0 and "target_kinds" not in json.loads(single.stdout)["splits"]["train"]
    bad = run_cli(*args, "--out", str(tmp_path / "bad"), "--no-target-share", "0.4", "--multi-target-share", "0.2")
    assert_one_line_error(bad, "--no-target-share and --multi-target-share together must be at most 0.5")
    assert not (tmp_path / "bad").exists()


def test_every_expression_names_exactly_its_targets(shapes_dataset):
    types, kinds = Counter(), Counter()
    for scene, targets, sentence, expr in _expressions(shapes_dataset):
        assert resolve(expr, scene) == targets, sentence["sent"]  # none: the empty set
        if targets:
            assert resolve(expr, scene, CLEARANCE) == targets, sentence["sent"]
        else:  # not even a near miss names something
            assert resolve(expr, scene, -CLEARANCE) == [], sentence["sent"]
        assert is_good_set(expr, scene, targets), sentence["sent"]
        if len(targets) == 1:
            assert is_good(expr, scene, targets[0]), sentence["sent"]
        assert expr.count == (len(targets) if len(targets) > 1 else None)
        assert sentence["expr_type"] == expr.type
        for _, value in expr.target.items():
            if value in ("small", "big"):
                continue  # rendered with synonyms (little, large)
            assert value in sentence["sent"]
        types[expr.type] += 1
        kinds[min(len(targets), 2)] += 1
    assert set(types) == {"attribute", "position", "ordinal", "relation"}
    assert set(kinds) == {0, 1, 2}


def test_no_target_phrases_are_close_to_an_object_that_is_there(shapes_dataset):
    found = 0
    for scene, targets, sentence, expr in _expressions(shapes_dataset):
        if targets:
            continue
        found += 1
        if expr.type == "attribute":  # one attribute changed: each word alone names something
            assert expr.target.n_attributes >= 2, sentence["sent"]
            assert all(matching(expr.target.without(k), scene) for k, _ in expr.target.items()), sentence["sent"]
        else:  # the object is there, somewhere else
            assert matching(expr.target, scene), sentence["sent"]
    assert found


def test_no_single_word_gives_the_answer(shapes_dataset):
    for scene, targets, sentence, expr in _expressions(shapes_dataset):
        if len(targets) != 1:
            continue  # "all the red objects" is named by its one word, on purpose
        target = targets[0]
        for name, value in expr.target.items():  # each attribute word alone: ambiguous
            assert len(matching(Desc(**{name: value}), scene)) >= 2, sentence["sent"]
        if expr.type != "attribute":  # the spatial words alone do not pick the target
            generic = Expression.from_dict({**sentence["expr"], "target": {}})
            assert resolve(generic, scene) != [target], sentence["sent"]


def test_manifest_records_carry_expr_type(shapes_dataset):
    prepared = PreparedDataset.open(shapes_dataset)
    assert prepared.splits == ["train", "val", "test"]
    assert prepared.info["generator"]["seed"] == SEED
    _, refs = _scenes_and_refs(shapes_dataset)
    expr_types = {s["sent_id"]: s["expr_type"] for r in refs for s in r["sentences"]}
    records = [rec for split in prepared.splits for rec in prepared.records(split)]
    assert len(records) == len(expr_types)
    assert all(rec["expr_type"] == expr_types[rec["sent_id"]] for rec in records)
    kinds = Counter(target_kind(rec) for rec in records)  # about the documented shares
    assert 0.04 < kinds["none"] / len(records) < 0.2 and 0.07 < kinds["multi"] / len(records) < 0.25, kinds
    for rec in records:
        assert rec["no_target"] is (rec["ann_ids"] == []) and rec["ann_id"] == (rec["ann_ids"] or [-1])[0]


def test_masks_equal_drawn_shapes(shapes_dataset):
    prepared = PreparedDataset.open(shapes_dataset)
    root = prepared.images_root()
    for split in ("val", "test"):
        for rec in prepared.records(split):
            index = int(rec["file_name"].split("_")[-1].split(".")[0])
            gen = generate_image(SEED, split, index, SIZE)
            targets = _targets(rec["ann_ids"])
            mask = decode_rle(rec["mask"])
            union = np.isin(gen.labels, [k + 1 for k in targets])  # none: all zeros
            np.testing.assert_array_equal(mask, union.astype(np.uint8))
            pixels = np.asarray(Image.open(root / rec["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(pixels, gen.image)
            if len(targets) != 1:
                continue
            k = targets[0]
            assert (pixels[mask == 1] == gen.rgbs[k]).all()  # the shape's own flat colour
            obj = gen.scene.objects[k]
            assert rec["category"] == obj.shape
            ys, xs = np.nonzero(mask)
            if obj.shape in ("circle", "square", "diamond", "hexagon"):  # symmetric: centred
                assert abs((xs.min() + xs.max() + 1) / 2 - obj.cx) <= 1.5
                assert abs((ys.min() + ys.max() + 1) / 2 - obj.cy) <= 1.5
            if obj.shape == "circle":
                assert abs(mask.sum() / (np.pi * obj.r**2) - 1) < 0.1


# --------------------------------------------------------------------------- resolver


def _obj(shape, color, size, x, y, r=10.0):
    return SceneObject(shape, color, size, float(x), float(y), r)


SCENE = Scene(
    300,
    300,
    (
        _obj("circle", "red", "big", 40, 150, 20),  # 0: left
        _obj("circle", "red", "small", 150, 150),  # 1: middle
        _obj("circle", "blue", "small", 260, 150),  # 2: right
        _obj("square", "red", "small", 150, 40),  # 3: top middle
        _obj("square", "blue", "big", 150, 262, 20),  # 4: bottom middle
    ),
)


def _rel(target: Desc, relation: str, *anchors: Desc) -> Expression:
    return Expression("relation", target, relation=relation, anchors=anchors)


def test_resolver_by_type():
    e = Expression
    circle, square = Desc(shape="circle"), Desc(shape="square")
    assert resolve(e("attribute", Desc(color="red", shape="circle")), SCENE) == [0, 1]
    assert resolve(e("attribute", Desc(size="big", color="red")), SCENE) == [0]
    assert resolve(e("position", circle, where="left"), SCENE) == [0]
    assert resolve(e("position", Desc(color="red"), where="middle"), SCENE) == [1]
    assert resolve(e("ordinal", circle, direction="right", rank=2), SCENE) == [1]
    assert resolve(e("ordinal", square, direction="top", rank=1), SCENE) == [3]
    assert resolve(e("ordinal", square, direction="top", rank=3), SCENE) == []
    small_red_circle = Desc(size="small", color="red", shape="circle")
    assert resolve(_rel(Desc(), "above", small_red_circle), SCENE) == [3]
    assert resolve(_rel(circle, "left_of", small_red_circle), SCENE) == [0]
    # the 90-degree cone: both outer circles are (just) above the blue square
    blue_square = Desc(color="blue", shape="square")
    assert resolve(_rel(circle, "above", blue_square), SCENE) == [0, 1, 2]
    assert resolve(_rel(circle, "next_to", blue_square), SCENE) == []
    big_circle, blue_circle = Desc(size="big", shape="circle"), Desc(color="blue", shape="circle")
    assert resolve(_rel(Desc(), "between", big_circle, blue_circle), SCENE) == [1]
    # an anchor that names two objects makes the expression meaningless
    assert resolve(_rel(Desc(), "left_of", Desc(color="red")), SCENE) == []


def _two_circles(x0: float, x1: float) -> Scene:
    objects = (_obj("circle", "red", "small", x0, 50), _obj("circle", "red", "small", x1, 250))
    return Scene(300, 300, objects)


def test_clearance_rejects_near_misses():
    expr = Expression("position", Desc(shape="circle"), where="left")  # left third: x < 100
    # circle 1 sits 4 px right of the left third's edge: too close to call
    scene = _two_circles(60, 104)
    assert resolve(expr, scene) == [0]
    assert resolve(expr, scene, CLEARANCE) == [0, 1]
    assert not is_good(expr, scene, 0)
    # and a target only 4 px inside the region is not named clearly either
    near = _two_circles(96, 200)
    assert resolve(expr, near) == [0] and resolve(expr, near, CLEARANCE) == []


def test_plural_and_no_target_phrases():
    e = Expression
    red = e("attribute", Desc(color="red"), count=3)
    assert resolve(red, SCENE) == [0, 1, 3] and is_good_set(red, SCENE, [0, 1, 3])
    assert not is_good_set(replace(red, count=2), SCENE, [0, 1, 3])  # "the two red objects": wrong count
    assert not is_good_set(replace(red, count=None), SCENE, [0, 1, 3])  # a singular phrase for a set
    middle = e("position", Desc(shape="circle"), where="middle", count=2)  # only one is there
    assert resolve(middle, SCENE) == [1] and not is_good_set(middle, SCENE, [1])
    blue_square = Desc(color="blue", shape="square")
    above = e("relation", Desc(shape="circle"), relation="above", anchors=(blue_square,), count=3)
    assert resolve(above, SCENE) == [0, 1, 2] and not is_good_set(above, SCENE, [0, 1, 2])  # "the circles" says it
    # no target: each word names something, only together nothing
    big_blue_circle = e("attribute", Desc(size="big", color="blue", shape="circle"))
    assert resolve(big_blue_circle, SCENE) == [] and is_good_set(big_blue_circle, SCENE, [])
    assert not is_good_set(e("attribute", Desc(color="green", shape="circle")), SCENE, [])  # "green" alone
    assert not is_good_set(e("attribute", Desc(shape="triangle")), SCENE, [])
    red_square_bottom = e("position", Desc(color="red", shape="square"), where="bottom")
    assert resolve(red_square_bottom, SCENE) == [] and is_good_set(red_square_bottom, SCENE, [])
    assert not is_good_set(red_square_bottom, SCENE, [3])


def test_a_near_miss_is_not_a_no_target_phrase():
    def scene(x: float) -> Scene:  # a square well on the left, a circle at x
        return Scene(300, 300, (_obj("square", "red", "small", 30, 50), _obj("circle", "red", "small", x, 250)))

    expr = Expression("position", Desc(shape="circle"), where="left")  # left third: x < 100
    assert resolve(expr, scene(104)) == [] and resolve(expr, scene(104), -CLEARANCE) == [1]
    assert not is_good_set(expr, scene(104), [])  # 4 px past the edge: too close to call
    assert is_good_set(expr, scene(140), [])


def test_plural_text():
    rng = np.random.default_rng(0)
    two_red = Expression("attribute", Desc(color="red"), count=2)
    texts = {render(two_red, rng) for _ in range(60)}
    assert texts == {
        f"{det} red {noun}" for det in ("the", "all the", "the two", "both") for noun in ("shapes", "objects")
    }
    left = Expression("position", Desc(size="big", shape="circle"), where="left", count=3)
    assert {render(left, rng) for _ in range(40)} == {
        f"{det} {size} circles on the left" for det in ("the", "all the", "the three") for size in ("big", "large")
    }
    assert render(Expression("attribute", Desc(color="red", shape="star")), rng) == "the red star"


def test_mirror_keeps_referent_and_matches_word_swap(shapes_dataset):
    for scene, targets, _sentence, expr in _expressions(shapes_dataset):
        assert resolve(mirror_expression(expr), mirror_scene(scene)) == targets
        text = render(expr, np.random.default_rng(0))
        mirrored = render(mirror_expression(expr), np.random.default_rng(0))
        assert swap_left_right(text) == mirrored


def test_rerun_removes_temporary_files_of_a_killed_run(tmp_path):
    counts = {"train": 2, "val": 0, "test": 0}
    prepare_shapes(tmp_path, counts, seed=3, size=96)
    stray = tmp_path / "images" / ".shapes_train_000001.png.x1y2z3.tmp"  # what atomic_path leaves if killed
    stray.write_bytes(b"half a png")
    prepare_shapes(tmp_path, counts, seed=3, size=96, force=True)
    assert not stray.exists() and (tmp_path / "images" / "shapes_train_000001.png").is_file()
