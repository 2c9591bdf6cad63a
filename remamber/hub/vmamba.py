"""Start a model's visual backbone from a released VMamba ImageNet-1K classification checkpoint.

VMamba (MzeroMiko/VMamba) publishes its classification checkpoints (:data:`RELEASES`) as
``torch.save``'d dicts: ``model`` (the state dict), usually ``model_ema`` (its exponential moving
average), ``optimizer``, ``lr_scheduler``, ``epoch``, ``max_accuracy`` and ``config``, a yacs
``CfgNode``.  This module

* reads such a file with :func:`remamber.utils.inert_pickle.load_checkpoint`: no code from the
  file runs, the config and any other object are inert data, and a pickle that asks to call a
  global outside the allowed few is refused;
* takes its ``model`` or ``model_ema`` weights (``key``; ``auto`` takes ``model``, what VMamba's
  own backbone loader and the official ReMamber training start from, and ``model_ema`` only when
  there is no ``model``);
* reads the backbone's settings off the tensor shapes (:class:`BackboneArch`) and names the
  presets whose backbone has them;
* maps the names to ours: VMamba's are the official ReMamber backbone's without its ``backbone.``
  prefix (``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``), so the
  official converter's rules apply; the ImageNet head (``classifier.*``) is dropped;
* checks strictly that every backbone tensor of the model (patch embedding, stage blocks,
  downsampling) comes from the file with its shape and that every other file tensor has a
  place, otherwise one :class:`WeightsError` names the first problem, says what the file is and
  which preset fits it; then copies the tensors and returns a :class:`BackboneReport`.

The fusion layers (the Twister and its text guidance), the decoder and the text encoder are not
in such a file and keep their values.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remamber.utils.errors import InputError, WeightsError, first_line

KEYS = ("auto", "model", "model_ema")
_DOWNLOAD = "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/"
# Our tensors that a VMamba file fills: the stem, the stage blocks and the downsampling.
_BACKBONE = re.compile(r"^encoder\.(patch_embed|stages\.\d+\.(blocks|downsample))\.")
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_PART = re.compile(r"^encoder\.stages\.\d+\.([^.]+)\.")


@dataclass(frozen=True)
class BackboneArch:
    """The shape settings of a VMamba (VSS) backbone, named as in :class:`ModelConfig`.

    ``dt_rank`` is ``"auto"`` when every stage's rank is ceil(width / 16), else the rank of
    every stage, or a tuple when the stages differ (no config has that).
    """

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    ssm_ratio: float
    d_state: int
    dt_rank: Any
    d_conv: int
    conv_bias: bool
    mlp_ratio: float
    in_chans: int = 3

    @classmethod
    def of_config(cls, cfg) -> BackboneArch | None:
        """The backbone a :class:`ModelConfig` builds; None when its blocks are not VSS blocks."""
        from remamber.modeling.ss2d import dt_rank_for

        if cfg.backbone != "vss":
            return None
        ranks = {i: dt_rank_for(d, cfg.dt_rank) for i, d in enumerate(cfg.dims)}
        return cls(
            dims=tuple(cfg.dims),
            depths=tuple(cfg.depths),
            ssm_ratio=float(cfg.ssm_ratio),
            d_state=cfg.d_state,
            dt_rank=_rank_setting(cfg.dims, ranks),
            d_conv=cfg.d_conv,
            conv_bias=cfg.conv_bias,
            mlp_ratio=float(cfg.mlp_ratio),
            in_chans=cfg.in_chans,
        )

    @classmethod
    def of_state(cls, state: dict) -> BackboneArch | None:
        """The backbone a VMamba state dict holds, read off the shapes; None when it does not have
        the v2 layout of the released files (patch embedding, downsampling, at least one VSS block)."""
        stem = state.get("patch_embed.0.weight")
        widths = [state.get("patch_embed.5.weight")] + [state.get(f"layers.{i}.downsample.1.weight") for i in range(3)]
        blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in state for m in [_BLOCK.match(k)] if m})
        if stem is None or stem.dim() != 4 or any(w is None or w.dim() != 4 for w in widths) or not blocks:
            return None
        dims = tuple(int(w.shape[0]) for w in widths)
        i0 = blocks[0][0]
        op = f"layers.{i0}.blocks.0.op."
        in_proj, a_logs, conv = (state.get(op + name) for name in ("in_proj.weight", "A_logs", "conv2d.weight"))
        if in_proj is None or a_logs is None or conv is None or a_logs.dim() != 2:
            return None
        fc1 = state.get(f"layers.{i0}.blocks.0.mlp.fc1.weight")
        ranks = {
            i: int(w.shape[-1])
            for i in range(4)
            for w in [state.get(f"layers.{i}.blocks.0.op.dt_projs_weight")]
            if w is not None
        }
        return cls(
            dims=dims,
            depths=tuple(sum(1 for i, _ in blocks if i == stage) for stage in range(4)),
            ssm_ratio=in_proj.shape[0] / dims[i0],
            d_state=int(a_logs.shape[1]),
            dt_rank=_rank_setting(dims, ranks),
            d_conv=int(conv.shape[-1]),
            conv_bias=op + "conv2d.bias" in state,
            mlp_ratio=fc1.shape[0] / fc1.shape[1] if fc1 is not None else 0.0,
            in_chans=int(stem.shape[1]),
        )

    def describe(self) -> str:
        """``dims 96-192-384-768, depths 2-2-5-2, ssm_ratio 2, ...`` (the settings that differ
        between presets and files first)."""
        rank = self.dt_rank if not isinstance(self.dt_rank, tuple) else "-".join(map(str, self.dt_rank))
        text = (
            f"dims {'-'.join(map(str, self.dims))}, depths {'-'.join(map(str, self.depths))}, "
            f"ssm_ratio {self.ssm_ratio:g}, d_state {self.d_state}, dt_rank {rank}, d_conv {self.d_conv}"
            f"{' with bias' if self.conv_bias else ''}, mlp_ratio {self.mlp_ratio:g}"
        )
        return text + (f", {self.in_chans} input channels" if self.in_chans != 3 else "")


def _rank_setting(dims, ranks: dict[int, int]) -> Any:
    """``"auto"``, one rank, or the ranks of all stages, as :class:`BackboneArch` keeps them."""
    from remamber.modeling.ss2d import dt_rank_for

    if all(rank == dt_rank_for(dims[i], "auto") for i, rank in ranks.items()):
        return "auto"
    values = set(ranks.values())
    return values.pop() if len(values) == 1 else tuple(ranks[i] for i in sorted(ranks))


@dataclass(frozen=True)
class Release:
    """A classification checkpoint published by VMamba (GitHub release ``#v2cls``)."""

    file: str
    name: str
    dim: int
    depths: tuple[int, ...]
    ssm_ratio: float

    @property
    def url(self) -> str:
        """Where VMamba publishes the file."""
        return _DOWNLOAD + self.file

    @property
    def arch(self) -> BackboneArch:
        """Its backbone: every released v2 file has d_state 1, dt_rank auto, a 3x3 depthwise conv
        without bias, MLP ratio 4 (VMamba's configs/vssm/vmambav2*_224.yaml)."""
        dims = tuple(self.dim * 2**i for i in range(4))
        return BackboneArch(dims, self.depths, self.ssm_ratio, 1, "auto", 3, False, 4.0)

    def describe(self) -> str:
        """``VMamba-T [s2l5] (vssm_tiny_0230_ckpt_epoch_262.pth)``."""
        return f"{self.name} ({self.file})"


# VMamba's README / assets/performance.md, ImageNet-1K at 224 px.
RELEASES = (
    Release("vssm_tiny_0230_ckpt_epoch_262.pth", "VMamba-T [s2l5]", 96, (2, 2, 5, 2), 2.0),
    Release("vssm_small_0229_ckpt_epoch_222.pth", "VMamba-S [s2l15]", 96, (2, 2, 15, 2), 2.0),
    Release("vssm_base_0229_ckpt_epoch_237.pth", "VMamba-B [s2l15]", 128, (2, 2, 15, 2), 2.0),
    Release("vssm1_tiny_0230s_ckpt_epoch_264.pth", "VMamba-T [s1l8]", 96, (2, 2, 8, 2), 1.0),
    Release("vssm1_small_0229s_ckpt_epoch_240.pth", "VMamba-S [s1l20]", 96, (2, 2, 20, 2), 1.0),
    Release("vssm1_base_0229s_ckpt_epoch_225.pth", "VMamba-B [s1l20]", 128, (2, 2, 20, 2), 1.0),
)


def release_of(arch: BackboneArch) -> Release | None:
    """The released file whose backbone is ``arch``, if any."""
    return next((r for r in RELEASES if r.arch == arch), None)


def fitting_presets(arch: BackboneArch) -> list[str]:
    """The presets whose visual backbone has exactly ``arch``'s tensors."""
    from remamber.modeling.presets import PRESETS

    return [name for name, make in PRESETS.items() if BackboneArch.of_config(make()) == arch]


def _fit(arch: BackboneArch) -> str:
    """What to do with a file of backbone ``arch``: the presets it fits, or that none does and
    which files the presets take."""
    presets = fitting_presets(arch)
    if presets:
        return f"it fits `preset` {' or '.join(presets)}"
    taken = [f"{p} takes {r.describe()}" for r in RELEASES for p in fitting_presets(r.arch)]
    return "no preset has this backbone (" + "; ".join(taken) + ")"


def _what(arch: BackboneArch) -> str:
    release = release_of(arch)
    return f"{release.describe()}: {arch.describe()}" if release else f"a VMamba backbone with {arch.describe()}"


# ----------------------------------------------------------------------------- reading


@dataclass
class VMambaCheckpoint:
    """The backbone weights read from a VMamba classification checkpoint."""

    source: str  # as given: a path or a Hub file
    path: Path  # the local file
    key: str  # "model" or "model_ema"
    key_reason: str
    state: dict  # VMamba's names -> tensors
    arch: BackboneArch
    config_name: str | None = None  # MODEL.NAME of the file's yacs config, when it has one


def _key(obj: dict, key: str, source: str) -> tuple[str, str]:
    """The entry to read (``model`` or ``model_ema``) and why."""
    present = [k for k in ("model", "model_ema") if isinstance(obj.get(k), dict)]
    if not present:
        entries = ", ".join(map(str, list(obj)[:8])) or "none"
        raise WeightsError(
            f"{source}: holds no 'model' or 'model_ema' dict of weights, as VMamba's checkpoints do "
            f"(its entries: {entries})"
        )
    if key == "auto":
        if "model" in present:
            return "model", (
                "auto: 'model', the weights VMamba's backbone loader and the official ReMamber training start from"
            )
        return "model_ema", "auto: the file has no 'model', so its EMA weights 'model_ema'"
    if key not in present:
        raise WeightsError(f"{source}: has no {key!r} weights (it has {' and '.join(present)}): change `backbone_key`")
    return key, "asked for"


def _is_remamber(state: dict) -> bool:
    """Whether a state dict is a whole ReMamber model's (the authors' checkpoints)."""
    return any(k.startswith("backbone.") for k in state) and any(
        k.startswith(("text_encoder.", "decoder.")) for k in state
    )


def read_vmamba_checkpoint(spec: str | os.PathLike, key: str = "auto") -> VMambaCheckpoint:
    """Read the backbone weights of a VMamba classification checkpoint: a local file, or a Hub file
    (``owner/name/file`` or ``hf://owner/name/file``, through the Hugging Face cache).

    ``key``: ``model``, ``model_ema`` or ``auto`` (``model`` when the file has it, else ``model_ema``).
    """
    import torch

    from remamber.hub.folders import resolve_file
    from remamber.utils.inert_pickle import ForbiddenCallError, load_checkpoint

    if key not in KEYS:
        raise InputError(f"`backbone_key` {key!r}: choose auto, model or model_ema")
    source = str(spec)
    path = resolve_file(spec, "backbone_weights")
    try:
        obj = load_checkpoint(path)
    except ForbiddenCallError as e:
        raise WeightsError(
            f"{source}: refused to load: the file asks to call {e.name}, which is never run here (a checkpoint is "
            "read as tensors, plain containers and inert objects only)"
        ) from None
    except Exception as e:  # zip, pickle and storage errors of a truncated file or one that is no checkpoint
        raise WeightsError(
            f"{source}: not a readable PyTorch checkpoint ({type(e).__name__}: {first_line(e)})"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a VMamba checkpoint's dict")
    state = obj.get("model") if isinstance(obj.get("model"), dict) else obj
    if _is_remamber(state):
        raise WeightsError(
            f"{source} is a ReMamber checkpoint (a whole model: backbone.*, text_encoder.* and decoder.* tensors), "
            "not a VMamba classification checkpoint: convert it with `remamber export --from-official FILE --out DIR`"
        )
    key, reason = _key(obj, key, source)
    state = obj[key]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{source}: its {key!r} dict has {len(bad)} entries that are not named tensors (e.g. {bad[0]!r})"
        )
    arch = BackboneArch.of_state(state)
    if arch is None:
        raise WeightsError(
            f"{source}: its {key!r} weights are not a VMamba v2 backbone (the layout of the released vssm_* and "
            f"vssm1_* files: patch_embed.5.weight, layers.N.downsample.1.weight, layers.N.blocks.M.op.*); "
            f"it holds e.g. {', '.join(list(state)[:3]) or 'nothing'}"
        )
    config = obj.get("config")
    model_config = config.get("MODEL") if isinstance(config, dict) else None
    name = model_config.get("NAME") if isinstance(model_config, dict) else None
    return VMambaCheckpoint(source, path, key, reason, state, arch, name if isinstance(name, str) else None)


# ----------------------------------------------------------------------------- loading


@dataclass
class BackboneReport:
    """What :func:`load_backbone_weights` did: ``loaded`` (our names), ``dropped`` (the file's
    classifier), ``new`` (our tensors outside the text encoder that the file does not hold: the
    fusion layers and the decoder, left as they were)."""

    source: str
    file: str
    sha256: str
    key: str
    key_reason: str
    arch: BackboneArch
    config_name: str | None
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    text_encoder: int = 0  # tensors of the text encoder, which a VMamba file does not touch

    @property
    def release(self) -> Release | None:
        """The released file with this backbone, if any."""
        return release_of(self.arch)

    def new_parts(self) -> dict[str, int]:
        """Tensors left new per part (``twister``, ``decoder``, ...)."""
        return dict(Counter((m.group(1) if (m := _PART.match(k)) else k.split(".")[0]) for k in self.new))

    def to_dict(self) -> dict:
        """A JSON-ready summary (for ``training.json`` and ``--json``)."""
        release = self.release
        return {
            "source": self.source,
            "file": self.file,
            "sha256": self.sha256,
            "key": self.key,
            "key_reason": self.key_reason,
            "release": release.name if release else None,
            "config_name": self.config_name,
            "architecture": {
                "dims": list(self.arch.dims),
                "depths": list(self.arch.depths),
                "ssm_ratio": self.arch.ssm_ratio,
                "d_state": self.arch.d_state,
                "dt_rank": list(self.arch.dt_rank) if isinstance(self.arch.dt_rank, tuple) else self.arch.dt_rank,
                "d_conv": self.arch.d_conv,
                "conv_bias": self.arch.conv_bias,
                "mlp_ratio": self.arch.mlp_ratio,
            },
            "loaded": len(self.loaded),
            "dropped": list(self.dropped),
            "new": self.new_parts(),
            "text_encoder": self.text_encoder,
        }

    def lines(self) -> list[str]:
        """The report for a terminal, one fact per line."""
        named = f", its config names it {self.config_name}" if self.config_name else ""
        parts = ", ".join(f"{n} {part}" for part, n in self.new_parts().items()) or "none"
        lines = [
            f"backbone weights: {self.file} ({_what(self.arch)}{named})",
            f"weights used: '{self.key}' ({self.key_reason})",
            f"loaded {len(self.loaded)} tensors: the whole visual backbone (patch embedding, "
            f"{sum(self.arch.depths)} VSS blocks, downsampling)",
        ]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} ImageNet classifier tensors ({', '.join(self.dropped)})")
        lines.append(f"new, left at their initial values: {parts} tensors")
        if self.text_encoder:
            lines.append(f"not in the file, left as it is: the text encoder ({self.text_encoder} tensors)")
        return lines


