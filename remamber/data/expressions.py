"""Referring expressions over synthetic scenes: structured form, resolver, English text.

An expression is kept in a structured form (:class:`Expression`, stored as a plain dict
beside each generated sentence) and rendered to text. :func:`resolve` evaluates the
structured form against a :class:`Scene` and returns every object it may name; the
generator keeps an expression only when that is exactly its target, also under a
``clearance`` (every spatial comparison must hold by a margin, and no other object may
come within that margin), and when every part of it is needed (:func:`is_good`).

Types (``Expression.type``):

* ``attribute`` -- "the big red circle": colour / shape / size only;
* ``position`` -- "the red shape on the left": absolute place in the image (thirds);
* ``ordinal`` -- "the second circle from the right", "the topmost square";
* ``relation`` -- "the circle left of the blue star", "... next to ...", "... between ...".

A phrase may also name several objects (``count`` set: "all the red objects", "the two
circles on the left", "the squares next to the blue star") or none at all: an object that
is not there but is close to one that is ("the green circle" beside a red circle and a green
square; "the red circle at the top" when it is at the bottom). :func:`is_good_set` checks
those against their target set (empty for none) as :func:`is_good` checks a single target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np

EXPR_TYPES = ("attribute", "position", "ordinal", "relation")
ATTRIBUTES = ("size", "color", "shape")
WHERES = ("left", "right", "top", "bottom", "middle")
DIRECTIONS = ("left", "right", "top", "bottom")
RANKS = (1, 2, 3)
UNARY_RELATIONS = ("left_of", "right_of", "above", "below", "next_to")
#: Expression types of generated phrases by target kind (``remamber.data.manifest.TARGET_KINDS``).
GROUP_TYPES = {"none": ("attribute", "position"), "multi": ("attribute", "position", "relation")}

#: Margin, as a fraction of the image side, by which generated spatial words must hold.
CLEARANCE = 0.04
#: "next to": gap between the two outlines below this fraction of the image side.
NEAR = 0.12
#: "between": distance from the line joining the two anchors below this fraction.
BETWEEN_BAND = 0.1


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes and its bounding circle (centre and radius, in pixels)."""

    shape: str
    color: str
    size: str  # "small" or "big"
    cx: float
    cy: float
    r: float

    def attribute(self, name: str) -> str:
        return getattr(self, name)


@dataclass(frozen=True)
class Scene:
    """The objects of one image of ``width`` x ``height`` pixels (they never overlap)."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]

    @property
    def side(self) -> float:
        return float(min(self.width, self.height))


@dataclass(frozen=True)
class Desc:
    """A noun phrase by attributes; ``None`` leaves an attribute free ("the red shape")."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(v is None or obj.attribute(k) == v for k, v in self.items())

    def items(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in ATTRIBUTES if getattr(self, k) is not None]

    @property
    def n_attributes(self) -> int:
        return len(self.items())

    def without(self, name: str) -> Desc:
        return replace(self, **{name: None})

    def to_dict(self) -> dict[str, str]:
        return dict(self.items())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Desc:
        return cls(**{k: d[k] for k in ATTRIBUTES if d.get(k) is not None})

    @classmethod
    def of(cls, obj: SceneObject, names: Sequence[str]) -> Desc:
        """The description of ``obj`` by the attributes ``names``."""
        return cls(**{k: obj.attribute(k) for k in names})


