"""The Mamba Twister: text-image fusion by a channel scan and a spatial scan over a hybrid cube.

Per stage with ``C`` channels (default ``interaction="both"``): a global text feature
``ReLU(Linear(pooled))`` broadcast over the map and a local one from the image-word correlation map are stacked with the image feature
into a ``3C`` hybrid cube; a 1-D scan along the 3C channels (positions of the cube resized to
``s x s`` are its features) is added back, and an SS2D maps the cube to ``C`` channels that
are added to the image feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.layers import DropPath, LayerNorm2d, Linear2d
from remamber.modeling.ss2d import SS2D


class GlobalTextGuidance(nn.Sequential):
    """``ReLU(Linear(text_dim -> C))`` of the pooled sentence feature (official ``text_guidencee``)."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(text_dim, dim), nn.ReLU())

    def forward(self, img: Tensor, words: Tensor, pooled: Tensor) -> Tensor:  # type: ignore[override]
        g = super().forward(pooled)
        return g[:, :, None, None].expand(-1, -1, *img.shape[-2:])


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

    def forward(self, x: Tensor, words: Tensor, pooled: Tensor | None = None) -> Tensor:
        vis = self.vis_proj(x.permute(0, 2, 3, 1))  # (b, h, w, hidden)
        txt = self.text_proj(words)  # (b, n_words, hidden)
        corr = torch.einsum("bhwc,blc->blhw", vis, txt)
        feat = self.unsqueeze(corr).permute(0, 2, 3, 1)
        return self.out_proj(feat).permute(0, 3, 1, 2)


def _channel_spatial(t: Twister, cube: Tensor) -> Tensor:
    return t.ss2d(cube + t.channel_scan(cube))


def _spatial_channel(t: Twister, cube: Tensor) -> Tensor:
    y = t.ss2d(cube)
    return y + t.channel_scan(y)


def _parallel(t: Twister, cube: Tensor) -> Tensor:
    return t.ss2d(cube) + t.reduce(t.channel_scan(cube))


def _channel(t: Twister, cube: Tensor) -> Tensor:
    return t.reduce(cube + t.channel_scan(cube))


def _spatial(t: Twister, cube: Tensor) -> Tensor:
    return t.ss2d(cube)


@dataclass(frozen=True)
class ScanOrder:
    """One of the paper's Twister scan orders (Table 3): how it composes its scans, and which it has."""

    forward: Callable[[Twister, Tensor], Tensor]
    channel: bool  # has the channel scan (``ss1d``)
    spatial: bool  # has the spatial scan (``ss2d``)
    reduce: bool = False  # has ``reduce``, a linear map of the cube's channels to C


#: ``config.scan`` -> the Twister's scan order; the keys are :data:`remamber.modeling.config.SCANS`.
SCANS: dict[str, ScanOrder] = {
    "channel-spatial": ScanOrder(_channel_spatial, channel=True, spatial=True),
    "spatial-channel": ScanOrder(_spatial_channel, channel=True, spatial=True),
    "parallel": ScanOrder(_parallel, channel=True, spatial=True, reduce=True),
    "channel": ScanOrder(_channel, channel=True, spatial=False, reduce=True),
    "spatial": ScanOrder(_spatial, channel=False, spatial=True),
}


