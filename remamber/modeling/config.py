"""One typed config for every architecture setting; saved as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from remamber.utils.errors import ConfigError

CONFIG_FORMAT = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Variant choices (the paper's Tables 1, 3, 4 and the seed papers' designs); the first is the default.
FUSIONS = ("twister", "attention", "in-context", "film", "hmnet")
SCANS = ("channel-spatial", "spatial-channel", "parallel", "channel", "spatial")
INTERACTIONS = ("both", "global", "local")
BACKBONES = ("vss", "mambaout", "mambavision")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a ReMamber model (the weights come separately).

    The defaults are the official ReMamber_Conv "base" configuration.  ``fusion``, ``scan``,
    ``interaction`` and ``backbone`` pick a variant (see :mod:`remamber.modeling.fusion` and
    :mod:`remamber.modeling.backbones`); ``twister_depths`` is the number of fusion blocks per
    stage whatever the fusion, and ``recap_every`` the image tokens between text recaps of
    the ``hmnet`` fusion.
    """

    preset: str = "base"
    image_size: int = 480
    in_chans: int = 3
    dims: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])
    depths: list[int] = field(default_factory=lambda: [2, 2, 15, 2])
    twister_depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    d_state: int = 1
    ssm_ratio: float = 2.0
    dt_rank: Any = "auto"
    d_conv: int = 3
    conv_bias: bool = False
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    channel_scan_size: int = 16
    local_hidden: int = 512
    decoder: str = "conv"
    fusion: str = "twister"
    scan: str = "channel-spatial"
    interaction: str = "both"
    backbone: str = "vss"
    recap_every: int = 64
    decoder_dim: int = 512
    text_encoder: str = "openai/clip-vit-large-patch14"
    text_config: dict | None = None
    text_pooling: str = "pooler"
    max_text_len: int = 20
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    format_version: int = CONFIG_FORMAT

    def __post_init__(self) -> None:
        self.validate()

    @property
    def text_dim(self) -> int:
        """Hidden size of the text encoder (768 for CLIP ViT-L/14)."""
        if not self.text_config or "hidden_size" not in self.text_config:
            raise ConfigError("config has no text_config with a hidden_size: the text encoder cannot be built")
        return int(self.text_config["hidden_size"])

    def validate(self) -> None:
        """Raise ConfigError on settings that cannot build a model."""
        n = len(self.dims)
        if n != 4 or len(self.depths) != 4 or len(self.twister_depths) != 4:
            raise ConfigError("config: dims, depths and twister_depths must each have 4 entries (one per stage)")
        if any(int(d) <= 0 for d in self.dims) or any(int(d) < 0 for d in self.depths + self.twister_depths):
            raise ConfigError("config: dims must be positive and depths non-negative")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"config: image_size must be a multiple of 32 (got {self.image_size})")
        if self.decoder != "conv":
            raise ConfigError(f"config: unknown decoder {self.decoder!r} (known: conv)")
        for name, choices in (
            ("fusion", FUSIONS),
            ("scan", SCANS),
            ("interaction", INTERACTIONS),
            ("backbone", BACKBONES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(f"config: unknown {name} {getattr(self, name)!r} (known: {', '.join(choices)})")
        if self.fusion != "twister" and (self.scan != SCANS[0] or self.interaction != INTERACTIONS[0]):
            raise ConfigError("config: scan and interaction apply to the twister fusion only")
        if self.recap_every < 1:
            raise ConfigError("config: recap_every must be positive")
        if self.text_pooling not in ("pooler", "mean", "first"):
            raise ConfigError(f"config: text_pooling must be pooler, mean or first (got {self.text_pooling!r})")
        if self.dt_rank != "auto" and not isinstance(self.dt_rank, int):
            raise ConfigError(f"config: dt_rank must be 'auto' or an integer (got {self.dt_rank!r})")
        if self.max_text_len < 1 or self.channel_scan_size < 1 or self.d_state < 1:
            raise ConfigError("config: max_text_len, channel_scan_size and d_state must be positive")

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a dict, refusing unknown fields and wrong types with one clear line."""
        if not isinstance(data, dict):
            raise ConfigError("config.json must hold a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"config has unknown fields: {', '.join(unknown)}")
        version = data.get("format_version", CONFIG_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError(f"config format_version must be an integer (got {version!r})")
        if version > CONFIG_FORMAT:
            raise ConfigError(
                f"config format {version} is newer than this remamber understands ({CONFIG_FORMAT}); upgrade remamber"
            )
        try:
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config has a field of the wrong type: {e}") from None

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
