"""The mask decoders: ReMamber_Conv's convolutional one and ReMamber_Mamba's, coarse-to-fine over the 4 stage maps."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.config import ModelConfig
from remamber.modeling.fusion import ssm_kwargs
from remamber.modeling.layers import BatchNorm2d, LayerNorm2d, Linear2d, resize_like
from remamber.modeling.twister import GlobalTextGuidance, LocalTextInteraction
from remamber.modeling.vss import VSSBlock


class ConvBN(nn.Module):
    """1x1 conv (no bias) + BatchNorm (+ optional activation)."""

    def __init__(self, cin: int, cout: int, act: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = BatchNorm2d(cout)
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Mixer(nn.Module):
    """1x1 conv-BN-Hardswish, depthwise 3x3, BN, Hardswish, 1x1 conv-BN (no identity path, as official)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(cin, cin, act=True)
        self.dwconv = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.norm = BatchNorm2d(cin)
        self.act = nn.Hardswish()
        self.conv2 = ConvBN(cin, cout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.norm(self.dwconv(self.conv1(x)))))


def upsample_conv_ref(x: Tensor, up: nn.Upsample, conv: nn.Conv2d) -> Tensor:
    """``conv(up(x))``, plainly: the reference for :func:`upsample_conv`."""
    return conv(up(x))


def upsample_conv(x: Tensor, up: nn.Upsample, conv: nn.Conv2d) -> Tensor:
    """``conv(up(x))`` with the convolution's taps applied before the upsampling.

    Upsampling is linear and the same for every channel, so a k x k convolution of the
    upsampled map equals: one 1x1 convolution per tap at the low resolution (``out * k * k``
    channels instead of ``in``), the upsampling of those, and each tap shifted into place (a
    grouped convolution with one-hot kernels, same zero padding). Same numbers up to rounding; for
    the decoder's last layer (``in`` = 64-512 channels, ``out`` = 1) the full-resolution map it
    upsamples has 9 channels instead of ``in``.
    """
    o, c, kh, kw = conv.weight.shape
    plain = conv.groups != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
    if plain or isinstance(conv.padding, str) or o * kh * kw >= c:
        return upsample_conv_ref(x, up, conv)
    taps = conv.weight.permute(0, 2, 3, 1).reshape(o * kh * kw, c, 1, 1)  # (out, dy, dx) -> a 1x1 conv
    placed = (
        torch.eye(kh * kw, dtype=conv.weight.dtype, device=conv.weight.device)
        .reshape(1, kh * kw, kh, kw)
        .repeat(o, 1, 1, 1)
    )
    return F.conv2d(up(F.conv2d(x, taps)), placed, conv.bias, padding=conv.padding, groups=o)


class ConvDecoder(nn.Module):
    """Fuse stage maps from coarsest to finest, then a neck that upsamples x4 to one logit map.

    ``dims`` are the stage channels (finest first); ``hidden`` the decoder width (official:
    4 x dims[0]).  The output has 4x the resolution of the finest stage map.  The neck is a plain
    ``nn.Sequential`` with the official layer indices (``neck.0.weight`` ...); for CPU inference
    :func:`remamber.inference.fuse.fuse` replaces its conv-BatchNorm-ReLU runs by Winograd ones.
    """

    def __init__(self, dims: list[int], hidden: int) -> None:
        super().__init__()
        self.mixer3 = Mixer(dims[3], hidden)
        self.mixer2 = Mixer(dims[2] + hidden, hidden)
        self.mixer1 = Mixer(dims[1] + hidden, hidden)
        self.neck = nn.Sequential(
            nn.Conv2d(hidden + dims[0], hidden, 3, padding=1),
            BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def forward(self, feats: list[Tensor], words: Tensor | None = None) -> Tensor:
        """``feats``: the stage maps, finest first; ``words`` is not read (the conv decoder sees no text)."""
        c1, c2, c3, c4 = feats
        out = self.mixer3(c4)
        out = self.mixer2(torch.cat([resize_like(out, c3), c3], dim=1))
        out = self.mixer1(torch.cat([resize_like(out, c2), c2], dim=1))
        out = torch.cat([resize_like(out, c1), c1], dim=1)
        *body, up, head = self.neck  # the last upsampling and convolution run as one (upsample_conv)
        for layer in body:
            out = layer(out)
        return upsample_conv(out, up, head)


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """A 3x3 convolution (no bias), BatchNorm and ReLU, as the three layers of an ``nn.Sequential``
    (where :func:`remamber.inference.fuse.fuse` folds them into one)."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), BatchNorm2d(cout), nn.ReLU()]


class UpSample2D(nn.Module):
    """Bilinear x2 (align_corners=True), a 1x1 projection to ``out_dim`` (no bias) and a LayerNorm
    (official ``UpSample2D``, which ends each level of the Mamba decoder)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = Linear2d(dim, out_dim, bias=False)
        self.norm = LayerNorm2d(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)))


