"""The synthetic shapes generator: determinism, unique referents, exact masks, resolver."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from remamber.data.expressions import (
    CLEARANCE,
    Desc,
    Expression,
    Scene,
    SceneObject,
    is_good,
    matching,
    mirror_expression,
    mirror_scene,
    render,
    resolve,
)
from remamber.data.manifest import PreparedDataset
from remamber.data.masks import decode_rle
from remamber.data.refer import load_refs
from remamber.data.shapes import generate_image, load_scene, prepare_shapes
from remamber.data.transforms import swap_left_right

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


def _target_index(ref: dict) -> int:
    return ref["ann_id"] % 10  # annotation ids are image_id * 10 + object index


def _expressions(folder: Path):
    """Yield (scene, target index, sentence dict, Expression) for every generated sentence."""
    scenes, refs = _scenes_and_refs(folder)
    for ref in refs:
        scene, target = scenes[ref["image_id"]], _target_index(ref)
        for sentence in ref["sentences"]:
            yield scene, target, sentence, Expression.from_dict(sentence["expr"])


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


def test_every_expression_names_exactly_its_target(shapes_dataset):
    types = Counter()
    for scene, target, sentence, expr in _expressions(shapes_dataset):
        assert resolve(expr, scene) == [target], sentence["sent"]
        assert resolve(expr, scene, CLEARANCE) == [target], sentence["sent"]
        assert is_good(expr, scene, target), sentence["sent"]
        assert sentence["expr_type"] == expr.type
        for _, value in expr.target.items():
            if value in ("small", "big"):
                continue  # rendered with synonyms (little, large)
            assert value in sentence["sent"]
        types[expr.type] += 1
    assert set(types) == {"attribute", "position", "ordinal", "relation"}


def test_no_single_word_gives_the_answer(shapes_dataset):
    for scene, target, sentence, expr in _expressions(shapes_dataset):
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


def test_masks_equal_drawn_shapes(shapes_dataset):
    prepared = PreparedDataset.open(shapes_dataset)
    root = prepared.images_root()
    for split in ("val", "test"):
        for rec in prepared.records(split):
            index = int(rec["file_name"].split("_")[-1].split(".")[0])
            gen = generate_image(SEED, split, index, SIZE)
            k = rec["ann_id"] % 10
            mask = decode_rle(rec["mask"])
            np.testing.assert_array_equal(mask, (gen.labels == k + 1).astype(np.uint8))
            pixels = np.asarray(Image.open(root / rec["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(pixels, gen.image)
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


def test_mirror_keeps_referent_and_matches_word_swap(shapes_dataset):
    for scene, target, _sentence, expr in _expressions(shapes_dataset):
        assert resolve(mirror_expression(expr), mirror_scene(scene)) == [target]
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
