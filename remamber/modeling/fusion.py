"""Text-image fusion layers, one per stage: the Twister (default) and the variants it is compared with.

``config.fusion`` picks one from :data:`FUSIONS`; each takes the Twister's place with the same number of blocks
(``twister_depths``) and maps ``(image (b, C, h, w), words (b, t, text_dim), pooled (b, text_dim),
mask (b, t))`` to the fused image:

- ``twister``: the Mamba Twister (:mod:`remamber.modeling.twister`), with its scan order and
  text interactions (paper Tables 3 and 4).
- ``attention``: image tokens attend to the words (cross-attention), then an SS2D (Table 1).
- ``in-context``: the words are read before the image tokens in each SS2D scan direction (Table 1).
- ``film``: a LayerNorm whose scale and shift come from the pooled sentence, then an SS2D (Table 1).
- ``hmnet``: HMNet's hybrid scan with the words as support: recapped before every
  ``recap_every`` image tokens, image tokens read from the text state in parallel
  (:mod:`remamber.ops.hybrid_scan`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.config import ModelConfig
from remamber.modeling.layers import LayerNorm2d
from remamber.modeling.ss2d import K_DIRECTIONS, SS2D
from remamber.modeling.twister import TwisterLayer
from remamber.ops import cross_merge, cross_scan
from remamber.ops.hybrid_scan import hybrid_scan


class FiLMBlock(nn.Module):
    """``x + SS2D(norm(x) * (1 + gamma) + beta)``; ``gamma, beta = Linear(pooled)``, zero at init."""

    def __init__(self, dim: int, text_dim: int, **ssm) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, elementwise_affine=False)
        self.film = nn.Linear(text_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.op = SS2D(dim, **ssm)

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        gamma, beta = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
        return x + self.op(self.norm(x) * (1 + gamma) + beta)


class CrossAttentionBlock(nn.Module):
    """``x + CrossAttention(norm(x) -> words)``, then ``x + SS2D(norm2(x))``."""

    def __init__(self, dim: int, text_dim: int, **ssm) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.attn = nn.MultiheadAttention(dim, max(1, dim // 32), kdim=text_dim, vdim=text_dim, batch_first=True)
        self.norm2 = LayerNorm2d(dim)
        self.op = SS2D(dim, **ssm)

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2).transpose(1, 2)
        attended, _ = self.attn(q, text, text, key_padding_mask=mask == 0, need_weights=False)
        x = x + attended.transpose(1, 2).reshape(b, c, h, w)
        return x + self.op(self.norm2(x))


class InContextBlock(nn.Module):
    """``x + SS2D(norm(x))`` with the (projected) words read first in every scan direction."""

    def __init__(self, dim: int, **ssm) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(dim, **ssm)

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        return x + self.op(self.norm(x), text, mask)


class HybridSS2D(SS2D):
    """SS2D whose scan is HMNet's hybrid scan: text state recapped, image tokens intercepted."""

    def __init__(self, dim: int, recap_every: int, **ssm) -> None:
        super().__init__(dim, **ssm)
        self.recap_every = recap_every

    def scan(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        if text is None or text_mask is None:
            raise ValueError("HybridSS2D needs text tokens and their mask")
        b, d, h, w = x.shape
        K, N = K_DIRECTIONS, self.d_state
        xs = cross_scan(x)  # (b, K, d, L)
        su = text.unsqueeze(1).expand(-1, K, -1, -1)  # (b, K, d, t)
        dts, Bs, Cs = self.project(xs)
        sdts, sBs, _ = self.project(su)
        bias = self.dt_projs_bias.view(K, d, 1)
        delta = F.softplus(dts + bias)
        sdelta = F.softplus(sdts + bias) * text_mask[:, None, None, :].to(sdts.dtype)
        A = -torch.exp(self.A_logs.float()).view(K, d, N)
        y = hybrid_scan(xs, delta, A, Bs, Cs, self.Ds.view(K, d), su, sdelta, sBs, self.recap_every)
        return self.out_norm(cross_merge(y, h, w).view(b, d, h, w))


class HybridBlock(nn.Module):
    """``x + HybridSS2D(norm(x), words)``: image tokens mix with the text, not with each other."""

    def __init__(self, dim: int, recap_every: int, **ssm) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = HybridSS2D(dim, recap_every, **ssm)

    def forward(self, x: Tensor, text: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        return x + self.op(self.norm(x), text, mask)


def ssm_kwargs(cfg: ModelConfig) -> dict:
    """The SS2D settings of ``cfg`` that every fusion's scans share."""
    return dict(
        d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv, conv_bias=cfg.conv_bias
    )


class FusionLayer(nn.Module):
    """A stack of ``depth`` blocks of one kind (:attr:`block`, set by the subclasses below, built
    with ``dim``, then the settings named in :attr:`block_args`, then the SS2D settings); returns
    the fused image. The scan-based kinds (:attr:`projects_text`: in-context, hmnet) first map the
    words to the stage width (Linear + LayerNorm), as the Twister's text guidance does. In a
    stage the layer is the module ``fusion``."""

    block: type[nn.Module]
    block_args: tuple[str, ...] = ()  # of "text_dim", "recap_every"
    projects_text = False
    module_name = "fusion"

    def __init__(self, dim: int, depth: int, text_dim: int, recap_every: int, **ssm) -> None:
        super().__init__()
        if self.projects_text:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))
        settings = {"text_dim": text_dim, "recap_every": recap_every}
        args = [settings[name] for name in self.block_args]
        self.blocks = nn.ModuleList(self.block(dim, *args, **ssm) for _ in range(depth))

    @classmethod
    def from_config(cls, cfg: ModelConfig, i: int) -> FusionLayer:
        """The layer of stage ``i``."""
        return cls(cfg.dims[i], cfg.twister_depths[i], cfg.text_dim, cfg.recap_every, **ssm_kwargs(cfg))

    def forward(self, img: Tensor, words: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        text = self.text_proj(words) if self.projects_text else words
        for blk in self.blocks:
            img = blk(img, text, pooled, mask)
        return img

    def part_counts(self) -> dict[str, int]:
        """Parameters of named parts, beyond the whole (none here; see :meth:`TwisterLayer.part_counts`)."""
        return {}


class AttentionFusion(FusionLayer):
    block, block_args = CrossAttentionBlock, ("text_dim",)


class InContextFusion(FusionLayer):
    block = InContextBlock
    projects_text = True


class FiLMFusion(FusionLayer):
    block, block_args = FiLMBlock, ("text_dim",)


class HMNetFusion(FusionLayer):
    block, block_args = HybridBlock, ("recap_every",)
    projects_text = True


def _twister(cfg: ModelConfig, i: int) -> TwisterLayer:
    return TwisterLayer(
        cfg.dims[i],
        cfg.twister_depths[i],
        cfg.text_dim,
        cfg.local_hidden,
        cfg.max_text_len,
        interaction=cfg.interaction,
        order=cfg.scan,
        channel_scan_size=cfg.channel_scan_size,
        **ssm_kwargs(cfg),
    )


#: ``config.fusion`` -> the builder of a stage's fusion layer, ``(cfg, stage) -> module``; the
#: keys are :data:`remamber.modeling.config.FUSIONS`, in its order.
FUSIONS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "twister": _twister,
    "attention": AttentionFusion.from_config,
    "in-context": InContextFusion.from_config,
    "film": FiLMFusion.from_config,
    "hmnet": HMNetFusion.from_config,
}


def build_fusion(cfg: ModelConfig, i: int) -> nn.Module:
    """The fusion layer of stage ``i`` for ``cfg.fusion``."""
    return FUSIONS[cfg.fusion](cfg, i)
