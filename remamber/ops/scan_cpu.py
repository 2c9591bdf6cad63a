"""The fused CPU selective scan: numba kernels for forward and backward, all cores.

One task per ``(batch, channel)`` row runs the recurrence along the sequence, a chunk of
``CHUNK`` steps at a time; nothing of size ``(b, d, n, l)`` is ever materialised.  Inside a
chunk, everything that does not depend on the previous state (``softplus`` and its derivative,
the decays ``exp(delta * A)`` by an inline polynomial, the drives, the output terms, the
gradient terms) is computed for all steps at once in loops that LLVM vectorises; what is left
serial is the recurrence itself, one multiply-add per step and state dimension.  Two forward
kernels: :func:`_forward_narrow` for ``d_state < 4`` (ReMamber's is 1) makes one pass per state
dimension for each step's delta, decay and drive; :func:`_forward` computes the deltas once and
interleaves four state dimensions.  When gradients are needed the forward keeps the state at
the start of every chunk (an inference call is compiled without it); the backward walks the
chunks in reverse, recomputes the states inside one chunk from its saved start with the
forward's arithmetic, and runs the adjoint recurrence.  Same semantics and fp32 arithmetic as
``selective_scan_ref``.

numba compiles the kernels on first use (cached on disk); without numba the PyTorch path in
``selective_scan.py`` is used instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from remamber.ops.numba_utils import AVAILABLE, numba

CHUNK = 64

if AVAILABLE:
    from numba import prange

    from remamber.ops.numba_utils import (
        LOG2E,
        fast_exp,
        fast_exp2,
        fast_sigmoid,
        fast_softplus,
        jit,
        prefer_512_bit_vectors,
    )

    @jit(inline="always")
    def _buffer(size):  # pragma: no cover
        """A per-chunk work buffer. One allocation each: as rows of one 2-D buffer, the passes
        that use them ran slower (BENCHMARKS.md, "Selective scan")."""
        return np.zeros(size, np.float32)

    @jit(inline="always")
    def _row(r, d, per_group):  # pragma: no cover
        """Batch, channel and B/C group of row ``r`` of a forward kernel."""
        return r // d, r % d, r % d // per_group

    @jit(inline="always", fastmath=True)
    def _states(deltas, a, x, Bs, decay, hs):  # pragma: no cover
        """One state dimension over one chunk: the decays ``exp(delta * a) = exp2(delta * a log2 e)``
        (SIMD), then the recurrence from ``hs[0]``, ``hs[j + 1]`` being the state after step ``j``."""
        m = Bs.shape[0]
        a2 = a * LOG2E
        for j in range(m):
            decay[j] = fast_exp2(deltas[j] * a2)
        h = hs[0]
        for j in range(m):
            h = decay[j] * h + x[j] * Bs[j]
            hs[j + 1] = h

    @jit(inline="always", fastmath=True)
    def _four_states(deltas, A_row, k, x, Bg, Cg, t0, t1, decay4, h, y):  # pragma: no cover
        """State dimensions ``k .. k+3`` over one chunk, adding their output terms to ``y``: four
        independent recurrences in one loop, so each hides the others' multiply-add latency."""
        m = t1 - t0
        for q in range(4):
            a2 = A_row[k + q] * LOG2E
            for j in range(m):
                decay4[q, j] = fast_exp2(deltas[j] * a2)
        d0, d1, d2, d3 = decay4[0], decay4[1], decay4[2], decay4[3]
        B0, B1, B2, B3 = Bg[k, t0:t1], Bg[k + 1, t0:t1], Bg[k + 2, t0:t1], Bg[k + 3, t0:t1]
        C0, C1, C2, C3 = Cg[k, t0:t1], Cg[k + 1, t0:t1], Cg[k + 2, t0:t1], Cg[k + 3, t0:t1]
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        for j in range(m):
            xj = x[j]
            h0 = d0[j] * h0 + xj * B0[j]
            h1 = d1[j] * h1 + xj * B1[j]
            h2 = d2[j] * h2 + xj * B2[j]
            h3 = d3[j] * h3 + xj * B3[j]
            y[j] += h0 * C0[j] + h1 * C1[j] + h2 * C2[j] + h3 * C3[j]
        h[k], h[k + 1], h[k + 2], h[k + 3] = h0, h1, h2, h3

    # The kernels below index one chunk through slices and hoist every per-row scalar: with
    # ``u[b, d, t0 + j]`` or ``D[d]`` inside a loop, numba's index wraparound and possible
    # aliasing keep LLVM from vectorising it.

    @jit(parallel=True, fastmath=True)
    def _forward(u, dt, A, B, C, D, z, bias, softplus, chunk, out, y_pre, starts, last):  # pragma: no cover
        """The forward for ``d_state >= 4``: per row and chunk of ``chunk`` steps, the deltas once,
        then four state dimensions at a time (:func:`_four_states`), the rest one by one.
        ``z``, ``y_pre`` and ``starts`` as in :func:`_forward_narrow`."""
        b, d, L = u.shape
        n = A.shape[1]
        per_group = d // B.shape[1]
        for r in prange(b * d):
            bi, di, gi = _row(r, d, per_group)
            Dd, bias_d = D[di], bias[di]
            quads = n // 4 * 4  # state dimensions run four at a time; the rest one by one
            h = np.zeros(n, dtype=np.float32)
            deltas, x, y, decay, hs = _buffer(chunk), _buffer(chunk), _buffer(chunk), _buffer(chunk), _buffer(chunk + 1)
            decay4 = np.empty((4, chunk), dtype=np.float32)
            for t0 in range(0, L, chunk):
                t1 = min(t0 + chunk, L)
                m = t1 - t0
                if starts is not None:
                    starts[bi, di, t0 // chunk, :] = h
                us, dts = u[bi, di, t0:t1], dt[bi, di, t0:t1]
                for j in range(m):
                    v = dts[j] + bias_d
                    if softplus:
                        v = fast_softplus(v, fast_exp(-abs(v)))
                    deltas[j] = v
                    x[j] = v * us[j]
                    y[j] = Dd * us[j]
                for k in range(0, quads, 4):
                    _four_states(deltas, A[di], k, x, B[bi, gi], C[bi, gi], t0, t1, decay4, h, y)
                for k in range(quads, n):
                    hs[0] = h[k]
                    _states(deltas, A[di, k], x, B[bi, gi, k, t0:t1], decay, hs)
                    h[k] = hs[m]
                    Cs = C[bi, gi, k, t0:t1]
                    for j in range(m):
                        y[j] += hs[j + 1] * Cs[j]
                outs = out[bi, di, t0:t1]
                if z is not None:
                    zs, pre = z[bi, di, t0:t1], y_pre[bi, di, t0:t1]
                    for j in range(m):
                        pre[j] = y[j]
                        outs[j] = y[j] * zs[j] * fast_sigmoid(zs[j])
                else:
                    for j in range(m):
                        outs[j] = y[j]
            last[bi, di, :] = h

    @jit(inline="always", fastmath=True)
    def _one_state(dts, us, Bs, bias, a, softplus, h, decay, drive, hs):  # pragma: no cover
        """One state dimension over one chunk from state ``h``: every step's delta, decay
        ``exp2(delta * a log2 e)`` and drive in one pass (SIMD), then the recurrence, ``hs[j]``
        being the state after step ``j``; returns the last state."""
        m = us.shape[0]
        a2 = a * LOG2E
        for j in range(m):
            v = dts[j] + bias
            if softplus:
                v = fast_softplus(v, fast_exp(-abs(v)))
            decay[j] = fast_exp2(v * a2)
            drive[j] = v * us[j] * Bs[j]
        for j in range(m):
            h = decay[j] * h + drive[j]
            hs[j] = h
        return h

    @jit(parallel=True, fastmath=True)
    def _forward_narrow(u, dt, A, B, C, D, z, bias, softplus, chunk, out, y_pre, starts, last):  # pragma: no cover
        """The forward for ``d_state < 4`` (ReMamber's is 1): per row and chunk, each state
        dimension in :func:`_one_state`, then one SIMD pass adds its output terms; softplus is
        computed again per state dimension. ``z`` (with ``y_pre``, the output before the gate) and
        ``starts`` may be None: numba compiles a variant without them."""
        b, d, L = u.shape
        n = A.shape[1]
        per_group = d // B.shape[1]
        for r in prange(b * d):
            prefer_512_bit_vectors()
            bi, di, gi = _row(r, d, per_group)
            ur, dtr, outr = u[bi, di], dt[bi, di], out[bi, di]
            Dd, bias_d = D[di], bias[di]
            if z is None:
                yr = outr
            else:
                yr = y_pre[bi, di]
            h = np.zeros(n, dtype=np.float32)
            decay, drive, hs = _buffer(chunk), _buffer(chunk), _buffer(chunk)
            for t0 in range(0, L, chunk):
                t1 = min(t0 + chunk, L)
                m = t1 - t0
                if starts is not None:
                    starts[bi, di, t0 // chunk, :] = h
                us, dts, ys = ur[t0:t1], dtr[t0:t1], yr[t0:t1]
                h[0] = _one_state(dts, us, B[bi, gi, 0, t0:t1], bias_d, A[di, 0], softplus, h[0], decay, drive, hs)
                Cs = C[bi, gi, 0, t0:t1]
                for j in range(m):
                    ys[j] = hs[j] * Cs[j] + Dd * us[j]
                for k in range(1, n):
                    h[k] = _one_state(dts, us, B[bi, gi, k, t0:t1], bias_d, A[di, k], softplus, h[k], decay, drive, hs)
                    Cs = C[bi, gi, k, t0:t1]
                    for j in range(m):
                        ys[j] += hs[j] * Cs[j]
                if z is not None:
                    zs, outs = z[bi, di, t0:t1], outr[t0:t1]
                    for j in range(m):
                        outs[j] = ys[j] * zs[j] * fast_sigmoid(zs[j])
            last[bi, di, :] = h

    @jit(parallel=True, fastmath=True)
    def _backward(  # pragma: no cover
        u,
        dt,
        A,
        B,
        C,
        D,
        z,
        bias,
        softplus,
        chunk,
        starts,
        y_pre,
        gout,
        blocks,
        du,
        ddt,
        dz,
        dA_part,
        dD_part,
        dbias_part,
        dB_part,
        dC_part,
    ):
        """Chunks in reverse; inside one, per state dimension: recompute the states from the
        chunk's saved start, run the adjoint recurrence, then every gradient term at once (SIMD).
        Without a gate ``z``, ``y_pre`` and ``dz`` are None."""
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
            deltas, sig, x, dy = _buffer(chunk), _buffer(chunk), _buffer(chunk), _buffer(chunk)
            lam, d_u, d_delta, decay = _buffer(chunk), _buffer(chunk), _buffer(chunk), _buffer(chunk)
            hs = np.zeros(chunk + 1, dtype=np.float32)
            carry = np.zeros(n, dtype=np.float32)
            lo = gi * per_group + p * per_block
            hi = min(lo + per_block, (gi + 1) * per_group)
            for di in range(lo, hi):
                Dd = D[di]
                carry[:] = 0.0
                dD_acc = np.float32(0.0)
                dbias_acc = np.float32(0.0)
                for c in range(n_chunks - 1, -1, -1):
                    t0 = c * chunk
                    t1 = min(t0 + chunk, L)
                    m = t1 - t0
                    us, gs = u[bi, di, t0:t1], gout[bi, di, t0:t1]
                    if z is None:
                        dyc = gs
                    else:  # the output gate
                        zs, pre, dzs = z[bi, di, t0:t1], y_pre[bi, di, t0:t1], dz[bi, di, t0:t1]
                        for j in range(m):
                            sg = fast_sigmoid(zs[j])
                            dzs[j] = gs[j] * pre[j] * sg * (np.float32(1.0) + zs[j] * (np.float32(1.0) - sg))
                            dy[j] = gs[j] * zs[j] * sg
                        dyc = dy
                    dts, bias_d = dt[bi, di, t0:t1], bias[di]
                    for j in range(m):  # the deltas, and the terms that skip the state
                        v = dts[j] + bias_d
                        if softplus:
                            e = fast_exp(-abs(v))
                            s = np.float32(1.0) / (np.float32(1.0) + e)
                            sig[j] = s if v >= np.float32(0.0) else e * s
                            v = fast_softplus(v, e)
                        deltas[j] = v
                        x[j] = v * us[j]
                        dD_acc += dyc[j] * us[j]
                        d_u[j] = dyc[j] * Dd
                        d_delta[j] = np.float32(0.0)
                    for k in range(n):
                        a = A[di, k]
                        Bs, Cs = B[bi, gi, k, t0:t1], C[bi, gi, k, t0:t1]
                        dBs, dCs = dB_part[bi, gi, p, k, t0:t1], dC_part[bi, gi, p, k, t0:t1]
                        hs[0] = starts[bi, di, c, k]
                        _states(deltas, a, x, Bs, decay, hs)
                        # the adjoint recurrence lam_j = decay_{j+1} lam_{j+1} + dy_j C_j, one
                        # multiply-add per step on the serial chain
                        lam_k = carry[k] + dyc[m - 1] * Cs[m - 1]
                        lam[m - 1] = lam_k
                        for j in range(m - 2, -1, -1):
                            lam_k = decay[j + 1] * lam_k + dyc[j] * Cs[j]
                            lam[j] = lam_k
                        carry[k] = decay[0] * lam_k
                        dA_acc = np.float32(0.0)
                        for j in range(m):
                            da = lam[j] * hs[j] * decay[j]
                            dA_acc += da * deltas[j]
                            d_delta[j] += da * a + lam[j] * Bs[j] * us[j]
                            d_u[j] += lam[j] * deltas[j] * Bs[j]
                            dBs[j] += lam[j] * x[j]
                            dCs[j] += dyc[j] * hs[j + 1]
                        dA_part[bi, di, k] += dA_acc
                    dus, ddts = du[bi, di, t0:t1], ddt[bi, di, t0:t1]
                    for j in range(m):
                        g_dt = d_delta[j] * sig[j] if softplus else d_delta[j]
                        dus[j] = d_u[j]
                        ddts[j] = g_dt
                        dbias_acc += g_dt
                dD_part[bi, di] += dD_acc
                dbias_part[bi, di] += dbias_acc


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


PAGE = 4096  # bytes
OUTPUT_LAG = 256  # bytes past the delta stream, modulo PAGE, where the forward's outputs start


def _empty_near(shape: tuple, stream: np.ndarray, lag: int = OUTPUT_LAG) -> np.ndarray:
    """An uninitialised float32 array whose data starts ``lag`` bytes past ``stream``'s, modulo a page.

    The forward writes its output row by row in step with reading ``u`` and ``delta``. Where the
    output sits within a 4 KiB page relative to them changes its time: it is faster close behind
    ``delta`` (BENCHMARKS.md, "Output placement"); the inputs come as they are, the output can be
    placed.
    """
    size = int(np.prod(shape))
    raw = np.empty(size + PAGE // 4, np.float32)
    skip = (stream.ctypes.data + lag - raw.ctypes.data) % PAGE // 4
    return raw[skip : skip + size].reshape(shape)


def _blocks(b: int, g: int, per_group: int) -> int:
    """Split each group's channels so that there are about twice as many tasks as threads."""
    threads = numba.get_num_threads()
    return max(1, min(per_group, -(-2 * threads // (b * g))))


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus: bool, keep_starts: bool):  # type: ignore[override]
        b, d, L = u.shape
        n = A.shape[1]
        arrays = [_np(x) for x in (u, delta, A, B, C)]
        Dn = _np(D) if D is not None else np.zeros(d, np.float32)
        zn = _np(z) if z is not None else None
        bn = _np(delta_bias) if delta_bias is not None else np.zeros(d, np.float32)
        out = _empty_near((b, d, L), arrays[1])
        y_pre = _empty_near((b, d, L), arrays[1], 2 * OUTPUT_LAG) if z is not None else None
        # the state at each chunk's start, for the backward; a call without gradients skips it
        starts = np.empty((b, d, -(-L // CHUNK), n), np.float32) if keep_starts else None
        last = np.empty((b, d, n), np.float32)
        _forward_kernel(n)(*arrays, Dn, zn, bn, softplus, CHUNK, out, y_pre, starts, last)
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
        dz = np.empty_like(un) if z is not None else None
        dA_part, dD_part, dbias_part = (
            np.zeros((b, d, n), np.float32),
            np.zeros((b, d), np.float32),
            np.zeros((b, d), np.float32),
        )
        dB_part = np.zeros((b, g, blocks, n, L), np.float32)
        dC_part = np.zeros((b, g, blocks, n, L), np.float32)
        _backward(
            un,
            dtn,
            An,
            Bn,
            Cn,
            Dn,
            zn,
            bn,
            ctx.softplus,
            CHUNK,
            starts,
            y_pre,
            _np(gout),
            blocks,
            du,
            ddt,
            dz,
            dA_part,
            dD_part,
            dbias_part,
            dB_part,
            dC_part,
        )
        to = lambda arr, like: torch.from_numpy(arr).to(like.dtype)  # noqa: E731
        return (
            to(du, u),
            to(ddt, delta),
            to(dA_part.sum(0), A),
            to(dB_part.sum(2), B),
            to(dC_part.sum(2), C),
            to(dD_part.sum(0), D) if D is not None else None,
            to(dz, z) if z is not None else None,
            to(dbias_part.sum(0), delta_bias) if delta_bias is not None else None,
            None,
            None,
        )


def _forward_kernel(d_state: int):
    """The forward kernel for this state size."""
    return _forward_narrow if d_state < 4 else _forward


def compiled(d_state: int) -> bool:
    """Whether this process already has the forward kernel for ``d_state`` (compiled, or loaded
    from the disk cache)."""
    return AVAILABLE and bool(_forward_kernel(d_state).signatures)


def preload(d_state: int) -> bool:
    """Bring the forward kernel for ``d_state`` into this process (compile it, or load it from the
    disk cache) with one tiny call, so that every later CPU inference call of that size takes it:
    for a run of many calls, where the dispatcher would otherwise keep small ones on the chunked
    path. Returns whether the kernel is available."""
    if not AVAILABLE:
        return False
    if not compiled(d_state):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(1, 1, 4, generator=g)
        bc = torch.randn(1, 1, d_state, 4, generator=g)
        with torch.no_grad():
            selective_scan_fused(u, u, -torch.ones(1, d_state), bc, bc, delta_softplus=True)
    return True


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether a call on these tensors builds an autograd graph (grad mode on, a tensor requiring grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def supports(u: Tensor, B: Tensor, C: Tensor) -> bool:
    """The fused kernel handles CPU tensors with per-step B and C (shared or grouped)."""
    return (
        AVAILABLE
        and u.device.type == "cpu"
        and B.dim() in (3, 4)
        and C.dim() == B.dim()
        and B.shape == C.shape
        and u.shape[1] % (1 if B.dim() == 3 else B.shape[1]) == 0
    )


def selective_scan_fused(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with the fused CPU kernel (see :func:`supports`); same API as the reference."""
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    out, last = _FusedScan.apply(*inputs, delta_softplus, needs_grad(*inputs))
    return (out, last) if return_last_state else out
