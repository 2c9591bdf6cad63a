"""Image <-> model arrays in numpy: the one pre- and post-processing of every inference path.

The PyTorch and ONNX predictors (``remamber segment``), the evaluation (``remamber eval``, whose
dataset prepares its images with :func:`model_input`) and any server resize and normalise an
image with :func:`model_input`, and turn the model's ``(S, S)`` logits (and presence logit, for
a model with a presence head) into probabilities and a mask at the original size with
:func:`to_prediction`, so that they all give the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from remamber.utils.errors import InputError, check_presence_threshold, check_threshold


@dataclass
class Prediction:
    """The mask of one phrase at the original image size, with its probabilities."""

    mask: np.ndarray  # (H, W) bool
    probs: np.ndarray  # (H, W) float32 in [0, 1]
    truncated: bool  # the phrase was longer than the model's token limit
    presence: float | None = None  # probability that the phrase names anything; None: no presence head
    found: bool = True  # False when presence is below the presence threshold (the mask is then empty)

    @property
    def area(self) -> int:
        """Mask area in pixels."""
        return int(self.mask.sum())

    @property
    def mean_prob(self) -> float:
        """Mean probability inside the mask (0 for an empty mask)."""
        return float(self.probs[self.mask].mean()) if self.mask.any() else 0.0


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """The RGB image at ``size`` x ``size`` (bilinear), as the model takes it."""
    return image.convert("RGB").resize((size, size), Image.BILINEAR)


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(pixels - mean) / std`` per channel of a float32 ``(3, H, W)`` array of values in [0, 1]."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((pixels - m) / s, dtype=np.float32)


def model_input(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image -> normalised ``(3, size, size)`` float32 array (bilinear resize)."""
    pixels = np.asarray(resize_image(image, size), dtype=np.float32) / 255.0
    return normalize(pixels.transpose(2, 0, 1), mean, std)


def upsample_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(S, S)`` logits at ``size = (width, height)``, float32: Pillow's bilinear resize (which
    averages over the footprint when it shrinks); at the same size, the logits as they are."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape == (size[1], size[0]):
        return logits
    return np.asarray(Image.fromarray(logits, mode="F").resize(size, Image.BILINEAR))


def sigmoid(x: Any) -> np.ndarray:
    """The logistic function in float64 (``exp`` overflowing to inf for very negative logits gives 0)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def to_prediction(
    logits: np.ndarray,
    size: tuple[int, int],
    threshold: float,
    truncated: bool = False,
    presence_logit: float | None = None,
    presence_threshold: float = 0.5,
) -> Prediction:
    """``(S, S)`` logits -> probabilities (sigmoid) and mask (``probs > threshold``) at
    ``size = (width, height)`` (:func:`upsample_logits`).

    ``presence_logit`` (a model with a presence head): when its probability is below
    ``presence_threshold`` the phrase names nothing here, and the mask is empty (``found``
    False; the probabilities are kept as the model gave them)."""
    up = upsample_logits(logits, size)
    probs = sigmoid(up).astype(np.float32)
    presence = None if presence_logit is None else float(sigmoid(presence_logit))
    found = presence is None or presence >= presence_threshold
    mask = probs > threshold if found else np.zeros(probs.shape, dtype=bool)
    return Prediction(mask=mask, probs=probs, truncated=truncated, presence=presence, found=found)


def check_text(text: str) -> str:
    """``text`` stripped; an InputError when it is empty or not valid Unicode (on Linux, argv bytes
    that are not UTF-8 arrive as lone surrogates; so can a JSON escape like "\\udcff")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the text is not valid UTF-8: check the terminal's or the file's encoding") from None
    if not text.strip():
        raise InputError("the text is empty: say which object to segment")
    return text.strip()


def clean_texts(texts: Sequence[str]) -> list[str]:
    """Phrases stripped of outer spaces (:func:`check_text` on each)."""
    return [check_text(t) for t in texts]


class PairPredictor:
    """What the PyTorch and the ONNX predictor share: image/phrase pairs -> :class:`Prediction`
    through one :meth:`logits` call and :func:`to_prediction`. Subclasses set ``threshold`` and
    ``presence_threshold`` and implement :meth:`logits`."""

    threshold: float
    presence_threshold: float

    def logits(self, images: list[Image.Image], texts: list[str]) -> tuple[Any, Any, list[bool]]:
        """Mask logits ``(n, S, S)`` at the input size and presence logits ``(n,)`` (anything
        ``np.asarray`` takes; None for a model without a presence head), and which phrases were
        truncated."""
        raise NotImplementedError

    def predict(self, image: Image.Image, text: str) -> Prediction:
        """Segment the object ``text`` names in ``image``."""
        return self.predict_many([image], [text])[0]

    def predict_many(
        self,
        images: list[Image.Image],
        texts: list[str],
        thresholds: list[float] | None = None,
        presence_thresholds: list[float] | None = None,
    ) -> list[Prediction]:
        """Segment image/phrase pairs in one forward pass (an image may repeat); ``thresholds``
        and ``presence_thresholds`` (one per pair, default this predictor's) only change how the
        probabilities are cut."""
        n = len(texts)
        if len(images) != n or any(c is not None and len(c) != n for c in (thresholds, presence_thresholds)):
            raise ValueError("predict_many: images, texts and thresholds must have the same length")
        if not images:
            return []
        logits, presence, truncated = self.logits(images, texts)
        cuts = thresholds if thresholds is not None else [self.threshold] * n
        presence_cuts = presence_thresholds if presence_thresholds is not None else [self.presence_threshold] * n
        presence = [None] * n if presence is None else np.asarray(presence, dtype=np.float64).tolist()
        return [
            to_prediction(np.asarray(lg), im.size, check_threshold(t), tr, p, check_presence_threshold(pt))
            for lg, im, t, tr, p, pt in zip(logits, images, cuts, truncated, presence, presence_cuts, strict=True)
        ]
