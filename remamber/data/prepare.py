"""Conversion of a REFER dataset into the prepared form (see :mod:`remamber.data.manifest`).

The same code path serves RefCOCO / RefCOCO+ / RefCOCOg, gRefCOCO and the synthetic
``shapes`` dataset. The work is checked before it starts (every missing input, every missing image),
is skipped when the output already matches the inputs, and leaves no ``dataset.json`` --
the file that marks a folder complete -- until every manifest is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from remamber import __version__
from remamber.data.catalog import check_split_by, default_split_by, images_hint
from remamber.data.manifest import (
    FORMAT,
    FORMAT_VERSION,
    GENERALIZED_FIELDS,
    INFO_FILE,
    TARGET_KINDS,
    manifest_name,
    manifests_intact,
    portable_path,
    read_info,
    sort_splits,
    target_kind,
    write_manifest,
)
from remamber.data.masks import segmentation_to_rle, union_rle
from remamber.data.refer import ReferData, ReferFiles
from remamber.utils.errors import InputError
from remamber.utils.io import file_sha256, write_json

T = TypeVar("T")

#: ``track(items, total, description)`` yields ``items`` while showing progress.
Track = Callable[[Iterable[T], int, str], Iterable[T]]


def no_progress(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    """A :data:`Track` that shows nothing."""
    return items


@dataclass
class PrepareResult:
    """What ``prepare_refer`` did: ``up_to_date`` is True when nothing had to be written."""

    out: Path
    name: str
    split_by: str
    up_to_date: bool
    splits: dict[str, dict] = field(default_factory=dict)
    missing_images: int = 0
    skipped_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "up-to-date" if self.up_to_date else "written",
            "out": str(self.out),
            "name": self.name,
            "split_by": self.split_by,
            "splits": self.splits,
            "missing_images": self.missing_images,
            "skipped_samples": self.skipped_samples,
        }


def prepare_refer(
    refer_root: str | os.PathLike,
    dataset: str,
    images_root: str | os.PathLike,
    out: str | os.PathLike,
    split_by: str | None = None,
    *,
    limit: int | None = None,
    skip_missing: bool = False,
    force: bool = False,
    track: Track = no_progress,
    extra: dict[str, Any] | None = None,
) -> PrepareResult:
    """Convert ``<refer_root>/<dataset>/refs(<split_by>).p`` + ``instances.json`` into ``out``.

    ``images_root`` holds the images named by ``instances.json``; ``limit`` keeps the first
    N refs of each split; ``skip_missing`` leaves out refs whose image is absent instead of
    failing; ``force`` rewrites even an up-to-date output; ``extra`` is merged into
    ``dataset.json``. Raises InputError for any bad input, before anything is written.
    """
    split_by = split_by or default_split_by(dataset)
    check_split_by(dataset, split_by)
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    files = ReferFiles(Path(refer_root), dataset, split_by)
    images_root, out = Path(images_root), Path(out)
    _check_inputs_exist(files, images_root)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")

    data = ReferData.load(files)
    data.check_links()
    kept, missing, skipped = _select(data, images_root, limit, skip_missing)
    head = _info_head(files, images_root, out, limit, sorted(missing), skipped, extra)
    up_to_date, splits = write_unless_current(
        out, head, force, lambda old: _write_prepared(data, kept, out, old, track)
    )
    return PrepareResult(out, dataset, split_by, up_to_date, splits, len(missing), skipped)


def write_unless_current(
    out: Path, head: dict[str, Any], force: bool, write: Callable[[dict | None], dict[str, Any]]
) -> tuple[bool, dict[str, Any]]:
    """Write a prepared folder unless it already holds the output for ``head`` (its inputs and
    options, fingerprinted): ``write(old_info)`` writes the manifests and returns the split counts,
    then the info file is written last, so a folder cut off mid-write is never taken as current.
    Returns ``(up_to_date, splits)``."""
    fingerprint = _sha256_text(json.dumps(head, sort_keys=True, ensure_ascii=False))
    old = read_info(out)
    if not force and _is_current(out, old, fingerprint):
        return True, old["splits"]
    with writing_to(out):
        splits = write(old)
        write_json(out / INFO_FILE, {**head, "splits": splits, "fingerprint": fingerprint})
    return False, splits


@contextlib.contextmanager
def writing_to(out: Path) -> Iterator[None]:
    """Turn a failure to write under ``out`` (permissions, full disk) into a one-line InputError."""
    try:
        yield
    except OSError as e:
        raise InputError(f"cannot write {e.filename or out}: {e.strerror or e}") from None


def _is_current(out: Path, info: dict | None, fingerprint: str) -> bool:
    """Whether ``out`` already holds the complete output for these inputs."""
    return bool(info) and info.get("fingerprint") == fingerprint and manifests_intact(out, info)


# --------------------------------------------------------------------------- checks


def _check_inputs_exist(files: ReferFiles, images_root: Path) -> None:
    missing = files.missing()
    if not images_root.is_dir():
        missing.append(f"{images_root} ({images_hint()})")
    if missing:
        raise InputError("missing input: " + "; ".join(missing))


def _select(
    data: ReferData, images_root: Path, limit: int | None, skip_missing: bool
) -> tuple[dict[str, list[dict]], set[int], int]:
    """The refs to write per split, the ids of missing images, the count of samples left out.

    Raises InputError when images are missing and ``skip_missing`` is off.
    """
    selected = {s: refs[:limit] if limit else refs for s, refs in data.refs_by_split().items()}
    missing = _missing_images(data, selected, images_root)
    if missing and not skip_missing:
        raise InputError(_missing_images_message(data, selected, missing, images_root))
    kept = {s: [r for r in refs if r["image_id"] not in missing] for s, refs in selected.items()}
    return kept, missing, _count_sentences(selected) - _count_sentences(kept)


def _image_ids(groups: dict[str, list[dict]]) -> set[int]:
    return {ref["image_id"] for refs in groups.values() for ref in refs}


def _missing_images(data: ReferData, groups: dict[str, list[dict]], root: Path) -> set[int]:
    images = data.instances.images
    return {i for i in _image_ids(groups) if not (root / images[i]["file_name"]).is_file()}


def _missing_images_message(data: ReferData, groups: dict[str, list[dict]], missing: set[int], root: Path) -> str:
    example = data.instances.images[min(missing)]["file_name"]
    return (
        f"{len(missing)} of {len(_image_ids(groups))} images referenced are missing under "
        f"{root} (e.g. {example}); fix the images folder (`images_root`) or pass "
        "`skip_missing` to leave their samples out"
    )


def _count_sentences(groups: dict[str, list[dict]]) -> int:
    return sum(len(ref["sentences"]) for refs in groups.values() for ref in refs)


# --------------------------------------------------------------------------- description


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _source(path: Path, out: Path) -> dict[str, str]:
    return {"path": portable_path(path, out), "sha256": file_sha256(path)}


def _info_head(
    files: ReferFiles,
    images_root: Path,
    out: Path,
    limit: int | None,
    skipped_images: list[int],
    skipped_samples: int,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything in ``dataset.json`` but the split statistics; its hash is the fingerprint."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": files.dataset,
        "split_by": files.split_by,
        "images_root": portable_path(images_root, out),
        "sources": {
            "refs": _source(files.refs_path, out),
            "instances": _source(files.instances_path, out),
        },
        "options": {"limit": limit},
        "missing_images": len(skipped_images),
        "skipped_image_ids": skipped_images,
        "skipped_samples": skipped_samples,
        "created_by": f"remamber {__version__}",
        **(extra or {}),
    }


# --------------------------------------------------------------------------- writing


def _write_prepared(
    data: ReferData,
    groups: dict[str, list[dict]],
    out: Path,
    old: dict | None,
    track: Track,
) -> dict[str, dict]:
    """Write every manifest (``dataset.json`` is removed first and written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    splits: dict[str, dict] = {}
    for split in sort_splits(groups):
        refs = groups[split]
        stream = track(refs, len(refs), f"{data.files.dataset} {split}")
        name = manifest_name(split)
        written = write_manifest(out / name, _records(data, stream))
        splits[split] = {"manifest": name, **_split_counts(refs), **written}
    _remove_stale_manifests(out, old, splits)
    return splits


def _split_counts(refs: list[dict]) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "samples": sum(len(ref["sentences"]) for ref in refs),
        "refs": len(refs),
        "images": len({ref["image_id"] for ref in refs}),
    }
    if any("ann_ids" in ref for ref in refs):  # a GRES dataset: samples by target kind
        kinds = {kind: 0 for kind in TARGET_KINDS}
        for ref in refs:
            kinds[target_kind(ref)] += len(ref["sentences"])
        counts["target_kinds"] = kinds
    return counts


