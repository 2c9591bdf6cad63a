"""Small building blocks shared by the backbone, the Twister and the decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(b, c, h, w)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear applied to the channels of a ``(b, c, h, w)`` map (a 1x1 conv with Linear weights)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Channel MLP of a VSS block: Linear2d -> GELU -> Linear2d."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """VMamba's init: truncated-normal Linear weights, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resize_like(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize (align_corners=True) of ``x`` to the spatial size of ``ref``."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


def no_weight_decay(param_name: str, param: torch.nn.Parameter) -> bool:
    """True for parameters trained without weight decay: A_log, D, norms and biases."""
    return getattr(param, "_no_weight_decay", False) or param.dim() <= 1 or param_name.endswith(".bias")


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics span all processes of a distributed run.

    Identical to :class:`torch.nn.BatchNorm2d` in a single process (same state dict); under
    torch.distributed it sums the per-channel moments over ranks with a differentiable
    all-reduce, so a DDP step equals one step on the global batch, on CPU (gloo) as on GPUs.
    """

    def forward(self, x: Tensor) -> Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() / c)])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean.square()).clamp(min=0.0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp(min=1.0))
                self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
