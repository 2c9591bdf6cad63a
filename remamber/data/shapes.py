"""The synthetic ``shapes`` dataset: coloured shapes on noisy or textured backgrounds.

Each image holds 4 to 7 non-overlapping shapes drawn from a few colours and shapes, so
that attributes repeat and no single word names an object. Up to three objects per image
are referents, each with up to three expressions of different types (attribute, position,
ordinal, relation; see :mod:`remamber.data.expressions`), every one checked by the resolver
to name exactly its target. With :class:`TargetShares`, phrases that name no object ("the
green circle" beside a red one) or several ("all the red objects") are added, each checked
by the resolver to name exactly that set; they come from a random generator of their own,
so the image and its single-target phrases are the same with or without them.

The generator writes the REFER format (``refer/shapes/refs(synthetic).p`` with pickle
protocol 2, ``refer/shapes/instances.json`` with exact RLE masks, ``images/*.png``) and
then converts it with :func:`remamber.data.prepare.prepare_refer`, the RefCOCO code path
(refs in the gRefCOCO form, a list of annotation ids, when some phrases name no or several objects).
Image ``i`` of a split depends only on ``(seed, split, i)``: the output is byte-identical
for a seed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from remamber.data.catalog import (
    SHAPES_DEFAULT_IMAGES,
    SHAPES_DEFAULT_MULTI_TARGET_SHARE,
    SHAPES_DEFAULT_NO_TARGET_SHARE,
    SHAPES_DEFAULT_SEED,
    SHAPES_DEFAULT_SIZE,
    SHAPES_NAME,
    SHAPES_SPLITS,
)
from remamber.data.expressions import (
    EXPR_TYPES,
    Expression,
    Scene,
    SceneObject,
    find_expression,
    find_group_expression,
    render,
)
from remamber.data.manifest import INFO_FILE, manifests_intact, read_info
from remamber.data.masks import encode_mask
from remamber.data.prepare import PrepareResult, Track, no_progress, prepare_refer, writing_to
from remamber.data.refer import ReferFiles
from remamber.utils.errors import InputError
from remamber.utils.io import atomic_open, atomic_path, write_json

GENERATOR_VERSION = 1
DATASET = SHAPES_NAME
SPLIT_BY = "synthetic"
SPLITS = SHAPES_SPLITS
DEFAULT_COUNTS = SHAPES_DEFAULT_IMAGES
DEFAULT_SIZE = SHAPES_DEFAULT_SIZE
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_IMAGES_PER_SPLIT = 999_999

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 55, 195),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
SIZE_RADIUS = {"small": (0.05, 0.065), "big": (0.105, 0.13)}  # fraction of the image side
OBJECTS_PER_IMAGE = (4, 7)
REFS_PER_IMAGE = 3
SENTENCES_PER_REF = 3
GAP = 0.03  # least space between two outlines, fraction of the side
COLOR_JITTER = 10
MAX_GROUP_SHARE = 0.5  # no-target and multi-target shares together at most this
# Ids of a phrase naming no or several objects (a ref of its own): image id * 100 + 70 + its
# number; single-target sentence ids are image id * 100 + 10 * object + j (object < 7, j < 3),
# and the shares' cap keeps an image under 30 such phrases.
GROUP_ID_OFFSET = 70


# --------------------------------------------------------------------------- scenes


def _sample_object(rng: np.random.Generator, side: int, colors: list[str], shapes: list[str]) -> SceneObject:
    size = ("small", "big")[int(rng.integers(2))]
    r = float(rng.uniform(*SIZE_RADIUS[size])) * side
    margin = r + GAP * side
    return SceneObject(
        shape=shapes[int(rng.integers(len(shapes)))],
        color=colors[int(rng.integers(len(colors)))],
        size=size,
        cx=float(rng.uniform(margin, side - margin)),
        cy=float(rng.uniform(margin, side - margin)),
        r=r,
    )


def _fits(obj: SceneObject, placed: list[SceneObject], side: int) -> bool:
    return all(np.hypot(obj.cx - o.cx, obj.cy - o.cy) > obj.r + o.r + GAP * side for o in placed)


def sample_scene(rng: np.random.Generator, side: int) -> Scene:
    """Random non-overlapping shapes from a small palette (2-3 colours, 2-3 shapes)."""
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[: rng.integers(2, 4)]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[: rng.integers(2, 4)]]
    wanted = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    placed: list[SceneObject] = []
    for _ in range(wanted * 30):
        if len(placed) == wanted:
            break
        obj = _sample_object(rng, side, colors, shapes)
        if _fits(obj, placed, side):
            placed.append(obj)
    return Scene(side, side, tuple(placed))


def _regular(x: float, y: float, r: float, n: int, start: float, radii=(1.0,)) -> list:
    """Vertices of a regular (star when two radii) polygon around ``(x, y)``."""
    points = []
    for k in range(n * len(radii)):
        angle = start + 2 * np.pi * k / (n * len(radii))
        rad = r * radii[k % len(radii)]
        points.append((x + rad * np.cos(angle), y + rad * np.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: int) -> None:
    # Scene coordinates put pixel i on [i, i + 1); PIL puts pixel i's centre at i.
    x, y, r = obj.cx - 0.5, obj.cy - 0.5, obj.r
    if obj.shape == "circle":  # PIL's boxes include both ends: shrink them by half a pixel
        h = r - 0.5
        draw.ellipse([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "square":
        h = r * 0.8 - 0.5
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(_regular(x, y, r, 3, -np.pi / 2), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(x, y - r), (x + 0.7 * r, y), (x, y + r), (x - 0.7 * r, y)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_regular(x, y, r, 5, -np.pi / 2, (1.0, 0.45)), fill=fill)
    else:  # hexagon
        draw.polygon(_regular(x, y, r, 6, 0.0), fill=fill)


def draw_labels(scene: Scene) -> np.ndarray:
    """``(h, w)`` uint8 map: 0 for background, ``k + 1`` on the pixels of object ``k``."""
    canvas = Image.new("L", (scene.width, scene.height), 0)
    draw = ImageDraw.Draw(canvas)
    for k, obj in enumerate(scene.objects):
        _draw(draw, obj, k + 1)
    return np.asarray(canvas).copy()


# --------------------------------------------------------------------------- pixels


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation colour, so that no background reads as one of the named colours."""
    return np.clip(rng.uniform(70, 180) + rng.uniform(-18, 18, 3), 0, 255)


