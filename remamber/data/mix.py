"""The mixed training set: the train splits of RefCOCO, RefCOCO+ and G-Ref together, leak-free.

The authors' released checkpoints are trained on the three train splits at once. RefCOCO and
RefCOCO+ share their images, and G-Ref's overlap both, so a plain union trains on images that
another dataset holds out for evaluation. :func:`prepare_mix` removes from the union every image
that appears in any split other than ``train`` (val, test, testA, testB) of any source, and
records how many images, refs and sentences it removed from each source.

The mixed folder is a training set: ``train`` (the cleaned union) and ``val`` (the sources' val
splits together, to choose checkpoints while training). The standard evaluation splits stay in
each dataset's own prepared folder (``remamber prepare refcoco`` ...), which ``remamber eval``
reads; ``dataset.json`` names them under ``sources.<name>.eval_splits``.

Ids: every record gets ``source`` (the dataset it comes from). ``sent_id`` and ``ref_id``
collide between datasets, so they become ``code * MIX_ID_STRIDE + id`` with a fixed code per
dataset (:data:`~remamber.data.catalog.MIX_SOURCE_CODES`; ``id % MIX_ID_STRIDE`` is the
original). ``image_id`` and ``ann_id`` are COCO's, the same in every dataset, and stay.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from remamber import __version__
from remamber.data.catalog import (
    MIX_DEFAULT_SOURCES,
    MIX_ID_STRIDE,
    MIX_NAME,
    MIX_SOURCE_CODES,
    check_split_by,
    default_split_by,
    images_hint,
)
from remamber.data.manifest import (
    FORMAT,
    FORMAT_VERSION,
    INFO_FILE,
    manifest_name,
    portable_path,
    sort_splits,
    write_manifest,
)
from remamber.data.prepare import (
    Track,
    _missing_images,
    _missing_images_message,
    _remove_stale_manifests,
    _source,
    _split_counts,
    no_progress,
    ref_records,
    write_unless_current,
)
from remamber.data.refer import ReferData, ReferFiles
from remamber.utils.errors import InputError

#: The splits of the mixed folder.
MIX_SPLITS = ("train", "val")


@dataclass(frozen=True)
class MixSource:
    """One dataset of the mix and its partition."""

    dataset: str
    split_by: str

    def __str__(self) -> str:
        return f"{self.dataset}:{self.split_by}"


def parse_sources(specs: Sequence[str] | None) -> list[MixSource]:
    """``["refcoco", "refcocog:google", ...]`` -> sources in the fixed dataset order (refcoco,
    refcoco+, refcocog), each with its usual partition when none is given; None or empty: the
    default three (refcoco:unc, refcoco+:unc, refcocog:umd)."""
    if not specs:
        return [MixSource(*pair) for pair in MIX_DEFAULT_SOURCES]
    sources: dict[str, MixSource] = {}
    for spec in specs:
        name, _, split_by = spec.partition(":")
        if name not in MIX_SOURCE_CODES:
            known = ", ".join(MIX_SOURCE_CODES)
            raise InputError(f"`sources`: unknown dataset {name!r} in {spec!r}; choose from: {known}")
        if name in sources:
            raise InputError(f"`sources`: {name} is given twice; a mix takes one partition of each dataset")
        split_by = split_by or default_split_by(name)
        check_split_by(name, split_by)
        sources[name] = MixSource(name, split_by)
    return [sources[name] for name in MIX_SOURCE_CODES if name in sources]


@dataclass
class _Part:
    """A loaded source: what goes into each split of the mix and what was removed from its train."""

    source: MixSource
    data: ReferData
    eval_splits: list[str]
    refs: dict[str, list[dict]]  # split of the mix -> refs written
    leaked: list[dict]  # train refs removed: their image is in an eval split of some source

    @property
    def name(self) -> str:
        return self.source.dataset

    def records(self, split: str, track: Track) -> Iterator[dict]:
        """The manifest records of ``split``, with namespaced ids and the source's name."""
        offset = MIX_SOURCE_CODES[self.name] * MIX_ID_STRIDE
        refs = self.refs[split]
        for ref in track(refs, len(refs), f"{MIX_NAME} {split} ({self.name})"):
            for record in ref_records(self.data, ref):
                yield {
                    **record,
                    "sent_id": offset + record["sent_id"],
                    "ref_id": offset + record["ref_id"],
                    "source": self.name,
                }


