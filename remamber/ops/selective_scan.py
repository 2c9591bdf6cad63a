"""The selective scan (Mamba S6) with the semantics of mamba_ssm's ``selective_scan_ref``.

Shapes: ``u, delta: (b, d, l)``; ``A: (d, n)``; ``B, C: (d, n)`` (time-invariant), ``(b, n, l)``
or ``(b, g, n, l)`` (``g`` groups of ``d // g`` channels); ``D: (d,)``; ``z: (b, d, l)``;
``delta_bias: (d,)``.  With ``delta <- softplus(delta + delta_bias)`` when asked::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,      out = y * silu(z)  (when z is given)

Five implementations sit behind :func:`selective_scan`:

* :func:`selective_scan_ref` -- the plain loop over ``l``, kept as the reference for tests;
* :func:`remamber.ops.scan_cpu.selective_scan_fused` -- fused numba kernels for CPU tensors
  with per-step B and C (the default on CPU; forward and backward);
* :func:`selective_scan_chunked` -- plain PyTorch (other CPU cases, or ``REMAMBER_SCAN=torch``): the same recurrence
  run inside chunks of ~sqrt(l) steps for all chunks at once, with the exact state carried
  from chunk to chunk.  It only ever multiplies by decays ``exp(delta * A) <= 1``, so it
  cannot overflow the way a scan that divides by ``exp(cumsum(delta * A))`` does;
* :func:`selective_scan_parallel` -- plain PyTorch with no Python loop over time, for ONNX
  export: the sequence is cut into chunks; inside a chunk every state is a decay-weighted sum
  of the drives, the weights coming from a lower-triangular matrix of partial sums of
  ``delta * A`` (built by a masked cumsum, so each exponent is a sum of non-positive terms and
  nothing is ever subtracted); the same matrix over the chunk totals gives the state entering
  each chunk.  A fixed number of tensor ops whatever ``l``; memory ``O(b*d*n*(l*T + (l/T)^2))``;
* mamba-ssm's CUDA kernel, used for CUDA tensors when ``mamba_ssm`` imports (lazily).

``REMAMBER_SCAN=torch`` or ``ref`` forces that path on the CPU (for benchmarks and debugging);
``REMAMBER_SCAN=parallel``, or a ``with scan_backend("parallel"):`` block (which takes precedence
over the variable), selects the loop-free path on every device, CUDA included.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from remamber.ops import scan_cpu


def _prepare(u: Tensor, delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> tuple[Tensor, Tensor]:
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta


def _grouped(x: Tensor) -> Tensor:
    """B or C as ``(b, g, n, l)``; a time-invariant ``(d, n)`` becomes ``(1, d, n, 1)``."""
    if x.dim() == 2:
        return x.float()[None, :, :, None]
    if x.dim() == 3:
        return x.float()[:, None]
    return x.float()


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype)


def selective_scan_ref(
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
    """Reference selective scan: a plain loop over the sequence (slow; for tests)."""
    dtype = u.dtype
    b, d, length = u.shape
    u, delta = _prepare(u, delta, delta_bias, delta_softplus)
    A = A.float()
    Bg, Cg = _grouped(B), _grouped(C)
    g = Bg.shape[1]
    # (b, d, n, l) views of B and C, each group serving d // g channels
    Bd = Bg.repeat_interleave(d // g, dim=1) if g != d else Bg
    Cd = Cg.repeat_interleave(d // Cg.shape[1], dim=1) if Cg.shape[1] != d else Cg
    decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, l)
    drive = (delta * u)[:, :, None, :] * Bd  # (b, d, n, l)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(length):
        h = decay[..., t] * h + drive[..., min(t, drive.shape[-1] - 1)]
        ys.append((h * Cd[..., min(t, Cd.shape[-1] - 1)]).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = _finish(y, u, D, z, dtype)
    return (out, h) if return_last_state else out


def _chunk_len(length: int) -> int:
    return max(1, int(math.ceil(math.sqrt(length))))


def _parallel_chunk_len(length: int) -> int:
    """Chunk length of the loop-free scan: its work per channel is about ``l*T + (l/T)**2``,
    least near ``T = (2l)**(1/3)``."""
    return max(1, int(round((2 * length) ** (1 / 3))))


def selective_scan_chunked(
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
    chunk: int | None = None,
):
    """Selective scan in PyTorch: ~3*sqrt(l) vectorised steps instead of ``l``; autograd-able.

    Pass 1 runs the recurrence from a zero state inside every chunk at once and records each
    chunk's end state and total decay; a short loop over chunks turns those into the exact
    state entering each chunk; pass 2 reruns the recurrence from those states and reads ``y``.
    """
    dtype = u.dtype
    b, d, length = u.shape
    n = A.shape[1]
    u, delta = _prepare(u, delta, delta_bias, delta_softplus)
    T = chunk or _chunk_len(length)
    nc = -(-length // T)
    pad = nc * T - length

    def steps(x: Tensor) -> Tensor:  # (..., l) -> (T, ..., nc): contiguous per-step slices
        if x.shape[-1] == 1:
            return x.unsqueeze(0).expand(T, *x.shape)
        if pad:
            x = F.pad(x, (0, pad))  # delta = 0 in the padding: decay 1, drive 0
        x = x.reshape(*x.shape[:-1], nc, T)
        return x.movedim(-1, 0).contiguous()

    Bg, Cg = _grouped(B), _grouped(C)
    gB, gC = Bg.shape[1], Cg.shape[1]
    dt_s, u_s = steps(delta), steps(u)  # (T, b, d, nc)
    B_s, C_s = steps(Bg), steps(Cg)  # (T, b|1, g, n, nc|1)
    A4 = A.float()[None, :, :, None]  # (1, d, n, 1)

    def per_channel(x: Tensor, groups: int) -> Tensor:  # (b, g, n, nc) -> (b, d, n, nc) view-like
        if groups == d:
            return x
        return x.repeat_interleave(d // groups, dim=1)

    def step(h: Tensor, t: int) -> Tensor:
        dt = dt_s[t][:, :, None, :]  # (b, d, 1, nc)
        drive = (dt * u_s[t][:, :, None, :]) * per_channel(B_s[t], gB)
        return torch.exp(dt * A4) * h + drive

    # pass 1: zero-state scan inside every chunk, plus each chunk's total decay
    h = u.new_zeros(b, d, n, nc)
    for t in range(T):
        h = step(h, t)
    total_decay = torch.exp(A4 * dt_s.sum(0)[:, :, None, :])  # (b, d, n, nc)
    # carry: exact state entering each chunk
    carry = [u.new_zeros(b, d, n)]
    for c in range(nc - 1):
        carry.append(total_decay[..., c] * carry[-1] + h[..., c])
    last = total_decay[..., nc - 1] * carry[-1] + h[..., nc - 1]
    # pass 2: rerun each chunk from its true start state and read out y
    h = torch.stack(carry, dim=-1)
    ys = []
    for t in range(T):
        h = step(h, t)
        ys.append((h * per_channel(C_s[t], gC)).sum(2))  # (b, d, nc)
    y = torch.stack(ys, dim=-1).reshape(b, d, nc * T)[..., :length]
    out = _finish(y, u, D, z, dtype)
    return (out, last) if return_last_state else out


def _segsum_weights(a: Tensor) -> Tensor:
    """``exp`` of the segment sums of ``a`` (``..., T``) as a lower-triangular ``(..., T, T)`` matrix.

    Entry ``[t, s]`` is ``exp(a[s+1] + ... + a[t])`` for ``s <= t`` and 0 above the diagonal.  The
    sums come from a cumsum of ``a`` repeated along a new axis with the entries ``r <= s`` masked
    to 0, so they are sums of non-positive terms (never a difference of two long prefix sums), and
    the upper triangle is zeroed after ``exp``: no ``-inf`` enters the graph or its gradient.
    """
    above, on_or_above = _upper_masks(int(a.shape[-1]), a.device)
    sums = a[..., :, None].masked_fill(on_or_above, 0.0).cumsum(-2)  # [t, s] = sum_{s<r<=t} a[r]
    return torch.exp(sums).masked_fill(above, 0.0)


def _upper_masks(T: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Boolean ``(T, T)`` masks of ``s > t`` and ``s >= t``, built outside autograd and tracing."""
    # from numpy, so that an ONNX trace stores them as two constants rather than mask-building ops
    above = torch.from_numpy(np.triu(np.ones((T, T), dtype=bool), 1)).to(device)
    return above, above | torch.from_numpy(np.eye(T, dtype=bool)).to(device)


