"""The training loss of ReMamber: dice + sigmoid binary cross-entropy on mask logits, plus the
presence head's binary cross-entropy for a model that has one."""

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


def presence_loss(presence_logits: Tensor, present: Tensor) -> Tensor:
    """Mean BCE of the presence logits ``(b,)`` against ``present`` (1: the phrase names something)."""
    return F.binary_cross_entropy_with_logits(presence_logits.float(), present.float())


def referring_loss(
    logits: Tensor, target: Tensor, presence_logits: Tensor | None, present: Tensor, presence_weight: float
) -> Tensor:
    """:func:`segmentation_loss` + ``presence_weight`` x :func:`presence_loss` (the mask loss alone
    when the model has no presence head: ``presence_logits`` None). A no-target sample's mask
    target is empty, so the mask loss teaches it an empty mask too."""
    loss = segmentation_loss(logits, target)
    if presence_logits is None:
        return loss
    return loss + presence_weight * presence_loss(presence_logits, present)
