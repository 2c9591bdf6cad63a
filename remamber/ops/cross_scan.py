"""Cross scan / cross merge: the 4 scan orders of an ``h x w`` map used by SS2D.

Order k of the ``l = h*w`` tokens: 0 row-major, 1 column-major, 2 and 3 the same reversed.
``cross_merge`` is the adjoint: it maps the 4 output sequences back to row-major and sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from remamber.ops.tracing import traced


def channels_first(x: Tensor) -> Tensor:
    """``x (b, c, h, w)`` in contiguous (channels-first) memory.

    A channels-last map (what LayerNorm2d and the CPU's 1x1 convolutions hand on, i.e. every SS2D
    input) is copied image by image as a 2-D transpose, which torch runs in cache-sized blocks:
    faster than ``x.contiguous()`` for large maps, slower for the smallest (BENCHMARKS.md, "Cross
    scan"). Under tracing
    (an ONNX export) it is ``x.contiguous()``, which does not fix the batch size.
    """
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last) or traced():
        return x.contiguous()
    b, c, h, w = x.shape
    out = x.new_empty(b, c, h, w)
    pixels = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    for image in range(b):
        out[image].view(c, h * w).copy_(pixels[image].t())
    return out


def cross_scan(x: Tensor) -> Tensor:
    """``(b, c, h, w) -> (b, 4, c, h*w)``.

    ``x`` is made contiguous first (:func:`channels_first`) and the four orders are concatenated
    once: faster at ``base``'s large SS2D shapes (about even at the smallest) than stacking and
    concatenating views read through a channels-last ``x``'s strides (BENCHMARKS.md, "Cross scan").
    """
    b, c, h, w = x.shape
    x = channels_first(x)
    rows = x.view(b, 1, c, h * w)
    cols = x.transpose(2, 3).reshape(b, 1, c, h * w)
    return torch.cat([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(ys: Tensor, h: int, w: int) -> Tensor:
    """``(b, 4, c, h*w) -> (b, c, h*w)``: undo each order and sum the four."""
    b, _, c, length = ys.shape
    fwd = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    cols = fwd[:, 1].reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
    return fwd[:, 0] + cols
