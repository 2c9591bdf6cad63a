"""The trainer: AdamW + warmup/cosine, dice+BCE, AMP, accumulation, EMA, DDP, exact resume.

The optimizer trains three parts at their own rates (:func:`model_parts`): the new parts
(fusion layers, decoder) at ``lr``, the visual backbone at ``backbone_lr`` and the text encoder
at ``text_lr``; the recipe (see :mod:`remamber.engine.train_config`) fills the rates left unset.
:func:`plan_training` says what a run would do without training (``remamber train --dry-run``).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from remamber.engine import distributed as D
from remamber.engine.checkpoint import load_trainer_state, rng_state, save_checkpoint, set_rng_state
from remamber.engine.losses import referring_loss
from remamber.engine.sampling import BatchSource, epoch_batches, micro_batches_per_epoch
from remamber.engine.train_config import CHECKPOINTS_DIR, LOG_NAME, RECIPES, SAME_AS_LR, TRAIN_CONFIG_NAME, TrainConfig
from remamber.hub.folders import TRAINING_NAME
from remamber.inference.fuse import unfuse
from remamber.modeling.layers import no_weight_decay
from remamber.utils.errors import EXIT_FAILURE, InputError, RemamberError, WeightsError, first_line

# Architecture variant settings a training run may set on a fresh preset (see ModelConfig).
VARIANT_FIELDS = ("fusion", "scan", "interaction", "backbone", "recap_every", "presence_head", "decoder")


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
    best_score: float | None  # the best validation score, in best_metric
    last: Path
    best: Path | None
    best_metric: str = "oIoU"  # oIoU, or gIoU on a generalized validation split (selection_metric)


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


def build_training_model(cfg: TrainConfig, train_records: list[dict], weights: bool = True):
    """The model to train, with the drop path and text freezing of ``cfg``: the ``init`` model,
    or a fresh preset with its pretrained text encoder. ``weights=False`` builds the same
    architecture without reading pretrained weights (the ``init`` model is still read): names
    and sizes, for a dry run. The visual backbone's ``backbone_weights`` are loaded apart, by
    :func:`start_backbone`, so that the caller gets the loader's report."""
    model = _init_or_preset(cfg, train_records, weights)
    if cfg.drop_path_rate is not None:
        model.set_drop_path_rate(cfg.drop_path_rate)
    if cfg.freeze_text:
        model.text_encoder.requires_grad_(False)
    return model


def start_backbone(model, cfg: TrainConfig):
    """Load ``backbone_weights`` (a VMamba ImageNet checkpoint; ``backbone_key`` picks model or
    model_ema) into the visual backbone of ``model``: the one place training reads them.
    Returns the loader's :class:`~remamber.hub.vmamba.BackboneReport`; a file that does not fit
    raises before anything of the run is written."""
    from remamber.hub.vmamba import load_backbone_weights

    return load_backbone_weights(model, cfg.backbone_weights, cfg.backbone_key)


def _init_or_preset(cfg: TrainConfig, train_records: list[dict], weights: bool):
    """The ``init`` model (its image size set by ``image_size``), or a fresh preset with the
    variant settings of ``cfg``; the text encoder pretrained when ``weights``."""
    from remamber.hub.folders import load_pretrained
    from remamber.modeling.presets import build_model, preset_config
    from remamber.modeling.text import BASIC_VOCAB, SCRATCH

    variant = {k: getattr(cfg, k) for k in VARIANT_FIELDS if getattr(cfg, k) is not None}
    if cfg.init:
        model = load_pretrained(cfg.init)
        if cfg.presence_head and not model.config.presence_head:
            _add_presence_head(model)
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
    if not weights and mcfg.text_config is not None:
        return build_model(mcfg)
    try:
        return build_model(mcfg, pretrained_text=True)
    except OSError as e:
        raise WeightsError(
            f"cannot load the text encoder {mcfg.text_encoder!r} ({first_line(e)}); it must be in the "
            "Hugging Face cache or a local folder (or use `text_encoder` scratch)"
        ) from None


