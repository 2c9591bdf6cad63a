"""The convolutional decoder of ReMamber_Conv: coarse-to-fine fusion of the 4 stage maps."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.layers import BatchNorm2d, resize_like


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

    def forward(self, feats: list[Tensor]) -> Tensor:
        c1, c2, c3, c4 = feats
        out = self.mixer3(c4)
        out = self.mixer2(torch.cat([resize_like(out, c3), c3], dim=1))
        out = self.mixer1(torch.cat([resize_like(out, c2), c2], dim=1))
        out = torch.cat([resize_like(out, c1), c1], dim=1)
        *body, up, head = self.neck  # the last upsampling and convolution run as one (upsample_conv)
        for layer in body:
            out = layer(out)
        return upsample_conv(out, up, head)


#: ``config.decoder`` -> the decoder class, built as ``(dims, decoder_dim)``.
DECODERS: dict[str, type[nn.Module]] = {"conv": ConvDecoder}
