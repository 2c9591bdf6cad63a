"""The ReMamber model: text encoder, VMamba encoder with a Twister (or other fusion) layer per stage, conv or Mamba decoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import ModelHubMixin
from torch import Tensor

from remamber.inference.tokens import tokenize
from remamber.modeling.backbones import build_blocks
from remamber.modeling.config import ModelConfig
from remamber.modeling.decoder import DECODERS
from remamber.modeling.fusion import build_fusion
from remamber.modeling.layers import trunc_normal_init
from remamber.modeling.presence import PresenceHead
from remamber.modeling.text import TextEncoder, hf_text_model_from_config
from remamber.modeling.vss import Downsample, PatchEmbed
from remamber.utils.errors import ConfigError


class Stage(nn.Module):
    """Backbone blocks, then the layer that fuses text, then (except last) a downsample.

    The fusion layer is the module named by its class's ``module_name``: ``twister`` for the
    Twister (the official name, so that official weights map one to one) and ``fusion`` for the
    other variants.
    """

    def __init__(self, cfg: ModelConfig, i: int, drop_paths: list[float]) -> None:
        super().__init__()
        dim = cfg.dims[i]
        self.blocks = build_blocks(cfg, i, drop_paths)
        fusion = build_fusion(cfg, i)
        self.fusion_name = fusion.module_name
        self.add_module(self.fusion_name, fusion)
        self.downsample = Downsample(dim, cfg.dims[i + 1]) if i + 1 < len(cfg.dims) else None
        trunc_normal_init(self.blocks)
        if self.downsample is not None:
            trunc_normal_init(self.downsample)

    @property
    def fusion_layer(self) -> nn.Module:
        """The stage's text fusion layer, whatever its kind."""
        return getattr(self, self.fusion_name)

    def forward(self, x: Tensor, words: Tensor, pooled: Tensor, mask: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.fusion_layer(x, words, pooled, mask)


def drop_path_rates(cfg: ModelConfig) -> list[float]:
    """The stochastic-depth rate of each backbone block, in order: linear from 0 to ``drop_path_rate``."""
    return torch.linspace(0, cfg.drop_path_rate, max(sum(cfg.depths), 1)).tolist()


class ReMamberEncoder(nn.Module):
    """Patch embedding and 4 stages; returns the twisted map of every stage (finest first)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.dims[0])
        trunc_normal_init(self.patch_embed)
        rates = drop_path_rates(cfg)
        starts = [sum(cfg.depths[:i]) for i in range(4)]
        self.stages = nn.ModuleList(Stage(cfg, i, rates[starts[i] : starts[i] + cfg.depths[i]]) for i in range(4))

    def backbone_modules(self) -> list[nn.Module]:
        """The visual backbone: patch embedding, stage blocks and downsampling (what a VMamba
        ImageNet checkpoint holds; the fusion layers are not part of it)."""
        return [self.patch_embed, *(m for s in self.stages for m in (s.blocks, s.downsample) if m is not None)]

    def forward(self, images: Tensor, words: Tensor, pooled: Tensor, mask: Tensor) -> list[Tensor]:
        x = self.patch_embed(images)
        feats = []
        for stage in self.stages:
            x = stage(x, words, pooled, mask)
            feats.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return feats


class ReMamberOutput(NamedTuple):
    """What ``model(..., return_presence=True)`` returns."""

    logits: Tensor  # (b, 1, H, W) mask logits
    presence_logits: Tensor | None  # (b,) log-odds that the phrase names anything; None without a presence head


class ReMamber(nn.Module, ModelHubMixin, library_name="remamber"):
    """Referring segmentation: ``(images, input_ids, attention_mask) -> mask logits (b, 1, H, W)``.

    With ``return_presence=True`` the call returns a :class:`ReMamberOutput`, which adds the
    presence head's logits (None when ``config.presence_head`` is off); training, evaluation, the
    predictors and the ONNX export ask for it, so every path sees the same two outputs.
    ``tokenizer`` (not a module) turns phrases into ``input_ids``; see :meth:`tokenize`.
    """

    def __init__(self, config: ModelConfig, text_model: nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        if config.text_config is None:
            raise ConfigError("config has no text_config: build models through remamber.modeling.presets")
        self.config = config
        self.text_encoder = TextEncoder(
            text_model or hf_text_model_from_config(config.text_config), config.text_pooling
        )
        self.encoder = ReMamberEncoder(config)
        self.decoder = DECODERS[config.decoder](config)
        self.presence = PresenceHead(config.dims[-1], config.text_dim) if config.presence_head else None
        self.tokenizer = tokenizer

    def forward(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, return_presence: bool = False
    ) -> Tensor | ReMamberOutput:
        """Mask logits ``(b, 1, H, W)`` at the input size; with ``return_presence``, a
        :class:`ReMamberOutput` of them and the presence logits."""
        words, pooled = self.text_encoder(input_ids, attention_mask)
        feats = self.encoder(images, words, pooled, attention_mask)
        logits = self.decoder(feats, words)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
        if not return_presence:
            return logits
        presence = self.presence(feats[-1], pooled) if self.presence is not None else None
        return ReMamberOutput(logits, presence)

    def fuse(self) -> ReMamber:
        """Swap in the inference-only modules (in place; eval mode first): see
        :func:`remamber.inference.fuse.fuse`. A fused model cannot train or be saved until
        :meth:`unfuse`."""
        from remamber.inference.fuse import fuse

        return fuse(self)

    def unfuse(self) -> ReMamber:
        """Give back the modules :meth:`fuse` replaced (same parameters): the model can train and be saved."""
        from remamber.inference.fuse import unfuse

        return unfuse(self)

    @property
    def is_fused(self) -> bool:
        """Whether :meth:`fuse` swapped inference-only modules in."""
        from remamber.inference.fuse import is_fused

        return is_fused(self)

    def train(self, mode: bool = True) -> ReMamber:
        """``nn.Module.train``, refused up front for a fused model (before any submodule changes mode)."""
        if mode and self.is_fused:
            from remamber.inference.fuse import FusedModelError

            raise FusedModelError.cannot("train")
        return super().train(mode)

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor, list[bool]]:
        """``input_ids``, ``attention_mask`` padded to ``max_text_len``, and which texts were truncated."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer attached")
        return tokenize(self.tokenizer, texts, self.config.max_text_len)

    def set_drop_path_rate(self, rate: float) -> None:
        """Set ``config.drop_path_rate`` and the stochastic depth of every backbone block to match
        (a training setting: the weights do not change)."""
        self.config = self.config.replace(drop_path_rate=rate)
        blocks = [block for stage in self.encoder.stages for block in stage.blocks]
        for block, p in zip(blocks, drop_path_rates(self.config), strict=True):
            block.drop_path.p = p

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, grouped as in the official model (visual = all but the text encoder).

        ``backbone``: stem, stage blocks and downsampling; ``fusion``: the fusion layers, of which
        (for the Twister) ``twister`` are the blocks and ``global_text`` / ``local_text`` the guidance;
        ``presence``: the presence head (0 without one).
        """
        count = lambda *mods: sum(p.numel() for m in mods if m is not None for p in m.parameters())  # noqa: E731
        stages = self.encoder.stages
        fusions = [s.fusion_layer for s in stages]
        total, text = count(self), count(self.text_encoder)
        out = {
            "total": total,
            "text": text,
            "visual": total - text,
            "backbone": count(*self.encoder.backbone_modules()),
            "fusion": count(*fusions),
            "decoder": count(self.decoder),
            "presence": count(self.presence),
        }
        for f in fusions:  # the fusion's own parts (the Twister's blocks and text maps)
            for name, n in f.part_counts().items():
                out[name] = out.get(name, 0) + n
        return out

    # Hugging Face Hub API (huggingface_hub.ModelHubMixin) over the model folders of remamber.hub.folders.
    # The mixin's two hooks delegate to those functions; its three public methods are thin overrides,
    # each for one reason given in its docstring, so that the folders they read and write are ours
    # (config.json is our ModelConfig, not the mixin's dict of __init__ arguments).

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **model_kwargs: Any,
    ) -> ReMamber:
        """Load a model folder: a local path, a shipped model's name (``"remamber-tiny-gshapes"``) or
        a Hub id (``owner/name``, ``owner/name@revision``, ``hf://owner/name``), as ``--weights``.

        The name is resolved here (:func:`remamber.hub.folders.resolve_weights`) before the mixin
        sees it, because the mixin looks up on the Hub any name that is not a folder, a shipped
        name too. ``device="cuda"`` loads onto that device (default: the CPU), in eval mode.
        """
        from remamber.hub.folders import resolve_weights

        folder = resolve_weights(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        return super().from_pretrained(folder, **model_kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        device: str = "cpu",
    ) -> ReMamber:
        """The mixin's loading hook: :func:`remamber.hub.folders.load_pretrained` on ``model_id``,
        the local folder :meth:`from_pretrained` resolved (the Hub options are spent there; the
        mixin's ``config``, read from config.json, is read again and validated there)."""
        from remamber.hub.folders import load_pretrained

        return load_pretrained(model_id, device=device)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write this model as a model folder (config.json, model.safetensors, tokenizer files,
        model card); with ``push_to_hub``, then upload it to ``repo_id`` (default: the folder's name).

        The mixin writes into a staged folder that then replaces ``save_directory`` at once
        (:func:`remamber.hub.folders.staged_folder`): alone it writes in place, deleting config.json
        first, so an interrupted save would leave a broken folder. ``save_directory`` must be new,
        empty or a model folder: other files are never overwritten.
        """
        from remamber.hub.folders import staged_folder

        with staged_folder(save_directory) as tmp:
            super().save_pretrained(tmp)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's saving hook: :func:`remamber.hub.folders.write_folder`."""
        from remamber.hub.folders import write_folder

        write_folder(self, Path(save_directory))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload remamber model",
    ) -> str:
        """Upload this model as a model folder to ``repo_id`` (created if needed); returns the commit URL.

        It goes through :func:`remamber.hub.publish.push_to_hub`, as ``remamber export --push-to-hub``
        does (the same files and one-line errors), not through the mixin's upload.
        """
        import tempfile

        from remamber.hub.publish import push_to_hub

        with tempfile.TemporaryDirectory(prefix="remamber-push-") as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder)
            return push_to_hub(folder, repo_id, private=private, token=token, commit_message=commit_message).url
