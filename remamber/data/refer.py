"""Reader of the REFER format (refcoco, refcoco+, refcocog, grefcoco and our synthetic ``shapes``).

A dataset folder ``<refer_root>/<dataset>/`` holds:

* ``refs(<split_by>).p`` -- a pickle (protocol 2) list of refs
  ``{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
  sentences: [{tokens, raw, sent, sent_id}]}``; gRefCOCO has ``grefs(<split_by>).json``
  instead, the same refs as JSON in the gRefCOCO form: ``ann_id`` and ``category_id`` lists
  (one id per object the sentences name, ``[-1]`` for none) and a ``no_target`` flag;
* ``instances.json`` -- COCO-style ``images`` / ``annotations`` / ``categories``.

A ref in the gRefCOCO form (every ref of a ``.json`` refs file; in a pickle, one with a list
``ann_id`` or a ``no_target`` flag, as our generalized ``shapes`` writes them) is read into the fields of a generalized record
(:data:`remamber.data.manifest.GENERALIZED_FIELDS`): ``ann_ids`` (empty for none),
``no_target``, and ``ann_id`` / ``category_id`` the first named object's (-1 for none).

Pickles are untrusted input: they are read with :class:`RestrictedUnpickler`, which
builds plain containers and scalars only and refuses every global, so loading a
file can never run code.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remamber.data.catalog import annotations_hint, refs_file_name
from remamber.utils.errors import InputError

_REQUIRED_REF_KEYS = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")


# --------------------------------------------------------------------------- pickles


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global (a class or function); refused."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and scalars only.

    ``set`` and ``frozenset`` (which protocol 2 stores as a call to the builtin) are the
    only globals allowed; anything else raises :class:`ForbiddenGlobalError` before it is
    imported, so nothing in the file is ever executed.
    """

    _ALLOWED = {
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _unpickle(data: bytes, encoding: str) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_restricted_pickle(path: Path) -> Any:
    """Load a pickle of plain data; raise InputError when it is unreadable or asks for a global.

    Python 2 byte strings are decoded as UTF-8, falling back to Latin-1.
    """
    data = _read_bytes(path)
    try:
        try:
            return _unpickle(data, "utf-8")
        except UnicodeDecodeError:
            return _unpickle(data, "latin-1")
    except ForbiddenGlobalError as e:
        raise InputError(
            f"{path}: refused to load: the pickle asks for the global {e}; "
            "a REFER refs file holds plain lists, dicts, strings and numbers only"
        ) from None
    except Exception as e:  # truncated or garbage bytes raise many kinds of errors
        raise InputError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sentence_problem(sentence: Any) -> str | None:
    if not isinstance(sentence, dict):
        return "has a sentence that is not a dict"
    if not _is_int(sentence.get("sent_id")):
        return "has a sentence without an integer sent_id"
    if not isinstance(sentence.get("sent", sentence.get("raw")), str):
        return f"sentence {sentence['sent_id']} has no text ('sent' or 'raw')"
    return None


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) for v in value)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _is_group_ref(ref: dict, group_file: bool) -> bool:
    """Whether ``ref`` is in the gRefCOCO form: every ref of a gRefCOCO file (``group_file``),
    elsewhere one with a list of ids or a ``no_target`` flag."""
    return group_file or isinstance(ref["ann_id"], list) or "no_target" in ref


def _group_problem(ref: dict) -> str | None:
    """What is wrong with the ids of a gRefCOCO-form ref, or None."""
    bad = [k for k in ("ann_id", "category_id") if not (_is_int(ref[k]) or _is_id_list(ref[k]))]
    if bad:
        return f"has {', '.join(bad)} neither an integer nor a non-empty list of integers"
    ann_ids = _as_list(ref["ann_id"])
    if -1 in ann_ids and len(ann_ids) > 1:
        return "names no object (ann_id -1) and some objects at once"
    no_target = ref.get("no_target", ann_ids == [-1])
    if not isinstance(no_target, bool):
        return "has a no_target that is not true or false"
    if no_target != (ann_ids == [-1]):
        return f"has no_target {str(no_target).lower()} but ann_id {ref['ann_id']}"
    return None


def _ref_problem(ref: Any, group_file: bool) -> str | None:
    if not isinstance(ref, dict):
        return f"is a {type(ref).__name__}, not a dict"
    missing = [k for k in _REQUIRED_REF_KEYS if k not in ref]
    if missing:
        return f"lacks {', '.join(missing)}"
    group = _is_group_ref(ref, group_file)
    ids = ("ref_id", "image_id") if group else ("ref_id", "ann_id", "image_id", "category_id")
    bad_ids = [k for k in ids if not _is_int(ref[k])]
    if bad_ids:
        return f"has non-integer {', '.join(bad_ids)}"
    problem = _group_problem(ref) if group else None
    if problem:
        return problem
    if not isinstance(ref["split"], str):
        return "has a split that is not a string"
    if not isinstance(ref["sentences"], list):
        return "has 'sentences' that is not a list"
    for sentence in ref["sentences"]:
        problem = _sentence_problem(sentence)
        if problem:
            return problem
    return None


