"""The trainer: AdamW + warmup/cosine, dice+BCE, AMP, accumulation, EMA, DDP, exact resume.

Checkpoints (``RUNDIR/checkpoints/last`` and ``best``) are model folders plus the trainer
state, written atomically every ``ckpt_every`` optimizer steps and at each epoch end; a run
resumed from ``last`` replays the same data order, augmentation and RNG draws as an
uninterrupted run, so it reaches the same weights.  ``RUNDIR/log.jsonl`` gets one JSON line
per logged step and per validation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from remamber.engine import distributed as D
from remamber.engine.checkpoint import load_trainer_state, rng_state, save_checkpoint, set_rng_state
from remamber.engine.losses import segmentation_loss
from remamber.engine.sampling import BatchSource, epoch_batches
from remamber.engine.train_config import LOG_NAME, TRAIN_CONFIG_NAME, TrainConfig
from remamber.inference.fuse import unfuse
from remamber.modeling.layers import no_weight_decay
from remamber.utils.errors import EXIT_FAILURE, InputError, RemamberError, WeightsError, first_line

# Architecture variant settings a training run may set on a fresh preset (see ModelConfig).
VARIANT_FIELDS = ("fusion", "scan", "interaction", "backbone", "recap_every", "decoder")


class TrainingDiverged(RemamberError):
    """The loss became NaN or infinite."""

    exit_code = EXIT_FAILURE


class TrainingInterrupted(RemamberError):
    """Ctrl-C: the state was saved."""

    exit_code = 130


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    best_oiou: float | None
    last: Path
    best: Path | None


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _vocab_from(records: list[dict]) -> list[str]:
    words: set[str] = set()
    for r in records:
        words.update(re.findall(r"\w+", r["sentence"].lower()))
    return sorted(words)


def build_training_model(cfg: TrainConfig, train_records: list[dict]):
    """The model to train: from ``--init`` weights, or a fresh preset (pretrained text encoder)."""
    from remamber.hub.folders import load_pretrained
    from remamber.modeling.presets import build_model, preset_config
    from remamber.modeling.text import BASIC_VOCAB, SCRATCH

    variant = {k: getattr(cfg, k) for k in VARIANT_FIELDS if getattr(cfg, k) is not None}
    if cfg.init:
        model = load_pretrained(cfg.init)
        clash = sorted(k for k, v in variant.items() if getattr(model.config, k) != v)
        if clash:
            settings = ", ".join(f"`{k}`" for k in clash)
            raise InputError(
                f"{settings} would change the architecture of the `init` weights; drop the setting or start from a preset"
            )
        if cfg.image_size:
            model.config = model.config.replace(image_size=cfg.image_size)
        return model
    mcfg = preset_config(cfg.preset)
    changes: dict[str, Any] = dict(variant)
    if cfg.image_size:
        changes["image_size"] = cfg.image_size
    if cfg.text_encoder:
        changes.update(
            text_encoder=cfg.text_encoder,
            text_config=None if cfg.text_encoder != mcfg.text_encoder else mcfg.text_config,
        )
    mcfg = mcfg.replace(**changes) if changes else mcfg
    if mcfg.text_encoder == SCRATCH:
        return build_model(mcfg, vocab=sorted(set(BASIC_VOCAB) | set(_vocab_from(train_records))))
    try:
        return build_model(mcfg, pretrained_text=True)
    except OSError as e:
        raise WeightsError(
            f"cannot load the text encoder {mcfg.text_encoder!r} ({first_line(e)}); it must be in the "
            "Hugging Face cache or a local folder (or use `text_encoder` scratch)"
        ) from None


def _param_groups(model: nn.Module, weight_decay: float, lr: float = 1.0, text_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups: weight decay or not (none on A_log, D, norms, biases), and the text
    encoder at ``text_lr_scale`` times the rate of the rest; empty groups are left out."""
    groups: dict[tuple[bool, bool], list] = {(d, t): [] for t in (False, True) for d in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(not no_weight_decay(name, p), name.startswith("text_encoder."))].append(p)
    return [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr": lr * (text_lr_scale if text else 1.0)}
        for (decay, text), ps in groups.items()
        if ps
    ]


