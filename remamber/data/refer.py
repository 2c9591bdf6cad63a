"""Reader of the REFER format (refcoco, refcoco+, refcocog and our synthetic ``shapes``).

A dataset folder ``<refer_root>/<dataset>/`` holds:

* ``refs(<split_by>).p`` -- a pickle (protocol 2) list of refs
  ``{ref_id, ann_id, image_id, category_id, split, file_name, sent_ids,
  sentences: [{tokens, raw, sent, sent_id}]}``;
* ``instances.json`` -- COCO-style ``images`` / ``annotations`` / ``categories``.

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

from remamber.data.catalog import annotations_hint
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


def _ref_problem(ref: Any) -> str | None:
    if not isinstance(ref, dict):
        return f"is a {type(ref).__name__}, not a dict"
    missing = [k for k in _REQUIRED_REF_KEYS if k not in ref]
    if missing:
        return f"lacks {', '.join(missing)}"
    bad_ids = [k for k in ("ref_id", "ann_id", "image_id", "category_id") if not _is_int(ref[k])]
    if bad_ids:
        return f"has non-integer {', '.join(bad_ids)}"
    if not isinstance(ref["split"], str):
        return "has a split that is not a string"
    if not isinstance(ref["sentences"], list):
        return "has 'sentences' that is not a list"
    for sentence in ref["sentences"]:
        problem = _sentence_problem(sentence)
        if problem:
            return problem
    return None


def load_refs(path: Path) -> list[dict]:
    """Read and validate a ``refs(<split_by>).p`` file; return its list of refs."""
    refs = load_restricted_pickle(path)
    if not isinstance(refs, list):
        raise InputError(f"{path}: expected a list of refs, found a {type(refs).__name__}")
    for i, ref in enumerate(refs):
        problem = _ref_problem(ref)
        if problem:
            raise InputError(f"{path}: ref #{i} {problem}")
    return refs


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


def load_instances(path: Path) -> Instances:
    """Read and index ``instances.json`` (images, annotations, categories)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
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
        return self.folder / f"refs({self.split_by}).p"

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
        ann = inst.annotations.get(ref["ann_id"])
        if ann is None:
            return f"{where} names ann_id {ref['ann_id']}, which instances.json does not have"
        if ref["image_id"] not in inst.images:
            return f"{where} names image_id {ref['image_id']}, which instances.json does not have"
        if ann["image_id"] != ref["image_id"]:
            return f"{where}: annotation {ref['ann_id']} belongs to image {ann['image_id']}, not {ref['image_id']}"
        if ref["category_id"] not in inst.categories:
            return f"{where} names category_id {ref['category_id']}, which instances.json does not have"
        return None

    def refs_by_split(self) -> dict[str, list[dict]]:
        """The refs grouped by their ``split`` field, in file order."""
        groups: dict[str, list[dict]] = {}
        for ref in self.refs:
            groups.setdefault(ref["split"], []).append(ref)
        return groups