def _add_presence_head(model) -> None:
    """Give an ``init`` model without a presence head a fresh one: the one change of architecture
    that keeps every weight (the head only reads the features), so that a model trained before
    can learn "not in the picture"."""
    from remamber.modeling.presence import PresenceHead

    model.config = model.config.replace(presence_head=True)
    model.presence = PresenceHead(model.config.dims[-1], model.config.text_dim)


#: The parts of the model that train at their own learning rate, in optimizer-group order.
PARTS = ("new", "backbone", "text")


def model_parts(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The named parameters of each part: ``backbone`` (patch embedding, stage blocks,
    downsampling: what a VMamba checkpoint fills, the official ``lr_vssm`` group), ``text`` (the
    text encoder, the official ``lr_backbone`` group) and ``new`` (the rest: fusion layers with
    their text maps, decoder: the official ``lr`` and ``lr_decoder`` groups)."""
    part_of = {id(p): "backbone" for m in model.encoder.backbone_modules() for p in m.parameters()}
    part_of.update({id(p): "text" for p in model.text_encoder.parameters()})
    parts: dict[str, list[tuple[str, nn.Parameter]]] = {part: [] for part in PARTS}
    for name, p in model.named_parameters():
        parts[part_of.get(id(p), "new")].append((name, p))
    return parts


def part_rates(cfg: TrainConfig) -> dict[str, float]:
    """The learning rate of each part of a resolved config (no ``text`` while ``freeze_text``)."""
    rates = {"new": cfg.lr, "backbone": cfg.backbone_lr, "text": cfg.text_lr}
    return {part: rate for part, rate in rates.items() if rate is not None}


def param_groups(
    model: nn.Module, rates: Mapping[str, float], weight_decay: float, decay_all: bool = False
) -> list[dict]:
    """Optimizer groups of the trainable parameters: each part at ``rates[part]``, split (unless
    ``decay_all``) into those with ``weight_decay`` and those without (A_log, D, norms, biases);
    ``name`` says which (``backbone``, ``backbone no-decay``, ...); empty groups are left out."""
    groups = []
    for part, named in model_parts(model).items():
        split: dict[str, list[nn.Parameter]] = {part: [], f"{part} no-decay": []}
        for name, p in named:
            if p.requires_grad:
                split[part if decay_all or not no_weight_decay(name, p) else f"{part} no-decay"].append(p)
        for key, ps in split.items():
            if ps:
                decay = weight_decay if key == part else 0.0
                groups.append({"name": key, "params": ps, "lr": rates[part], "weight_decay": decay})
    return groups


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: no AMP; ``amp`` unset: on for CUDA only): bf16, or
    fp16 (with loss scaling) on a GPU without bf16."""
    if not (cfg.amp if cfg.amp is not None else device.type == "cuda"):
        return None
    return torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16


def step_counts(cfg: TrainConfig, n_train: int, world: int) -> tuple[int, int, int]:
    """Micro-batches per epoch (per process), optimizer steps per epoch, and steps in all."""
    micro = micro_batches_per_epoch(n_train, cfg.batch_size, world)
    per_epoch = math.ceil(micro / cfg.grad_accum)
    return micro, per_epoch, cfg.max_steps or cfg.epochs * per_epoch


def run_notes(cfg: TrainConfig, total_steps: int) -> list[str]:
    """What a user may not expect of these resolved settings (settings in backticks)."""
    notes = []
    recipe_text_lr = RECIPES[cfg.recipe].values["text_lr"]
    if cfg.freeze_text and recipe_text_lr is not SAME_AS_LR:
        notes.append(
            f"the {cfg.recipe} recipe trains the text encoder at {recipe_text_lr:g}; `freeze_text` keeps it fixed"
        )
    if cfg.ema and total_steps < 1 / (1 - cfg.ema):
        notes.append(
            f"`ema` {cfg.ema:g} averages over about {round(1 / (1 - cfg.ema))} steps but the run has {total_steps}: "
            "its checkpoints (the EMA weights) stay close to the starting weights; `ema` 0 turns it off"
        )
    return notes


def _train_count(cfg: TrainConfig, n_records: int) -> int:
    """Training samples used: the split's, or the first ``limit``; InputError when none."""
    n = min(n_records, cfg.limit) if cfg.limit else n_records
    if n == 0:
        raise InputError(f"split {cfg.train_split!r} of {cfg.data} has no samples")
    return n


@dataclass
class TrainPlan:
    """What a run would do (``remamber train --dry-run``): its resolved settings, optimizer
    groups (``name``, ``tensors``, ``parameters``, ``lr``, ``weight_decay``), frozen parameters,
    data and step counts, device and AMP, and notes."""

    config: TrainConfig
    groups: list[dict[str, Any]]
    frozen: dict[str, int]
    data: dict[str, Any]
    steps: dict[str, int]
    device: str
    amp: str
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.config),
            "param_groups": self.groups,
            "frozen": self.frozen,
            "data": self.data,
            "steps": self.steps,
            "device": self.device,
            "amp": self.amp,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The plan as text, one line per setting and group."""
        cfg, d, st = self.config, self.data, self.steps
        out = [f"recipe: {cfg.recipe} ({RECIPES[cfg.recipe].summary})", "settings:"]
        out += [f"  {k}: {json.dumps(v)}" for k, v in dataclasses.asdict(cfg).items()]
        out.append(f"parameter groups ({cfg.optimizer}; cosine decay from each lr to min_lr {cfg.min_lr:g}):")
        out.append(f"  {'group':<20} {'tensors':>7} {'parameters':>12} {'lr':>9} {'weight decay':>12}")
        for g in self.groups:
            out.append(
                f"  {g['name']:<20} {g['tensors']:>7} {g['parameters']:>12,} {g['lr']:>9.3g} {g['weight_decay']:>12.3g}"
            )
        out.append(f"  {'frozen':<20} {self.frozen['tensors']:>7} {self.frozen['parameters']:>12,}")
        val = f", {d['val_samples']} validation samples (split {d['val_split']})" if d["val_split"] else ""
        out.append(f"data: {d['dataset']}: {d['train_samples']} training samples (split {d['train_split']}){val}")
        out.append(
            f"steps: {st['per_epoch']} per epoch, {st['total']} in all, {st['warmup']} of warmup; "
            f"{st['samples_per_step']} samples per step (batch {cfg.batch_size} x {st['processes']} "
            f"process{'es' if st['processes'] > 1 else ''} x {cfg.grad_accum} accumulated)"
        )
        out.append(f"device: {self.device}, AMP {self.amp}")
        out += [f"note: {n}" for n in self.notes]
        return out


def plan_training(cfg: TrainConfig, world: int = 1) -> TrainPlan:
    """What training ``cfg`` on ``world`` processes would do, without training or writing:
    the model is built (no pretrained weights read) for its parameter groups."""
    from remamber.data.manifest import PreparedDataset
    from remamber.inference.predictor import resolve_device

    cfg = cfg.resolved()
    prepared = PreparedDataset.open(cfg.data)
    records = prepared.records(cfg.train_split)
    n_train = _train_count(cfg, len(records))
    n_val = len(prepared.records(cfg.val_split)) if cfg.val_split else 0
    model = build_training_model(cfg, records, weights=False)
    groups = [
        {
            "name": g["name"],
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for g in param_groups(model, part_rates(cfg), cfg.weight_decay, cfg.decay_all)
    ]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    _, per_epoch, total = step_counts(cfg, n_train, world)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg, device)
    return TrainPlan(
        config=cfg,
        groups=groups,
        frozen={"tensors": len(frozen), "parameters": sum(p.numel() for p in frozen)},
        data={
            "dataset": prepared.name,
            "train_split": cfg.train_split,
            "train_samples": n_train,
            "val_split": cfg.val_split,
            "val_samples": min(n_val, cfg.val_limit) if cfg.val_limit else n_val,
        },
        steps={
            "processes": world,
            "samples_per_step": cfg.batch_size * world * cfg.grad_accum,
            "per_epoch": per_epoch,
            "epochs": cfg.epochs,
            "total": total,
            "warmup": cfg.warmup_steps,
        },
        device=str(device),
        amp="off" if dtype is None else str(dtype).removeprefix("torch."),
        notes=run_notes(cfg, total),
    )


def _saved_backbone(run_dir: Path) -> dict[str, Any] | None:
    """The backbone report that the last checkpoint of a run recorded (None if it has none)."""
    try:
        return json.loads((run_dir / CHECKPOINTS_DIR / "last" / TRAINING_NAME).read_text(encoding="utf-8")).get(
            "backbone_weights"
        )
    except (OSError, ValueError, AttributeError):
        return None


def selection_metric(summary: dict[str, Any]) -> tuple[str, float]:
    """The validation number that picks the ``best`` checkpoint: gIoU on a generalized split (it
    counts every sentence, "not in the picture" ones too, where oIoU counts target sentences
    only and has none on a split of no-target sentences), else oIoU."""
    name = "gIoU" if summary.get("gIoU") is not None else "oIoU"
    return name, summary[name]


class Trainer:
    """Owns the model, optimizer, data and run folder of one training run."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, console: Any = None) -> None:
        from remamber.data.dataset import ReferringDataset
        from remamber.data.manifest import PreparedDataset
        from remamber.inference.predictor import resolve_device

        cfg = cfg.resolved()
        self.cfg, self.resume, self.console = cfg, resume, console
        self.run_dir = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.distributed = D.init_distributed(self.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", D.local_rank())
        self.main = D.is_main()
        dtype = amp_dtype(cfg, self.device)
        self.amp, self.amp_dtype = dtype is not None, dtype or torch.bfloat16

        torch.manual_seed(cfg.seed)
        self.model = build_training_model(cfg, PreparedDataset.open(cfg.data).records(cfg.train_split))
        # A resumed run takes every weight from its checkpoint; it keeps the first start's report.
        self.backbone_report = None if resume or cfg.backbone_weights is None else start_backbone(self.model, cfg)
        self.backbone = self.backbone_report.to_dict() if self.backbone_report else None
        if resume and cfg.backbone_weights is not None:
            self.backbone = _saved_backbone(self.run_dir)
        self.model.to(self.device)
        mcfg = self.model.config
        kw = dict(image_size=mcfg.image_size, mean=mcfg.pixel_mean, std=mcfg.pixel_std)
        self.train_set = ReferringDataset(cfg.data, cfg.train_split, train=True, **kw)
        self.n_train = _train_count(cfg, len(self.train_set))
        self.val_set = ReferringDataset(cfg.data, cfg.val_split, **kw) if cfg.val_split else None

        self.net: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        groups = param_groups(self.model, part_rates(cfg), cfg.weight_decay, cfg.decay_all)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.micro_per_epoch, self.steps_per_epoch, self.total_steps = step_counts(cfg, self.n_train, D.world_size())
        self.notes = run_notes(cfg, self.total_steps)
        # Every group decays from its own rate to min_lr (as timm's cosine schedule in the official code).
        factors = [
            lambda s, ratio=cfg.min_lr / g["lr"]: lr_factor(s, self.total_steps, cfg.warmup_steps, ratio)
            for g in groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factors)
        self.scaler = torch.amp.GradScaler(enabled=self.amp and self.amp_dtype == torch.float16)
        self.ema = None
        if cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.step, self.epoch, self.micro = 0, 0, 0  # next optimizer step; position in data
        self.best: float | None = None
        self.best_metric = "oIoU"
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
            "best_oiou": self.best,  # the key checkpoints have always had; the score is in best_metric
            "best_metric": self.best_metric,
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
        self.best_metric = state.get("best_metric", "oIoU")  # checkpoints before gIoU selection: oIoU

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
            "backbone_weights": self.backbone,
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
            out = self.net(images, ids.to(self.device), mask.to(self.device), return_presence=True)
        present = batch["present"].to(self.device)
        return referring_loss(out.logits, target, out.presence_logits, present, self.cfg.presence_weight)

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
        name, value = selection_metric(summary)
        self.best_metric = name
        if self.best is None or value > self.best:
            self.best = value
            self.save("best")
        if self.console is not None and self.main:
            shown = " ".join(
                f"{k} {summary[k]:.4f}" for k in dict.fromkeys((name, "oIoU", "mIoU")) if summary.get(k) is not None
            )
            self.console.print(f"step {self.step}: val {shown} (best {name} {self.best:.4f})", highlight=False)

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
            self.step,
            self.epoch,
            self.best,
            self.run_dir / "checkpoints" / "last",
            best if best.exists() else None,
            self.best_metric,
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
