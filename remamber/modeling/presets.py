"""Named presets and their builders: ``tiny`` (CPU-fast), ``small``, ``base`` (official ReMamber_Conv),
``base-mamba`` (official ReMamber_Mamba)."""

from __future__ import annotations

from collections.abc import Callable

from remamber.inference.tokens import load_tokenizer
from remamber.modeling.config import ModelConfig
from remamber.modeling.remamber import ReMamber
from remamber.modeling.text import (
    SCRATCH,
    build_scratch_tokenizer,
    init_scratch_word_embeddings,
    load_pretrained_text_model,
    scratch_text_config,
)
from remamber.utils.errors import ConfigError

# The text tower of openai/clip-vit-large-patch14, so that ``base`` builds offline (random weights).
CLIP_L14_TEXT = dict(
    model_type="clip_text_model",
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
# The text tower of openai/clip-vit-base-patch32.
CLIP_B32_TEXT = dict(CLIP_L14_TEXT, hidden_size=512, intermediate_size=2048, projection_dim=512, num_attention_heads=8)


def _base() -> ModelConfig:
    return ModelConfig(preset="base", text_config=dict(CLIP_L14_TEXT))


def _base_mamba() -> ModelConfig:
    return _base().replace(preset="base-mamba", decoder="mamba")


def _small() -> ModelConfig:
    return ModelConfig(
        preset="small",
        image_size=384,
        dims=[96, 192, 384, 768],
        depths=[2, 2, 5, 2],
        twister_depths=[1, 1, 1, 1],
        local_hidden=256,
        decoder_dim=384,
        text_encoder="openai/clip-vit-base-patch32",
        text_config=dict(CLIP_B32_TEXT),
    )


def _medium() -> ModelConfig:
    """``small`` with VMamba-S's backbone (15 blocks in stage 3): the visual backbones of ``small``,
    ``medium`` and ``base`` have the tensors of VMamba-T, -S and -B's released ImageNet-1K
    checkpoints (``remamber.hub.vmamba.RELEASES``), so each can start from one."""
    return _small().replace(preset="medium", depths=[2, 2, 15, 2])


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        image_size=128,
        dims=[32, 64, 128, 256],
        depths=[1, 1, 2, 1],
        twister_depths=[1, 1, 1, 1],
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        channel_scan_size=8,
        local_hidden=64,
        decoder_dim=64,
        text_encoder=SCRATCH,
        text_config=None,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": _tiny,
    "small": _small,
    "medium": _medium,
    "base": _base,
    "base-mamba": _base_mamba,
}


def preset_config(name: str) -> ModelConfig:
    """The config of a named preset (the scratch text config of ``tiny`` is filled by :func:`build_model`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


def build_model(config: ModelConfig | str, pretrained_text: bool = False, vocab: list[str] | None = None) -> ReMamber:
    """Build a model from a preset name or config, with a tokenizer attached.

    ``pretrained_text`` loads the named Hugging Face text encoder's weights and tokenizer
    (from the Hub cache or a local folder); otherwise the text encoder is random and, for a
    named encoder, only its architecture is used (no tokenizer is attached). A ``scratch``
    text encoder gets a word-level tokenizer over ``vocab`` (default: a basic vocabulary).
    """
    cfg = preset_config(config) if isinstance(config, str) else config
    if cfg.text_encoder == SCRATCH:
        tokenizer = build_scratch_tokenizer(vocab) if vocab else build_scratch_tokenizer()
        if cfg.text_config is None or cfg.text_config.get("vocab_size") != len(tokenizer):
            cfg = cfg.replace(text_config=scratch_text_config(len(tokenizer), max_len=cfg.max_text_len))
        model = ReMamber(cfg, tokenizer=tokenizer)
        init_scratch_word_embeddings(model.text_encoder.model)
        return model
    if pretrained_text:
        text_model, text_config = load_pretrained_text_model(cfg.text_encoder)
        cfg = cfg.replace(text_config=text_config)
        return ReMamber(cfg, text_model=text_model, tokenizer=load_tokenizer(cfg.text_encoder))
    return ReMamber(cfg)