def _generalized(ref: dict) -> dict:
    """A gRefCOCO-form ref with the fields of a generalized record (see the module docstring)."""
    ann_ids = list(dict.fromkeys(_as_list(ref["ann_id"])))  # a set of objects: each once
    ann_ids = [] if ann_ids == [-1] else ann_ids
    categories = [c for c in _as_list(ref["category_id"]) if c != -1]
    return {
        **ref,
        "ann_id": ann_ids[0] if ann_ids else -1,
        "ann_ids": ann_ids,
        "no_target": not ann_ids,
        "category_id": categories[0] if categories and ann_ids else -1,
    }


def _read_refs(path: Path) -> Any:
    """The refs file's content: JSON for ``.json`` (gRefCOCO), else a restricted pickle."""
    return _read_json(path) if path.suffix == ".json" else load_restricted_pickle(path)


def load_refs(path: Path) -> list[dict]:
    """Read and validate a ``refs(<split_by>).p`` (or ``grefs(<split_by>).json``) file; return
    its list of refs, gRefCOCO-form ones with the generalized fields."""
    refs = _read_refs(path)
    if not isinstance(refs, list):
        raise InputError(f"{path}: expected a list of refs, found a {type(refs).__name__}")
    group_file = path.suffix == ".json"
    for i, ref in enumerate(refs):
        problem = _ref_problem(ref, group_file)
        if problem:
            raise InputError(f"{path}: ref #{i} {problem}")
    return [_generalized(ref) if _is_group_ref(ref, group_file) else ref for ref in refs]


def _index(items: Any, path: Path, what: str, keys: tuple[str, ...]) -> dict[int, dict]:
    if not isinstance(items, list):
        raise InputError(f"{path}: '{what}' is not a list")
    table: dict[int, dict] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(k not in item for k in keys):
            raise InputError(f"{path}: {what} #{i} lacks one of: {', '.join(keys)}")
        if not _is_int(item["id"]):
            raise InputError(f"{path}: {what} #{i} has a non-integer id")
        table[item["id"]] = item
    return table


@dataclass
class Instances:
    """The COCO-style part of a REFER dataset, indexed by id."""

    images: dict[int, dict]
    annotations: dict[int, dict]
    categories: dict[int, str]


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def load_instances(path: Path) -> Instances:
    """Read and index ``instances.json`` (images, annotations, categories)."""
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object with images, annotations, categories")
    images = _index(raw.get("images"), path, "images", ("id", "file_name", "height", "width"))
    annotations = _index(raw.get("annotations"), path, "annotations", ("id", "image_id", "segmentation"))
    categories = _index(raw.get("categories"), path, "categories", ("id", "name"))
    return Instances(images, annotations, {k: str(v["name"]) for k, v in categories.items()})


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class ReferFiles:
    """The two annotation files of ``<root>/<dataset>/`` for one partition ``split_by``."""

    root: Path
    dataset: str
    split_by: str

    @property
    def folder(self) -> Path:
        return self.root / self.dataset

    @property
    def refs_path(self) -> Path:
        return self.folder / refs_file_name(self.dataset, self.split_by)

    @property
    def instances_path(self) -> Path:
        return self.folder / "instances.json"

    def missing(self) -> list[str]:
        """``["<absent files> (<where they come from>)"]``, or ``[]`` when both are there."""
        absent = [str(p) for p in (self.refs_path, self.instances_path) if not p.is_file()]
        if not absent:
            return []
        return [f"{' and '.join(absent)} ({annotations_hint(self.dataset, self.root)})"]


@dataclass
class ReferData:
    """A loaded REFER dataset: the refs of one partition and the COCO instances they point to."""

    files: ReferFiles
    refs: list[dict]
    instances: Instances

    @classmethod
    def load(cls, files: ReferFiles) -> ReferData:
        """Read both files (the pickle through the restricted unpickler) and validate them."""
        return cls(files, load_refs(files.refs_path), load_instances(files.instances_path))

    def check_links(self) -> None:
        """Raise InputError when a ref points at an annotation, image or category that is absent."""
        problems = [p for p in map(self._link_problem, self.refs) if p]
        if problems:
            more = f" (and {len(problems) - 1} more refs like it)" if len(problems) > 1 else ""
            raise InputError(f"{self.files.refs_path.name}: {problems[0]}{more}")

    def _link_problem(self, ref: dict) -> str | None:
        inst = self.instances
        where = f"ref {ref['ref_id']}"
        ann_ids = ref.get("ann_ids", [ref["ann_id"]])
        absent = [a for a in ann_ids if a not in inst.annotations]
        if absent:
            return f"{where} names ann_id {absent[0]}, which instances.json does not have"
        if ref["image_id"] not in inst.images:
            return f"{where} names image_id {ref['image_id']}, which instances.json does not have"
        for ann_id in ann_ids:
            ann = inst.annotations[ann_id]
            if ann["image_id"] != ref["image_id"]:
                return f"{where}: annotation {ann_id} belongs to image {ann['image_id']}, not {ref['image_id']}"
        if ref["category_id"] not in inst.categories and not ref.get("no_target"):
            return f"{where} names category_id {ref['category_id']}, which instances.json does not have"
        return None

    def refs_by_split(self) -> dict[str, list[dict]]:
        """The refs grouped by their ``split`` field, in file order."""
        groups: dict[str, list[dict]] = {}
        for ref in self.refs:
            groups.setdefault(ref["split"], []).append(ref)
        return groups
