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
#: The original REFER host; down since 2022 (lichengunc/refer issue #14), kept for the record.
REFER_DATA_URL = "https://bvisionweb1.cs.unc.edu/licheng/referit/data"
#: Where the REFER zips are fetched today: the Internet Archive's snapshots of REFER_DATA_URL,
#: taken on 2022-04-13 before the host went down. The refer project's issues #14 and #26, the
#: CRIS.pytorch issue #10 and the READMEs of LISA (dvlab-research/LISA) and of the projects built
#: on it point to these same snapshots; each zip has its own snapshot time (``archive_stamp``).
REFER_ARCHIVE_URL = "https://web.archive.org/web"
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
    archive_stamp: str = ""  # the time of the web archive's snapshot of the zip ("" when not archived)
    generalized: bool = False

    @property
    def original_url(self) -> str:
        """The zip on the original REFER host (no longer served)."""
        return f"{REFER_DATA_URL}/{self.name}.zip"

    @property
    def url(self) -> str:
        """Where the files come from today: for the REFER zips, the Internet Archive's copy."""
        if self.generalized:
            return GREFCOCO_URL
        return f"{REFER_ARCHIVE_URL}/{self.archive_stamp}/{self.original_url}"

    def refs_file(self, split_by: str) -> str:
        """The name of the refs file of partition ``split_by``."""
        return f"grefs({split_by}).json" if self.generalized else f"refs({split_by}).p"


KNOWN_DATASETS: dict[str, KnownDataset] = {
    "refcoco": KnownDataset("refcoco", ("unc", "google"), "unc", "20220413011718"),
    "refcoco+": KnownDataset("refcoco+", ("unc",), "unc", "20220413011656"),
    "refcocog": KnownDataset("refcocog", ("umd", "google"), "umd", "20220413012904"),
    "grefcoco": KnownDataset("grefcoco", ("unc",), "unc", generalized=True),
}

# The mixed training set (remamber.data.mix): the train splits of RefCOCO, RefCOCO+ and G-Ref
# together, as the authors trained their released checkpoints.
MIX_NAME = "refcoco-mix"
MIX_DEFAULT_SOURCES = (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"))
#: Sentence and ref ids collide between the datasets; in the mix they become
#: ``code * MIX_ID_STRIDE + id`` with a fixed code per dataset (refcoco 1, refcoco+ 2, refcocog 3).
MIX_ID_STRIDE = 10_000_000
MIX_SOURCE_CODES = {"refcoco": 1, "refcoco+": 2, "refcocog": 3}


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
        f"REFER annotations: unzip {known.url} (the web archive's copy; the original host is down) "
        f"into {refer_root} (see {REFER_PROJECT_URL} or the LAVT instructions {LAVT_REFER_URL})"
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
