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
from torch import Tensor

from remamber.modeling.layers import LayerNorm2d, Linear2d
from remamber.ops import cross_merge, cross_scan, selective_scan

K_DIRECTIONS = 4


def dt_rank_for(d_model: int, dt_rank: int | str) -> int:
    """``"auto"`` means ceil(d_model / 16), as in Mamba and VMamba."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


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
        dt = torch.exp(
            torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(A))
        self.Ds = nn.Parameter(torch.ones(K * d_inner))
        for p in (self.A_logs, self.Ds):
            p._no_weight_decay = True
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=False)

    def scan(self, x: Tensor) -> Tensor:
        """The core: cross-scan ``x (b, d_inner, h, w)``, selective scan, cross-merge."""
        b, d, h, w = x.shape
        K, R, N, L = K_DIRECTIONS, self.dt_rank, self.d_state, h * w
        xs = cross_scan(x).reshape(b, K * d, L)
        # per-direction projections as batched matmuls (2x faster than grouped 1x1 convs on CPU)
        x_dbl = torch.matmul(self.x_proj_weight, xs.view(b, K, d, L))  # (b, K, R + 2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts).reshape(b, K * d, L)
        ys = selective_scan(
            xs, dts, -torch.exp(self.A_logs.float()), Bs.contiguous(), Cs.contiguous(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
        )
        y = cross_merge(ys.view(b, K, d, L), h, w).view(b, d, h, w)
        return self.out_norm(y.to(x.dtype))

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        z = None
        if self.gate:
            x, z = x.chunk(2, dim=1)
        if self.conv2d is not None:
            x = self.conv2d(x)
        y = self.scan(self.act(x))
        if z is not None:
            y = y * self.act(z)
        return self.out_proj(y)
