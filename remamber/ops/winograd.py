"""3x3 convolutions (stride 1, zero padding 1) by Winograd's F(4x4, 3x3) on the CPU.

Each 4x4 output tile is computed from a 6x6 input tile in a transformed space where the
convolution becomes one product per point: ``Y = A^T [(G g G^T) * (B^T d B)] A``. Summed over the
input channels, the 36 points are 36 matrix products ``(tiles x C) @ (C x O)``: 4x fewer
multiply-adds than the direct convolution (36 instead of 144 per 4x4 tile and channel pair),
plus the tile transforms, which are small matrix products over all tiles at once. The decoder's
largest layer (512 -> 512 channels at 240x240, ``base`` at 480 px) takes 0.36 s instead of 0.76 s
on two cores (``benchmarks/conv.py``, ``results/conv.json``). Rounding: max error about 1e-5 of the largest output,
where the direct convolution's is a few 1e-7 (points 0, +-1, +-2 of the standard F(4, 3)).

:func:`conv3x3` picks the path; :func:`conv3x3_ref` is the plain convolution beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from remamber.ops.tracing import traced

# F(4, 3) on the points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2016).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

# Below this many multiply-adds per output pixel and image (in * out channels) or this many
# output pixels the direct convolution is as fast (benchmarks/conv.py).
MIN_CHANNEL_PRODUCT = 128 * 128
MIN_PIXELS = 48 * 48
# Tile rows are transformed and multiplied a block at a time, each block's transformed input
# at most this many floats (8 MiB) where one tile row of the batch fits, so that memory does not
# grow 2.25x with the image; 1-16 Mi floats ran at the same speed.
BLOCK_FLOATS = 1 << 21


def _matrices(like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``kron(B^T, B^T)`` (36 x 36), ``G`` (6 x 3) and ``kron(A^T, A^T)`` (16 x 36) as ``like``'s dtype."""
    bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
    return tuple(m.to(like.dtype) for m in (torch.kron(bt, bt), g, torch.kron(at, at)))  # type: ignore[return-value]


def conv3x3_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The plain convolution: ``F.conv2d(x, weight, bias, padding=1)``."""
    return F.conv2d(x, weight, bias, padding=1)


def conv3x3_winograd(x: Tensor, weight: Tensor, bias: Tensor | None = None, block_floats: int = BLOCK_FLOATS) -> Tensor:
    """``conv3x3_ref(x, weight, bias)`` by F(4x4, 3x3): ``x (n, c, h, w)``, ``weight (o, c, 3, 3)``.

    Returns ``(n, o, h, w)`` with channels-last strides (channels-last memory format where ``h``
    and ``w`` are multiples of 4; else a crop of such a map). Differentiable (plain tensor ops).
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    kb, g, ka = _matrices(x)
    u = torch.einsum("ai,ocij,bj->abco", g, weight, g).reshape(36, c, o)  # the transformed filters
    th, tw = -(-h // 4), -(-w // 4)  # tiles down and across
    padded = x.new_empty(n, 4 * th + 2, 4 * tw + 2, c)  # channels last, zero border
    padded[:, 1 : h + 1, 1 : w + 1] = x.permute(0, 2, 3, 1)
    for border in (padded[:, :1], padded[:, h + 1 :], padded[:, :, :1], padded[:, :, w + 1 :]):
        border.zero_()
    sn, sh, sw, _ = padded.stride()
    out = x.new_empty(n, th, 4, tw, 4, o)
    rows = max(1, min(th, block_floats // max(1, 36 * n * tw * c)))
    for p0 in range(0, th, rows):
        p1 = min(th, p0 + rows)
        part = padded[:, 4 * p0 :]
        # (6, 6, n, tile row, tile column, c): tile element (i, j) of every tile in the block
        tiles = part.as_strided((6, 6, n, p1 - p0, tw, c), (sh, sw, sn, 4 * sh, 4 * sw, 1))
        v = (kb @ tiles.reshape(36, -1)).view(36, -1, c)  # B^T d B, all tiles and channels at once
        m = torch.bmm(v, u)  # (36, tiles, o): the convolution, one product per point
        y = (ka @ m.view(36, -1)).view(4, 4, n, p1 - p0, tw, o).permute(2, 3, 0, 4, 1, 5)  # A^T m A
        if bias is None:
            out[:, p0:p1] = y
        elif torch.is_grad_enabled() and (y.requires_grad or bias.requires_grad):
            out[:, p0:p1] = y + bias
        else:  # one pass: the bias added while the block is put in place
            torch.add(y, bias, out=out[:, p0:p1])
    return out.view(n, 4 * th, 4 * tw, o)[:, :h, :w].permute(0, 3, 1, 2)


def _autocast_cpu() -> bool:
    """Whether CPU autocast is on: its lower-precision products would meet the transforms' larger
    rounding, so the direct convolution runs in that precision instead."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def use_winograd(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`conv3x3` takes the Winograd path: float32 CPU inference (no gradient
    wanted, not traced for export, no autocast) of a 3x3 convolution large enough to gain from it."""
    if traced() or _autocast_cpu():  # first: the shape checks below would be recorded into a trace
        return False
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or x.dim() != 4 or x.numel() == 0:
        return False
    if weight.shape[1:] != (x.shape[1], 3, 3):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return x.shape[1] * weight.shape[0] >= MIN_CHANNEL_PRODUCT and x.shape[2] * x.shape[3] >= MIN_PIXELS


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 3x3 convolution with padding 1: :func:`conv3x3_winograd` where :func:`use_winograd`
    says so, else :func:`conv3x3_ref`."""
    if use_winograd(x, weight, bias):
        return conv3x3_winograd(x, weight, bias)
    return conv3x3_ref(x, weight, bias)
