"""A torch Dataset over a prepared folder (``remamber prepare ...``): one item per sentence."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from remamber.data.manifest import PreparedDataset
from remamber.data.masks import decode_rle
from remamber.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess, TrainAugment
from remamber.utils.errors import InputError


class ReferringDataset(torch.utils.data.Dataset):
    """Every sentence of every ref of one split of a prepared dataset.

    ``dataset[i]`` is ``{"image": 3xSxS float (normalised), "mask": 1xSxS float of 0/1,
    "text": str, "index": i, "present": float 1/0}`` (``present``: the sentence names something,
    :func:`names_something`; the presence head's target); ``record(i)`` is the manifest record (original size, RLE
    mask, ids). ``images_root`` overrides where the images are (e.g. after a move).
    With ``train=True`` the :class:`TrainAugment` transforms apply (``augment`` sets them).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        image_size: int,
        train: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        images_root: str | os.PathLike | None = None,
        augment: TrainAugment | None = None,
    ) -> None:
        if not isinstance(image_size, int) or image_size < 1:
            raise InputError(f"image_size must be a positive integer, got {image_size!r}")
        prepared = PreparedDataset.open(folder)
        self.folder = Path(folder)
        self.split = split
        self.name = prepared.name
        self.records = prepared.records(split)
        self.images_root = prepared.images_root(images_root)
        self.preprocess = Preprocess(
            image_size,
            tuple(mean),
            tuple(std),
            (augment or TrainAugment()) if train else None,
        )

    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> dict[str, Any]:
        """The manifest record of sample ``i`` (see ``remamber.data.manifest.RECORD_FIELDS``)."""
        return self.records[i]

    def image_path(self, i: int) -> Path:
        return self.images_root / self.records[i]["file_name"]

    def load_image(self, i: int) -> Image.Image:
        """The original RGB image of sample ``i``."""
        path = self.image_path(i)
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"image {path} not found; pass `images_root` where the images are") from None
        except OSError as e:
            raise InputError(f"cannot read image {path}: {e}") from None
        record = self.records[i]
        if image.size != (record["width"], record["height"]):
            raise InputError(
                f"image {path} is {image.size[0]}x{image.size[1]}, but its annotation says "
                f"{record['width']}x{record['height']}"
            )
        return image

    def load_mask(self, i: int) -> np.ndarray:
        """The original-size ``(h, w)`` uint8 0/1 mask of sample ``i``."""
        return decode_rle(self.records[i]["mask"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self)
        original = self.load_mask(i)
        present = names_something(self.records[i], original)
        image, mask, text = self.preprocess(self.load_image(i), original, self.records[i]["sentence"])
        return {"image": image, "mask": mask, "text": text, "index": i, "present": torch.tensor(float(present))}


def names_something(record: dict[str, Any], mask: np.ndarray) -> bool:
    """Whether a record's sentence names anything: not a ``no_target`` record (GRES); for a record
    without that field, whether its original-size ``mask`` is non-empty. A no-target record's
    mask is empty, so its mask target is too."""
    if "no_target" in record:
        return not record["no_target"]
    return bool(mask.any())


def collate_fn(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, masks and presence targets, keep texts as a list, indices as a long tensor."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "text": [b["text"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
        "present": torch.stack([b["present"] for b in batch]),
    }
