"""Image + phrase -> mask, with a loaded model; no file I/O here (see remamber.inference.images)."""

from __future__ import annotations

import re

import torch
from PIL import Image

from remamber.inference.fuse import fuse as fuse_model
from remamber.inference.processing import PairPredictor, Prediction, clean_texts, model_input
from remamber.utils.errors import InputError, check_presence_threshold, check_threshold

__all__ = ["Prediction", "Predictor", "prefer_fused_scan", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for an absent CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:[0-9]+)?", device):
        raise InputError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU is available (use cpu or auto)")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def prefer_fused_scan(device: torch.device, d_state: int) -> None:
    """Many inference calls ahead on the CPU: bring the fused scan kernels in now, so that every
    call takes the same fast path (see :func:`remamber.ops.scan_cpu.preload` and
    :func:`remamber.ops.ss2d_cpu.preload`)."""
    if device.type == "cpu":
        from remamber.ops import scan_cpu, ss2d_cpu

        scan_cpu.preload(d_state)
        ss2d_cpu.preload()


class Predictor(PairPredictor):
    """Runs a :class:`ReMamber` on PIL images: resize + normalise per its config, upsample back
    (:mod:`remamber.inference.processing`).

    The model is moved to ``device``, put in eval mode and, with ``fuse`` (the default), fused in
    place (:func:`remamber.inference.fuse.fuse`): from then on it is inference-only until
    ``unfuse()``. ``threshold`` cuts the mask probabilities; for a model with a presence head, a
    phrase whose presence is below ``presence_threshold`` gets an empty mask (``found`` False).
    """

    def __init__(
        self,
        model,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        fuse: bool = True,
        presence_threshold: float = 0.5,
    ) -> None:
        check_threshold(threshold)
        check_presence_threshold(presence_threshold)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if fuse:
            fuse_model(self.model)
        self.threshold = threshold
        self.presence_threshold = presence_threshold
        self.config = model.config
        self.size = model.config.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> normalised ``(3, S, S)`` tensor at the model's input size."""
        cfg = self.config
        return torch.from_numpy(model_input(image, self.size, cfg.pixel_mean, cfg.pixel_std))

    @torch.inference_mode()
    def logits(
        self, images: list[Image.Image], texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[bool]]:
        """Mask logits ``(n, S, S)`` at the input size and presence logits ``(n,)`` (None without
        a presence head) for image/phrase pairs."""
        ids, mask, truncated = self.model.tokenize(clean_texts(texts))
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        out = self.model(x, ids.to(self.device), mask.to(self.device), return_presence=True)
        presence = None if out.presence_logits is None else out.presence_logits.float().cpu()
        return out.logits[:, 0].float().cpu(), presence, truncated
