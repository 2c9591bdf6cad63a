"""Convert the authors' released ReMamber checkpoints (yyh-rain-song/ReMamber) into model folders.

The official training script saves ``{"model": model.state_dict(), ...}`` of a ReMamber_Conv
(``ConvSegmentor``) or ReMamber_Mamba (``MambaSegmentor``) model (the best checkpoint also holds
the optimizer, the scheduler and the ``argparse`` arguments).  The model's tensors are named
``backbone.*`` (VMamba stages, Twister layers and the text guidance), ``decoder.*`` (the conv
decoder, or the Mamba decoder) and ``text_encoder.*`` (CLIP ViT-L/14's text tower, a Hugging
Face ``CLIPTextModel``).  This module

* reads the file with ``torch.load(weights_only=True)`` (no code from the file runs; the only
  global allowed besides tensors and containers is ``argparse.Namespace``);
* tells the variant from the decoder's tensor names (:func:`detect_variant`), and refuses a file
  of the other variant than the one asked for;
* infers our :class:`ModelConfig` from the tensor shapes (stage dims and depths, Twister depths,
  d_state, dt rank, conv kernel, MLP ratio, channel-scan size, local-interaction width, the conv
  decoder's width or the Mamba decoder's depths and local-interaction width, the text tower's
  size); everything else is the ``base`` (or ``base-mamba``) preset's;
* renames every tensor to ours with the rules in :data:`KEY_RULES` and checks strictly that every
  official tensor is used (bar :data:`IGNORED`), that every tensor of our model is filled and
  that all shapes agree, raising one :class:`WeightsError` that lists every problem.  The
  official model keeps no tensor that its output does not use (checked on the base and a small
  configuration), so :data:`IGNORED` holds only a constant buffer of older transformers.

What the shapes cannot tell is taken from CLIP ViT-L/14's text config (activation, norm epsilon,
the end-token pooling) and, for text towers of another width, 64-wide attention heads.

The outputs of a converted model match the official code's (see ``benchmarks/official_parity.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

from remamber.utils.errors import InputError, WeightsError, first_line
from remamber.utils.io import file_sha256

VARIANTS = ("conv", "mamba")
# The official model of each variant, and a name prefix that only its decoder has.
MODEL_NAMES = {"conv": "ReMamber_Conv", "mamba": "ReMamber_Mamba"}
DECODER_MARKS = {
    "conv": ("decoder.mixer3.", "decoder.neck."),
    "mamba": ("decoder.multimodal_blocks.", "decoder.proj_out."),
}
DEFAULT_TOKENIZER = "openai/clip-vit-large-patch14"
OFFICIAL_REPO = "https://github.com/yyh-rain-song/ReMamber"

# Globals that a released checkpoint may hold besides tensors and plain containers: the best
# checkpoint of the official main.py stores its command-line arguments as an argparse.Namespace.
SAFE_GLOBALS = (argparse.Namespace,)

# Official name -> our name.  ``{i}`` / ``{j}`` are indices, ``{rest}`` the rest of the name: the
# modules below those points are laid out and named alike on both sides (checked tensor by tensor).
KEY_RULES: list[tuple[str, str]] = [
    ("backbone.patch_embed.{rest}", "encoder.patch_embed.{rest}"),
    ("backbone.layers.{i}.blocks.{j}.{rest}", "encoder.stages.{i}.blocks.{j}.{rest}"),
    ("backbone.layers.{i}.downsample.{rest}", "encoder.stages.{i}.downsample.{rest}"),
    ("backbone.multimodal_blocks.{i}.blocks.{j}.ln_1.{rest}", "encoder.stages.{i}.twister.blocks.{j}.norm.{rest}"),
    (
        "backbone.multimodal_blocks.{i}.blocks.{j}.self_attention.{rest}",
        "encoder.stages.{i}.twister.blocks.{j}.mixer.{rest}",
    ),
    ("backbone.text_guidencee.{i}.{rest}", "encoder.stages.{i}.twister.global_text.{rest}"),
    ("backbone.local_text_fusion.{i}.{rest}", "encoder.stages.{i}.twister.local_text.{rest}"),
    # the Mamba decoder: one module per level on our side (official lists per kind, indexed by level)
    ("decoder.multimodal_blocks.{i}.blocks.{j}.ln_1.{rest}", "decoder.levels.{i}.blocks.{j}.norm.{rest}"),
    ("decoder.multimodal_blocks.{i}.blocks.{j}.self_attention.{rest}", "decoder.levels.{i}.blocks.{j}.op.{rest}"),
    ("decoder.multimodal_blocks.{i}.downsample.{rest}", "decoder.levels.{i}.upsample.{rest}"),
    ("decoder.in_proj.{i}.{rest}", "decoder.levels.{i}.in_proj.{rest}"),
    ("decoder.text_guidencee.{i}.{rest}", "decoder.levels.{i}.global_text.{rest}"),
    ("decoder.local_text_fusion.{i}.{rest}", "decoder.levels.{i}.local_text.{rest}"),
    ("decoder.hire_fusion.{i}.fusion.{rest}", "decoder.levels.{i}.skip.{rest}"),
    # the conv decoder and the Mamba decoder's proj_out: the same names
    ("decoder.{rest}", "decoder.{rest}"),
]
# The CLIP text tower: ``text_encoder.text_model.{rest}`` (transformers < 5, as the official code
# saved it) or ``text_encoder.{rest}`` (transformers >= 5 dropped the ``text_model`` level) maps to
# our ``text_encoder.model.{rest}`` or ``text_encoder.model.text_model.{rest}``, as the installed
# transformers lays out CLIPTextModel.
TEXT_PREFIX = "text_encoder."
LEGACY_TEXT_LEVEL = "text_model."

# Official tensors that are deliberately not copied (text names without ``text_model.``), with the reason.
IGNORED: dict[str, str] = {
    "text_encoder.embeddings.position_ids": (
        "the constant 0..n-1 position index; a persistent buffer in transformers < 4.31, rebuilt by "
        "our CLIPTextModel (checked to be 0..n-1)"
    ),
}

_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "rest": r"(?P<rest>.+)"}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(_PLACEHOLDERS[p] if k % 2 else re.escape(p) for k, p in enumerate(parts))
    return re.compile(f"^{body}$")


_FORWARD = [(_compile(src), dst) for src, dst in KEY_RULES]
_BACKWARD = [(_compile(dst), src) for src, dst in KEY_RULES]


def _apply(rules: list[tuple[re.Pattern, str]], key: str) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def canonical_text_names(state: dict) -> tuple[dict, bool]:
    """The state with ``text_encoder.text_model.X`` renamed ``text_encoder.X``; and whether it had that level."""
    legacy_prefix = TEXT_PREFIX + LEGACY_TEXT_LEVEL
    legacy = any(k.startswith(legacy_prefix) for k in state)
    if not legacy:
        return dict(state), False
    return {
        (TEXT_PREFIX + k[len(legacy_prefix) :] if k.startswith(legacy_prefix) else k): v for k, v in state.items()
    }, True


def our_text_prefix(model_keys) -> str:
    """Where our CLIPTextModel's tensors start: with or without the ``text_model.`` level."""
    nested = "text_encoder.model." + LEGACY_TEXT_LEVEL
    return nested if any(k.startswith(nested) for k in model_keys) else "text_encoder.model."