@dataclass
class MixResult:
    """What :func:`prepare_mix` did: ``up_to_date`` is True when nothing had to be written."""

    out: Path
    up_to_date: bool
    sources: dict[str, dict]  # name -> {split_by, eval_splits, removed: {samples, refs, images}, ...}
    removed: dict[str, int]  # over all sources; ``images`` counts each image once
    splits: dict[str, dict]
    missing_images: int = 0
    skipped_samples: int = 0
    name: str = MIX_NAME

    @property
    def split_by(self) -> str:
        return ",".join(f"{name}:{s['split_by']}" for name, s in self.sources.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "up-to-date" if self.up_to_date else "written",
            "out": str(self.out),
            "name": self.name,
            "split_by": self.split_by,
            "sources": {
                name: {k: s[k] for k in ("split_by", "eval_splits", "removed")} for name, s in self.sources.items()
            },
            "removed": self.removed,
            "splits": self.splits,
            "missing_images": self.missing_images,
            "skipped_samples": self.skipped_samples,
        }


def prepare_mix(
    refer_root: str | os.PathLike,
    images_root: str | os.PathLike,
    out: str | os.PathLike,
    sources: Sequence[str] | None = None,
    *,
    limit: int | None = None,
    skip_missing: bool = False,
    force: bool = False,
    track: Track = no_progress,
) -> MixResult:
    """Build the mixed training set of ``sources`` (see :func:`parse_sources`) into ``out``.

    Reads ``<refer_root>/<dataset>/refs(<split_by>).p`` + ``instances.json`` of each source;
    removes from every train split the images of every other split of every source; ``limit``
    keeps the first N refs of each source's train and val after that (the removal always looks
    at the whole eval splits); ``skip_missing`` and ``force`` as in ``prepare_refer``. Raises
    InputError for any bad input, before anything is written.
    """
    chosen = parse_sources(sources)
    if limit is not None and limit < 1:
        raise InputError(f"`limit` must be at least 1, got {limit}")
    refer_root, images_root, out = Path(refer_root), Path(images_root), Path(out)
    files = [ReferFiles(refer_root, s.dataset, s.split_by) for s in chosen]
    _check_inputs_exist(files, images_root)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")

    datas = [ReferData.load(f) for f in files]
    for data in datas:
        data.check_links()
    held_out = {ref["image_id"] for data in datas for ref in data.refs if ref["split"] != "train"}
    parts = [_split(source, data, held_out, limit) for source, data in zip(chosen, datas)]
    missing, skipped = _drop_missing_images(parts, images_root, skip_missing)
    head = _info_head(parts, images_root, out, limit, sorted(missing), skipped)
    up_to_date, splits = write_unless_current(out, head, force, lambda old: _write_mix(parts, out, old, track))
    return MixResult(out, up_to_date, head["sources"], head["removed"], splits, len(missing), skipped)


# --------------------------------------------------------------------------- selection


def _check_inputs_exist(files: list[ReferFiles], images_root: Path) -> None:
    missing = [f"{f.dataset} ({f.split_by}): {m}" for f in files for m in f.missing()]
    if not images_root.is_dir():
        missing.append(f"{images_root} ({images_hint()})")
    if missing:
        raise InputError(f"missing input of {MIX_NAME}: " + "; ".join(missing))


