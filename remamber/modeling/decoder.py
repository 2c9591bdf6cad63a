"""The convolutional decoder of ReMamber_Conv: coarse-to-fine fusion of the 4 stage maps."""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.layers import BatchNorm2d, resize_like
from remamber.ops import winograd
from remamber.ops.scan_cpu import needs_grad


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


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution with padding 1 (same parameters as ``nn.Conv2d``) that runs Winograd
    F(4x4, 3x3) where :func:`remamber.ops.winograd.use_winograd` says so (large CPU inference
    calls), with its transformed filters kept from call to call while the weight is unchanged."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)
        self._filters: tuple[weakref.ref, int, int, Tensor] | None = None  # (weight, data_ptr, version, filters)

    def forward(self, x: Tensor) -> Tensor:
        if winograd.use_winograd(x, self.weight, self.bias):
            return winograd.conv3x3_winograd(x, self.weight, self.bias, self.winograd_filters())
        return winograd.conv3x3_ref(x, self.weight, self.bias)

    def winograd_filters(self) -> Tensor:
        """:func:`remamber.ops.winograd.winograd_filters` of the weight, made again only when the
        weight has changed: another tensor (a load with ``assign=True``, ``.to()``), other memory, or
        an in-place change (an optimizer or EMA step, ``load_state_dict``: each bumps the tensor's
        version). Edits through ``weight.data`` bypass the version; after one, set ``_filters = None``."""
        w = self.weight
        cached = self._filters
        if cached is None or cached[0]() is not w or cached[1:3] != (w.data_ptr(), w._version):
            with torch.no_grad():
                cached = self._filters = (weakref.ref(w), w.data_ptr(), w._version, winograd.winograd_filters(w))
        return cached[3]

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .float(): the kept filters go
        self._filters = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # pickling and deepcopy leave the kept filters out
        state = self.__dict__.copy()
        state["_filters"] = None
        return state


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
    4 x dims[0]).  The output has 4x the resolution of the finest stage map.
    """

    def __init__(self, dims: list[int], hidden: int) -> None:
        super().__init__()
        self.mixer3 = Mixer(dims[3], hidden)
        self.mixer2 = Mixer(dims[2] + hidden, hidden)
        self.mixer1 = Mixer(dims[1] + hidden, hidden)
        self.neck = nn.Sequential(
            Conv3x3(hidden + dims[0], hidden),
            BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            Conv3x3(hidden, hidden),
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
        neck = self.neck
        out = self._conv_bn_relu(torch.cat([resize_like(out, c1), c1], dim=1), 0)
        out = self._conv_bn_relu(neck[3](out), 4)
        return upsample_conv(out, neck[7], neck[8])

    def _conv_bn_relu(self, x: Tensor, i: int) -> Tensor:
        """``neck[i + 2](neck[i + 1](neck[i](x)))``: the 3x3 convolution, BatchNorm and ReLU. Where the
        convolution takes Winograd and the BatchNorm uses its running statistics (eval mode), the
        BatchNorm is folded into a per-channel scale and shift that the Winograd kernel applies,
        with the ReLU, while it puts the output in place (no separate passes over the map)."""
        conv, bn, act = self.neck[i], self.neck[i + 1], self.neck[i + 2]
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn, act))  # they run only via calls
        if (
            bn.training
            or not (bn.affine and bn.track_running_stats)
            or hooked
            or needs_grad(bn.weight, bn.bias)
            or not winograd.use_winograd(x, conv.weight, conv.bias)
        ):
            return act(bn(conv(x)))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        affine = (scale, bn.bias - bn.running_mean * scale)
        return winograd.conv3x3_winograd(x, conv.weight, conv.bias, conv.winograd_filters(), affine=affine, relu=True)