def _pattern(rng: np.random.Generator, side: int) -> np.ndarray:
    """A ``(side, side)`` weight in [0, 1]: gradient, stripes, checks, blobs or flat."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    kind = int(rng.integers(5))
    if kind == 0:
        return (along - along.min()) / max(np.ptp(along), 1e-6)
    if kind == 1:
        return (np.sin(along * 2 * np.pi * rng.uniform(3, 12)) > 0).astype(float)
    if kind == 2:
        cell = int(rng.integers(8, 33))
        index = np.arange(side) // cell
        return ((index[:, None] + index[None, :]) % 2).astype(float)
    if kind == 3:
        grid = int(rng.integers(3, 9))
        small = Image.fromarray((rng.uniform(0, 255, (grid, grid))).astype(np.uint8))
        return np.asarray(small.resize((side, side), Image.BILINEAR), dtype=float) / 255
    return np.zeros((side, side))


def draw_background(rng: np.random.Generator, side: int) -> np.ndarray:
    """``(side, side, 3)`` float background: two muted colours mixed by a pattern, plus noise."""
    a, b = _muted_color(rng), _muted_color(rng)
    weight = _pattern(rng, side)[..., None]
    noise = rng.normal(0, rng.uniform(3, 14), (side, side, 1))
    return a * (1 - weight) + b * weight + noise


def _object_rgb(rng: np.random.Generator, obj: SceneObject) -> np.ndarray:
    base = np.array(COLORS[obj.color], dtype=float)
    return np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255)


def paint(background: np.ndarray, labels: np.ndarray, rgbs: list[np.ndarray]) -> np.ndarray:
    """The image: each object's flat colour on its label pixels, the background elsewhere."""
    image = background.copy()
    for k, rgb in enumerate(rgbs):
        image[labels == k + 1] = rgb
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- expressions


def choose_refs(scene: Scene, rng: np.random.Generator) -> list[tuple[int, list[Expression]]]:
    """Up to REFS_PER_IMAGE referents, each with up to SENTENCES_PER_REF expression types."""
    refs = []
    for target in rng.permutation(len(scene.objects)):
        exprs = []
        for expr_type in rng.permutation(EXPR_TYPES):
            expr = find_expression(scene, int(target), str(expr_type), rng)
            if expr is not None:
                exprs.append(expr)
            if len(exprs) == SENTENCES_PER_REF:
                break
        if exprs:
            refs.append((int(target), exprs))
        if len(refs) == REFS_PER_IMAGE:
            break
    return refs


