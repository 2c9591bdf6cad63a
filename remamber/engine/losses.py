"""The training loss of ReMamber: dice + sigmoid binary cross-entropy on mask logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - (2|P.T| + 1) / (|P| + |T| + 1) per sample, averaged; P = sigmoid(logits)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Dice + mean BCE (the official loss: "focal" with gamma 0 and no alpha is plain BCE)."""
    logits = logits.float()
    return dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
