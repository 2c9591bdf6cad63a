"""SS2D: the 2-D selective-scan mixer of VMamba (cross-scan in 4 orders, scan, merge).

Follows VMamba's "v05" layout used by ReMamber: the input projection, a depthwise conv,
SiLU, ``x_proj`` / ``dt_proj`` as grouped 1x1 projections over the K=4 scan orders, the
selective scan, a LayerNorm over channels and the output projection.  ``gate=True`` keeps
the z-gate (``in_proj`` yields ``x`` and ``z``; ``y * silu(z)``), as the Twister's channel
scan does; VMamba's "noz" blocks run without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.layers import LayerNorm2d, Linear2d
from remamber.ops import cross_merge, cross_scan, selective_scan

K_DIRECTIONS = 4


def dt_rank_for(d_model: int, dt_rank: int | str) -> int:
    """``"auto"`` means ceil(d_model / 16), as in Mamba and VMamba."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


def dt_bias_init(*shape: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> Tensor:
    """Mamba's ``delta`` bias: inverse softplus of steps log-uniform in ``[dt_min, dt_max]``."""
    dt = torch.exp(torch.rand(*shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def a_log_init(rows: int, d_state: int) -> Tensor:
    """Mamba's S4D-real ``A_log``: ``log(1..d_state)`` on every row."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(rows, 1))


class SS2D(nn.Module):
    """2-D selective scan over a ``(b, c, h, w)`` map; returns ``(b, d_model, h, w)``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        gate: bool = False,
        d_in: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        rank = dt_rank_for(d_model, dt_rank)
        self.d_inner, self.d_state, self.dt_rank, self.gate = d_inner, d_state, rank, gate
        self.in_proj = Linear2d(d_in or d_model, d_inner * (2 if gate else 1), bias=False)
        self.act = nn.SiLU()
        self.conv2d = (
            nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
            if d_conv > 1
            else None
        )
        K = K_DIRECTIONS
        x_proj = torch.empty(K, rank + 2 * d_state, d_inner)
        for k in range(K):  # nn.Linear's default init, one per direction
            nn.init.kaiming_uniform_(x_proj[k], a=math.sqrt(5))
        self.x_proj_weight = nn.Parameter(x_proj)
        std = rank**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, rank).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(dt_bias_init(K, d_inner, dt_min=dt_min, dt_max=dt_max, floor=dt_init_floor))
        self.A_logs = nn.Parameter(a_log_init(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(K * d_inner))
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=False)

    def project(self, xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-direction ``delta`` (before softplus), ``B`` and ``C`` of sequences ``xs (b, K, d, l)``.

        Batched matmuls (faster than grouped 1x1 convs on CPU); shapes ``(b, K, d, l)``,
        ``(b, K, N, l)``, ``(b, K, N, l)``.
        """
        x_dbl = torch.matmul(self.x_proj_weight, xs)  # (b, K, R + 2N, l)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        return torch.matmul(self.dt_projs_weight, dts), Bs.contiguous(), Cs.contiguous()

    def scan(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        """The core: cross-scan ``x (b, d_inner, h, w)``, selective scan, cross-merge (for CPU
        inference, :func:`remamber.inference.fuse.fuse` swaps in one kernel for the three).

        ``text (b, d_inner, t)``, when given, is read before each direction's sequence
        (in-context conditioning); its outputs are dropped.
        """
        A = -torch.exp(self.A_logs.float())
        b, d, h, w = x.shape
        K, L = K_DIRECTIONS, h * w
        xs = cross_scan(x)  # (b, K, d, L)
        if text is not None:
            xs = torch.cat([text.unsqueeze(1).expand(-1, K, -1, -1), xs], dim=-1)
        dts, Bs, Cs = self.project(xs)
        total = xs.shape[-1]
        ys = selective_scan(
            xs.reshape(b, K * d, total),
            dts.reshape(b, K * d, total),
            A,
            Bs,
            Cs,
            self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(),
            delta_softplus=True,
        )
        y = cross_merge(ys.view(b, K, d, total)[..., total - L :], h, w).view(b, d, h, w)
        return self.out_norm(y.to(x.dtype))

    def forward(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        """``x (b, c, h, w)``; optional text tokens ``(b, t, d_model)`` (padding zeroed by ``text_mask``)
        go through the same input projection and reach :meth:`scan` as ``(b, d_inner, t)``."""
        x = self.in_proj(x)
        z = None
        if self.gate:
            x, z = x.chunk(2, dim=1)
        if self.conv2d is not None:
            x = self.conv2d(x)
        if text is not None:
            text = self.act(F.linear(text, self.in_proj.weight[: self.d_inner])).transpose(1, 2)
            if text_mask is not None:
                text = text * text_mask[:, None, :].to(text.dtype)
        y = self.scan(self.act(x), text, text_mask)
        if z is not None:
            y = y * self.act(z)
        return self.out_proj(y)
