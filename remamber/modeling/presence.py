"""The presence head: does the phrase name anything in the image at all?"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from remamber.modeling.layers import trunc_normal_init

#: The presence an untrained head reports: most phrases name something, so a fresh head starts out
#: saying "present" (and a model trained on data without no-target samples goes on saying it).
PRIOR = 0.9


class PresenceHead(nn.Module):
    """One logit per sample: the log-odds that the phrase names something in the image.

    Input: the deepest twisted map ``(b, C, h, w)`` (the last stage's output, which every
    stage's fusion layer has already mixed with the text) and the pooled sentence ``(b, T)``.
    The map is pooled two ways: the mean summarises the scene, the max keeps the strongest local
    answer to the phrase, which a small object would not move in the mean. The sentence is added
    so that the head can weigh the visual evidence against what the phrase asks for. A LayerNorm
    puts the visual and text features on one scale, then an MLP (``C // 4`` hidden units, GELU)
    gives the logit.

    Weights start as VMamba's (truncated normal, std 0.02) and the last bias at ``logit(PRIOR)``:
    an untrained head reports about :data:`PRIOR` for any input (so a new model segments as it
    would without the head until it has learnt otherwise).
    """

    def __init__(self, visual_dim: int, text_dim: int) -> None:
        super().__init__()
        width = 2 * visual_dim + text_dim
        hidden = max(1, visual_dim // 4)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 1)
        trunc_normal_init(self)
        nn.init.constant_(self.fc2.bias, math.log(PRIOR / (1 - PRIOR)))

    def forward(self, feat: Tensor, sentence: Tensor) -> Tensor:
        """``(b, C, h, w)`` map and ``(b, T)`` sentence -> ``(b,)`` presence logits."""
        pooled = torch.cat([feat.mean(dim=(2, 3)), feat.amax(dim=(2, 3)), sentence.to(feat.dtype)], dim=1)
        return self.fc2(self.act(self.fc1(self.norm(pooled))))[:, 0]