def _split(source: MixSource, data: ReferData, held_out: set[int], limit: int | None) -> _Part:
    """One source's refs for the mix: its train without the held-out images, and its val."""
    by_split = data.refs_by_split()
    train = by_split.get("train", [])
    leaked = [ref for ref in train if ref["image_id"] in held_out]
    refs = {
        "train": [ref for ref in train if ref["image_id"] not in held_out],
        "val": by_split.get("val", []),
    }
    if limit:
        refs = {split: kept[:limit] for split, kept in refs.items()}
    for ref in chain.from_iterable(refs.values()):
        _check_id_space(data, ref)
    eval_splits = sort_splits(s for s in by_split if s != "train")
    return _Part(source, data, eval_splits, refs, leaked)


def _check_id_space(data: ReferData, ref: dict) -> None:
    """Refuse ids that would not fit below ``MIX_ID_STRIDE`` (no REFER dataset comes close)."""
    ids = [("ref_id", ref["ref_id"])] + [("sent_id", s["sent_id"]) for s in ref["sentences"]]
    for what, value in ids:
        if not 0 <= value < MIX_ID_STRIDE:
            raise InputError(
                f"{data.files.refs_path}: {what} {value} is outside 0..{MIX_ID_STRIDE - 1}, "
                f"the id range a source keeps in {MIX_NAME}"
            )


def _drop_missing_images(parts: list[_Part], images_root: Path, skip_missing: bool) -> tuple[set[int], int]:
    """Leave out (``skip_missing``) or refuse refs whose image is absent: (missing ids, samples left out)."""
    missing: set[int] = set()
    skipped = 0
    for part in parts:
        absent = _missing_images(part.data, part.refs, images_root)
        if absent and not skip_missing:
            raise InputError(f"{part.name}: " + _missing_images_message(part.data, part.refs, absent, images_root))
        for split, refs in part.refs.items():
            kept = [ref for ref in refs if ref["image_id"] not in absent]
            skipped += _split_counts(refs)["samples"] - _split_counts(kept)["samples"]
            part.refs[split] = kept
        missing |= absent
    return missing, skipped


# --------------------------------------------------------------------------- description


def _info_head(
    parts: list[_Part],
    images_root: Path,
    out: Path,
    limit: int | None,
    skipped_images: list[int],
    skipped_samples: int,
) -> dict[str, Any]:
    """Everything in ``dataset.json`` but the split statistics; its hash is the fingerprint."""
    leaked = [ref for part in parts for ref in part.leaked]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": MIX_NAME,
        "split_by": ",".join(str(part.source) for part in parts),
        "images_root": portable_path(images_root, out),
        "sources": {
            part.name: {
                "split_by": part.source.split_by,
                "id_offset": MIX_SOURCE_CODES[part.name] * MIX_ID_STRIDE,
                "eval_splits": part.eval_splits,
                "removed": _split_counts(part.leaked),
                "refs": _source(part.data.files.refs_path, out),
                "instances": _source(part.data.files.instances_path, out),
            }
            for part in parts
        },
        "removed": _split_counts(leaked),  # an image removed from two sources counts once
        "rule": "train refs whose image appears in any other split of any source are removed",
        "options": {"limit": limit},
        "missing_images": len(skipped_images),
        "skipped_image_ids": skipped_images,
        "skipped_samples": skipped_samples,
        "created_by": f"remamber {__version__}",
    }


# --------------------------------------------------------------------------- writing


def _write_mix(parts: list[_Part], out: Path, old: dict | None, track: Track) -> dict[str, dict]:
    """Write both manifests (``dataset.json`` is removed first and written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / INFO_FILE).unlink(missing_ok=True)
    splits: dict[str, dict] = {}
    for split in MIX_SPLITS:
        name = manifest_name(split)
        written = write_manifest(out / name, chain.from_iterable(part.records(split, track) for part in parts))
        splits[split] = {
            "manifest": name,
            **_split_counts([ref for part in parts for ref in part.refs[split]]),
            "by_source": {part.name: _split_counts(part.refs[split]) for part in parts},
            **written,
        }
    _remove_stale_manifests(out, old, splits)
    return splits
