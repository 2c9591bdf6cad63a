"""One typed config for every architecture setting; saved as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
import math
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
DECODERS = ("conv", "mamba")


def _bad(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"config: {name} must be {what} (got {value!r})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise _bad(name, f"an integer >= {minimum}", value)


def _check_number(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    """A finite number in [low, high) ((low, high) with ``low_open``); no upper bound without ``high``."""
    above = value > low if low_open else value >= low
    if not _is_number(value) or not above or (high is not None and value >= high):
        span = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'})"
        raise _bad(name, f"a finite number in {span}", value)


def _check_str(name: str, value: Any, choices: tuple[str, ...] | None = None) -> None:
    if choices is not None and value not in choices:
        raise ConfigError(f"config: unknown {name} {value!r} (known: {', '.join(choices)})")
    if not isinstance(value, str) or not value:
        raise _bad(name, "a non-empty string", value)


def _check_list(name: str, value: Any, length: int, check: Any) -> None:
    """A list of ``length`` items, each passing ``check(item_name, item)``."""
    if not isinstance(value, list) or len(value) != length:
        raise _bad(name, f"a list of {length} entries", value)
    for i, item in enumerate(value):
        check(f"{name}[{i}]", item)


# Keys of a Hugging Face text config whose values are sizes or counts (must be integers >= 1) and
# rates or epsilons (finite numbers >= 0): checked here, so that a bad one is a ConfigError that
# names it rather than an error from inside transformers.
_TEXT_SIZES = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)
_TEXT_RATES = ("layer_norm_eps", "attention_dropout", "hidden_dropout_prob", "initializer_range", "initializer_factor")


def _check_text_config(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad("text_config", "a JSON object (a Hugging Face text model config) or null", value)
    _check_str("text_config.model_type", value.get("model_type"))
    for key in _TEXT_SIZES:
        if key in value:
            _check_int(f"text_config.{key}", value[key], 1)
    for key in _TEXT_RATES:
        if key in value:
            _check_number(f"text_config.{key}", value[key], 0.0)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if value.get(key) is not None:
            _check_int(f"text_config.{key}", value[key], 0)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a ReMamber model (the weights come separately).

    The defaults are the official ReMamber_Conv "base" configuration.  :meth:`validate` checks
    the type and range of every field and names the field it refuses.

    Attributes:
        preset: Name of the preset this configuration started from (tiny, small, base, ...).
        image_size: Side of the square model input in pixels; a multiple of 32.
        in_chans: Channels of the input image (3 for RGB).
        dims: Feature width of each of the 4 backbone stages.
        depths: Backbone blocks (VSS or the ``backbone`` variant's) in each stage; 0 allowed.
        twister_depths: Text fusion blocks after each stage, whatever the ``fusion``; 0 allowed.
        d_state: State size N of the selective scan.
        ssm_ratio: Inner width of SS2D as a multiple of the block width.
        dt_rank: Rank of the step-size projection: an integer, or "auto" (ceil(width / 16)).
        d_conv: Kernel size of the depthwise convolution before the scan.
        conv_bias: Whether that convolution has a bias.
        mlp_ratio: Hidden width of each block's MLP as a multiple of its width (0: no MLP).
        drop_path_rate: Largest stochastic-depth rate (training only), in [0, 1).
        channel_scan_size: Side of the pooled map the Twister's channel scan reads.
        local_hidden: Width of the Twister's word-pixel correlation (local interaction) map.
        decoder: Mask decoder: conv (ReMamber_Conv's convolutional decoder) or mamba (ReMamber_Mamba's:
            text maps and VSS blocks at each level, coarse to fine).
        fusion: Text fusion layer: twister, attention, in-context, film or hmnet.
        scan: Twister scan order: channel-spatial, spatial-channel, parallel, channel or spatial.
        interaction: Twister text maps: both, global (pooled sentence) or local (word-pixel).
        backbone: Stage blocks: vss (VMamba), mambaout (gated CNN) or mambavision.
        recap_every: hmnet fusion: image tokens between two recaps of the text.
        presence_head: Whether the model has a presence head, which says how likely it is that the
            phrase names anything in the image (see :class:`remamber.modeling.presence.PresenceHead`);
            below the presence threshold the mask is empty. On for new models; a config.json
            without this field (written before it existed) and the converted official
            checkpoints have none, so their outputs do not change.
        decoder_dim: conv decoder: width of its feature maps.
        decoder_depths: mamba decoder: VSS blocks (SS2D, no MLP) at each of its 4 levels, coarsest
            first; 0 allowed.
        decoder_local_hidden: mamba decoder: width of each level's word-pixel correlation map.
        text_encoder: Hugging Face id or folder of the text encoder, or "scratch" (word-level).
        text_config: The text encoder's Hugging Face config (so a folder rebuilds it offline),
            or None before it is known.
        text_pooling: How the sentence vector is pooled from the words: pooler, mean or first.
        max_text_len: Tokens per text; longer texts are truncated.
        pixel_mean: Per-channel mean subtracted from the [0, 1] image (``in_chans`` numbers).
        pixel_std: Per-channel standard deviation the image is divided by (``in_chans`` numbers > 0).
        format_version: Version of this file's format (newer ones are refused).
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
    presence_head: bool = True
    decoder_dim: int = 512
    decoder_depths: list[int] = field(default_factory=lambda: [2, 4, 2, 2])
    decoder_local_hidden: int = 512
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
        """Raise ConfigError, naming the field, on any field of the wrong type or out of range."""
        _check_str("preset", self.preset)
        _check_int("image_size", self.image_size, 32)
        if self.image_size % 32:
            raise _bad("image_size", "a multiple of 32", self.image_size)
        _check_int("in_chans", self.in_chans, 1)
        _check_list("dims", self.dims, 4, lambda name, v: _check_int(name, v, 1))
        _check_list("depths", self.depths, 4, lambda name, v: _check_int(name, v, 0))
        _check_list("twister_depths", self.twister_depths, 4, lambda name, v: _check_int(name, v, 0))
        _check_int("d_state", self.d_state, 1)
        _check_number("ssm_ratio", self.ssm_ratio, 0.0, low_open=True)
        if self.dt_rank != "auto":
            if not _is_int(self.dt_rank) or self.dt_rank < 1:
                raise _bad("dt_rank", "'auto' or an integer >= 1", self.dt_rank)
        _check_int("d_conv", self.d_conv, 1)
        if not isinstance(self.conv_bias, bool):
            raise _bad("conv_bias", "true or false", self.conv_bias)
        _check_number("mlp_ratio", self.mlp_ratio, 0.0)
        _check_number("drop_path_rate", self.drop_path_rate, 0.0, 1.0)
        _check_int("channel_scan_size", self.channel_scan_size, 1)
        _check_int("local_hidden", self.local_hidden, 1)
        _check_str("decoder", self.decoder, DECODERS)
        _check_str("fusion", self.fusion, FUSIONS)
        _check_str("scan", self.scan, SCANS)
        _check_str("interaction", self.interaction, INTERACTIONS)
        _check_str("backbone", self.backbone, BACKBONES)
        if self.fusion != "twister" and (self.scan != SCANS[0] or self.interaction != INTERACTIONS[0]):
            raise ConfigError("config: scan and interaction apply to the twister fusion only")
        _check_int("recap_every", self.recap_every, 1)
        if not isinstance(self.presence_head, bool):
            raise _bad("presence_head", "true or false", self.presence_head)
        _check_int("decoder_dim", self.decoder_dim, 1)
        _check_list("decoder_depths", self.decoder_depths, 4, lambda name, v: _check_int(name, v, 0))
        _check_int("decoder_local_hidden", self.decoder_local_hidden, 1)
        _check_str("text_encoder", self.text_encoder)
        _check_text_config(self.text_config)
        _check_str("text_pooling", self.text_pooling, ("pooler", "mean", "first"))
        _check_int("max_text_len", self.max_text_len, 1)
        _check_list("pixel_mean", self.pixel_mean, self.in_chans, lambda name, v: _check_number(name, v, -math.inf))
        _check_list(
            "pixel_std", self.pixel_std, self.in_chans, lambda name, v: _check_number(name, v, 0.0, low_open=True)
        )
        _check_int("format_version", self.format_version, 1)

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
        # A config written before the presence head existed describes a model without one.
        data = {"presence_head": False, **data}
        try:
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config has a field of the wrong type: {e}") from None

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