def _shape(t) -> str:
    return "(" + ", ".join(map(str, t)) + ")"


def load_backbone_weights(model, weights: str | os.PathLike | VMambaCheckpoint, key: str = "auto") -> BackboneReport:
    """Copy a VMamba classification checkpoint's backbone into ``model`` (a :class:`ReMamber`).

    ``weights``: a local file, a Hub file (see :func:`read_vmamba_checkpoint`) or a checkpoint
    already read (then ``key`` is its own).  Every backbone tensor of the model must come from the
    file with its shape and every file tensor but the classifier must have a place; otherwise a
    :class:`WeightsError` names the first problem and the presets that fit the file.
    """
    import torch

    from remamber.export.official import official_to_ours, ours_to_official
    from remamber.utils.io import file_sha256

    ckpt = weights if isinstance(weights, VMambaCheckpoint) else read_vmamba_checkpoint(weights, key)
    cfg = model.config
    if cfg.backbone != "vss":
        raise WeightsError(
            f"{ckpt.source} holds VMamba (VSS) blocks, but the model's blocks are {cfg.backbone}'s (`backbone`)"
        )

    def misfit(problem: str) -> WeightsError:
        return WeightsError(
            f"{ckpt.source}: does not fit the backbone of this model (`preset` {cfg.preset}): {problem}; "
            f"the file is {_what(ckpt.arch)}; {_fit(ckpt.arch)}"
        )

    model_state = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    dropped, unexpected = [], []
    for name, tensor in ckpt.state.items():
        if name.startswith("classifier."):
            dropped.append(name)
            continue
        # VMamba's names are the official ReMamber backbone's without its prefix
        ours = official_to_ours("backbone." + name)
        if ours is None or not _BACKBONE.match(ours) or ours not in model_state:
            unexpected.append(name)
        elif tuple(tensor.shape) != tuple(model_state[ours].shape):
            raise misfit(
                f"{name} is {_shape(tensor.shape)} in the file but {ours} is {_shape(model_state[ours].shape)} "
                "in the model"
            )
        else:
            mapped[ours] = tensor
    if unexpected:
        first = unexpected[0]
        raise misfit(
            f"{len(unexpected)} tensors of the file have no place in it (e.g. {first} "
            f"{_shape(ckpt.state[first].shape)})"
        )
    missing = [k for k in model_state if _BACKBONE.match(k) and k not in mapped]
    if missing:
        vmamba_name = ours_to_official(missing[0]).removeprefix("backbone.")
        raise misfit(f"the file lacks {len(missing)} of its backbone tensors (e.g. {vmamba_name})")
    model.load_state_dict(mapped, strict=False)  # the rest of the model keeps its values
    return BackboneReport(
        source=ckpt.source,
        file=ckpt.path.name,
        sha256=file_sha256(ckpt.path),
        key=ckpt.key,
        key_reason=ckpt.key_reason,
        arch=ckpt.arch,
        config_name=ckpt.config_name,
        loaded=list(mapped),
        dropped=dropped,
        new=[k for k in model_state if k not in mapped and not k.startswith("text_encoder.")],
        text_encoder=sum(1 for k in model_state if k.startswith("text_encoder.")),
    )


