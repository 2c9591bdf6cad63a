"""Image + phrase -> mask, with a loaded model; no file I/O here (see remamber.images)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from remamber.errors import InputError, check_threshold


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


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for an absent CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(device)


class Predictor:
    """Runs a :class:`ReMamber` on PIL images: resize + normalise per its config, upsample back."""

    def __init__(self, model, device: str | torch.device = "cpu", threshold: float = 0.5) -> None:
        check_threshold(threshold)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.threshold = threshold
        cfg = model.config
        self.size = cfg.image_size
        self.mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> normalised ``(3, S, S)`` tensor at the model's input size."""
        resized = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits(self, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Mask logits ``(n, S, S)`` at the input size for image/phrase pairs."""
        for text in texts:
            if not text or not text.strip():
                raise InputError("the text is empty: say which object to segment")
        ids, mask, truncated = self.model.tokenize([t.strip() for t in texts])
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        out = self.model(x, ids.to(self.device), mask.to(self.device))
        return out[:, 0].float().cpu(), truncated

    def predict(self, image: Image.Image, text: str) -> Prediction:
        """Segment the object ``text`` names in ``image``."""
        logits, truncated = self.logits([image], [text])
        w, h = image.size
        up = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        probs = torch.sigmoid(up).numpy()
        return Prediction(mask=probs > self.threshold, probs=probs.astype(np.float32), truncated=truncated[0])
