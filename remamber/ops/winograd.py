"""3x3 convolutions (stride 1, zero padding 1) by Winograd's F(4x4, 3x3) on the CPU, for inference.

Each 4x4 output tile is computed from a 6x6 input tile in a transformed space where the
convolution becomes one product per point: ``Y = A^T [(G g G^T) * (B^T d B)] A``. Summed over the
input channels, the 36 points are 36 matrix products ``(tiles x C) @ (C x O)``: 4x fewer
multiply-adds than the direct convolution (36 instead of 144 per 4x4 tile and channel pair). The
tile transforms are two numba kernels, vectorised across the channels of the channels-last maps:
one writes ``B^T d B`` of every tile straight from the padded input, the other applies ``A^T . A``,
adds the bias and puts each output tile in place; the transformed filters ``G g G^T`` are made
once per weight (the fused decoder, :class:`remamber.inference.fuse.ConvBNReLU`, makes them when
it is fused). The decoder's large layers run several times faster than the direct convolution
(BENCHMARKS.md, "3x3 convolutions"; ``benchmarks/conv.py``). Rounding: max error about 1e-5 of
the largest output, where the direct convolution's is a few 1e-7 (points 0, +-1, +-2 of the
standard F(4, 3)).

:func:`use_winograd` says which calls take it (the fused decoder asks it per call: it depends on
the map's size); :func:`conv3x3_ref` is the plain convolution beside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from remamber.ops import numba_utils
from remamber.ops.tracing import traced

# F(4, 3) on the points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2016): the kernels below spell
# out B^T (6 x 6) and A^T (4 x 6); G (6 x 3) transforms the filters.
_G = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]

# Below this many multiply-adds per output pixel and image (in * out channels) or this many
# output pixels the direct convolution was as fast with the earlier PyTorch tile transforms; the
# small layers under it (`tiny`'s two) would gain little with the kernels below and keep the direct
# convolution's much smaller rounding instead (BENCHMARKS.md, "3x3 convolutions").
MIN_CHANNEL_PRODUCT = 128 * 128
MIN_PIXELS = 48 * 48
# Tile rows are transformed and multiplied a block at a time, each block's transformed input
# at most this many floats (8 MiB) where one tile row of the batch fits, so that memory does not
# grow 2.25x with the image; the block size did not change the speed (BENCHMARKS.md, "3x3
# convolutions").
BLOCK_FLOATS = 1 << 21

if numba_utils.AVAILABLE:
    from numba import prange

    from remamber.ops.numba_utils import jit, prefer_512_bit_vectors

    _F = np.float32

    @jit(inline="always", fastmath=True)
    def _bt(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5):  # pragma: no cover
        """``o = B^T d``: six channel vectors in, six out."""
        for ch in range(d0.shape[0]):
            a1, a2, a3, a4 = d1[ch], d2[ch], d3[ch], d4[ch]
            o0[ch] = _F(4.0) * d0[ch] - _F(5.0) * a2 + a4
            o1[ch] = a3 + a4 - _F(4.0) * (a1 + a2)
            o2[ch] = _F(4.0) * (a1 - a2) - a3 + a4
            o3[ch] = _F(2.0) * (a3 - a1) - a2 + a4
            o4[ch] = _F(2.0) * (a1 - a3) - a2 + a4
            o5[ch] = _F(4.0) * a1 - _F(5.0) * a3 + d5[ch]

    @jit(parallel=True, fastmath=True)
    def _input_tiles(padded, p0, p1, v):  # pragma: no cover
        """``v[6 i + j, tile] = (B^T d B)[i, j]`` for every tile of tile rows ``p0 .. p1`` of every
        image of ``padded (n, 4 th + 2, 4 tw + 2, c)``; tiles numbered image, row, column."""
        n, _, wp, c = padded.shape
        tw, rows = (wp - 2) // 4, p1 - p0
        for tile in prange(n * rows * tw):
            prefer_512_bit_vectors()
            ni, p, q = tile // (rows * tw), p0 + tile // tw % rows, tile % tw
            r, s = 4 * p, 4 * q
            t = np.empty((6, 6, c), np.float32)  # t[j, i] = (B^T d)[i, j]: the columns first
            for j in range(6):
                tj = t[j]
                _bt(
                    padded[ni, r, s + j],
                    padded[ni, r + 1, s + j],
                    padded[ni, r + 2, s + j],
                    padded[ni, r + 3, s + j],
                    padded[ni, r + 4, s + j],
                    padded[ni, r + 5, s + j],
                    tj[0],
                    tj[1],
                    tj[2],
                    tj[3],
                    tj[4],
                    tj[5],
                )
            for i in range(6):
                k = 6 * i
                _bt(
                    t[0, i],
                    t[1, i],
                    t[2, i],
                    t[3, i],
                    t[4, i],
                    t[5, i],
                    v[k, tile],
                    v[k + 1, tile],
                    v[k + 2, tile],
                    v[k + 3, tile],
                    v[k + 4, tile],
                    v[k + 5, tile],
                )

    @jit(inline="always", fastmath=True)
    def _at(m0, m1, m2, m3, m4, m5, ch):  # pragma: no cover
        """``(A^T m)[0 .. 3]`` at channel ``ch``."""
        s12, d12 = m1[ch] + m2[ch], m1[ch] - m2[ch]
        s34, d34 = m3[ch] + m4[ch], m3[ch] - m4[ch]
        return m0[ch] + s12 + s34, d12 + _F(2.0) * d34, s12 + _F(4.0) * s34, d12 + _F(8.0) * d34 + m5[ch]

    @jit(inline="always", fastmath=True)
    def _finish(y, scale, shift, relu):  # pragma: no cover
        """``y * scale + shift``, then ReLU when asked."""
        v = y * scale + shift
        return max(v, _F(0.0)) if relu else v

    @jit(parallel=True, fastmath=True)
    def _output_tiles(m, scale, shift, relu, p0, p1, tw, out):  # pragma: no cover
        """``out[image, 4 p + i, 4 q + j] = (A^T m A)[i, j] * scale + shift`` (then ReLU if ``relu``)
        for the tiles of tile rows ``p0 .. p1`` (numbered as by :func:`_input_tiles`), inside
        ``out (n, h, w, o)``; ``scale`` and ``shift`` per output channel."""
        n, h, w, o = out.shape
        rows = p1 - p0
        for tile in prange(n * rows * tw):
            prefer_512_bit_vectors()
            ni, p, q = tile // (rows * tw), p0 + tile // tw % rows, tile % tw
            t = np.empty((6, 4, o), np.float32)  # t[j, i] = (A^T m)[i, j]
            for j in range(6):
                m0, m1, m2, m3, m4, m5 = (
                    m[j, tile],
                    m[6 + j, tile],
                    m[12 + j, tile],
                    m[18 + j, tile],
                    m[24 + j, tile],
                    m[30 + j, tile],
                )
                t0, t1, t2, t3 = t[j, 0], t[j, 1], t[j, 2], t[j, 3]
                for ch in range(o):
                    t0[ch], t1[ch], t2[ch], t3[ch] = _at(m0, m1, m2, m3, m4, m5, ch)
            for i in range(min(4, h - 4 * p)):
                r = 4 * p + i
                s0, s1, s2, s3, s4, s5 = t[0, i], t[1, i], t[2, i], t[3, i], t[4, i], t[5, i]
                if 4 * q + 4 <= w:  # a whole tile row
                    y0, y1, y2, y3 = (
                        out[ni, r, 4 * q],
                        out[ni, r, 4 * q + 1],
                        out[ni, r, 4 * q + 2],
                        out[ni, r, 4 * q + 3],
                    )
                    for ch in range(o):
                        a, b, c, d = _at(s0, s1, s2, s3, s4, s5, ch)
                        sc, sh = scale[ch], shift[ch]
                        y0[ch], y1[ch] = _finish(a, sc, sh, relu), _finish(b, sc, sh, relu)
                        y2[ch], y3[ch] = _finish(c, sc, sh, relu), _finish(d, sc, sh, relu)
                else:  # the right edge: the first w - 4 q columns
                    for j in range(w - 4 * q):
                        y = out[ni, r, 4 * q + j]
                        for ch in range(o):
                            y[ch] = _finish(_at(s0, s1, s2, s3, s4, s5, ch)[j], scale[ch], shift[ch], relu)


def conv3x3_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The plain convolution: ``F.conv2d(x, weight, bias, padding=1)``."""
    return F.conv2d(x, weight, bias, padding=1)


