"""Image, mask and text transforms that keep the meaning of the words.

Evaluation: resize to S x S (bilinear for the image, nearest for the mask), normalise.
Training adds, each optional (:class:`TrainAugment`):

* a crop jitter that always keeps the whole referent (its mask's box) in view;
* a horizontal flip *with* the words swapped (left <-> right, leftmost <-> rightmost,
  "second from the left" <-> "second from the right", ...), so the sentence still
  names the mirrored object;
* a mild brightness / contrast change. No hue or saturation change: colours are words.

Random draws use torch's generator, so DataLoader workers are seeded as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from remamber.inference import processing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# "left"/"right" as a word or the head of leftmost, left-hand, lefthand, leftside,
# leftward(s), lefter; not "leftover", "righteous", "rightly", "alright", "copyright".
_LEFT_RIGHT = re.compile(r"\b(left|right)(?=(?:most|hand|side|wards?|er)?\b)", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left"}


def _same_case(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[0].isupper():
        return word.capitalize()
    return word


def swap_left_right(text: str) -> str:
    """The sentence for the mirrored image: every left/right word swapped, case kept."""
    return _LEFT_RIGHT.sub(lambda m: _same_case(_SWAP[m.group(1).lower()], m.group(1)), text)


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation settings; zeros/ones switch a part off."""

    flip_prob: float = 0.5  # horizontal flip, with left/right words swapped
    crop_scale: tuple[float, float] = (0.9, 1.0)  # side of the crop, fraction of the image
    brightness: float = 0.2  # factor drawn in [1 - b, 1 + b]
    contrast: float = 0.2  # factor drawn in [1 - c, 1 + c]


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (end exclusive) around the mask's pixels, None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _crop_span(length: int, keep: tuple[int, int] | None, wanted: int, u: float) -> tuple[int, int]:
    """A window ``[start, start + size)`` of about ``wanted`` pixels inside ``[0, length)``
    that holds ``keep`` (if given); ``u`` in [0, 1] picks where it lies."""
    size = min(length, max(wanted, keep[1] - keep[0] if keep else 1))
    low, high = 0, length - size
    if keep:
        low, high = max(low, keep[1] - size), min(high, keep[0])
    start = low + int(round(u * (high - low)))
    return start, start + size


def referent_crop(
    image: Image.Image, mask: np.ndarray, scale: float, u: tuple[float, float]
) -> tuple[Image.Image, np.ndarray]:
    """Crop both to ``scale`` of each side (at least the referent's box) placed by ``u``."""
    width, height = image.size
    box = mask_box(mask)
    x0, x1 = _crop_span(width, (box[0], box[2]) if box else None, round(width * scale), u[0])
    y0, y1 = _crop_span(height, (box[1], box[3]) if box else None, round(height * scale), u[1])
    return image.crop((x0, y0, x1, y1)), mask[y0:y1, x0:x1]


def resize_pair(image: Image.Image, mask: np.ndarray, size: int) -> tuple[Image.Image, np.ndarray]:
    """Image and mask at ``size`` x ``size``: the image as every inference path resizes it
    (:func:`remamber.inference.processing.resize_image`), nearest for the mask."""
    return processing.resize_image(image, size), resize_mask(mask, size)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask at ``size`` x ``size`` (nearest neighbour)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """``3 x H x W`` float tensor in [0, 1] from an RGB PIL image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``1 x H x W`` float tensor of 0/1."""
    return torch.from_numpy((mask > 0).astype(np.float32))[None]


def brightness_contrast(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """Scale brightness, then stretch around the grey mean (same for all channels: no hue shift)."""
    image = image * brightness
    mean = image.mean()
    return ((image - mean) * contrast + mean).clamp(0.0, 1.0)


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``, as every inference path normalises
    (:func:`remamber.inference.processing.normalize`)."""
    return torch.from_numpy(processing.normalize(image.numpy(), mean, std))


def hflip(image: torch.Tensor, mask: torch.Tensor, text: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Mirror image and mask left to right and swap the left/right words of the text."""
    return image.flip(-1), mask.flip(-1), swap_left_right(text)


@dataclass(frozen=True)
class Preprocess:
    """Turn (PIL image, mask array, text) into model inputs; with ``augment`` for training."""

    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: TrainAugment | None = None

    def __call__(self, image: Image.Image, mask: np.ndarray, text: str) -> tuple[torch.Tensor, torch.Tensor, str]:
        aug = self.augment
        if aug is None:  # evaluation: the image exactly as the predictors prepare it
            pixels = torch.from_numpy(processing.model_input(image, self.size, self.mean, self.std))
            return pixels, mask_to_tensor(resize_mask(mask, self.size)), text
        if aug.crop_scale[0] < 1.0:
            scale = _uniform(*aug.crop_scale)
            image, mask = referent_crop(image, mask, scale, (_uniform(0, 1), _uniform(0, 1)))
        image, mask = resize_pair(image, mask, self.size)
        pixels, target = image_to_tensor(image), mask_to_tensor(mask)
        if aug.brightness or aug.contrast:
            pixels = brightness_contrast(
                pixels,
                _uniform(1 - aug.brightness, 1 + aug.brightness),
                _uniform(1 - aug.contrast, 1 + aug.contrast),
            )
        if aug.flip_prob and float(torch.rand(())) < aug.flip_prob:
            pixels, target, text = hflip(pixels, target, text)
        return normalize(pixels, self.mean, self.std), target, text