class Twister(nn.Module):
    """Channel scan and spatial scan over the hybrid cube, in one of the paper's orders (:data:`SCANS`).

    ``channel-spatial`` (default): ``ss2d(cube + channel(cube))``; ``spatial-channel``:
    ``y + channel(y)`` with ``y = ss2d(cube)``; ``parallel``: ``ss2d(cube) + reduce(channel(cube))``;
    ``channel``: ``reduce(cube + channel(cube))``; ``spatial``: ``ss2d(cube)``.  ``reduce`` is a
    linear map of the cube's ``n_maps * C`` channels to ``C``.
    """

    def __init__(
        self,
        dim: int,
        d_state: int,
        ssm_ratio: float,
        dt_rank: int | str,
        d_conv: int,
        conv_bias: bool,
        channel_scan_size: int,
        n_maps: int = 3,
        order: str = "channel-spatial",
    ) -> None:
        super().__init__()
        self.s, self.order = channel_scan_size, order
        self.scan_order = SCANS[order]
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias)
        if self.scan_order.channel:
            self.ss1d = SS2D(self.s**2, gate=True, **ssm)
        if self.scan_order.spatial:
            self.ss2d = SS2D(dim, gate=False, d_in=n_maps * dim, **ssm)
        if self.scan_order.reduce:
            self.reduce = Linear2d(n_maps * dim, dim, bias=False)

    def channel_scan(self, cube: Tensor) -> Tensor:
        """Scan along the channels; the ``s*s`` resized positions are the scan's features."""
        b, c, h, w = cube.shape
        s = self.s
        small = F.interpolate(cube, size=(s, s), mode="bilinear", align_corners=False)
        seq = small.reshape(b, c, s * s).transpose(1, 2).unsqueeze(2)  # (b, s*s, 1, c)
        # channels-last in and out: the scan's layout, and one where torch's CPU bilinear upsampling
        # of the 3C channels is much faster (BENCHMARKS.md, "SS2D scan, CPU inference", last paragraph)
        out = (
            self.ss1d(seq.contiguous(memory_format=torch.channels_last)).squeeze(2).transpose(1, 2).reshape(b, c, s, s)
        )
        out = out.contiguous(memory_format=torch.channels_last)
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, cube: Tensor) -> Tensor:
        return self.scan_order.forward(self, cube)


class TwisterBlock(nn.Module):
    """Normalise the image and text maps, twist, and add residuals to all of them."""

    def __init__(self, dim: int, drop_path: float = 0.0, **twister_kwargs) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.mixer = Twister(dim, **twister_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, img: Tensor, *texts: Tensor) -> tuple[Tensor, ...]:
        normed = [self.norm(m) for m in (img, *texts)]
        out = self.mixer(torch.cat(normed, dim=1))
        return (img + self.drop_path(out), *(t + n for t, n in zip(texts, normed[1:])))


#: ``config.interaction`` -> the text maps stacked with the image in the cube (paper Table 4), by
#: their official module names; the keys are :data:`remamber.modeling.config.INTERACTIONS`.
INTERACTIONS: dict[str, tuple[str, ...]] = {
    "both": ("global_text", "local_text"),
    "global": ("global_text",),
    "local": ("local_text",),
}
#: a text map's module name -> its builder, ``(dim, text_dim, local_hidden, n_words) -> module``;
#: each is called as ``(img, words, pooled)``
TEXT_MAPS: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "global_text": lambda dim, text_dim, hidden, n_words: GlobalTextGuidance(text_dim, dim),
    "local_text": lambda dim, text_dim, hidden, n_words: LocalTextInteraction(dim, text_dim, hidden, n_words),
}


class TwisterLayer(nn.Module):
    """A stack of Twister blocks fed by the stage's text guidance; returns the twisted image.

    ``interaction`` picks the text maps of the cube (:data:`INTERACTIONS`): ``both`` (global and
    local), ``global`` or ``local``; ``order`` the scan order (:data:`SCANS`). In a stage the
    layer is the module ``twister`` (the official name).
    """

    module_name = "twister"

    def __init__(
        self,
        dim: int,
        depth: int,
        text_dim: int,
        local_hidden: int,
        n_words: int,
        interaction: str = "both",
        order: str = "channel-spatial",
        **ssm_kwargs,
    ) -> None:
        super().__init__()
        self.text_maps = INTERACTIONS[interaction]
        for name in self.text_maps:
            self.add_module(name, TEXT_MAPS[name](dim, text_dim, local_hidden, n_words))
        n_maps = 1 + len(self.text_maps)  # the image plus one or both text maps
        self.blocks = nn.ModuleList(TwisterBlock(dim, n_maps=n_maps, order=order, **ssm_kwargs) for _ in range(depth))

    def forward(self, img: Tensor, words: Tensor, pooled: Tensor, mask: Tensor | None = None) -> Tensor:
        texts = [getattr(self, name)(img, words, pooled) for name in self.text_maps]
        for blk in self.blocks:
            img, *texts = blk(img, *texts)
        return img

    def part_counts(self) -> dict[str, int]:
        """Parameters of the parts the official model counts apart: the Twister blocks and each text map."""
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        return {
            "twister": count(self.blocks),
            **{name: count(getattr(self, name, None)) for name in TEXT_MAPS},
        }