def _remove_stale_manifests(out: Path, old: dict | None, splits: dict[str, dict]) -> None:
    current = {entry["manifest"] for entry in splits.values()}
    for entry in (old or {}).get("splits", {}).values():
        name = entry.get("manifest")
        if name and name not in current and "/" not in name and not name.startswith("."):
            (out / name).unlink(missing_ok=True)


def _records(data: ReferData, refs: Iterable[dict]) -> Iterator[dict]:
    for ref in refs:
        yield from ref_records(data, ref)


def _annotation_rle(data: ReferData, ann_id: int, height: int, width: int) -> dict:
    ann = data.instances.annotations[ann_id]
    try:
        return segmentation_to_rle(ann["segmentation"], height, width)
    except (ValueError, TypeError) as e:
        raise InputError(f"{data.files.instances_path}: annotation {ann['id']} has a bad segmentation: {e}") from None


def _referent_rle(data: ReferData, ref: dict) -> dict:
    """The referent's mask; for a GRES ref, the union of its objects' masks (all zeros for none),
    crowd regions left out as the GRES loader leaves them out."""
    image = data.instances.images[ref["image_id"]]
    height, width = int(image["height"]), int(image["width"])
    if "ann_ids" not in ref:
        return _annotation_rle(data, ref["ann_id"], height, width)
    anns = [a for a in ref["ann_ids"] if not data.instances.annotations[a].get("iscrowd")]
    return union_rle([_annotation_rle(data, a, height, width) for a in anns], height, width)


