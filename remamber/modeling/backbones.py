"""Backbone blocks of each stage: VMamba's VSS (default), MambaOut's gated CNN, MambaVision's mixer.

``config.backbone`` picks the block from :data:`BACKBONES`; stem, downsampling, Twister and decoder stay the same.

- ``vss``: ``x + SS2D(norm(x))``, ``x + MLP(norm2(x))`` (:mod:`remamber.modeling.vss`).
- ``mambaout``: MambaOut's gated CNN block, the Mamba block without its SSM: one projection
  gives a gate, an identity part and a part for a 7x7 depthwise conv;
  ``x + fc2(GELU(gate) * [identity, conv])``; no separate MLP.
- ``mambavision``: VMamba's residual block with MambaVision's mixer: half the inner channels
  go through a regular (non-causal) conv, SiLU and a one-direction selective scan over the
  row-major tokens, the other half (the symmetric branch, no SSM) through a conv and SiLU;
  the halves are concatenated and projected back.  The second half of the blocks of stages
  3 and 4 use multi-head self-attention instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.config import ModelConfig
from remamber.modeling.layers import DropPath, LayerNorm2d, Linear2d
from remamber.modeling.ss2d import a_log_init, dt_bias_init, dt_rank_for
from remamber.modeling.vss import ResidualBlock, VSSBlock
from remamber.ops import selective_scan


class GatedCNNBlock(nn.Module):
    """MambaOut's block on a ``(b, C, h, w)`` map (expansion 8/3, 7x7 depthwise conv on C channels)."""

    def __init__(self, dim: int, expansion: float = 8 / 3, kernel_size: int = 7, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(expansion * dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc1 = Linear2d(dim, 2 * hidden)
        self.act = nn.GELU()
        self.split = (hidden, hidden - dim, dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.fc2 = Linear2d(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        gate, ident, conv = torch.split(self.fc1(self.norm(x)), self.split, dim=1)
        return x + self.drop_path(self.fc2(self.act(gate) * torch.cat([ident, self.conv(conv)], dim=1)))


class MambaVisionMixer(nn.Module):
    """MambaVision's token mixer (expansion 1): an SSM branch and a symmetric conv branch, concatenated."""

    def __init__(self, dim: int, d_state: int, dt_rank: int | str, d_conv: int, conv_bias: bool) -> None:
        super().__init__()
        half = dim // 2
        rank = dt_rank_for(dim, dt_rank)
        self.d_state, self.dt_rank = d_state, rank
        self.in_proj = Linear2d(dim, 2 * half, bias=False)
        self.conv_x = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=conv_bias)
        self.conv_z = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=conv_bias)
        x_proj = torch.empty(rank + 2 * d_state, half)
        nn.init.kaiming_uniform_(x_proj, a=math.sqrt(5))
        self.x_proj_weight = nn.Parameter(x_proj)
        self.dt_proj_weight = nn.Parameter(torch.empty(half, rank).uniform_(-(rank**-0.5), rank**-0.5))
        self.dt_proj_bias = nn.Parameter(dt_bias_init(half))
        self.A_log = nn.Parameter(a_log_init(half, d_state))
        self.D = nn.Parameter(torch.ones(half))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True
        self.out_proj = Linear2d(2 * half, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        u, z = self.in_proj(x).flatten(2).chunk(2, dim=1)  # (b, half, L) each
        u, z = F.silu(self.conv_x(u)), F.silu(self.conv_z(z))
        dt, B, C = torch.split(torch.matmul(self.x_proj_weight, u), [self.dt_rank, self.d_state, self.d_state], dim=1)
        y = selective_scan(
            u,
            torch.matmul(self.dt_proj_weight, dt),
            -torch.exp(self.A_log.float()),
            B.contiguous(),
            C.contiguous(),
            self.D.float(),
            delta_bias=self.dt_proj_bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(torch.cat([y.to(z.dtype), z], dim=1).view(b, -1, h, w))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``h*w`` tokens of a map (heads of 32 channels)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = max(1, dim // 32)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).view(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)


def _ssm(cfg: ModelConfig) -> dict:
    return dict(d_state=cfg.d_state, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv, conv_bias=cfg.conv_bias)


def _vss(cfg: ModelConfig, i: int, j: int, depth: int, drop_path: float) -> nn.Module:
    return VSSBlock(cfg.dims[i], ssm_ratio=cfg.ssm_ratio, mlp_ratio=cfg.mlp_ratio, drop_path=drop_path, **_ssm(cfg))


def _mambaout(cfg: ModelConfig, i: int, j: int, depth: int, drop_path: float) -> nn.Module:
    return GatedCNNBlock(cfg.dims[i], drop_path=drop_path)


def _mambavision(cfg: ModelConfig, i: int, j: int, depth: int, drop_path: float) -> nn.Module:
    dim = cfg.dims[i]
    attention = i >= 2 and j >= depth // 2  # the second half of stages 3 and 4
    op = SelfAttention(dim) if attention else MambaVisionMixer(dim, **_ssm(cfg))
    return ResidualBlock(dim, op, cfg.mlp_ratio, drop_path)


#: ``config.backbone`` -> the builder of block ``j`` of the ``depth`` blocks of stage ``i``,
#: ``(cfg, i, j, depth, drop_path) -> module``; the keys are :data:`remamber.modeling.config.BACKBONES`.
BACKBONES: dict[str, Callable[[ModelConfig, int, int, int, float], nn.Module]] = {
    "vss": _vss,
    "mambaout": _mambaout,
    "mambavision": _mambavision,
}


def build_blocks(cfg: ModelConfig, i: int, drop_paths: list[float]) -> nn.ModuleList:
    """The backbone blocks of stage ``i`` (one per drop-path rate) for ``cfg.backbone``."""
    make = BACKBONES[cfg.backbone]
    return nn.ModuleList(make(cfg, i, j, len(drop_paths), p) for j, p in enumerate(drop_paths))