def official_to_ours(key: str, text_prefix: str = "text_encoder.model.") -> str | None:
    """Our name for an official tensor name in canonical form (None when no rule applies)."""
    if key.startswith(TEXT_PREFIX):
        return text_prefix + key[len(TEXT_PREFIX) :]
    return _apply(_FORWARD, key)


def ours_to_official(key: str, text_prefix: str = "text_encoder.model.", legacy: bool = True) -> str | None:
    """The official name of one of our tensor names (None when no rule applies)."""
    if key.startswith(text_prefix):
        return TEXT_PREFIX + (LEGACY_TEXT_LEVEL if legacy else "") + key[len(text_prefix) :]
    return _apply(_BACKWARD, key)


# ----------------------------------------------------------------------------- reading


def load_official_state(path: str | os.PathLike) -> dict:
    """The official model's state dict from a ``.pth`` file, loaded with ``weights_only=True``.

    A top-level ``model`` or ``state_dict`` entry is unwrapped, as is a ``module.`` prefix.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"official checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e).lower()
        if "unsupported operand" in message or "invalid load key" in message:  # not a pickle at all
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint (torch.load cannot parse it)") from None
        if "weights only load failed" not in message:
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {found.group(1)}" if found else "objects other than tensors and plain containers"
        raise WeightsError(
            f"{path}: refused to load: the file needs {what}, which a weights-only load does not run "
            f"(only tensors, plain containers and argparse.Namespace are allowed)"
        ) from None
    except Exception as e:  # zip / pickle / storage errors of a file that is not a checkpoint
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first_line(e)})") from None
    state = obj
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path}: holds no state dict (expected a dict of tensors, or one under 'model')")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path}: the state dict has {len(bad)} entries that are not named tensors (e.g. {bad[0]!r})"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# ----------------------------------------------------------------------------- config


def _indices(state: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.match(k)] if m})


def _first(state: dict, pattern: str):
    rx = re.compile(pattern)
    for k in sorted(state):
        if rx.match(k):
            return state[k]
    return None


def detect_variant(state: dict) -> str:
    """``conv`` or ``mamba``: which official model a state dict is, told by its decoder's tensor names."""
    found = [v for v, marks in DECODER_MARKS.items() if any(k.startswith(marks) for k in state)]
    if len(found) != 1:
        what = "tensors of both decoders" if found else "no decoder tensors (decoder.mixer3.*, decoder.proj_out.*)"
        raise WeightsError(f"not a ReMamber_Conv or ReMamber_Mamba checkpoint: it has {what}")
    return found[0]