@dataclass(frozen=True)
class TargetShares:
    """About what share of the sentences name no object and several objects (the others name one)."""

    no_target: float = 0.0
    multi_target: float = 0.0

    @property
    def generalized(self) -> bool:
        """Whether any phrase names no or several objects (the dataset is then a GRES one)."""
        return bool(self.no_target or self.multi_target)

    def counts(self, singles: int, rng: np.random.Generator) -> tuple[int, int]:
        """How many no-target and multi-target phrases go with ``singles`` single-target ones;
        rounded at random, so that the shares hold on average."""
        rest = 1.0 - self.no_target - self.multi_target
        wanted = (singles * share / rest for share in (self.no_target, self.multi_target))
        n_none, n_multi = (int(x) + int(rng.random() < x - int(x)) for x in wanted)
        return n_none, n_multi


def choose_groups(
    scene: Scene, rng: np.random.Generator, shares: TargetShares, singles: int
) -> list[tuple[list[int], Expression, str]]:
    """The no-target and multi-target phrases of a scene with ``singles`` single-target ones:
    ``(objects named, expression, text)``, each expression once."""
    found: list[tuple[list[int], Expression]] = []
    for kind, n in zip(("none", "multi"), shares.counts(singles, rng)):
        for _ in range(n):
            hit = find_group_expression(scene, kind, rng, exclude=[e for _, e in found])
            if hit is None:
                break
            expr, targets = hit
            found.append((targets, expr))
    return [(targets, expr, render(expr, rng)) for targets, expr in found]