class MambaDecoderLevel(nn.Module):
    """One level of the Mamba decoder: the text maps, ``in_proj`` (3C -> C), VSS blocks, x2 upsampling
    to ``out_dim`` channels and, with ``skip``, the merge with the next finer stage map.

    As in the Twister, a global map (``ReLU(Linear(text))`` of one text vector, spread over the map)
    and a local one (the word-pixel correlation map) are stacked with the image; the global map
    reads the first token's word feature, as the official decoder does (it is not passed the pooled
    sentence). The merge (official ``hire_fusion``) is two 3x3 conv-BatchNorm-ReLU on
    ``[upsampled, skip]``, then the skip map is added.
    """

    def __init__(
        self, dim: int, out_dim: int, depth: int, text_dim: int, local_hidden: int, n_words: int, skip: bool, **ssm
    ) -> None:
        super().__init__()
        self.global_text = GlobalTextGuidance(text_dim, dim)
        self.local_text = LocalTextInteraction(dim, text_dim, local_hidden, n_words)
        self.in_proj = Linear2d(3 * dim, dim, bias=False)
        self.blocks = nn.ModuleList(VSSBlock(dim, mlp_ratio=0.0, **ssm) for _ in range(depth))
        self.upsample = UpSample2D(dim, out_dim)
        self.skip = (
            nn.Sequential(*conv_bn_relu(2 * out_dim, out_dim), *conv_bn_relu(out_dim, out_dim)) if skip else None
        )

    def forward(self, x: Tensor, words: Tensor, skip: Tensor | None = None) -> Tensor:
        maps = [x, self.global_text(x, words, words[:, 0]), self.local_text(x, words)]
        x = self.in_proj(torch.cat(maps, dim=1))
        for blk in self.blocks:
            x = blk(x)
        x = self.upsample(x)
        if self.skip is None:
            return x
        return self.skip(torch.cat([resize_like(x, skip), skip], dim=1)) + skip


class MambaDecoder(nn.Module):
    """ReMamber_Mamba's decoder (official ``MambaDecoder``): from the coarsest stage map to the
    finest, one :class:`MambaDecoderLevel` each (its text maps, VSS blocks and x2 upsampling to the
    next stage's width, merged with that stage's map); then ``proj_out``: bilinear x2
    (align_corners=False), a 3x3 conv-BatchNorm-ReLU and a 3x3 conv to one logit map at 4x the
    finest stage's resolution (the input size).

    ``dims`` are the stage widths (finest first), ``depths`` the VSS blocks per level (coarsest
    first). The official model has stage widths that double, ``[C, 2C, 4C, 8C]``; the finest level
    upsamples to ``C / 2``. ``proj_out`` is a plain ``nn.Sequential`` with the official indices.
    """

    def __init__(
        self, dims: list[int], depths: list[int], text_dim: int, local_hidden: int, n_words: int, **ssm
    ) -> None:
        super().__init__()
        widths = dims[::-1]  # coarsest first
        outs = [*widths[1:], dims[0] // 2]
        self.levels = nn.ModuleList(
            MambaDecoderLevel(
                widths[i], outs[i], depths[i], text_dim, local_hidden, n_words, skip=i + 1 < len(widths), **ssm
            )
            for i in range(len(widths))
        )
        half = outs[-1]
        self.proj_out = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Sequential(*conv_bn_relu(half, half)),
            nn.Conv2d(half, 1, 3, padding=1),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> MambaDecoder:
        """The decoder of ``cfg`` (``decoder_depths``, ``decoder_local_hidden``, the SS2D settings)."""
        return cls(
            cfg.dims, cfg.decoder_depths, cfg.text_dim, cfg.decoder_local_hidden, cfg.max_text_len, **ssm_kwargs(cfg)
        )

    def forward(self, feats: list[Tensor], words: Tensor) -> Tensor:
        """``feats``: the stage maps, finest first; ``words``: the text encoder's word features (b, t, text_dim)."""
        maps = feats[::-1]
        x = maps[0]
        for i, level in enumerate(self.levels):
            x = level(x, words, maps[i + 1] if i + 1 < len(maps) else None)
        return self.proj_out(x)


#: ``config.decoder`` -> the decoder's builder, ``cfg -> module``, called as ``(feats, words)``;
#: the keys are :data:`remamber.modeling.config.DECODERS`, in its order.
DECODERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "conv": lambda cfg: ConvDecoder(cfg.dims, cfg.decoder_dim),
    "mamba": MambaDecoder.from_config,
}
