"""The prepared-dataset format: ``dataset.json`` plus one JSON-lines manifest per split.

A prepared folder holds::

    dataset.json      written last: name, split_by, images_root, sources (with sha256),
                      options, splits {name: {manifest, samples, refs, images, bytes, sha256}},
                      format and format_version, fingerprint
    <split>.jsonl     one record per sentence (see ``RECORD_FIELDS``)

``images_root`` is a path relative to the prepared folder when the images live inside
it (the synthetic dataset), else absolute; each record's ``file_name`` is relative to it,
so the images root can be overridden when the images move.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remamber.utils.errors import InputError
from remamber.utils.io import atomic_open

FORMAT = "remamber-refer"
FORMAT_VERSION = 1
INFO_FILE = "dataset.json"

#: Fields of a manifest record; ``expr_type`` is present for datasets that have it (shapes).
RECORD_FIELDS = (
    "sent_id",  # int, unique in the dataset
    "ref_id",  # int
    "ann_id",  # int
    "image_id",  # int
    "file_name",  # image file, relative to the images root
    "height",  # original image height
    "width",  # original image width
    "sentence",  # the REFER 'sent' (normalised) text, the model input
    "raw",  # the REFER 'raw' text as written by the annotator
    "category_id",  # COCO category id
    "category",  # COCO category name
    "mask",  # {"size": [h, w], "counts": str}: compressed COCO RLE of the referent
)

#: Extra fields of a generalized (GRES) record, where a sentence names zero, one or several objects:
#: ``ann_ids`` (list of int, empty when nothing is named; ``ann_id`` is then -1, else the first),
#: ``no_target`` (bool); ``mask`` is the union of the named objects' masks (all zeros for none).
GENERALIZED_FIELDS = ("ann_ids", "no_target")

#: Target kinds of a sentence, as GRES reports them.
TARGET_KINDS = ("none", "single", "multi")


def target_kind(record: dict) -> str:
    """``none``, ``single`` or ``multi``: how many objects a record's sentence names (``single`` for
    a classic REFER record, which has no ``ann_ids``)."""
    if record.get("no_target"):
        return "none"
    ann_ids = record.get("ann_ids")
    return "multi" if isinstance(ann_ids, list) and len(ann_ids) > 1 else "single"


SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")


def manifest_name(split: str) -> str:
    """File name of the manifest of ``split``."""
    return f"{split}.jsonl"


def sort_splits(splits: Iterable[str]) -> list[str]:
    """Splits in the usual order (train, val, test, testA, ...), unknown ones after, by name."""
    rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return sorted(splits, key=lambda s: (rank.get(s, len(rank)), s))


def portable_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies inside it, else absolute (as a string)."""
    path, base = Path(os.path.abspath(path)), Path(os.path.abspath(base))
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def write_manifest(path: Path, records: Iterable[dict]) -> dict[str, Any]:
    """Write ``records`` as JSON lines atomically; return ``{bytes, sha256}`` of the file."""
    digest = hashlib.sha256()
    size = 0
    with atomic_open(path, "wb") as f:
        for record in records:
            line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            f.write(line)
            digest.update(line)
            size += len(line)
    return {"bytes": size, "sha256": digest.hexdigest()}


def read_info(folder: Path) -> dict | None:
    """The ``dataset.json`` of ``folder`` if it exists and is ours, else None."""
    path = Path(folder) / INFO_FILE
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def manifests_intact(folder: Path, info: dict) -> bool:
    """Whether every manifest that ``info`` lists exists with its recorded size."""
    for entry in info.get("splits", {}).values():
        path = Path(folder) / entry["manifest"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
    return True


def _info_problem(info: dict) -> str | None:
    """What is wrong with the shape of a ``dataset.json``, or None."""
    if not isinstance(info.get("format_version", 0), int):
        return "format_version is not an integer"
    if not isinstance(info.get("name"), str) or not isinstance(info.get("images_root"), str):
        return "name or images_root is not a string"
    splits = info.get("splits")
    if not isinstance(splits, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("manifest"), str) for e in splits.values()
    ):
        return "splits is not a map of split names to {manifest: file, ...}"
    return None


def _record_problem(record: Any) -> str | None:
    """What is wrong with the shape of a manifest record (the fields readers use), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("file_name", "sentence", "mask", "height", "width", "image_id") if k not in record]
    if missing:
        return f"no {', '.join(missing)}"
    mask = record["mask"]
    if not isinstance(record["file_name"], str) or not isinstance(record["sentence"], str):
        return "file_name or sentence is not a string"
    if not (isinstance(mask, dict) and isinstance(mask.get("size"), list) and isinstance(mask.get("counts"), str)):
        return "mask is not a COCO RLE {size, counts}"
    return None


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared folder opened for reading (no torch needed)."""

    folder: Path
    info: dict

    @classmethod
    def open(cls, folder: str | os.PathLike) -> PreparedDataset:
        """Open ``folder``; InputError when it holds no complete prepared dataset."""
        folder = Path(folder)
        if not (folder / INFO_FILE).is_file():
            raise InputError(f"{folder} is not a prepared dataset (no {INFO_FILE}); make one with `remamber prepare`")
        info = read_info(folder)
        if info is None:
            raise InputError(f"{folder / INFO_FILE} is not a remamber dataset description")
        problem = _info_problem(info)
        if problem:
            raise InputError(f"{folder / INFO_FILE} is damaged ({problem}); prepare the dataset again")
        if info.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(
                f"{folder} was prepared by a newer remamber (format {info['format_version']}); upgrade remamber"
            )
        return cls(folder, info)

    @property
    def name(self) -> str:
        return str(self.info["name"])

    @property
    def splits(self) -> list[str]:
        return list(self.info["splits"])

    def records(self, split: str) -> list[dict]:
        """All records of ``split`` in manifest order."""
        if split not in self.info["splits"]:
            raise InputError(f"{self.folder} has no split {split!r}; it has: {', '.join(self.splits)}")
        path = self.folder / self.info["splits"][split]["manifest"]
        try:
            with open(path, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise InputError(f"{path}: a line is not valid JSON ({e})") from None
        for n, record in enumerate(records, 1):
            problem = _record_problem(record)
            if problem:
                raise InputError(f"{path}: record {n} is damaged ({problem}); prepare the dataset again")
        return records

    def images_root(self, override: str | os.PathLike | None = None) -> Path:
        """The images folder: ``override`` if given, else the stored one (may be relative)."""
        root = Path(override) if override is not None else self.folder / self.info["images_root"]
        if not root.is_dir():
            raise InputError(
                f"images folder {root} does not exist; pass the images root (`images_root`) where the images are now"
            )
        return root
