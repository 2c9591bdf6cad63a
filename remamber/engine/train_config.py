"""The settings of a training run, declared once: each field's default, help and metavar are
what ``remamber train`` shows for its flag (``--`` + the name with dashes).

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
        "tiny", "Model preset: tiny, small, base (official ReMamber_Conv) or base-mamba (ReMamber_Mamba).", "NAME"
    )
    image_size: int | None = setting(None, "Input size (multiple of 32). Default: the preset's.", "N")
    init: str | None = setting(None, "Start from these weights (folder or Hub id) instead of a fresh preset.", "MODEL")
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
    freeze_text: bool = setting(False, "Do not train the text encoder.")
    text_lr_scale: float = setting(
        1.0,
        "Learning rate of the text encoder, as a multiple of --lr (e.g. 0.1 for a pretrained text encoder; "
        "--freeze-text keeps it fixed).",
        "X",
    )
    train_split: str = setting("train", "Training split.", cli=False)
    val_split: str | None = setting("val", "Validation split ('' for none).", "NAME")
    epochs: int = setting(50, "Epochs.", "N")
    max_steps: int = setting(0, "Stop after this many optimizer steps (0: run all epochs).", "N")
    time_limit: float = setting(0.0, "Stop (and save) after this many minutes (0: no limit).", "X")
    optimizer: str = setting("adamw", "adamw (the paper's) or sgd (momentum 0.9).", "NAME")
    batch_size: int = setting(8, "Samples per process per micro-batch.", "N")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", "N")
    lr: float = setting(5e-5, "Peak learning rate.", "X")
    min_lr: float = setting(1e-6, "Learning rate at the end of the cosine decay (at most --lr).", "X")
    warmup_steps: int = setting(0, "Linear warmup steps.", "N")
    weight_decay: float = setting(0.01, "AdamW weight decay (not on A_log, D, norms, biases).", "X")
    clip_grad: float = setting(0.0, "Clip the gradient norm to this (0: off).", "X")
    ema: float = setting(
        0.0, "EMA decay of the weights, e.g. 0.999 (0: off); checkpoints then hold the EMA weights.", "X"
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
        """Raise SettingError (an InputError naming the field) on any setting that cannot train."""
        for name in ("data", "out", "preset", "train_split", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SettingError(name, "a non-empty string", getattr(self, name))
        for name in ("init", "text_encoder", "fusion", "scan", "interaction", "backbone", "decoder", "val_split"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SettingError(name, "a string", getattr(self, name))
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
        self._check_number("min_lr", low=0.0, high=self.lr)
        self._check_number("text_lr_scale", low=0.0, low_open=True)
        self._check_number("time_limit", low=0.0)
        self._check_number("weight_decay", low=0.0)
        self._check_number("clip_grad", low=0.0)
        self._check_number("ema", low=0.0, high=1.0, high_open=True)
        if self.optimizer not in OPTIMIZERS:
            raise SettingError("optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        for name in ("freeze_text", "amp"):
            if not isinstance(getattr(self, name), bool) and not (name == "amp" and self.amp is None):
                raise SettingError(name, "true or false", getattr(self, name))

    def _check_number(
        self, name: str, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
    ) -> None:
        """Field ``name`` is a finite number between ``low`` and ``high`` (inclusive unless open)."""
        value = getattr(self, name)
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
            return cls(**json.loads(path.read_text(encoding="utf-8")))
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