@dataclass
class GeneratedImage:
    """One synthetic image with its scene, label map and referring expressions."""

    scene: Scene
    image: np.ndarray  # (h, w, 3) uint8
    labels: np.ndarray  # (h, w) uint8, object k has value k + 1
    rgbs: list[np.ndarray]  # the colour each object was painted in
    refs: list[tuple[int, list[tuple[Expression, str]]]]  # target, [(expression, text)]
    groups: list[tuple[list[int], Expression, str]] = field(default_factory=list)  # no or several targets


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def group_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of the no-target and multi-target phrases of an image, apart from
    :func:`image_rng` so that adding them changes nothing else."""
    return np.random.default_rng([seed, SPLITS.index(split), index, 1])


def generate_image(
    seed: int, split: str, index: int, side: int = DEFAULT_SIZE, shares: TargetShares = TargetShares()
) -> GeneratedImage:
    """Image ``index`` of ``split`` for ``seed``: the same inputs always give the same image.

    ``shares`` adds phrases that name no or several objects (none by default)."""
    rng = image_rng(seed, split, index)
    while True:  # a scene where nothing can be referred to unambiguously is drawn again
        scene = sample_scene(rng, side)
        chosen = choose_refs(scene, rng)
        if chosen:
            break
    labels = draw_labels(scene)
    rgbs = [_object_rgb(rng, o) for o in scene.objects]
    image = paint(draw_background(rng, side), labels, rgbs)
    refs = [(t, [(e, render(e, rng)) for e in exprs]) for t, exprs in chosen]
    groups = []
    if shares.generalized:
        singles = sum(len(exprs) for _, exprs in refs)
        groups = choose_groups(scene, group_rng(seed, split, index), shares, singles)
    return GeneratedImage(scene, image, labels, rgbs, refs, groups)


# --------------------------------------------------------------------------- REFER files


def image_id(split: str, index: int) -> int:
    """COCO-style image id of image ``index`` of ``split``."""
    return (SPLITS.index(split) + 1) * 1_000_000 + index + 1


def image_file_name(split: str, index: int) -> str:
    return f"shapes_{split}_{index:06d}.png"


def _annotation(gen: GeneratedImage, img_id: int, k: int) -> dict[str, Any]:
    obj = gen.scene.objects[k]
    mask = gen.labels == k + 1
    ys, xs = np.nonzero(mask)
    return {
        "id": img_id * 10 + k,
        "image_id": img_id,
        "category_id": SHAPES.index(obj.shape) + 1,
        "segmentation": encode_mask(mask),
        "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
        "iscrowd": 0,
        "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size},
        "center": [obj.cx, obj.cy],
        "radius": obj.r,
        "rgb": [int(v) for v in gen.rgbs[k]],
    }


def _sentence(sent_id: int, expr: Expression, text: str) -> dict[str, Any]:
    return {
        "tokens": text.split(),
        "raw": text,
        "sent": text,
        "sent_id": sent_id,
        "expr_type": expr.type,
        "expr": expr.to_dict(),
    }


def _category_id(gen: GeneratedImage, k: int) -> int:
    return SHAPES.index(gen.scene.objects[k].shape) + 1


def _ref(gen: GeneratedImage, img_id: int, split: str, name: str, target: int, exprs: list) -> dict[str, Any]:
    ann_id = img_id * 10 + target
    sentences = [_sentence(ann_id * 10 + j, expr, text) for j, (expr, text) in enumerate(exprs)]
    return {
        "ref_id": ann_id,
        "ann_id": ann_id,
        "image_id": img_id,
        "category_id": _category_id(gen, target),
        "split": split,
        "file_name": f"{Path(name).stem}_{ann_id}.png",  # REFER style: image + ann id
        "sent_ids": [s["sent_id"] for s in sentences],
        "sentences": sentences,
    }


def _as_group_ref(ref: dict[str, Any]) -> dict[str, Any]:
    """A single-target ref in the gRefCOCO form (lists of ids and a ``no_target`` flag)."""
    return {**ref, "ann_id": [ref["ann_id"]], "category_id": [ref["category_id"]], "no_target": False}


def _group_ref(
    gen: GeneratedImage, img_id: int, split: str, name: str, number: int, group: tuple[list[int], Expression, str]
) -> dict[str, Any]:
    """The gRefCOCO-form ref of one phrase naming no or several objects (``ann_id`` [-1] for none)."""
    targets, expr, text = group
    ref_id = img_id * 100 + GROUP_ID_OFFSET + number
    return {
        "ref_id": ref_id,
        "ann_id": [img_id * 10 + k for k in targets] or [-1],
        "image_id": img_id,
        "category_id": [_category_id(gen, k) for k in targets] or [-1],
        "no_target": not targets,
        "split": split,
        "file_name": name,
        "sent_ids": [ref_id],
        "sentences": [_sentence(ref_id, expr, text)],
    }


def _save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def _write_image(job: tuple[int, str, int, int, TargetShares, Path]) -> bytes:
    """Generate one image and save its PNG; its REFER image, annotation and ref records, pickled.

    Pickled per image in every process count, so that which records share objects (and with it
    the bytes of the refs pickle) does not depend on ``workers``."""
    seed, split, index, side, shares, images_dir = job
    gen = generate_image(seed, split, index, side, shares)
    img_id, name = image_id(split, index), image_file_name(split, index)
    _save_png(gen.image, images_dir / name)
    image = {"id": img_id, "file_name": name, "height": side, "width": side}
    annotations = [_annotation(gen, img_id, k) for k in range(len(gen.scene.objects))]
    refs = [_ref(gen, img_id, split, name, t, exprs) for t, exprs in gen.refs]
    if shares.generalized:  # a GRES dataset: every ref in the gRefCOCO form
        refs = [_as_group_ref(r) for r in refs]
        refs += [_group_ref(gen, img_id, split, name, g, group) for g, group in enumerate(gen.groups)]
    return pickle.dumps((image, annotations, refs), protocol=pickle.HIGHEST_PROTOCOL)


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C reaches the parent only, which lets running images finish."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def write_shapes_refer(
    out: Path,
    counts: dict[str, int],
    seed: int,
    side: int,
    track: Track = no_progress,
    workers: int = 1,
    shares: TargetShares = TargetShares(),
) -> ReferFiles:
    """Generate every image into ``out/images`` and the REFER files into ``out/refer/shapes``,
    in ``workers`` processes (each image depends only on its seed, split and index, so the
    output is the same for any number)."""
    files = ReferFiles(out / "refer", DATASET, SPLIT_BY)
    images_dir = out / "images"
    images, annotations, refs = [], [], []
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
        )
    try:
        for split in SPLITS:
            jobs = [(seed, split, index, side, shares, images_dir) for index in range(counts[split])]
            if pool:  # in order; a worker that dies raises BrokenProcessPool instead of hanging
                records = pool.map(_write_image, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers))))
            else:
                records = map(_write_image, jobs)
            for record in track(records, counts[split], f"{DATASET} {split} images"):
                image, anns, image_refs = pickle.loads(record)
                images.append(image)
                annotations += anns
                refs += image_refs
    finally:
        if pool:  # on an error or Ctrl-C: drop queued images, let running ones finish their files
            pool.shutdown(wait=True, cancel_futures=True)
    _remove_stale_images(images_dir, {im["file_name"] for im in images})
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    write_json(
        files.instances_path,
        {"images": images, "annotations": annotations, "categories": categories},
        indent=None,
    )
    with atomic_open(files.refs_path, "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return files


def _remove_stale_images(folder: Path, keep: set[str]) -> None:
    """Remove images of an earlier, larger run and temporary files an interrupted run left."""
    for path in [*folder.glob("shapes_*.png"), *folder.glob(".shapes_*.tmp")]:
        if path.name not in keep:
            path.unlink()


# --------------------------------------------------------------------------- entry point


def _check_options(counts: dict[str, int], seed: int, side: int, shares: TargetShares) -> None:
    if seed < 0:
        raise InputError(f"seed must be 0 or more, got {seed}")
    if not MIN_SIZE <= side <= MAX_SIZE:
        raise InputError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {side}")
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise InputError(f"unknown split {unknown[0]!r}; shapes has: {', '.join(SPLITS)}")
    for split, n in counts.items():
        if not 0 <= n <= MAX_IMAGES_PER_SPLIT:
            raise InputError(f"{split} images must be between 0 and {MAX_IMAGES_PER_SPLIT}, got {n}")
    if not any(counts.values()):
        raise InputError("nothing to generate: every split has 0 images")
    for name, share in (("no_target_share", shares.no_target), ("multi_target_share", shares.multi_target)):
        if not 0.0 <= share <= MAX_GROUP_SHARE:
            raise InputError(f"`{name}` must be between 0 and {MAX_GROUP_SHARE}, got {share}")
    if shares.no_target + shares.multi_target > MAX_GROUP_SHARE:
        raise InputError(
            f"`no_target_share` and `multi_target_share` together must be at most {MAX_GROUP_SHARE}, "
            f"got {shares.no_target} + {shares.multi_target}"
        )


def _is_current(out: Path, info: dict | None, params: dict[str, Any]) -> bool:
    """Whether ``out`` holds a complete dataset generated with ``params``, images included."""
    if not info or info.get("generator") != params or not manifests_intact(out, info):
        return False
    counts = params["images"]
    names = (image_file_name(s, i) for s in SPLITS for i in range(counts[s]))
    return all((out / "images" / name).is_file() for name in names)


def generator_params(
    counts: dict[str, int], seed: int, side: int, shares: TargetShares = TargetShares()
) -> dict[str, Any]:
    """What identifies a generated dataset (stored in ``dataset.json`` under ``generator``)."""
    params: dict[str, Any] = {
        "name": DATASET,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "size": side,
        "images": {s: counts[s] for s in SPLITS},
    }
    if shares.generalized:  # left out at 0 and 0: such a dataset keeps the bytes it had before shares
        params["no_target_share"] = shares.no_target
        params["multi_target_share"] = shares.multi_target
    return params


def prepare_shapes(
    out: str | os.PathLike,
    counts: dict[str, int] | None = None,
    seed: int = SHAPES_DEFAULT_SEED,
    size: int = DEFAULT_SIZE,
    *,
    no_target_share: float = SHAPES_DEFAULT_NO_TARGET_SHARE,
    multi_target_share: float = SHAPES_DEFAULT_MULTI_TARGET_SHARE,
    force: bool = False,
    track: Track = no_progress,
    workers: int = 1,
) -> PrepareResult:
    """Generate the synthetic dataset in REFER form under ``out`` and prepare it there.

    ``counts`` gives the number of images per split (train/val/test); a second call with
    the same arguments finds the output complete and returns with ``up_to_date`` True.
    ``no_target_share`` and ``multi_target_share`` are about the shares of sentences that
    name no object and several objects (0 and 0: every sentence names one, the dataset of
    the shipped default model). ``workers`` processes generate the images (the same bytes
    for any number).
    """
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    shares = TargetShares(float(no_target_share), float(multi_target_share))
    _check_options(counts, seed, size, shares)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    params = generator_params(counts, seed, size, shares)
    old = read_info(out)
    if not force and _is_current(out, old, params):
        return PrepareResult(out, DATASET, SPLIT_BY, True, old["splits"])
    with writing_to(out):
        (out / INFO_FILE).unlink(missing_ok=True)  # the folder is incomplete until the end
        files = write_shapes_refer(out, counts, seed, size, track, workers, shares)
    return prepare_refer(
        files.root,
        DATASET,
        out / "images",
        out,
        SPLIT_BY,
        force=True,
        track=track,
        extra={"generator": params},
    )


def load_scene(annotations: list[dict], width: int, height: int) -> Scene:
    """Rebuild a :class:`Scene` from the ``instances.json`` annotations of one image."""
    objects = tuple(
        SceneObject(
            shape=a["attributes"]["shape"],
            color=a["attributes"]["color"],
            size=a["attributes"]["size"],
            cx=float(a["center"][0]),
            cy=float(a["center"][1]),
            r=float(a["radius"]),
        )
        for a in sorted(annotations, key=lambda a: a["id"])
    )
    return Scene(width, height, objects)
