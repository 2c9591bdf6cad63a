"""SS2D's scan for CPU inference in one numba kernel: cross-scan, selective scan and cross-merge.

The composed path (:meth:`remamber.modeling.ss2d.SS2D.scan`) copies the map in its four scan
orders (:func:`cross_scan`), projects each copy, scans each channel row and adds the four outputs
back (:func:`cross_merge`): four map-sized copies written and read around the scan itself. Here
the map stays channels-last, as SS2D's input projection leaves it, and one task per block of
channels walks the ``h * w`` positions in each of the four orders, reading the block's channels at
each position as one vector: the recurrences of all the block's channels advance together (SIMD
across channels, where the row kernels of :mod:`remamber.ops.scan_cpu` run one chain per channel),
and nothing is re-ordered. The kernel reads

* the map ``x (b, l, d)``;
* ``P (b, l, K, R + 2N)``, every position's projection to the delta rank ``R``, ``B`` and ``C`` for
  each order: one matrix product in spatial order;
* the deltas before softplus: for a delta rank ``R`` up to :data:`MAX_RANK_INSIDE`, made per step
  inside the kernel from ``P`` and the delta projection (``R`` multiply-adds per channel, less than
  reading them from memory); for larger ranks, ``delta (b, K, l, d)`` in each order's step order,
  one batched matrix product;

and writes the four orders' outputs summed, channels-last ``(b, l, d)``: the layout the output
LayerNorm reads. Inference only (no backward): :func:`remamber.inference.fuse.fuse` swaps it
into a model for inference, :func:`takes` says which calls it runs; training keeps the composed
path, whose kernels have a backward. Same fp32 arithmetic as the row kernels (the same exp2 and
softplus).
:func:`cross_selective_scan_ref` is the plain composition beside it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from remamber.ops import numba_utils
from remamber.ops.cross_scan import cross_merge, cross_scan
from remamber.ops.tracing import traced

K_DIRECTIONS = 4
# Channels per task, at most: larger blocks run the recurrences of more channels per vector pass,
# up to the size that measured fastest at base's stage 3-4 shapes; with fewer channels than that
# per thread, one block per thread (BENCHMARKS.md, "SS2D scan, CPU inference").
MAX_BLOCK = 256
# Delta ranks up to this are projected inside the kernel: R multiply-adds per channel and step cost
# less than reading a precomputed delta for small ranks, more than one batched product for large
# ones (base's ranks 8 and 16 against 32 and 64: BENCHMARKS.md, "SS2D scan, CPU inference").
MAX_RANK_INSIDE = 16

if numba_utils.AVAILABLE:
    from numba import prange

    from remamber.ops.numba_utils import LOG2E, fast_exp, fast_exp2, fast_softplus, jit, prefer_512_bit_vectors

    U = np.uint64  # unsigned indices: numba adds no negative-index wraparound, so the loops vectorise

    @jit(inline="always", fastmath=True)
    def _step(xb, yb, Pb, delta, bi, Wt, pos, t, k, d0, cb, bias, D, A2, R, N, h, dt, first):  # pragma: no cover
        """Step ``t`` of order ``k`` (map position ``pos``) for channels ``d0 .. d0 + cb``: the
        deltas (read from ``delta[bi, k]``, or made from ``Pb``'s rank-R part and ``Wt`` when
        ``delta`` is None), the ``N`` state updates and the output, added to ``yb[pos]`` (set by order 0)."""
        if delta is None:  # four ranks a pass: a quarter of the loads and stores of dt
            for c in range(cb):
                dt[c] = bias[k, d0 + c]
            q = U(0)
            while q + U(4) <= R:
                p0, p1, p2, p3 = Pb[pos, k, q], Pb[pos, k, q + U(1)], Pb[pos, k, q + U(2)], Pb[pos, k, q + U(3)]
                for c in range(cb):
                    dt[c] += (
                        p0 * Wt[k, q, d0 + c]
                        + p1 * Wt[k, q + U(1), d0 + c]
                        + p2 * Wt[k, q + U(2), d0 + c]
                        + p3 * Wt[k, q + U(3), d0 + c]
                    )
                q += U(4)
            while q < R:
                pq = Pb[pos, k, q]
                for c in range(cb):
                    dt[c] += pq * Wt[k, q, d0 + c]
                q += U(1)
        else:
            for c in range(cb):
                dt[c] = delta[bi, k, t, d0 + c] + bias[k, d0 + c]
        for c in range(cb):
            v = dt[c]
            dt[c] = fast_softplus(v, fast_exp(-abs(v)))
        if first:
            for c in range(cb):
                yb[pos, d0 + c] = D[k, d0 + c] * xb[pos, d0 + c]
        else:
            for c in range(cb):
                yb[pos, d0 + c] += D[k, d0 + c] * xb[pos, d0 + c]
        for n in range(N):
            Bn = Pb[pos, k, R + n]
            Cn = Pb[pos, k, R + N + n]
            for c in range(cb):
                v = dt[c]
                hv = fast_exp2(v * A2[k, n, d0 + c]) * h[n, c] + v * xb[pos, d0 + c] * Bn
                h[n, c] = hv
                yb[pos, d0 + c] += Cn * hv

    @jit(parallel=True, fastmath=True)
    def _cross_forward(x, P, delta, Wt, bias, A, D, height, width, block, out):  # pragma: no cover
        """``out (b, l, d)`` = the four orders' scans of ``x (b, l, d)`` summed; ``A (K, N, d)``,
        ``bias`` and ``D`` ``(K, d)``; ``P`` and ``delta`` as in the module docstring, or ``delta``
        None and ``Wt (K, R, d)`` the delta projection (numba compiles each variant)."""
        b, L, d = x.shape
        N = U(A.shape[1])
        R = U(P.shape[3]) - U(2) * N
        blocks = (d + block - 1) // block
        A2 = A * LOG2E  # decays exp(delta a) = exp2(delta a log2 e)
        for task in prange(b * blocks):
            prefer_512_bit_vectors()
            bi = U(task // blocks)
            d0 = (task % blocks) * block
            cb = U(min(d0 + block, d) - d0)
            d0 = U(d0)
            h = np.empty((N, cb), np.float32)
            dt = np.empty(cb, np.float32)
            xb, yb, Pb = x[bi], out[bi], P[bi]
            Lu, hu, wu = U(L), U(height), U(width)
            for k in range(K_DIRECTIONS):
                h[:] = 0.0
                ku = U(k)
                t = U(0)
                if k == 0:  # row-major
                    for pos in range(Lu):
                        _step(xb, yb, Pb, delta, bi, Wt, pos, pos, ku, d0, cb, bias, D, A2, R, N, h, dt, True)
                elif k == 2:  # row-major, reversed
                    for t in range(Lu):
                        _step(xb, yb, Pb, delta, bi, Wt, Lu - U(1) - t, t, ku, d0, cb, bias, D, A2, R, N, h, dt, False)
                else:  # column-major (k = 1), reversed (k = 3)
                    for i in range(wu):
                        col = i if k == 1 else wu - U(1) - i
                        for j in range(hu):
                            row = j if k == 1 else hu - U(1) - j
                            _step(
                                xb,
                                yb,
                                Pb,
                                delta,
                                bi,
                                Wt,
                                row * wu + col,
                                t,
                                ku,
                                d0,
                                cb,
                                bias,
                                D,
                                A2,
                                R,
                                N,
                                h,
                                dt,
                                False,
                            )
                            t += U(1)


def block_size(b: int, d: int) -> int:
    """Channels per task: ``b * d`` split evenly over the threads, a multiple of 16 (one 512-bit
    vector of float32), at most :data:`MAX_BLOCK`."""
    per_thread = -(-b * d // numba_utils.numba.get_num_threads())
    return max(16, min(MAX_BLOCK, -(-per_thread // 16) * 16))


def _in_step_order(low: Tensor, h: int, w: int) -> Tensor:
    """``(b, l, K, R)`` in spatial order -> ``(b, K, l, R)``, order ``k``'s rows in its step order."""
    b, _, _, R = low.shape
    grid = low.view(b, h, w, K_DIRECTIONS, R)
    rows = [grid[:, :, :, k].reshape(b, h * w, R) for k in (0, 2)]
    cols = [grid[:, :, :, k].transpose(1, 2).reshape(b, h * w, R) for k in (1, 3)]
    return torch.stack([rows[0], cols[0], rows[1].flip(1), cols[1].flip(1)], dim=1)


