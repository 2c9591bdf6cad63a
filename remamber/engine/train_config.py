"""The settings of a training run, declared once: each field's default, help and metavar are
what ``remamber train`` shows for its flag (``--`` + the name with dashes).

A recipe (:data:`RECIPES`) fills the settings left unset (``None``): a value given explicitly
always wins, then the recipe's (``paper`` when ``backbone_weights`` is set, else ``default``),
and a recipe value of ``None`` leaves the setting to the model (the preset's image size and drop
path). :meth:`TrainConfig.resolved` applies it; ``train_config.json`` stores the result, so
``--resume`` trains with the same settings whatever the recipes say later.

Light on purpose (no torch): ``remamber train --help`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remamber.utils.errors import InputError

TRAIN_CONFIG_NAME = "train_config.json"
LOG_NAME = "log.jsonl"
CHECKPOINTS_DIR = "checkpoints"
OPTIMIZERS = ("adamw", "sgd")
BACKBONE_KEYS = ("auto", "model", "model_ema")


class _SameAsLr:
    """A recipe value that is the run's ``lr``."""

    def __repr__(self) -> str:
        return "--lr"


SAME_AS_LR = _SameAsLr()


@dataclass(frozen=True)
class Recipe:
    """Values for the settings a run leaves unset: a number or flag, :data:`SAME_AS_LR`, or
    ``None`` (the model's own: the preset's, or the ``init`` model's)."""

    summary: str
    values: dict[str, Any]


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        "one learning rate (--lr) for every part, AdamW weight decay 0.01 except on A_log, D, norms and biases, "
        "no EMA, the preset's image size and drop path",
        {
            "backbone_lr": SAME_AS_LR,
            "text_lr": SAME_AS_LR,
            "weight_decay": 0.01,
            "decay_all": False,
            "ema": 0.0,
            "image_size": None,
            "drop_path_rate": None,
        },
    ),
    # The official main.py defaults and model/utils.py create_optimizer: the new parameters (Twister,
    # text maps, decoder) at --lr 5e-5, the VMamba parameters its checkpoint fills at --lr-vssm and
    # CLIP at --lr-backbone (both 2.5e-5); AdamW's weight decay on every group, norms, biases,
    # A_logs and Ds included; --model-ema 0.9999 as its README trains; drop path 0.1; 480 px.
    "paper": Recipe(
        "the official ReMamber training: new parts (fusion layers, decoder) at --lr 5e-5, visual backbone "
        "and text encoder at 2.5e-5, weight decay 1e-4 on every parameter, EMA 0.9999, drop path 0.1, 480 px",
        {
            "backbone_lr": 2.5e-5,
            "text_lr": 2.5e-5,
            "weight_decay": 1e-4,
            "decay_all": True,
            "ema": 0.9999,
            "image_size": 480,
            "drop_path_rate": 0.1,
        },
    ),
}
RECIPE_FIELDS = tuple(RECIPES["default"].values)


def recipe_help(name: str) -> str:
    """What each recipe gives setting ``name`` when it is left unset (for its flag's help)."""

    def show(value: Any) -> str:
        if value is None:
            return "the preset's"
        if isinstance(value, bool):
            return "on" if value else "off"
        return repr(value) if value is SAME_AS_LR else f"{value:g}"

    return "Default: " + ", ".join(f"{show(r.values[name])} with --recipe {key}" for key, r in RECIPES.items()) + "."


