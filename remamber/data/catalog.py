"""What datasets ``remamber prepare`` knows: partitions, defaults, where files come from.

Standard library only, so that the command line can show it in ``--help`` at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from remamber.utils.errors import InputError
from remamber.utils.paths import prepared_dataset

REFER_PROJECT_URL = "https://github.com/lichengunc/refer"
LAVT_REFER_URL = "https://github.com/yz93/LAVT-RIS/tree/main/refer"
REFER_DATA_URL = "https://bvisionweb1.cs.unc.edu/licheng/referit/data"
COCO_TRAIN2014_URL = "http://images.cocodataset.org/zips/train2014.zip"
GREFCOCO_URL = "https://github.com/henghuiding/gRefCOCO"


@dataclass(frozen=True)
class KnownDataset:
    """A public REFER dataset: its partitions (``split_by``) and where it is downloaded.

    ``generalized``: a GRES dataset (gRefCOCO), whose sentences name zero, one or several
    objects, with its refs in ``grefs(<split_by>).json`` instead of ``refs(<split_by>).p``."""

    name: str
    split_bys: tuple[str, ...]
    default_split_by: str
    generalized: bool = False

    @property
    def url(self) -> str:
        return GREFCOCO_URL if self.generalized else f"{REFER_DATA_URL}/{self.name}.zip"

    def refs_file(self, split_by: str) -> str:
        """The name of the refs file of partition ``split_by``."""
        return f"grefs({split_by}).json" if self.generalized else f"refs({split_by}).p"


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "refcoco": KnownDataset("refcoco", ("unc", "google"), "unc"),
    "refcoco+": KnownDataset("refcoco+", ("unc",), "unc"),
    "refcocog": KnownDataset("refcocog", ("umd", "google"), "umd"),
    "grefcoco": KnownDataset("grefcoco", ("unc",), "unc", generalized=True),
}


def refs_file_name(dataset: str, split_by: str) -> str:
    """The refs file of ``dataset`` in ``<refer_root>/<dataset>/``: ``refs(<split_by>).p``
    (``grefs(<split_by>).json`` for gRefCOCO)."""
    known = KNOWN_DATASETS.get(dataset)
    return known.refs_file(split_by) if known else f"refs({split_by}).p"


def default_split_by(dataset: str) -> str:
    """The usual partition of ``dataset``: unc for refcoco/refcoco+/grefcoco, umd for refcocog."""
    known = KNOWN_DATASETS.get(dataset)
    if known is None:
        raise InputError(f"no default split_by for dataset {dataset!r}; give one")
    return known.default_split_by


def check_split_by(dataset: str, split_by: str) -> None:
    """Refuse a partition that a known dataset does not have (any for unknown datasets)."""
    known = KNOWN_DATASETS.get(dataset)
    if known is not None and split_by not in known.split_bys:
        choices = ", ".join(known.split_bys)
        raise InputError(f"{dataset} has no split_by {split_by!r}; choose from: {choices}")


def annotations_hint(dataset: str, refer_root: Path) -> str:
    """Where the REFER files of ``dataset`` come from, in one line."""
    known = KNOWN_DATASETS.get(dataset)
    if known is None:
        return f"REFER annotations of {dataset!r}"
    if known.generalized:
        return (
            f"gRefCOCO annotations: download the release linked from {known.url} and put its "
            f"{known.refs_file(known.default_split_by)} and instances.json in {refer_root / dataset}"
        )
    return (
        f"REFER annotations: unzip {known.url} into {refer_root} "
        f"(see {REFER_PROJECT_URL} or the LAVT instructions {LAVT_REFER_URL})"
    )


def images_hint() -> str:
    """Where the COCO train2014 images come from, in one line."""
    return (
        f"COCO train2014 images from cocodataset.org: unzip {COCO_TRAIN2014_URL} "
        "so that this folder holds COCO_train2014_*.jpg"
    )


# The synthetic dataset (remamber.data.shapes).
SHAPES_NAME = "shapes"
SHAPES_SPLITS = ("train", "val", "test")
SHAPES_DEFAULT_IMAGES = {"train": 600, "val": 100, "test": 100}
SHAPES_DEFAULT_SIZE = 256
SHAPES_DEFAULT_SEED = 0
# About 10% of the sentences name no object and 15% several, so that most still name one;
# 0 and 0 give the single-target dataset of the shipped default model.
SHAPES_DEFAULT_NO_TARGET_SHARE = 0.1
SHAPES_DEFAULT_MULTI_TARGET_SHARE = 0.15


def default_out(dataset: str, split_by: str | None = None) -> Path:
    """Where ``remamber prepare <dataset>`` writes by default: ``<data home>/datasets/<name>``,
    with ``_<split_by>`` added when the partition is not the dataset's usual one."""
    known = KNOWN_DATASETS.get(dataset)
    if known is None or split_by in (None, known.default_split_by):
        return prepared_dataset(dataset)
    return prepared_dataset(f"{dataset}_{split_by}")
