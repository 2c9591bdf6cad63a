"""Image <-> model arrays in numpy, shared by the PyTorch and the ONNX predictors.

Both predictors resize and normalise the same way and upsample the logits back to the
original size the same way, so that they give the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from remamber.utils.errors import InputError


@dataclass
class Prediction:
    """The mask of one phrase at the original image size, with its probabilities."""

    mask: np.ndarray  # (H, W) bool
    probs: np.ndarray  # (H, W) float32 in [0, 1]
    truncated: bool  # the phrase was longer than the model's token limit

    @property
    def area(self) -> int:
        """Mask area in pixels."""
        return int(self.mask.sum())

    @property
    def mean_prob(self) -> float:
        """Mean probability inside the mask (0 for an empty mask)."""
        return float(self.probs[self.mask].mean()) if self.mask.any() else 0.0


def model_input(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> normalised ``(3, size, size)`` float32 array (bilinear resize)."""
    resized = image.convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_prediction(logits: np.ndarray, size: tuple[int, int], threshold: float, truncated: bool) -> Prediction:
    """``(S, S)`` logits -> mask and probabilities at ``size = (width, height)`` (bilinear upsampling)."""
    up = np.asarray(Image.fromarray(np.asarray(logits, dtype=np.float32), mode="F").resize(size, Image.BILINEAR))
    probs = (1.0 / (1.0 + np.exp(-up.astype(np.float64)))).astype(np.float32)
    return Prediction(mask=probs > threshold, probs=probs, truncated=truncated)


def clean_texts(texts: Sequence[str]) -> list[str]:
    """Phrases stripped of outer spaces; an empty one is an input error."""
    if any(not t or not t.strip() for t in texts):
        raise InputError("the text is empty: say which object to segment")
    return [t.strip() for t in texts]