def setting(default: Any, help: str, metavar: str | None = None, cli: bool = True) -> Any:
    """A TrainConfig field with the help and metavar of its ``remamber train`` flag (``cli=False``:
    a setting with no flag)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "cli": cli})


class SettingError(InputError):
    """A training setting of the wrong type or out of range; ``name`` is the field."""

    def __init__(self, name: str, requirement: str, value: Any) -> None:
        self.name, self.requirement, self.value = name, requirement, value
        super().__init__(f"{name} must be {requirement} (got {value!r})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """Every training setting; saved as ``RUNDIR/train_config.json`` and reused by ``--resume``."""

    data: str = setting(dataclasses.MISSING, "Prepared dataset folder.", "FOLDER")
    out: str = setting(dataclasses.MISSING, "Run folder (RUNDIR).", "FOLDER")
    preset: str = setting(
        "tiny",
        "Model preset: tiny, small, medium, base (official ReMamber_Conv) or base-mamba (ReMamber_Mamba).",
        "NAME",
    )
    image_size: int | None = setting(None, "Input size (multiple of 32).", "N")
    init: str | None = setting(None, "Start from these weights (folder or Hub id) instead of a fresh preset.", "MODEL")
    recipe: str | None = setting(
        None,
        "Defaults of the settings left unset: default or paper (the official ReMamber training). "
        "Default: paper with --backbone-weights, else default.",
        "NAME",
    )
    backbone_weights: str | None = setting(
        None,
        "Start the visual backbone from this VMamba ImageNet checkpoint (a file, owner/repo/filename or "
        "hf://owner/repo/filename); makes paper the default --recipe.",
        "FILE",
    )
    backbone_key: str = setting(
        "auto",
        "Which weights of --backbone-weights: model, model_ema, or auto (model, else model_ema when the file has no model).",
        "NAME",
    )
    text_encoder: str | None = setting(
        None, "Hugging Face text model (Hub id or folder), or 'scratch'. Default: the preset's.", "MODEL"
    )
    fusion: str | None = setting(None, "Text fusion: twister (default), attention, in-context, film or hmnet.", "NAME")
    scan: str | None = setting(
        None, "Twister scan order: channel-spatial (default), spatial-channel, parallel, channel or spatial.", "NAME"
    )
    interaction: str | None = setting(None, "Twister text maps: both (default), global or local.", "NAME")
    backbone: str | None = setting(
        None, "Stage blocks: vss (VMamba, default), mambaout (gated CNN) or mambavision.", "NAME"
    )
    recap_every: int | None = setting(None, "hmnet fusion: image tokens between text recaps (default 64).", "N")
    decoder: str | None = setting(
        None, "Mask decoder: conv (ReMamber_Conv's) or mamba (ReMamber_Mamba's). Default: the preset's.", "NAME"
    )
    presence_head: bool | None = setting(
        None,
        "A presence head (does the phrase name anything? below 0.5 the mask is empty). Default: on for a "
        "new model; --init weights keep theirs (--presence-head gives --init weights without one a new head).",
    )
    presence_weight: float = setting(
        0.1,
        "Weight of the presence head's loss (BCE against 'the sentence names something') beside the mask loss "
        "(dice + BCE), as GRES's ReLA weighs its no-target loss.",
        "X",
    )
    freeze_text: bool = setting(False, "Do not train the text encoder.")
    text_lr: float | None = setting(None, "Learning rate of the text encoder.", "X")
    text_lr_scale: float | None = setting(
        None, "Deprecated, use --text-lr: the text encoder's learning rate as a multiple of --lr.", "X"
    )
    train_split: str = setting("train", "Training split.", cli=False)
    val_split: str | None = setting("val", "Validation split ('' for none).", "NAME")
    epochs: int = setting(50, "Epochs.", "N")
    max_steps: int = setting(0, "Stop after this many optimizer steps (0: run all epochs).", "N")
    time_limit: float = setting(0.0, "Stop (and save) after this many minutes (0: no limit).", "X")
    optimizer: str = setting("adamw", "adamw (the paper's) or sgd (momentum 0.9).", "NAME")
    batch_size: int = setting(8, "Samples per process per micro-batch.", "N")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", "N")
    lr: float = setting(
        5e-5, "Peak learning rate of the new parts (fusion layers, decoder); of every part with --recipe default.", "X"
    )
    backbone_lr: float | None = setting(
        None, "Learning rate of the visual backbone (patch embedding, stage blocks, downsampling).", "X"
    )
    min_lr: float = setting(
        1e-6, "Learning rate of every part at the end of the cosine decay (at most the smallest rate).", "X"
    )
    warmup_steps: int = setting(0, "Linear warmup steps.", "N")
    weight_decay: float | None = setting(None, "AdamW weight decay.", "X")
    decay_all: bool | None = setting(
        None, "Weight decay on every parameter, or (--no-decay-all) not on A_log, D, norms and biases."
    )
    drop_path_rate: float | None = setting(
        None, "Stochastic depth of the last backbone block (rising linearly from 0 over the blocks).", "X"
    )
    clip_grad: float = setting(0.0, "Clip the gradient norm to this (0: off).", "X")
    ema: float | None = setting(
        None, "EMA decay of the weights, e.g. 0.999 (0: off); checkpoints then hold the EMA weights.", "X"
    )
    amp: bool | None = setting(None, "Mixed precision. Default: on for CUDA, off on CPU.")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", "NAME")
    workers: int = setting(0, "DataLoader worker processes.", "N")
    seed: int = setting(0, "Seed of the initialisation, data order and augmentation.", "N")
    limit: int = setting(0, "Use only the first N training samples (0: all).", "N")
    val_every: int = setting(0, "Validate every N steps (0: at each epoch end).", "N")
    val_limit: int = setting(0, "Validate on the first N samples (0: all).", "N")
    ckpt_every: int = setting(0, "Also write checkpoints/last every N steps (0: at epoch ends only).", "N")
    log_every: int = setting(10, "Log every N steps to log.jsonl.", "N")

    def validate(self) -> None:
        """Raise SettingError (an InputError naming the field) on any setting that cannot train,
        and InputError on settings that contradict each other."""
        for name in ("data", "out", "preset", "train_split", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SettingError(name, "a non-empty string", getattr(self, name))
        for name in ("init", "text_encoder", "fusion", "scan", "interaction", "backbone", "decoder", "val_split"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SettingError(name, "a string", getattr(self, name))
        if self.recipe is not None and self.recipe not in RECIPES:
            raise SettingError("recipe", "one of " + ", ".join(RECIPES), self.recipe)
        if self.backbone_weights is not None and (
            not isinstance(self.backbone_weights, str) or not self.backbone_weights
        ):
            raise SettingError("backbone_weights", "a non-empty string", self.backbone_weights)
        if self.backbone_key not in BACKBONE_KEYS:
            raise SettingError("backbone_key", "one of " + ", ".join(BACKBONE_KEYS), self.backbone_key)
        for name, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("log_every", 1),
            ("max_steps", 0),
            ("warmup_steps", 0),
            ("workers", 0),
            ("seed", 0),
            ("limit", 0),
            ("val_every", 0),
            ("val_limit", 0),
            ("ckpt_every", 0),
            ("image_size", 32),
            ("recap_every", 1),
        ):
            value = getattr(self, name)
            if not (value is None and name in ("image_size", "recap_every")) and (
                not _is_int(value) or value < minimum
            ):
                raise SettingError(name, f"an integer >= {minimum}", value)
        self._check_number("lr", low=0.0, low_open=True)
        for name in ("backbone_lr", "text_lr", "text_lr_scale"):
            self._check_number(name, low=0.0, low_open=True, optional=True)
        rates = [r for r in (self.lr, self.backbone_lr, self.text_lr) if r is not None]
        self._check_number("min_lr", low=0.0, high=min(rates))
        self._check_number("time_limit", low=0.0)
        self._check_number("weight_decay", low=0.0, optional=True)
        self._check_number("drop_path_rate", low=0.0, high=1.0, high_open=True, optional=True)
        self._check_number("clip_grad", low=0.0)
        self._check_number("presence_weight", low=0.0)
        self._check_number("ema", low=0.0, high=1.0, high_open=True, optional=True)
        if self.optimizer not in OPTIMIZERS:
            raise SettingError("optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        for name in ("freeze_text", "amp", "decay_all", "presence_head"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name != "freeze_text" and value is None):
                raise SettingError(name, "true or false", value)
        self._check_consistent()

    def _check_consistent(self) -> None:
        """InputError (one line naming both settings) for settings that contradict each other."""
        if self.text_lr is not None and self.freeze_text:
            raise InputError(
                "`text_lr` sets the learning rate of the text encoder, which `freeze_text` keeps fixed: drop one of them"
            )
        if self.text_lr is not None and self.text_lr_scale is not None:
            raise InputError(
                "`text_lr` and `text_lr_scale` both set the text encoder's learning rate: give `text_lr` only"
            )
        if self.backbone_weights is not None and self.init is not None:
            raise InputError(
                "`backbone_weights` starts the visual backbone of a fresh preset and `init` loads a whole model: "
                "give one of them"
            )
        if self.backbone_key != "auto" and self.backbone_weights is None:
            raise InputError("`backbone_key` picks the weights of `backbone_weights`: give `backbone_weights` too")

    def resolved(self) -> TrainConfig:
        """A validated copy with the recipe applied: ``recipe`` named, and every setting of
        :data:`RECIPE_FIELDS` left unset taken from it (``text_lr`` stays unset while
        ``freeze_text``: the text encoder has no rate). The deprecated ``text_lr_scale`` becomes
        ``text_lr``. Resolving a resolved config changes nothing."""
        self.validate()
        name = self.recipe or ("paper" if self.backbone_weights is not None else "default")
        changes: dict[str, Any] = {"recipe": name}
        if self.text_lr_scale is not None:
            changes.update(text_lr_scale=None, text_lr=None if self.freeze_text else self.lr * self.text_lr_scale)
        for key, value in RECIPES[name].values.items():
            if key not in changes and getattr(self, key) is None and not (key == "text_lr" and self.freeze_text):
                changes[key] = self.lr if value is SAME_AS_LR else value
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def _check_number(
        self,
        name: str,
        low: float,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        optional: bool = False,
    ) -> None:
        """Field ``name`` is a finite number between ``low`` and ``high`` (inclusive unless open),
        or unset (None) when ``optional``."""
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low)
        ok = ok and (high is None or (value < high if high_open else value <= high))
        if not ok:
            span = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}{')' if high_open or high is None else ']'}"
            raise SettingError(name, f"a finite number in {span}", value)

    def save(self, path: Path) -> None:
        from remamber.utils.io import write_json

        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """The settings saved in a run folder's ``train_config.json``."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # a run started before the presence head existed trained none
                data.setdefault("presence_head", False)
            return cls(**data)
        except FileNotFoundError:
            raise InputError(f"cannot resume: {path.parent} has no {path.name}; is it a training run folder?") from None
        except (TypeError, json.JSONDecodeError) as e:
            raise InputError(f"cannot resume: {path} is not a valid training config ({e})") from None


def clear_run(run_dir: Path, keep_config: bool = False) -> None:
    """Remove what a training run wrote in ``run_dir`` (its config unless ``keep_config``, log and
    checkpoints), and nothing else; safe when another process of the run does the same."""
    run_dir = Path(run_dir)
    if not keep_config:
        (run_dir / TRAIN_CONFIG_NAME).unlink(missing_ok=True)
    (run_dir / LOG_NAME).unlink(missing_ok=True)
    shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)