@dataclass(frozen=True)
class Expression:
    """The structured form of one referring expression (see the module docstring)."""

    type: str
    target: Desc
    where: str | None = None  # position
    direction: str | None = None  # ordinal
    rank: int | None = None  # ordinal
    relation: str | None = None  # relation
    anchors: tuple[Desc, ...] = field(default_factory=tuple)  # relation
    count: int | None = None  # how many objects a plural phrase names; None: one (or none)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "target": self.target.to_dict()}
        for key in ("where", "direction", "rank", "relation"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.anchors:
            d["anchors"] = [a.to_dict() for a in self.anchors]
        if self.count is not None:
            d["count"] = self.count
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Expression:
        return cls(
            type=d["type"],
            target=Desc.from_dict(d["target"]),
            where=d.get("where"),
            direction=d.get("direction"),
            rank=d.get("rank"),
            relation=d.get("relation"),
            anchors=tuple(Desc.from_dict(a) for a in d.get("anchors", ())),
            count=d.get("count"),
        )


# --------------------------------------------------------------------------- resolver


def matching(desc: Desc, scene: Scene, exclude: frozenset[int] = frozenset()) -> list[int]:
    """Indices of the objects that ``desc`` fits."""
    return [i for i, o in enumerate(scene.objects) if i not in exclude and desc.matches(o)]


def _above_threshold(candidates: list[int], values: list[float], clearance: float) -> list[int]:
    """Objects whose value may be positive: none unless one is above ``clearance``, then
    every one above ``-clearance`` (near misses make an expression ambiguous); with a
    negative ``clearance`` (lenient), every one above it."""
    if clearance < 0:
        return [i for i, v in zip(candidates, values) if v > clearance]
    if not any(v > clearance for v in values):
        return []
    return [i for i, v in zip(candidates, values) if v > -clearance]


def _position_value(where: str, obj: SceneObject, scene: Scene) -> float:
    x, y = obj.cx / scene.width, obj.cy / scene.height
    return {
        "left": 1 / 3 - x,
        "right": x - 2 / 3,
        "top": 1 / 3 - y,
        "bottom": y - 2 / 3,
        "middle": min(x - 1 / 3, 2 / 3 - x, y - 1 / 3, 2 / 3 - y),
    }[where]


def _resolve_attribute(expr: Expression, scene: Scene, clearance: float) -> list[int]:
    return matching(expr.target, scene)


def _resolve_position(expr: Expression, scene: Scene, clearance: float) -> list[int]:
    candidates = matching(expr.target, scene)
    values = [_position_value(expr.where, scene.objects[i], scene) for i in candidates]
    return _above_threshold(candidates, values, clearance)


def _ordinal_key(direction: str, obj: SceneObject, scene: Scene) -> float:
    """Position along ``direction``'s axis, smallest for the object nearest that side."""
    return {
        "left": obj.cx / scene.width,
        "right": -obj.cx / scene.width,
        "top": obj.cy / scene.height,
        "bottom": -obj.cy / scene.height,
    }[direction]


def _resolve_ordinal(expr: Expression, scene: Scene, clearance: float) -> list[int]:
    candidates = matching(expr.target, scene)
    if not expr.rank or len(candidates) < expr.rank:
        return []
    keys = {i: _ordinal_key(expr.direction, scene.objects[i], scene) for i in candidates}
    chosen = sorted(candidates, key=keys.__getitem__)[expr.rank - 1]
    return [i for i in candidates if abs(keys[i] - keys[chosen]) <= abs(clearance)]


def _relation_value(relation: str, obj: SceneObject, anchors: list[SceneObject], side: float) -> float:
    """Positive when ``obj`` stands in ``relation`` to the anchor(s); in image-side units."""
    a = anchors[0]
    dx, dy = obj.cx - a.cx, obj.cy - a.cy
    if relation == "left_of":
        value = -dx - abs(dy)  # inside the 90-degree cone pointing left from the anchor
    elif relation == "right_of":
        value = dx - abs(dy)
    elif relation == "above":
        value = -dy - abs(dx)
    elif relation == "below":
        value = dy - abs(dx)
    elif relation == "next_to":
        value = NEAR * side - (math.hypot(dx, dy) - obj.r - a.r)
    else:  # between
        value = _between_value(obj, a, anchors[1], side)
    return value / side


def _between_value(obj: SceneObject, a: SceneObject, b: SceneObject, side: float) -> float:
    ux, uy = b.cx - a.cx, b.cy - a.cy
    length = math.hypot(ux, uy)
    px, py = obj.cx - a.cx, obj.cy - a.cy
    along = (px * ux + py * uy) / length
    off_line = abs(px * uy - py * ux) / length
    return min(along - a.r, length - along - b.r, BETWEEN_BAND * side - off_line)


def _resolve_relation(expr: Expression, scene: Scene, clearance: float) -> list[int]:
    arity = 2 if expr.relation == "between" else 1
    found = [matching(a, scene) for a in expr.anchors]
    if len(found) != arity or any(len(f) != 1 for f in found):
        return []  # every anchor must itself name exactly one object
    anchor_ids = frozenset(f[0] for f in found)
    if len(anchor_ids) != arity:
        return []
    anchors = [scene.objects[f[0]] for f in found]
    candidates = matching(expr.target, scene, exclude=anchor_ids)
    values = [_relation_value(expr.relation, scene.objects[i], anchors, scene.side) for i in candidates]
    return _above_threshold(candidates, values, clearance)


_RESOLVERS: dict[str, Callable[[Expression, Scene, float], list[int]]] = {
    "attribute": _resolve_attribute,
    "position": _resolve_position,
    "ordinal": _resolve_ordinal,
    "relation": _resolve_relation,
}


def resolve(expr: Expression, scene: Scene, clearance: float = 0.0) -> list[int]:
    """Indices of the objects ``expr`` may name in ``scene`` (one, when it is unambiguous).

    With ``clearance > 0`` every spatial comparison must hold by that margin (a fraction
    of the image side) for an object to be named, and any other object within the margin
    is returned too, making the expression ambiguous. With ``clearance < 0`` the reading is
    lenient: an object that misses by less than the margin is named too, so a phrase that
    names nothing under it clearly names nothing. ``count`` plays no part here.
    """
    return _RESOLVERS[expr.type](expr, scene, clearance)


# --------------------------------------------------------------------------- generation


def _words_needed(expr: Expression, scene: Scene, targets: list[int]) -> bool:
    """Whether no part of ``expr`` alone picks ``targets`` (no single word gives the answer;
    for no target: each part alone names something, only the whole names nothing)."""
    if expr.type == "attribute":
        desc = expr.target
        least = 1 if len(targets) > 1 else 2  # "all the red objects" is a set; "the red object" too easy
        return desc.n_attributes >= least and all(matching(desc.without(k), scene) != targets for k, _ in desc.items())
    if matching(expr.target, scene) == targets:
        return False  # the attributes alone already name it (or say that nothing is there)
    return resolve(replace(expr, target=Desc()), scene) != targets


def names_exactly(expr: Expression, scene: Scene, targets: Sequence[int]) -> bool:
    """Whether ``expr`` names exactly ``targets`` (sorted indices; empty: nothing) and clearly:
    under the strict reading as well (:data:`CLEARANCE`), or, for nothing, the lenient one."""
    targets = list(targets)
    if not targets:
        return resolve(expr, scene, -CLEARANCE) == []
    return resolve(expr, scene) == targets and resolve(expr, scene, CLEARANCE) == targets


def is_good_set(expr: Expression, scene: Scene, targets: Sequence[int]) -> bool:
    """The generator's test for a phrase naming ``targets`` (none, one or several objects): it
    names exactly them, clearly, with every part needed, and states a plural's ``count`` right."""
    targets = sorted(targets)
    count = len(targets) if len(targets) > 1 else None
    return expr.count == count and names_exactly(expr, scene, targets) and _words_needed(expr, scene, targets)


def is_good(expr: Expression, scene: Scene, target: int) -> bool:
    """The generator's test: ``expr`` names exactly ``target``, clearly, with every part needed."""
    return is_good_set(expr, scene, [target])


def _descs(obj: SceneObject, min_attributes: int) -> list[Desc]:
    return [
        Desc.of(obj, names) for n in range(min_attributes, len(ATTRIBUTES) + 1) for names in combinations(ATTRIBUTES, n)
    ]


def anchor_desc(scene: Scene, index: int) -> Desc | None:
    """The shortest description naming only object ``index`` (shape named when possible)."""
    obj = scene.objects[index]
    options = sorted(_descs(obj, 1), key=lambda d: (d.n_attributes, d.shape is None))
    return next((d for d in options if matching(d, scene) == [index]), None)


def candidates(scene: Scene, target: int, expr_type: str) -> list[Expression]:
    """Every expression of ``expr_type`` worth testing for ``target`` (not yet checked)."""
    descs = _descs(scene.objects[target], 2 if expr_type == "attribute" else 1)
    if expr_type == "attribute":
        return [Expression("attribute", d) for d in descs]
    if expr_type == "position":
        return [Expression("position", d, where=w) for d in descs for w in WHERES]
    if expr_type == "ordinal":
        return [Expression("ordinal", d, direction=s, rank=k) for d in descs for s in DIRECTIONS for k in RANKS]
    return _relation_candidates(scene, target, descs)


def _relation_candidates(scene: Scene, target: int, descs: list[Desc]) -> list[Expression]:
    anchors = {i: anchor_desc(scene, i) for i in range(len(scene.objects)) if i != target}
    anchors = {i: d for i, d in anchors.items() if d is not None}
    out = [
        Expression("relation", d, relation=rel, anchors=(a,))
        for d in descs
        for rel in UNARY_RELATIONS
        for a in anchors.values()
    ]
    out += [
        Expression("relation", d, relation="between", anchors=(anchors[i], anchors[j]))
        for d in descs
        for i, j in combinations(sorted(anchors), 2)
    ]
    return out


def find_expression(scene: Scene, target: int, expr_type: str, rng: np.random.Generator) -> Expression | None:
    """A random good expression of ``expr_type`` for ``target``, or None if there is none."""
    options = candidates(scene, target, expr_type)
    for k in rng.permutation(len(options)):
        if is_good(options[k], scene, target):
            return options[k]
    return None


# --------------------------------------------------------------------------- no target, several targets


def _scene_descs(scene: Scene, min_attributes: int) -> list[Desc]:
    """Every description of some object of the scene, once each, in scene order."""
    return list(dict.fromkeys(d for obj in scene.objects for d in _descs(obj, min_attributes)))


def _anchors(scene: Scene) -> list[Desc]:
    return [d for d in (anchor_desc(scene, i) for i in range(len(scene.objects))) if d is not None]


def multi_candidates(scene: Scene, expr_type: str) -> list[Expression]:
    """Every plural phrase of ``expr_type`` that names two objects or more, with its ``count``
    (not yet checked)."""
    descs = _scene_descs(scene, 1)
    if expr_type == "attribute":
        exprs = [Expression("attribute", d) for d in descs]
    elif expr_type == "position":
        exprs = [Expression("position", d, where=w) for d in descs for w in WHERES]
    else:
        anchors = _anchors(scene)
        exprs = [
            Expression("relation", d, relation=rel, anchors=(a,))
            for d in descs
            for rel in UNARY_RELATIONS
            for a in anchors
        ]
    counted = (replace(e, count=len(resolve(e, scene))) for e in exprs)
    return [e for e in counted if e.count >= 2]


def no_target_candidates(scene: Scene, expr_type: str) -> list[Expression]:
    """Phrases of ``expr_type`` that may name nothing while close to an object that is there
    (not yet checked): attribute -- an object's description with one attribute changed to
    another value of the scene; position -- an object's description in some place."""
    if expr_type == "position":
        return [Expression("position", d, where=w) for d in _scene_descs(scene, 1) for w in WHERES]
    values = {k: list(dict.fromkeys(obj.attribute(k) for obj in scene.objects)) for k in ATTRIBUTES}
    swapped = (
        replace(d, **{k: v}) for d in _scene_descs(scene, 2) for k, old in d.items() for v in values[k] if v != old
    )
    return [Expression("attribute", d) for d in dict.fromkeys(swapped)]


def find_group_expression(
    scene: Scene, kind: str, rng: np.random.Generator, exclude: Collection[Expression] = ()
) -> tuple[Expression, list[int]] | None:
    """A random good phrase of target kind ``kind`` (``none`` or ``multi``, of a random type of
    :data:`GROUP_TYPES`) not in ``exclude``, with the objects it names; None if there is none."""
    make = no_target_candidates if kind == "none" else multi_candidates
    for expr_type in rng.permutation(GROUP_TYPES[kind]):
        options = make(scene, str(expr_type))
        for k in rng.permutation(len(options)):
            expr = options[k]
            targets = resolve(expr, scene) if kind == "multi" else []
            if expr not in exclude and is_good_set(expr, scene, targets):
                return expr, targets
    return None


# --------------------------------------------------------------------------- mirror


_MIRROR = {"left": "right", "right": "left", "left_of": "right_of", "right_of": "left_of"}


def mirror_scene(scene: Scene) -> Scene:
    """The scene flipped left to right."""
    objects = tuple(replace(o, cx=scene.width - o.cx) for o in scene.objects)
    return replace(scene, objects=objects)


def mirror_expression(expr: Expression) -> Expression:
    """The expression that names, in the mirrored scene, what ``expr`` names in the original."""
    return replace(
        expr,
        where=_MIRROR.get(expr.where, expr.where),
        direction=_MIRROR.get(expr.direction, expr.direction),
        relation=_MIRROR.get(expr.relation, expr.relation),
    )


# --------------------------------------------------------------------------- text

_SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
_GENERIC_NOUNS = ("shape", "object")
_ORDINALS = {2: "second", 3: "third"}
_NUMBERS = {2: "two", 3: "three", 4: "four"}
_POSITION_TEMPLATES = {
    "left": ("{np} on the left",),
    "right": ("{np} on the right",),
    "top": ("{np} at the top",),
    "bottom": ("{np} at the bottom",),
    "middle": ("{np} in the middle", "{np} in the center"),
}
_EXTREME_TEMPLATES = {
    "left": ("the leftmost {d}",),
    "right": ("the rightmost {d}",),
    "top": ("the topmost {d}", "the highest {d}"),
    "bottom": ("the lowest {d}", "the bottommost {d}"),
}
_RELATION_TEMPLATES = {
    "left_of": ("{np} left of the {a}", "{np} to the left of the {a}"),
    "right_of": ("{np} right of the {a}", "{np} to the right of the {a}"),
    "above": ("{np} above the {a}",),
    "below": ("{np} below the {a}", "{np} under the {a}"),
    "next_to": ("{np} next to the {a}", "{np} beside the {a}"),
    "between": ("{np} between the {a} and the {b}",),
}


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def render_desc(desc: Desc, rng: np.random.Generator, plural: bool = False) -> str:
    """Words for a description: "[size] [colour] shape-or-noun" (the noun plural with ``plural``)."""
    words = []
    if desc.size:
        words.append(_pick(_SIZE_WORDS[desc.size], rng))
    if desc.color:
        words.append(desc.color)
    words.append((desc.shape or _pick(_GENERIC_NOUNS, rng)) + ("s" if plural else ""))
    return " ".join(words)


def _noun_phrase(d: str, count: int | None, rng: np.random.Generator) -> str:
    """ "the <d>" for one object; for several, a determiner that ``rng`` picks ("all the", "both",
    "the two", ...). Drawn last, so that singular phrases use ``rng`` as they always did."""
    if count is None:
        return f"the {d}"
    options = ["the {d}", "all the {d}"]
    if count in _NUMBERS:
        options.append(f"the {_NUMBERS[count]} {{d}}")
    if count == 2:
        options.append("both {d}")
    return _pick(options, rng).format(d=d)


def render(expr: Expression, rng: np.random.Generator) -> str:
    """English text of ``expr``; ``rng`` picks among synonyms."""
    d = render_desc(expr.target, rng, plural=expr.count is not None)
    if expr.type == "attribute":
        return _noun_phrase(d, expr.count, rng)
    if expr.type == "position":
        template = _pick(_POSITION_TEMPLATES[expr.where], rng)
        return template.format(np=_noun_phrase(d, expr.count, rng))
    if expr.type == "ordinal":
        if expr.rank == 1:
            return _pick(_EXTREME_TEMPLATES[expr.direction], rng).format(d=d)
        return f"the {_ORDINALS[expr.rank]} {d} from the {expr.direction}"
    anchors = [render_desc(a, rng) for a in expr.anchors]
    template = _pick(_RELATION_TEMPLATES[expr.relation], rng)
    return template.format(np=_noun_phrase(d, expr.count, rng), a=anchors[0], b=anchors[-1])