# ----------------------------------------------------------------------------- export


def source_section(report: BackboneReport, text_encoder: str) -> str:
    """The model card's account of a model that starts from VMamba weights."""
    release = report.release
    published = f", published by VMamba at {release.url}" if release else ""
    parts = ", ".join(report.new_parts()) or "none"
    return (
        "## Source\n\n"
        "A starting point, not a trained model: fine-tune it (e.g. `remamber train --init <this folder>`) "
        "before use. The visual backbone (patch embedding, VSS blocks, downsampling) comes from the VMamba "
        f"ImageNet-1K classification checkpoint `{report.file}` ({_what(report.arch)}; sha256 `{report.sha256}`; "
        f"its '{report.key}' weights{published}); its classifier was dropped. The new parts ({parts}) are "
        f"randomly initialised; the text encoder is {text_encoder}.\n"
    )


def export_from_vmamba(
    spec: str | os.PathLike,
    out: str | os.PathLike,
    preset: str | None = None,
    key: str = "auto",
    metrics: list[dict] | None = None,
    notes: str = "",
) -> tuple[Path, BackboneReport]:
    """Write a model folder at ``out`` (atomically): ``preset`` (default: the one the file fits) with
    its visual backbone from a VMamba checkpoint, random fusion layers and decoder, and the preset's
    pretrained text encoder (from the Hugging Face cache) or a scratch one."""
    from remamber.hub.folders import save_pretrained
    from remamber.hub.publish import export_card
    from remamber.modeling.presets import build_model, preset_config
    from remamber.modeling.text import SCRATCH

    ckpt = read_vmamba_checkpoint(spec, key)
    if preset is None:
        fits = fitting_presets(ckpt.arch)
        if not fits:
            raise WeightsError(f"{ckpt.source}: the file is {_what(ckpt.arch)}; {_fit(ckpt.arch)}")
        preset = fits[0]
    cfg = preset_config(preset)
    if BackboneArch.of_config(cfg) != ckpt.arch:  # refused before the text encoder is read from the cache
        load_backbone_weights(build_model(cfg), ckpt)  # raises, naming the first tensor that does not fit
    scratch = cfg.text_encoder == SCRATCH
    try:
        model = build_model(cfg, pretrained_text=not scratch)
    except OSError as e:
        raise WeightsError(
            f"cannot load the text encoder {cfg.text_encoder!r} of preset {preset} ({first_line(e)}); it must be "
            "in the Hugging Face cache"
        ) from None
    report = load_backbone_weights(model, ckpt)
    text = "a scratch word-level one (random)" if scratch else f"{cfg.text_encoder}'s pretrained text tower"
    card = export_card(model.config, source_section(report, text), metrics or [], notes)
    return save_pretrained(model, out, card=card), report
