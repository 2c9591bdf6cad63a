"""The fused CPU selective scan: numba kernels for forward and backward, all cores.

One task per ``(batch, channel)`` row runs the recurrence along the sequence with its
``d_state`` values in registers; nothing of size ``(b, d, n, l)`` is ever materialised.  Both
passes compute the ``softplus``, its derivative and the ``exp`` of a chunk of steps at once with
an inline polynomial (vectorised, unlike a libm call; within 2 ulp of ``expf``) before the
recurrence, so the backward recomputes exactly the forward's states.  The forward keeps the
state at the start of every chunk of ``CHUNK`` steps; the backward walks the chunks in
reverse, recomputes the states inside one chunk from its saved start, and runs the adjoint
recurrence.  Same semantics and fp32 arithmetic as ``selective_scan_ref``.

numba compiles the kernels on first use (cached on disk); without numba the PyTorch path in
``selective_scan.py`` is used instead.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

CHUNK = 64

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a dependency; keep the package importable anyway
    numba = None

AVAILABLE = numba is not None


def _jit(**options):
    """``njit`` with an on-disk cache when one can be written (read-only installs compile each run)."""

    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # numba found no writable cache location
            return njit(cache=False, **options)(fn)

    return wrap


if AVAILABLE:

    # exp(x) = p * 2**k with p from Cephes' expf polynomial on [-ln2/2, ln2/2]; no libm call, so
    # the loops below that use it vectorise (SIMD), and 2**k is written as float bits.
    _LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)

    @_jit(inline="always", fastmath=True)
    def _exp_parts(x):  # pragma: no cover
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        kf = math.floor(x * _LOG2E + np.float32(0.5))
        r = x - kf * _LN2_HI - kf * _LN2_LO
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        return p * r * r + r + np.float32(1.0), (np.int32(kf) + np.int32(127)) << np.int32(23)

    @_jit(inline="always", fastmath=True)
    def _log1p_unit(w):  # pragma: no cover
        """log(1 + w) for w in [0, 1]: 2 atanh(w / (2 + w)) by its series (error < 2e-8)."""
        s = w / (np.float32(2.0) + w)
        s2 = s * s
        q = np.float32(1 / 13)
        for c in (np.float32(1 / 11), np.float32(1 / 9), np.float32(1 / 7), np.float32(0.2), np.float32(1 / 3), np.float32(1.0)):
            q = q * s2 + c
        return np.float32(2.0) * s * q

    @_jit(inline="always", fastmath=True)
    def _chunk_steps(dt_row, bias, A_row, t0, m, softplus, deltas, sig, scale, scale_bits, decay, decay_bits):  # pragma: no cover
        """Steps ``t0 .. t0+m`` of one row at once (SIMD): ``deltas = softplus(dt + bias)`` as
        ``max(v, 0) + log1p(exp(-|v|))``, ``sig`` its derivative ``sigmoid(v)``, and the decays
        ``exp(delta * A)``. ``scale`` / ``decay`` are written through their int32 views."""
        for j in range(m):
            v = dt_row[t0 + j] + bias
            if softplus:
                p, bits = _exp_parts(-abs(v))
                scale_bits[j] = bits
                e = p * scale[j]  # exp(-|v|)
                s = np.float32(1.0) / (np.float32(1.0) + e)
                sig[j] = s if v >= np.float32(0.0) else e * s
                v = max(v, np.float32(0.0)) + _log1p_unit(e)
            deltas[j] = v
        for j in range(m):
            for k in range(A_row.shape[0]):
                p, bits = _exp_parts(deltas[j] * A_row[k])
                decay_bits[j, k] = bits
                decay[j, k] = p * decay[j, k]

    @_jit(parallel=True, fastmath=True)
    def _forward(u, dt, A, Bt, Ct, D, z, bias, softplus, has_z, chunk, out, y_pre, starts, last):  # pragma: no cover
        """Per row and chunk of ``chunk`` steps: the decays and drives of every step at once
        (SIMD), then the recurrence (multiply-adds only).  ``Bt, Ct``: ``(b, g, l, n)``."""
        b, d, L = u.shape
        n = A.shape[1]
        per_group = d // Bt.shape[1]
        for r in prange(b * d):
            bi, di = r // d, r % d
            gi = di // per_group
            h = np.zeros(n, dtype=np.float32)
            decay = np.empty((chunk, n), dtype=np.float32)
            scale = np.empty(chunk, dtype=np.float32)
            deltas = np.empty(chunk, dtype=np.float32)
            sig = np.empty(chunk, dtype=np.float32)
            scale_bits, decay_bits = scale.view(np.int32), decay.view(np.int32)
            for t0 in range(0, L, chunk):
                m = min(chunk, L - t0)
                starts[bi, di, t0 // chunk, :] = h
                _chunk_steps(dt[bi, di], bias[di], A[di], t0, m, softplus, deltas, sig, scale, scale_bits, decay, decay_bits)
                for j in range(m):  # the recurrence
                    t = t0 + j
                    x = deltas[j] * u[bi, di, t]
                    acc = np.float32(0.0)
                    for k in range(n):
                        h[k] = decay[j, k] * h[k] + x * Bt[bi, gi, t, k]
                        acc += h[k] * Ct[bi, gi, t, k]
                    y = acc + D[di] * u[bi, di, t]
                    if has_z:
                        y_pre[bi, di, t] = y
                        zz = z[bi, di, t]
                        y = y * zz / (np.float32(1.0) + np.float32(math.exp(-zz)))
                    out[bi, di, t] = y
            last[bi, di, :] = h

    @_jit(parallel=True, fastmath=True)
    def _backward(  # pragma: no cover
        u, dt, A, B, C, D, z, bias, softplus, has_z, chunk, starts, y_pre, gout, blocks,
        du, ddt, dz, dA_part, dD_part, dbias_part, dB_part, dC_part,
    ):
        b, d, L = u.shape
        n = A.shape[1]
        g = B.shape[1]
        per_group = d // g
        per_block = (per_group + blocks - 1) // blocks
        n_chunks = (L + chunk - 1) // chunk
        for task in prange(b * g * blocks):
            bi = task // (g * blocks)
            gi = (task // blocks) % g
            p = task % blocks
            hs = np.zeros((chunk + 1, n), dtype=np.float32)
            decay = np.zeros((chunk, n), dtype=np.float32)
            deltas = np.zeros(chunk, dtype=np.float32)
            sig = np.zeros(chunk, dtype=np.float32)
            scale = np.zeros(chunk, dtype=np.float32)
            scale_bits, decay_bits = scale.view(np.int32), decay.view(np.int32)
            carry = np.zeros(n, dtype=np.float32)
            lo = gi * per_group + p * per_block
            hi = min(lo + per_block, (gi + 1) * per_group)
            for di in range(lo, hi):
                carry[:] = 0.0
                for c in range(n_chunks - 1, -1, -1):
                    t0 = c * chunk
                    m = min(chunk, L - t0)
                    hs[0, :] = starts[bi, di, c, :]
                    _chunk_steps(dt[bi, di], bias[di], A[di], t0, m, softplus, deltas, sig, scale, scale_bits, decay, decay_bits)
                    for j in range(m):  # recompute the states inside this chunk
                        t = t0 + j
                        x = deltas[j] * u[bi, di, t]
                        for k in range(n):
                            hs[j + 1, k] = decay[j, k] * hs[j, k] + x * B[bi, gi, k, t]
                    for j in range(m - 1, -1, -1):  # adjoint recurrence
                        t = t0 + j
                        go = gout[bi, di, t]
                        if has_z:
                            zz = z[bi, di, t]
                            sg = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-zz)))
                            dz[bi, di, t] = go * y_pre[bi, di, t] * sg * (np.float32(1.0) + zz * (np.float32(1.0) - sg))
                            dy = go * zz * sg
                        else:
                            dy = go
                        ut = u[bi, di, t]
                        delta = deltas[j]
                        dD_part[bi, di] += dy * ut
                        du_t = dy * D[di]
                        ddelta = np.float32(0.0)
                        for k in range(n):
                            lam = carry[k] + dy * C[bi, gi, k, t]
                            dC_part[bi, gi, p, k, t] += dy * hs[j + 1, k]
                            a = decay[j, k]
                            da = lam * hs[j, k] * a
                            ddelta += da * A[di, k] + lam * B[bi, gi, k, t] * ut
                            dA_part[bi, di, k] += da * delta
                            dB_part[bi, gi, p, k, t] += lam * delta * ut
                            du_t += lam * delta * B[bi, gi, k, t]
                            carry[k] = a * lam
                        du[bi, di, t] = du_t
                        if softplus:
                            ddelta = ddelta * sig[j]
                        ddt[bi, di, t] = ddelta
                        dbias_part[bi, di] += ddelta


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _blocks(b: int, g: int, per_group: int) -> int:
    """Split each group's channels so that there are about twice as many tasks as threads."""
    threads = numba.get_num_threads()
    return max(1, min(per_group, -(-2 * threads // (b * g))))


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus: bool):  # type: ignore[override]
        b, d, L = u.shape
        n = A.shape[1]
        arrays = [_np(x) for x in (u, delta, A, B, C)]
        Dn = _np(D) if D is not None else np.zeros(d, np.float32)
        zn = _np(z) if z is not None else np.zeros((1, 1, 1), np.float32)
        bn = _np(delta_bias) if delta_bias is not None else np.zeros(d, np.float32)
        out = np.empty((b, d, L), np.float32)
        y_pre = np.empty((b, d, L), np.float32) if z is not None else np.zeros((1, 1, 1), np.float32)
        starts = np.empty((b, d, -(-L // CHUNK), n), np.float32)
        last = np.empty((b, d, n), np.float32)
        Bt, Ct = (np.ascontiguousarray(x.transpose(0, 1, 3, 2)) for x in arrays[3:5])  # (b, g, l, n)
        _forward(*arrays[:3], Bt, Ct, Dn, zn, bn, softplus, z is not None, CHUNK, out, y_pre, starts, last)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.arrays = (arrays, Dn, zn, bn, starts, y_pre)
        ctx.softplus = softplus
        ctx.mark_non_differentiable(last_t := torch.from_numpy(last))
        return torch.from_numpy(out).to(u.dtype), last_t

    @staticmethod
    def backward(ctx, gout, _glast):  # type: ignore[override]
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        (un, dtn, An, Bn, Cn), Dn, zn, bn, starts, y_pre = ctx.arrays
        b, d, L = un.shape
        g, n = Bn.shape[1], An.shape[1]
        blocks = _blocks(b, g, d // g)
        du, ddt = np.empty_like(un), np.empty_like(dtn)
        dz = np.empty_like(un) if z is not None else np.zeros((1, 1, 1), np.float32)
        dA_part, dD_part, dbias_part = np.zeros((b, d, n), np.float32), np.zeros((b, d), np.float32), np.zeros((b, d), np.float32)
        dB_part = np.zeros((b, g, blocks, n, L), np.float32)
        dC_part = np.zeros((b, g, blocks, n, L), np.float32)
        _backward(
            un, dtn, An, Bn, Cn, Dn, zn, bn, ctx.softplus, z is not None, CHUNK, starts, y_pre, _np(gout), blocks,
            du, ddt, dz, dA_part, dD_part, dbias_part, dB_part, dC_part,
        )
        to = lambda arr, like: torch.from_numpy(arr).to(like.dtype)  # noqa: E731
        return (
            to(du, u), to(ddt, delta), to(dA_part.sum(0), A), to(dB_part.sum(2), B), to(dC_part.sum(2), C),
            to(dD_part.sum(0), D) if D is not None else None, to(dz, z) if z is not None else None,
            to(dbias_part.sum(0), delta_bias) if delta_bias is not None else None, None,
        )


def supports(u: Tensor, B: Tensor, C: Tensor) -> bool:
    """The fused kernel handles CPU tensors with per-step B and C (shared or grouped)."""
    return (
        AVAILABLE and u.device.type == "cpu" and B.dim() in (3, 4) and C.dim() == B.dim() and B.shape == C.shape
        and u.shape[1] % (1 if B.dim() == 3 else B.shape[1]) == 0
    )


def selective_scan_fused(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None, z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None, delta_softplus: bool = False, return_last_state: bool = False,
):
    """Selective scan with the fused CPU kernel (see :func:`supports`); same API as the reference."""
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    out, last = _FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out