class Trainer:
    """Owns the model, optimizer, data and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, console: Any = None) -> None:
        from remamber.data.dataset import ReferringDataset
        from remamber.data.manifest import PreparedDataset
        from remamber.inference.predictor import resolve_device

        cfg.validate()
        self.cfg, self.resume, self.console = cfg, resume, console
        self.run_dir = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.distributed = D.init_distributed(self.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", D.local_rank())
        self.main = D.is_main()
        self.amp = cfg.amp if cfg.amp is not None else self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if (self.device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
        )

        torch.manual_seed(cfg.seed)
        self.model = build_training_model(cfg, PreparedDataset.open(cfg.data).records(cfg.train_split)).to(self.device)
        mcfg = self.model.config
        kw = dict(image_size=mcfg.image_size, mean=mcfg.pixel_mean, std=mcfg.pixel_std)
        self.train_set = ReferringDataset(cfg.data, cfg.train_split, train=True, **kw)
        self.n_train = min(len(self.train_set), cfg.limit) if cfg.limit else len(self.train_set)
        if self.n_train == 0:
            raise InputError(f"split {cfg.train_split!r} of {cfg.data} has no samples")
        self.val_set = ReferringDataset(cfg.data, cfg.val_split, **kw) if cfg.val_split else None
        if cfg.freeze_text:
            self.model.text_encoder.requires_grad_(False)

        self.net: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        groups = _param_groups(self.model, cfg.weight_decay, cfg.lr, cfg.text_lr_scale)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.micro_per_epoch = len(epoch_batches(self.n_train, cfg.batch_size, cfg.seed, 0, D.rank(), D.world_size()))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        factor = lambda s: lr_factor(s, self.total_steps, cfg.warmup_steps, cfg.min_lr / cfg.lr)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(enabled=self.amp and self.amp_dtype == torch.float16)
        self.ema = None
        if cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.step, self.epoch, self.micro = 0, 0, 0  # next optimizer step; position in data
        self.best: float | None = None
        self.last_val: dict[str, Any] | None = None  # summary of the latest validation
        if resume:
            self._restore(self.run_dir / "checkpoints" / "last")
        self._mark_boundary()
        if not resume and self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / TRAIN_CONFIG_NAME)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": self._boundary["rng"],
            "position": self._boundary["position"],
            "best_oiou": self.best,
        }

    def _mark_boundary(self) -> None:
        """Remember the data position and RNG state between two optimizer steps (what a
        checkpoint records, so that Ctrl-C in mid-accumulation still resumes exactly)."""
        self._boundary = {"position": {"step": self.step, "epoch": self.epoch, "micro": self.micro}, "rng": rng_state()}

    def _restore(self, folder: Path) -> None:
        state = load_trainer_state(folder)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        pos = state["position"]
        self.step, self.epoch, self.micro, self.best = pos["step"], pos["epoch"], pos["micro"], state["best_oiou"]

    def _export_model(self):
        return self.ema.module if self.ema is not None else self.model

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` (last/best) on the main process."""
        folder = self.run_dir / "checkpoints" / name
        if self.main:
            save_checkpoint(folder, self._export_model(), self._state(), self._training_record())
        return folder

    def _training_record(self) -> dict[str, Any]:
        """What ``training.json`` in a checkpoint says: data, settings, progress, validation."""
        from remamber.data.manifest import PreparedDataset

        return {
            "dataset": PreparedDataset.open(self.cfg.data).name,
            "train_samples": self.n_train,
            "step": self.step,
            "epoch": self.epoch,
            "settings": dataclasses.asdict(self.cfg),
            "val": self.last_val,
        }

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.run_dir / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ loop
    def _batches(self, epoch: int, start: int):
        from remamber.data.dataset import collate_fn

        batches = epoch_batches(self.n_train, self.cfg.batch_size, self.cfg.seed, epoch, D.rank(), D.world_size())
        source = BatchSource(self.train_set, batches[start:], self.cfg.seed, epoch, collate_fn)
        return torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=self.cfg.workers)

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        ids, mask, _ = self.model.tokenize(batch["text"])
        images, target = batch["image"].to(self.device), batch["mask"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.net(images, ids.to(self.device), mask.to(self.device))
        return segmentation_loss(logits, target)

    def validate(self) -> dict[str, Any] | None:
        """Evaluate on the validation split (all ranks take part); returns the summary."""
        if self.val_set is None:
            return None
        from remamber.engine.evaluate import evaluate

        model = self._export_model()
        was_training = model.training
        summary = evaluate(
            model.eval(),
            self.val_set,
            device=self.device,
            batch_size=self.cfg.batch_size,
            limit=self.cfg.val_limit or None,
            progress=False,
        ).summary
        model.train(was_training)
        return summary

    def _after_validation(self, summary: dict[str, Any] | None) -> None:
        if summary is None:
            return
        self.log({"event": "val", "step": self.step, "epoch": self.epoch, "val": summary})
        self.last_val = {"split": self.cfg.val_split, "step": self.step, **summary}
        if self.best is None or summary["oIoU"] > self.best:
            self.best = summary["oIoU"]
            self.save("best")
        if self.console is not None and self.main:
            self.console.print(
                f"step {self.step}: val oIoU {summary['oIoU']:.4f} mIoU {summary['mIoU']:.4f} (best {self.best:.4f})",
                highlight=False,
            )

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss).all() else 1.0, device=self.device)
        if D.all_reduce_sum(bad).item() > 0:
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {self.step} (epoch {self.epoch}); stopped. The last good "
                f"checkpoint is {self.run_dir / 'checkpoints' / 'last'}: try a lower `lr` or `clip_grad` 1.0"
            )

    def fit(self, on_step: Callable[[dict], None] | None = None) -> TrainResult:
        """Train to the end (epochs or max_steps); resumable at any optimizer step."""
        cfg = self.cfg
        self.model.train()
        started = time.perf_counter()
        window_start, window_images = started, 0
        try:
            while self.step < self.total_steps and self.epoch < cfg.epochs:
                loader = self._batches(self.epoch, self.micro)
                accum_loss, in_accum = 0.0, 0
                for batch in loader:
                    last_of_step = in_accum + 1 == cfg.grad_accum or self.micro + 1 == self.micro_per_epoch
                    sync = contextlib.nullcontext() if (last_of_step or not self.distributed) else self.net.no_sync()
                    with sync:
                        loss = self._loss(batch)
                        self._check_finite(loss)
                        n_accum = min(cfg.grad_accum, self.micro_per_epoch - (self.micro - in_accum))
                        self.scaler.scale(loss / n_accum).backward()
                    accum_loss += loss.item() / n_accum
                    in_accum += 1
                    self.micro += 1
                    window_images += len(batch["text"]) * D.world_size()
                    if not last_of_step:
                        continue
                    self._optimizer_step()
                    record = {
                        "step": self.step,
                        "epoch": self.epoch,
                        "loss": accum_loss,
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    accum_loss, in_accum = 0.0, 0
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        record["images_per_s"] = window_images / max(now - window_start, 1e-9)
                        window_start, window_images = now, 0
                        self.log(record)
                    if on_step is not None:
                        on_step(record)
                    end_of_epoch = self.micro == self.micro_per_epoch
                    if end_of_epoch:
                        self.epoch, self.micro = self.epoch + 1, 0
                    self._mark_boundary()
                    if (cfg.val_every and self.step % cfg.val_every == 0) or (end_of_epoch and not cfg.val_every):
                        self._after_validation(self.validate())
                    out_of_time = self._out_of_time(started)
                    if (
                        end_of_epoch
                        or out_of_time
                        or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0)
                        or self.step == self.total_steps
                    ):
                        self.save("last")
                    if self.step >= self.total_steps or out_of_time:
                        self.total_steps = self.step if out_of_time else self.total_steps
                        break
        except KeyboardInterrupt:
            self.optimizer.zero_grad(set_to_none=True)
            # A Ctrl-C can land while validation has the model fused (or while it unfuses it):
            # the checkpoint needs the plain modules back.
            for model in {id(m): m for m in (self.model, self._export_model())}.values():
                unfuse(model)
            folder = self.save("last")
            raise TrainingInterrupted(
                f"interrupted at step {self.step}; saved {folder}; continue with `resume`"
            ) from None
        finally:
            D.barrier()
        best = self.run_dir / "checkpoints" / "best"
        return TrainResult(
            self.step, self.epoch, self.best, self.run_dir / "checkpoints" / "last", best if best.exists() else None
        )

    def _out_of_time(self, started: float) -> bool:
        """True once ``time_limit`` minutes have passed (all ranks agree)."""
        if not self.cfg.time_limit:
            return False
        late = torch.tensor(float(time.perf_counter() - started > 60 * self.cfg.time_limit), device=self.device)
        return D.all_reduce_sum(late).item() > 0

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
