"""The ReMamber model: text encoder, VMamba encoder with a Twister layer per stage, conv decoder."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.errors import ConfigError
from remamber.modeling.config import ModelConfig
from remamber.modeling.decoder import ConvDecoder
from remamber.modeling.layers import trunc_normal_init
from remamber.modeling.text import TextEncoder, hf_text_model_from_config
from remamber.tokens import tokenize
from remamber.modeling.twister import TwisterLayer
from remamber.modeling.vss import Downsample, PatchEmbed, VSSBlock


class Stage(nn.Module):
    """VSS blocks, then the Twister layer that fuses text, then (except last) a downsample."""

    def __init__(self, cfg: ModelConfig, i: int, drop_paths: list[float]) -> None:
        super().__init__()
        dim = cfg.dims[i]
        ssm = dict(d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv, conv_bias=cfg.conv_bias)
        self.blocks = nn.ModuleList(VSSBlock(dim, mlp_ratio=cfg.mlp_ratio, drop_path=p, **ssm) for p in drop_paths)
        self.twister = TwisterLayer(
            dim, cfg.twister_depths[i], cfg.text_dim, cfg.local_hidden, cfg.max_text_len,
            channel_scan_size=cfg.channel_scan_size, **ssm,
        )
        self.downsample = Downsample(dim, cfg.dims[i + 1]) if i + 1 < len(cfg.dims) else None
        trunc_normal_init(self.blocks)
        if self.downsample is not None:
            trunc_normal_init(self.downsample)

    def forward(self, x: Tensor, words: Tensor, pooled: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.twister(x, words, pooled)


class ReMamberEncoder(nn.Module):
    """Patch embedding and 4 stages; returns the twisted map of every stage (finest first)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.dims[0])
        trunc_normal_init(self.patch_embed)
        rates = torch.linspace(0, cfg.drop_path_rate, max(sum(cfg.depths), 1)).tolist()
        starts = [sum(cfg.depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(
            Stage(cfg, i, rates[starts[i] : starts[i] + cfg.depths[i]]) for i in range(4)
        )

    def forward(self, images: Tensor, words: Tensor, pooled: Tensor) -> list[Tensor]:
        x = self.patch_embed(images)
        feats = []
        for stage in self.stages:
            x = stage(x, words, pooled)
            feats.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return feats


class ReMamber(nn.Module):
    """Referring segmentation: ``(images, input_ids, attention_mask) -> mask logits (b, 1, H, W)``.

    ``tokenizer`` (not a module) turns phrases into ``input_ids``; see :meth:`tokenize`.
    """

    def __init__(self, config: ModelConfig, text_model: Optional[nn.Module] = None, tokenizer: Any = None) -> None:
        super().__init__()
        if config.text_config is None:
            raise ConfigError("config has no text_config: build models through remamber.modeling.presets")
        self.config = config
        self.text_encoder = TextEncoder(text_model or hf_text_model_from_config(config.text_config), config.text_pooling)
        self.encoder = ReMamberEncoder(config)
        self.decoder = ConvDecoder(config.dims, config.decoder_dim)
        self.tokenizer = tokenizer

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        words, pooled = self.text_encoder(input_ids, attention_mask)
        feats = self.encoder(images, words, pooled)
        logits = self.decoder(feats)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return logits

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor, list[bool]]:
        """``input_ids``, ``attention_mask`` padded to ``max_text_len``, and which texts were truncated."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer attached")
        return tokenize(self.tokenizer, texts, self.config.max_text_len)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, grouped as in the official model (visual = all but the text encoder)."""
        count = lambda *mods: sum(p.numel() for m in mods if m is not None for p in m.parameters())  # noqa: E731
        stages = self.encoder.stages
        total, text = count(self), count(self.text_encoder)
        return {
            "total": total, "text": text, "visual": total - text,
            "vss": count(self.encoder.patch_embed, *[s.blocks for s in stages], *[s.downsample for s in stages]),
            "twister": count(*[s.twister.blocks for s in stages]),
            "global_text": count(*[s.twister.global_text for s in stages]),
            "local_text": count(*[s.twister.local_text for s in stages]),
            "decoder": count(self.decoder),
        }
