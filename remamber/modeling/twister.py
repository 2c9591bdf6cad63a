"""The Mamba Twister: text-image fusion by a channel scan and a spatial scan over a hybrid cube.

Per stage with ``C`` channels: a global text feature ``ReLU(Linear(pooled))`` broadcast over the
map and a local one from the image-word correlation map are stacked with the image feature
into a ``3C`` hybrid cube; a 1-D scan along the 3C channels (positions of the cube resized to
``s x s`` are its features) is added back, and an SS2D maps the cube to ``C`` channels that
are added to the image feature.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.layers import DropPath, LayerNorm2d
from remamber.modeling.ss2d import SS2D


class GlobalTextGuidance(nn.Sequential):
    """``ReLU(Linear(text_dim -> C))`` of the pooled sentence feature (official ``text_guidencee``)."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(text_dim, dim), nn.ReLU())

    def forward(self, pooled: Tensor, like: Tensor) -> Tensor:  # type: ignore[override]
        g = super().forward(pooled)
        return g[:, :, None, None].expand(-1, -1, *like.shape[-2:])


class LocalTextInteraction(nn.Module):
    """Image-word correlation map -> conv -> per-pixel text feature (official ``ImageTextCorr``).

    ``GELU(Linear(C->hidden))(pixels) . GELU(Linear(text->hidden))(words)`` gives an
    ``n_words x h x w`` map; a 3x3 conv + GELU lifts it to ``hidden`` channels and a Linear
    maps those to ``C``.
    """

    def __init__(self, dim: int, text_dim: int, hidden: int, n_words: int) -> None:
        super().__init__()
        self.vis_proj = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.text_proj = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU())
        self.unsqueeze = nn.Sequential(nn.Conv2d(n_words, hidden, 3, padding=1), nn.GELU())
        self.out_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, words: Tensor) -> Tensor:
        vis = self.vis_proj(x.permute(0, 2, 3, 1))  # (b, h, w, hidden)
        txt = self.text_proj(words)  # (b, n_words, hidden)
        corr = torch.einsum("bhwc,blc->blhw", vis, txt)
        feat = self.unsqueeze(corr).permute(0, 2, 3, 1)
        return self.out_proj(feat).permute(0, 3, 1, 2)


class Twister(nn.Module):
    """Channel scan then spatial scan over the hybrid cube ``[image, global, local]``."""

    def __init__(
        self, dim: int, d_state: int, ssm_ratio: float, dt_rank: int | str, d_conv: int, conv_bias: bool,
        channel_scan_size: int,
    ) -> None:
        super().__init__()
        self.s = channel_scan_size
        self.ss1d = SS2D(self.s**2, d_state, ssm_ratio, dt_rank, d_conv, conv_bias, gate=True)
        self.ss2d = SS2D(dim, d_state, ssm_ratio, dt_rank, d_conv, conv_bias, gate=False, d_in=3 * dim)

    def channel_scan(self, cube: Tensor) -> Tensor:
        """Scan along the 3C channels; the ``s*s`` resized positions are the scan's features."""
        b, c3, h, w = cube.shape
        s = self.s
        small = F.interpolate(cube, size=(s, s), mode="bilinear", align_corners=False)
        seq = small.reshape(b, c3, s * s).transpose(1, 2).unsqueeze(2)  # (b, s*s, 1, 3C)
        out = self.ss1d(seq).squeeze(2).transpose(1, 2).reshape(b, c3, s, s)
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, cube: Tensor) -> Tensor:
        cube = cube + self.channel_scan(cube)
        return self.ss2d(cube)


class TwisterBlock(nn.Module):
    """Normalise image and both text maps, twist, and add residuals to all three."""

    def __init__(self, dim: int, drop_path: float = 0.0, **twister_kwargs) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.mixer = Twister(dim, **twister_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, img: Tensor, glob: Tensor, local: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        img_n, glob_n, local_n = self.norm(img), self.norm(glob), self.norm(local)
        out = self.mixer(torch.cat([img_n, glob_n, local_n], dim=1))
        return img + self.drop_path(out), glob + glob_n, local + local_n


class TwisterLayer(nn.Module):
    """A stack of Twister blocks fed by the stage's text guidance; returns the twisted image."""

    def __init__(self, dim: int, depth: int, text_dim: int, local_hidden: int, n_words: int, **twister_kwargs) -> None:
        super().__init__()
        self.global_text = GlobalTextGuidance(text_dim, dim)
        self.local_text = LocalTextInteraction(dim, text_dim, local_hidden, n_words)
        self.blocks = nn.ModuleList(TwisterBlock(dim, **twister_kwargs) for _ in range(depth))

    def forward(self, img: Tensor, words: Tensor, pooled: Tensor) -> Tensor:
        glob = self.global_text(pooled, img)
        local = self.local_text(img, words)
        for blk in self.blocks:
            img, glob, local = blk(img, glob, local)
        return img