def infer_config(state: dict, image_size: int | None = None, legacy: bool = True, variant: str = "conv"):
    """Our :class:`ModelConfig` for an official state dict of ``variant`` (text names canonical, see
    :func:`canonical_text_names`); what the shapes do not tell is the ``base`` (or ``base-mamba``)
    preset's."""
    from remamber.modeling.presets import CLIP_L14_TEXT, preset_config

    model_name = MODEL_NAMES[variant]

    def need(key: str):
        if key not in state:
            raise WeightsError(
                f"not a {model_name} checkpoint: it has no {_display(key, legacy)} (found e.g. {_display(sorted(state)[0], legacy)})"
            )
        return state[key]

    stages = _indices(state, r"^backbone\.text_guidencee\.(\d+)\.")
    if stages != list(range(4)):
        raise WeightsError(
            f"not a {model_name} checkpoint: expected the text guidance of 4 stages (backbone.text_guidencee.0-3), "
            f"found {len(stages)}"
        )
    dims = [int(need(f"backbone.text_guidencee.{i}.0.weight").shape[0]) for i in range(4)]
    text_dim = int(need("backbone.text_guidencee.0.0.weight").shape[1])
    depths = [len(_indices(state, rf"^backbone\.layers\.{i}\.blocks\.(\d+)\.")) for i in range(4)]
    twister_depths = [len(_indices(state, rf"^backbone\.multimodal_blocks\.{i}\.blocks\.(\d+)\.")) for i in range(4)]

    a_log = _first(state, r"^backbone\..*\.A_logs$")
    if a_log is None:
        raise WeightsError(f"not a {model_name} checkpoint: it has no selective-scan tensors (backbone.*.A_logs)")
    d_state = int(a_log.shape[1])
    # the Twister's spatial scan always exists; its output projection is (C, d_inner)
    ss2d = "backbone.multimodal_blocks.{i}.blocks.0.self_attention.ss2d."
    i0 = next((i for i in range(4) if twister_depths[i]), None)
    if i0 is None:
        raise WeightsError(f"not a {model_name} checkpoint: it has no Twister layers (backbone.multimodal_blocks.*)")
    out_proj = need(ss2d.format(i=i0) + "out_proj.weight")
    ssm_ratio = out_proj.shape[1] / out_proj.shape[0]
    dt_rank: Any = "auto"
    ranks = set()
    for key, w in state.items():  # (K, d_inner, rank) beside an out_proj (d_model, d_inner)
        if not key.endswith(".dt_projs_weight") or w.dim() != 3:
            continue
        out_w = state.get(key[: -len("dt_projs_weight")] + "out_proj.weight")
        if out_w is not None:
            ranks.add((int(w.shape[2]), math.ceil(out_w.shape[0] / 16)))
    if any(rank != auto for rank, auto in ranks) and len({rank for rank, _ in ranks}) == 1:
        dt_rank = next(iter(ranks))[0]
    conv = _first(state, r"^backbone\..*\.conv2d\.weight$")
    d_conv = int(conv.shape[-1]) if conv is not None else 1
    conv_bias = any(k.endswith(".conv2d.bias") for k in state)
    fc1 = _first(state, r"^backbone\.layers\.\d+\.blocks\.\d+\.mlp\.fc1\.weight$")
    mlp_ratio = 4.0
    if fc1 is not None:
        mlp_ratio = fc1.shape[0] / fc1.shape[1]
    elif any(depths):
        mlp_ratio = 0.0
    ss1d_in = need(f"backbone.multimodal_blocks.{i0}.blocks.0.self_attention.ss1d.in_proj.weight")
    channel_scan_size = math.isqrt(int(ss1d_in.shape[1]))
    local_hidden = int(need("backbone.local_text_fusion.0.vis_proj.0.weight").shape[0])
    max_text_len = int(need("backbone.local_text_fusion.0.unsqueeze.0.weight").shape[1])
    if variant == "conv":
        decoder = dict(decoder_dim=int(need("decoder.mixer3.conv2.conv.weight").shape[0]))
    else:
        decoder = dict(
            decoder_depths=[
                len(_indices(state, rf"^decoder\.multimodal_blocks\.{i}\.blocks\.(\d+)\.")) for i in range(4)
            ],
            decoder_local_hidden=int(need("decoder.local_text_fusion.0.vis_proj.0.weight").shape[0]),
        )

    tok = need("text_encoder.embeddings.token_embedding.weight")
    pos = need("text_encoder.embeddings.position_embedding.weight")
    n_layers = len(_indices(state, r"^text_encoder\.encoder\.layers\.(\d+)\."))
    hidden = int(tok.shape[1])
    text_config = dict(CLIP_L14_TEXT)
    if hidden != CLIP_L14_TEXT["hidden_size"]:  # not CLIP-L: 64-wide heads as in every CLIP text tower
        text_config.update(num_attention_heads=max(1, hidden // 64), projection_dim=hidden)
    text_config.update(
        vocab_size=int(tok.shape[0]),
        hidden_size=hidden,
        max_position_embeddings=int(pos.shape[0]),
        num_hidden_layers=n_layers,
        intermediate_size=int(need("text_encoder.encoder.layers.0.mlp.fc1.weight").shape[0])
        if n_layers
        else hidden * 4,
    )
    if text_dim != hidden:
        raise WeightsError(
            f"checkpoint does not hold together: the text guidance takes {text_dim}-d text features but the text "
            f"encoder is {hidden}-d"
        )

    base = preset_config("base" if variant == "conv" else "base-mamba")
    arch = dict(
        dims=dims,
        depths=depths,
        twister_depths=twister_depths,
        d_state=d_state,
        ssm_ratio=ssm_ratio,
        dt_rank=dt_rank,
        d_conv=d_conv,
        conv_bias=conv_bias,
        mlp_ratio=mlp_ratio,
        channel_scan_size=channel_scan_size,
        local_hidden=local_hidden,
        max_text_len=max_text_len,
        text_config=text_config,
        **decoder,
    )
    same = all(getattr(base, k) == v for k, v in arch.items())
    return base.replace(
        preset=base.preset if same else "official",
        image_size=image_size or base.image_size,
        text_encoder=DEFAULT_TOKENIZER,
        decoder=variant,
        text_pooling="pooler",
        presence_head=False,  # the official model has none: the converted one gives its outputs
        **arch,
    )


# ----------------------------------------------------------------------------- mapping


def _list(keys: list[str], limit: int = 6, show=lambda k: k) -> str:
    shown = ", ".join(show(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def map_state(
    state: dict, model_state: dict, source: str = "checkpoint", legacy: bool = True, variant: str = "conv"
) -> dict:
    """Rename an official state dict of ``variant`` (text names in canonical form, see
    :func:`canonical_text_names`) to ours, strictly: every official tensor used (bar
    :data:`IGNORED`), every one of ours filled, shapes equal; otherwise one WeightsError listing
    every problem, in official names (``legacy``: with the ``text_model.`` level of the official files)."""
    import torch

    prefix = our_text_prefix(model_state)
    official = lambda k: ours_to_official(k, prefix, legacy) or k  # noqa: E731
    mapped: dict = {}
    unexpected: list[str] = []
    problems: list[str] = []
    for key, value in state.items():
        if key in IGNORED:
            if key.endswith("position_ids") and not torch.equal(
                value.reshape(-1).long(), torch.arange(value.numel(), dtype=torch.long)
            ):
                problems.append(f"{key} is not 0..{value.numel() - 1}, which our CLIP text model assumes")
            continue
        ours = official_to_ours(key, prefix)
        if ours is None or ours not in model_state:
            unexpected.append(_display(key, legacy))
        else:
            mapped[ours] = value
    missing = [k for k in model_state if k not in mapped]
    shapes = [k for k in mapped if tuple(mapped[k].shape) != tuple(model_state[k].shape)]
    if missing or unexpected or shapes or problems:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} missing (the model needs them, the checkpoint lacks them): "
                + _list(missing, show=official)
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected (in the checkpoint, not used by {MODEL_NAMES[variant]}): "
                + _list(unexpected)
            )
        if shapes:
            parts.append(
                f"{len(shapes)} of the wrong shape: "
                + _list(
                    shapes,
                    show=lambda k: f"{official(k)} {tuple(mapped[k].shape)} (model: {tuple(model_state[k].shape)})",
                )
            )
        parts.extend(problems)
        raise WeightsError(f"{source} does not fit {MODEL_NAMES[variant]}: " + "; ".join(parts))
    return mapped


def _display(key: str, legacy: bool) -> str:
    """A canonical official name as the file spells it."""
    if legacy and key.startswith(TEXT_PREFIX):
        return TEXT_PREFIX + LEGACY_TEXT_LEVEL + key[len(TEXT_PREFIX) :]
    return key


# ----------------------------------------------------------------------------- tokenizer


def resolve_tokenizer(tokenizer: Any = None) -> Any:
    """A tokenizer object: given as is, or loaded from a folder or Hub name (default: CLIP ViT-L/14's)."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from remamber.inference.tokens import load_tokenizer

    name = str(tokenizer) if tokenizer is not None else DEFAULT_TOKENIZER
    local = Path(name).expanduser()
    try:
        if local.is_dir():
            return load_tokenizer(str(local), model_folder=True)
        return load_tokenizer(name)
    except Exception as e:  # OSError (not cached, offline), ValueError, connection errors
        first = first_line(e)
        if local.is_dir():
            raise WeightsError(f"tokenizer {name}: no usable tokenizer files in this folder ({first})") from None
        raise WeightsError(
            f"cannot load the tokenizer {name}: it is not in the Hugging Face cache and could not be downloaded "
            f"({first}); fetch it on a connected machine (`hf download {name}`) or pass `tokenizer` with a folder "
            f"that holds its tokenizer files"
        ) from None


# ----------------------------------------------------------------------------- conversion


def _check_variant(variant: str | None) -> None:
    if variant is not None and variant not in VARIANTS:
        raise InputError(f"`variant` {variant!r}: choose conv or mamba (or leave it out: it is read off the file)")


def build_from_official(
    ckpt_path: str | os.PathLike,
    variant: str | None = None,
    tokenizer: Any = None,
    image_size: int | None = None,
):
    """Our :class:`ReMamber` (eval mode, tokenizer attached) holding an official checkpoint's weights.

    ``variant`` (conv or mamba) is the official model the file must hold; None reads it off the file.
    """
    from remamber.modeling.remamber import ReMamber

    _check_variant(variant)
    state = load_official_state(ckpt_path)
    found = detect_variant(state)
    if variant is not None and variant != found:
        raise WeightsError(
            f"{ckpt_path} is a {MODEL_NAMES[found]} checkpoint (its decoder is the {found} one), not "
            f"{MODEL_NAMES[variant]}: pass `variant` {found}, or leave `variant` out to read it off the file"
        )
    state, legacy = canonical_text_names(state)
    config = infer_config(state, image_size=image_size, legacy=legacy, variant=found)
    tok = resolve_tokenizer(tokenizer)
    vocab = config.text_config["vocab_size"]
    if len(tok) > vocab:
        raise WeightsError(
            f"the tokenizer has {len(tok)} tokens but the checkpoint's text encoder knows only {vocab}: "
            "pass the tokenizer the model was trained with (`tokenizer`)"
        )
    model = ReMamber(config, tokenizer=tok)
    mapped = map_state(state, model.state_dict(), source=str(ckpt_path), legacy=legacy, variant=found)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def source_section(ckpt_path: Path, variant: str = "conv") -> str:
    """The model card's account of where the weights came from."""
    return (
        "## Source\n\n"
        f"Converted with `remamber export --from-official` from the official {MODEL_NAMES[variant]} "
        f"checkpoint `{ckpt_path.name}` (sha256 `{file_sha256(ckpt_path)}`) released by the authors of ReMamber "
        f"({OFFICIAL_REPO}). The released checkpoints were trained on RefCOCO, RefCOCO+ and G-Ref together "
        "(official README). Every tensor was copied unchanged; remamber's model reproduces the official code's "
        "outputs (benchmarks/official_parity.py). The weights are the authors': check their terms before "
        "redistributing them.\n"
    )


def convert_official(
    ckpt_path: str | os.PathLike,
    variant: str | None = None,
    out: str | os.PathLike | None = None,
    tokenizer: Any = None,
    image_size: int | None = None,
    metrics: list[dict] | None = None,
    notes: str = "",
) -> Path:
    """Convert an official ReMamber_Conv or ReMamber_Mamba ``.pth`` into a model folder at ``out``
    (written atomically); ``variant`` as in :func:`build_from_official`.

    ``tokenizer``: a tokenizer object, or a folder / Hub name to load one from (default: the CLIP
    ViT-L/14 tokenizer, from the Hugging Face cache when offline).  ``metrics`` (``remamber eval
    --json`` objects) and ``notes`` (markdown) go into the model card.
    """
    from remamber.hub.folders import save_pretrained
    from remamber.hub.publish import export_card

    _check_variant(variant)
    if out is None:
        raise InputError("out is required: the folder to write the converted model to")
    model = build_from_official(ckpt_path, variant, tokenizer=tokenizer, image_size=image_size)
    card = export_card(model.config, source_section(Path(ckpt_path), model.config.decoder), metrics or [], notes)
    return save_pretrained(model, out, card=card)
