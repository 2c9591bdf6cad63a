"""The hybrid scan of HMNet's fusion block, with text as the "support" sequence.

The sequence read is ``[S, Q_1, S, Q_2, ...]``: the support tokens ``S`` (the text) are
scanned again before every chunk ``Q_j`` of ``every`` image tokens (support recapped), and the
image tokens of a chunk are read in parallel from the state the support left, without
updating it (query intercepted), so they depend on the text and not on each other::

    H_j = scan of S starting from H_{j-1}             (H_0 = 0)
    y_i = <C_i, exp(delta_i A) H_j + delta_i B_i u_i> + D u_i     for token i in chunk j

Shapes: image ``u, delta (..., d, l)``, ``B, C (..., n, l)``; support ``su, sdelta (..., d, t)``,
``sB (..., n, t)``; ``A (..., d, n)``, ``D (..., d)`` broadcast over the leading dims.  Deltas
are final (softplus applied); a support token with ``sdelta = 0`` is skipped (padding).
"""

from __future__ import annotations

import torch
from torch import Tensor


def hybrid_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    su: Tensor,
    sdelta: Tensor,
    sB: Tensor,
    every: int,
) -> Tensor:
    """Reference: the recurrence above as a plain loop (slow; for tests)."""
    length, t_len = u.shape[-1], su.shape[-1]
    h = u.new_zeros(*u.shape[:-1], A.shape[-1])  # (..., d, n)
    ys = []
    for i in range(length):
        if i % every == 0:
            for t in range(t_len):
                dt = sdelta[..., t, None]
                h = torch.exp(dt * A) * h + dt * sB[..., None, :, t] * su[..., t, None]
        dt = delta[..., i, None]
        hi = torch.exp(dt * A) * h + dt * B[..., None, :, i] * u[..., i, None]
        ys.append((hi * C[..., None, :, i]).sum(-1) + D * u[..., i])
    return torch.stack(ys, dim=-1)


def hybrid_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    su: Tensor,
    sdelta: Tensor,
    sB: Tensor,
    every: int,
) -> Tensor:
    """Loop-free form of :func:`hybrid_scan_ref` (same numbers, autograd-able).

    The support scan is linear in its start state: ``H_j = Lam * H_{j-1} + G`` with
    ``Lam = exp(sum_t sdelta_t A)`` and ``G`` the support's state from zero, so
    ``H_j = G * sum_{m<j} Lam^m``; every exponent is a sum of non-positive terms.
    """
    length = u.shape[-1]
    n_chunks = (length + every - 1) // every  # non-negative: the same under ONNX's truncating division
    sdA = sdelta.unsqueeze(-1) * A.unsqueeze(-2)  # (..., d, t, n)
    after = sdA.flip(-2).cumsum(-2).flip(-2) - sdA  # sum over later support tokens
    G = (torch.exp(after) * (sdelta * su).unsqueeze(-1) * sB.transpose(-1, -2).unsqueeze(-3)).sum(-2)  # (..., d, n)
    total = sdA.sum(-2)  # log Lam, (..., d, n)
    m = torch.arange(n_chunks, device=u.device, dtype=u.dtype)
    H = (G.unsqueeze(-1) * torch.exp(total.unsqueeze(-1) * m)).cumsum(-1)  # (..., d, n, chunks)
    H_tok = H.index_select(-1, torch.arange(length, device=u.device) // every)  # (..., d, n, l)
    dA = torch.exp(delta.unsqueeze(-2) * A.unsqueeze(-1))  # (..., d, n, l)
    h = dA * H_tok + (delta * u).unsqueeze(-2) * B.unsqueeze(-3)
    return (h * C.unsqueeze(-3)).sum(-2) + D.unsqueeze(-1) * u