def selective_scan_parallel(
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
    chunk: int | None = None,
):
    """Loop-free selective scan (chunked segment sums); exports to ONNX as a small fixed graph.

    With log-decays ``a = delta * A <= 0`` and drives ``x = delta * B * u``, the sequence is
    padded (``delta = 0``: decay 1, drive 0) to ``K`` chunks of ``T`` steps.  Inside each chunk
    ``h = W(a) @ x`` from a zero state, ``W`` being the segment-sum weights; ``W`` of the chunk
    totals applied to the chunk end states gives the exact state at the end of every chunk,
    which, decayed by ``exp(cumsum(a))`` inside the next chunk, is added before ``y`` is read.

    Sizes other than the batch are read as Python ints (constants in an ONNX trace), and only
    ``reshape(-1, ...)`` is used to regroup, so the exported graph keeps a dynamic batch axis.
    """
    dtype = u.dtype
    d, length, n = int(u.shape[1]), int(u.shape[2]), int(A.shape[1])
    u, delta = _prepare(u, delta, delta_bias, delta_softplus)
    T = chunk or _parallel_chunk_len(length)
    K = -(-length // T)
    pad = (0, K * T - length)
    Bg, Cg = _grouped(B), _grouped(C)
    gB, gC = int(Bg.shape[1]), int(Cg.shape[1])
    a = delta[:, :, None, :] * A.float()[:, :, None]  # (b, d, n, l) log-decays, <= 0
    x = ((delta * u).reshape(-1, gB, d // gB, 1, length) * Bg[:, :, None]).reshape(-1, d, n, length)
    if pad[1]:  # (on a and x only: fewer pad nodes in an ONNX graph)
        a, x = F.pad(a, pad), F.pad(x, pad)
    a, x = a.reshape(-1, d, n, K, T), x.reshape(-1, d, n, K, T)

    h = (_segsum_weights(a) @ x[..., None]).squeeze(-1)  # states inside each chunk from a zero start
    ends = (_segsum_weights(a.sum(-1)) @ h[..., -1:]).squeeze(-1)  # (b, d, n, K): exact chunk end states
    shift = torch.from_numpy(np.eye(K, k=1, dtype=np.float32)).to(ends.device)
    entering = ends @ shift  # entering[k] = ends[k - 1], entering[0] = 0 (exact: one term times 1)
    h = (h + torch.exp(a.cumsum(-1)) * entering[..., None]).reshape(-1, gC, d // gC, n, K * T)[..., :length]
    y = (h * Cg[:, :, None]).sum(-2).reshape(-1, d, length)
    out = _finish(y, u, D, z, dtype)
    return (out, ends[..., -1]) if return_last_state else out


@functools.lru_cache(maxsize=1)
def _mamba_cuda_kernel() -> Callable | None:
    """mamba-ssm's fused CUDA selective scan, or None when it does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or no CUDA build / triton on this machine
        return None
    return selective_scan_fn


BACKENDS = ("auto", "torch", "ref", "parallel")
_backend_override: str | None = None  # set by scan_backend(); consulted before REMAMBER_SCAN


@contextlib.contextmanager
def scan_backend(name: str) -> Iterator[None]:
    """Use scan backend ``name`` (one of :data:`BACKENDS`) inside the block, e.g. for ONNX export.

    The choice is a module-level setting (it takes precedence over ``REMAMBER_SCAN``), so it holds
    for every thread while the block runs; blocks nest and the previous choice is restored on exit.
    """
    global _backend_override
    if name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; expected one of {', '.join(BACKENDS)}")
    previous, _backend_override = _backend_override, name
    try:
        yield
    finally:
        _backend_override = previous


def current_backend() -> str:
    """The scan backend in force: the innermost :func:`scan_backend` block, else ``REMAMBER_SCAN``."""
    return _backend_override or os.environ.get("REMAMBER_SCAN", "auto")


def selective_scan(
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
    """Selective scan, dispatched: mamba-ssm on CUDA; on CPU the fused kernel for training and
    large inference calls (see :func:`_worth_compiling`), else the chunked PyTorch path.

    Backend ``parallel`` (see :func:`scan_backend`) selects :func:`selective_scan_parallel` on
    every device; ``torch`` and ``ref`` apply on the CPU only.
    """
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
    backend = current_backend()
    if backend == "parallel":
        return selective_scan_parallel(u, delta, A, B, C, **kwargs)
    if u.is_cuda:
        kernel = _mamba_cuda_kernel()
        if kernel is not None:
            return kernel(
                u.contiguous(),
                delta.contiguous(),
                A.contiguous(),
                B.contiguous(),
                C.contiguous(),
                D=None if D is None else D.float(),
                z=z,
                delta_bias=None if delta_bias is None else delta_bias.float(),
                delta_softplus=delta_softplus,
                return_last_state=return_last_state,
            )
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, **kwargs)
    if backend != "torch" and scan_cpu.supports(u, B, C) and _worth_compiling(u, A, delta, B, C, D, z, delta_bias):
        return scan_cpu.selective_scan_fused(u, delta, A, B, C, **kwargs)
    return selective_scan_chunked(u, delta, A, B, C, **kwargs)


# Without gradients, scans smaller than this many state updates run the chunked PyTorch path
# until the fused kernel is in the process: the kernel is several times faster, but its one-time
# JIT compilation (seconds, cached on disk afterwards, and loading it from there still costs a
# noticeable part of a small call: BENCHMARKS.md, "Selective scan") is not worth it for a small
# model's first CLI call. Once a large call or :func:`scan_cpu.preload` (what the
# commands that make many calls run first) has brought the kernel in, every call uses it.
FUSED_MIN_INFERENCE = 1 << 22


def _worth_compiling(u: Tensor, A: Tensor, *others: Tensor | None) -> bool:
    """The fused kernel for every training call, for inference calls of at least
    :data:`FUSED_MIN_INFERENCE` state updates (``b * d * l * n``), and for every call once the
    kernel is compiled in this process."""
    if scan_cpu.needs_grad(u, A, *others):
        return True
    return u.numel() * A.shape[1] >= FUSED_MIN_INFERENCE or scan_cpu.compiled(A.shape[1])