def winograd_filters(weight: Tensor) -> Tensor:
    """``G g G^T`` of every filter of ``weight (o, c, 3, 3)``: ``(36, c, o)``, point ``6 i + j``."""
    g = torch.tensor(_G, dtype=torch.float64).to(weight.dtype)
    o, c = weight.shape[:2]
    return torch.einsum("ai,ocij,bj->abco", g, weight.detach(), g).reshape(36, c, o).contiguous()


def conv3x3_winograd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    filters: Tensor | None = None,
    block_floats: int = BLOCK_FLOATS,
    affine: tuple[Tensor, Tensor] | None = None,
    relu: bool = False,
) -> Tensor:
    """``conv3x3_ref(x, weight, bias)`` by F(4x4, 3x3) for float32 CPU inference (no autograd):
    ``x (n, c, h, w)``, ``weight (o, c, 3, 3)``; ``filters``, when given, is
    :func:`winograd_filters` of ``weight``. ``affine = (scale, shift)`` maps each output channel
    to ``y * scale + shift`` after the bias (a BatchNorm in eval mode, folded), and ``relu`` applies
    a ReLU after that, both while the output is put in place. Returns ``(n, o, h, w)`` in
    channels-last memory."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    u = winograd_filters(weight) if filters is None else filters
    th, tw = -(-h // 4), -(-w // 4)  # tiles down and across
    padded = x.new_empty(n, 4 * th + 2, 4 * tw + 2, c)  # channels last, zero border
    padded[:, 1 : h + 1, 1 : w + 1] = x.detach().permute(0, 2, 3, 1)
    for border in (padded[:, :1], padded[:, h + 1 :], padded[:, :, :1], padded[:, :, w + 1 :]):
        border.zero_()
    out = x.new_empty(n, h, w, o)
    scale = torch.ones(o, dtype=torch.float32)
    shift = torch.zeros(o, dtype=torch.float32) if bias is None else bias.detach().float()
    if affine is not None:
        scale, shift = affine[0].detach().float(), shift * affine[0].detach().float() + affine[1].detach().float()
    scale_np, shift_np = scale.contiguous().numpy(), shift.contiguous().numpy()
    rows = max(1, min(th, block_floats // max(1, 36 * n * tw * c)))
    v, m = x.new_empty(36, n * rows * tw, c), x.new_empty(36, n * rows * tw, o)
    for p0 in range(0, th, rows):
        p1 = min(th, p0 + rows)
        tiles = n * (p1 - p0) * tw
        _input_tiles(padded.numpy(), p0, p1, v[:, :tiles].numpy())
        torch.bmm(v[:, :tiles], u, out=m[:, :tiles])  # the convolution, one product per point
        _output_tiles(m[:, :tiles].numpy(), scale_np, shift_np, relu, p0, p1, tw, out.numpy())
    return out.permute(0, 3, 1, 2)


def _autocast_cpu() -> bool:
    """Whether CPU autocast is on: its lower-precision products would meet the transforms' larger
    rounding, so the direct convolution runs in that precision instead."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def use_winograd(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether a 3x3 convolution (the fused decoder's, per call) takes the Winograd path: float32 CPU
    inference (no gradient wanted, not traced for export, no autocast; numba present) of a 3x3
    convolution large enough to gain from it."""
    # first: the shape checks below would be recorded into a trace
    if not numba_utils.AVAILABLE or traced() or _autocast_cpu():
        return False
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors) or x.dim() != 4 or x.numel() == 0:
        return False
    if weight.shape[1:] != (x.shape[1], 3, 3):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return x.shape[1] * weight.shape[0] >= MIN_CHANNEL_PRODUCT and x.shape[2] * x.shape[3] >= MIN_PIXELS