def ref_records(data: ReferData, ref: dict) -> list[dict]:
    """The manifest records of one ref: one per sentence, all sharing the referent's mask
    (a GRES ref's records add ``ann_ids`` and ``no_target``, see ``GENERALIZED_FIELDS``)."""
    image = data.instances.images[ref["image_id"]]
    named = {k: ref[k] for k in GENERALIZED_FIELDS if k in ref}
    common = {
        "ref_id": ref["ref_id"],
        "ann_id": ref["ann_id"],
        **named,
        "image_id": ref["image_id"],
        "file_name": image["file_name"],
        "height": int(image["height"]),
        "width": int(image["width"]),
        "category_id": ref["category_id"],
        "category": "" if ref.get("no_target") else data.instances.categories[ref["category_id"]],
    }
    rle = _referent_rle(data, ref)
    return [_sentence_record(sentence, common, rle) for sentence in ref["sentences"]]


def _sentence_record(sentence: dict, common: dict, rle: dict) -> dict:
    text = sentence.get("sent", sentence.get("raw"))
    record = {
        "sent_id": sentence["sent_id"],
        **common,
        "sentence": text,
        "raw": sentence.get("raw", text),
        "mask": rle,
    }
    if "expr_type" in sentence:
        record["expr_type"] = sentence["expr_type"]
    return record