def cross_selective_scan(
    x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor, D: Tensor
) -> Tensor:
    """The merged four-order scan of ``x (b, d, h, w)`` by the fused kernel (see :func:`takes`).

    ``x_proj_weight (K, R + 2N, d)``, ``dt_projs_weight (K, d, R)``, ``dt_projs_bias (K, d)``,
    ``A (K * d, N)`` (negative), ``D (K * d)``, as SS2D holds them (softplus on the deltas).
    Returns ``(b, d, h, w)`` float32 with channels-last strides.
    """
    b, d, h, w = x.shape
    L, R, N = h * w, dt_projs_weight.shape[-1], A.shape[1]
    K = K_DIRECTIONS
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
    xcl = f32(x.permute(0, 2, 3, 1).reshape(b, L, d))  # a view when x is channels-last
    P = torch.matmul(xcl, f32(x_proj_weight).view(K * (R + 2 * N), d).t()).view(b, L, K, R + 2 * N)
    Wt = f32(dt_projs_weight.transpose(1, 2))  # (K, R, d)
    delta = None if R <= MAX_RANK_INSIDE else torch.matmul(_in_step_order(P[..., :R], h, w), Wt).numpy()  # (b, K, L, d)
    out = torch.empty(b, L, d, dtype=torch.float32, device="cpu")
    _cross_forward(
        xcl.numpy(),
        P.numpy(),
        delta,
        Wt.numpy(),
        f32(dt_projs_bias).view(K, d).numpy(),
        f32(A).view(K, d, N).transpose(1, 2).contiguous().numpy(),
        f32(D).view(K, d).numpy(),
        h,
        w,
        block_size(b, d),
        out.numpy(),
    )
    return out.view(b, h, w, d).permute(0, 3, 1, 2)


