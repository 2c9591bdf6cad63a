"""VMamba's visual state-space pieces: patch embedding, VSS block (a residual block), downsampling."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from remamber.modeling.layers import DropPath, LayerNorm2d, Mlp
from remamber.modeling.ss2d import SS2D


class PatchEmbed(nn.Sequential):
    """Two 3x3 stride-2 convs with LayerNorm + GELU between and LayerNorm after (VMamba "v2").

    Children are numbered as in VMamba (0 conv, 2 norm, 4 GELU, 5 conv, 7 norm) so that
    official state dicts map one to one.
    """

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__(
            nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(dim // 2),
            nn.Identity(),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(dim),
        )


class Downsample(nn.Sequential):
    """3x3 stride-2 conv to ``out_dim`` channels, then LayerNorm (VMamba "v3"; children 1 and 3)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Identity(), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(out_dim)
        )


class ResidualBlock(nn.Module):
    """``x + op(norm(x))`` then ``x + MLP(norm2(x))`` (no MLP when ``mlp_ratio`` is 0), each
    branch with stochastic depth: the block of VMamba and of MambaVision."""

    def __init__(self, dim: int, op: nn.Module, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = op
        self.drop_path = DropPath(drop_path)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = LayerNorm2d(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VSSBlock(ResidualBlock):
    """VMamba's VSS block: a :class:`ResidualBlock` whose mixer is an SS2D."""

    def __init__(
        self,
        dim: int,
        d_state: int,
        ssm_ratio: float,
        dt_rank: int | str,
        d_conv: int,
        conv_bias: bool,
        mlp_ratio: float,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            dim, SS2D(dim, d_state, ssm_ratio, dt_rank, d_conv, conv_bias, gate=False), mlp_ratio, drop_path
        )