def cross_selective_scan_ref(
    x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor, dt_projs_bias: Tensor, A: Tensor, D: Tensor
) -> Tensor:
    """The plain composition :func:`cross_selective_scan` fuses: cross-scan, per-order projections,
    :func:`selective_scan_ref` per channel row, cross-merge. Same arguments; ``(b, d, h, w)``."""
    from remamber.ops.selective_scan import selective_scan_ref

    b, d, h, w = x.shape
    R, N = dt_projs_weight.shape[-1], A.shape[1]
    xs = cross_scan(x).float()  # (b, K, d, l)
    dts, Bs, Cs = torch.split(torch.matmul(x_proj_weight.float(), xs), [R, N, N], dim=2)
    dts = torch.matmul(dt_projs_weight.float(), dts)
    flat = lambda t: t.reshape(b, K_DIRECTIONS * d, h * w)  # noqa: E731
    ys = selective_scan_ref(
        flat(xs), flat(dts), A, Bs, Cs, D.float(), delta_bias=dt_projs_bias.reshape(-1).float(), delta_softplus=True
    )
    return cross_merge(ys.view(b, K_DIRECTIONS, d, h * w), h, w).view(b, d, h, w)


def takes(x: Tensor, d_state: int) -> bool:
    """Whether a fused SS2D (:class:`remamber.inference.fuse.FusedSS2D`, made only where numba is
    present) runs this call by :func:`cross_selective_scan`: a CPU map, not traced (an ONNX export),
    and the kernel worth its one-time compilation (as for the row kernels, see
    :func:`remamber.ops.selective_scan._worth_compiling`: a large call, or the kernel already in
    the process)."""
    from remamber.ops.selective_scan import FUSED_MIN_INFERENCE

    if x.dim() != 4 or x.device.type != "cpu" or traced():
        return False
    return x.numel() * K_DIRECTIONS * d_state >= FUSED_MIN_INFERENCE or compiled()


def compiled() -> bool:
    """Whether this process already has the kernel (compiled, or loaded from the disk cache)."""
    return numba_utils.AVAILABLE and bool(_cross_forward.signatures)


def preload() -> bool:
    """Bring both variants of the kernel (deltas made inside, and read) into this process with two
    tiny calls, so that every later inference call takes it (what the commands that make many calls
    run first; see :func:`remamber.ops.scan_cpu.preload`). Returns whether it is available."""
    if not numba_utils.AVAILABLE:
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 2, 2, generator=g)
    for rank in (1, MAX_RANK_INSIDE + 1):  # each call microseconds once its variant is in the process
        weights = torch.randn(4, rank + 2, 1, generator=g), torch.randn(4, 1, rank, generator=g), torch.zeros(4, 1)
        cross_selective_scan(x, *weights, -torch.ones(4, 1), torch.ones(4))
    return True
