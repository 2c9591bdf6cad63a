"""``remamber train``: train ReMamber on a prepared dataset, on a CPU, one GPU or many."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from remamber.engine.train_config import (
    CHECKPOINTS_DIR,
    RECIPE_FIELDS,
    TRAIN_CONFIG_NAME,
    SettingError,
    TrainConfig,
    clear_run,
    recipe_help,
)
from remamber.utils.errors import InputError, UsageError

STATE_NAME = "trainer_state.pt"  # remamber.engine.checkpoint.STATE_NAME, without importing torch for it

HELP = """Train ReMamber on a prepared dataset (see `remamber prepare`).

Defaults of every recipe: AdamW (--optimizer), cosine decay of every rate to --min-lr 1e-6 after --warmup-steps 0, dice + BCE loss, 50 epochs of batch 8 per process, AMP on CUDA (bf16, or fp16 with loss scaling). A recipe fills the settings you leave unset; a flag you give always wins. --recipe default: one rate (--lr 5e-5) for every part, weight decay 0.01 except on A_log, D, norms and biases, no EMA, the preset's image size and drop path. --recipe paper (the official ReMamber training; the default with --backbone-weights): new parts (fusion layers, decoder) at --lr 5e-5, visual backbone (--backbone-lr) and text encoder (--text-lr) at 2.5e-5, weight decay 1e-4 on every parameter as the official optimizer does, EMA 0.9999, drop path 0.1, 480 px. --dry-run prints the resolved settings, parameter groups, data and step counts, and exits.

RUNDIR gets train_config.json, log.jsonl (one JSON line per logged step and per validation) and checkpoints/last and checkpoints/best (best validation oIoU): model folders that `remamber segment` and `remamber eval` load directly, plus the optimizer, scheduler, RNG and data-order state. `--resume` continues a run exactly (same weights as an uninterrupted run); Ctrl-C saves and exits; a NaN loss stops the run and keeps the last good checkpoint.

Variants (saved in the model's config.json): --fusion, --scan and --interaction (the paper's Tables 1, 3 and 4), --backbone (MambaOut, MambaVision), --decoder (ReMamber_Conv's or ReMamber_Mamba's); benchmarks/ablation.py trains them side by side.

Several GPUs or processes: `remamber train --nproc K ...`, or `torchrun --nproc_per_node=K -m remamber train ...` (multi-node too). --batch-size is per process.

Examples:

  remamber prepare shapes && remamber train --dataset shapes --preset tiny --epochs 5 --out runs/tiny

  remamber train --data ~/.cache/remamber/datasets/refcoco --preset base --nproc 8 --out runs/base

  remamber train --out runs/tiny --resume
"""


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _launch(nproc: int) -> None:
    """Re-run this command under torch.distributed.run with ``nproc`` processes."""
    argv = sys.argv[1:]
    if not argv or argv[0] != "train":
        argv = argv[argv.index("train") :] if "train" in argv else ["train", *argv]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "remamber",
        *_strip_nproc(argv),
    ]
    raise typer.Exit(subprocess.call(cmd))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _option(name: str, *aliases: str, **overrides: Any) -> Any:
    """The Typer option of TrainConfig field ``name``: flag, default, help and metavar come from
    the dataclass (``overrides`` for the few flags whose CLI default differs)."""
    f = _FIELDS[name]
    flag = "--" + name.replace("_", "-")
    help = f.metadata["help"] + (" " + recipe_help(name) if name in RECIPE_FIELDS else "")
    kwargs: dict[str, Any] = {"help": help, "metavar": f.metadata["metavar"]}
    if f.type == "bool | None":  # a tri-state flag: --amp, --no-amp, or (unset) the device's default
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    if f.default is None:
        kwargs["show_default"] = False
    kwargs.update(overrides)
    default = kwargs.pop("default", f.default)
    return typer.Option(default, flag, *aliases, **kwargs)


def train(
    data: Path | None = _option(
        "data", default=None, help="Prepared dataset folder. Default: the prepared --dataset in the data home."
    ),
    dataset: str = typer.Option(
        "refcoco",
        "--dataset",
        metavar="NAME",
        help="Dataset name in the data home when --data is not given (refcoco, refcoco+, refcocog, refcoco-mix, grefcoco, shapes).",
    ),
    out: Path = _option("out", "-o", default=Path("runs/remamber")),
    preset: str = _option("preset"),
    image_size: int | None = _option("image_size"),
    init: str | None = _option("init"),
    recipe: str | None = _option("recipe"),
    backbone_weights: str | None = _option("backbone_weights"),
    backbone_key: str = _option("backbone_key"),
    text_encoder: str | None = _option("text_encoder"),
    fusion: str | None = _option("fusion"),
    scan: str | None = _option("scan"),
    interaction: str | None = _option("interaction"),
    backbone: str | None = _option("backbone"),
    recap_every: int | None = _option("recap_every"),
    presence_head: bool | None = _option("presence_head"),
    presence_weight: float = _option("presence_weight"),
    decoder: str | None = _option("decoder"),
    freeze_text: bool = _option("freeze_text"),
    text_lr: float | None = _option("text_lr"),
    text_lr_scale: float | None = _option("text_lr_scale"),
    epochs: int = _option("epochs"),
    max_steps: int = _option("max_steps"),
    time_limit: float = _option("time_limit"),
    batch_size: int = _option("batch_size", "-b"),
    grad_accum: int = _option("grad_accum"),
    optimizer: str = _option("optimizer"),
    lr: float = _option("lr"),
    backbone_lr: float | None = _option("backbone_lr"),
    min_lr: float = _option("min_lr"),
    warmup_steps: int = _option("warmup_steps"),
    weight_decay: float | None = _option("weight_decay"),
    decay_all: bool | None = _option("decay_all"),
    drop_path_rate: float | None = _option("drop_path_rate"),
    clip_grad: float = _option("clip_grad"),
    ema: float | None = _option("ema"),
    amp: bool | None = _option("amp"),
    device: str = _option("device"),
    workers: int = _option("workers"),
    seed: int = _option("seed"),
    limit: int = _option("limit"),
    val_split: str = _option("val_split"),
    val_every: int = _option("val_every"),
    val_limit: int = _option("val_limit"),
    ckpt_every: int = _option("ckpt_every"),
    log_every: int = _option("log_every"),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from checkpoints/last (its saved settings apply); a run stopped "
        "before its first checkpoint starts afresh from its saved settings.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start a new run in --out even if it holds one (its config, log and checkpoints go)."
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        metavar="N",
        min=1,
        help="Start N processes with torch.distributed (one per GPU, or CPU processes).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved settings, parameter groups (tensors, parameters, lr, weight decay), data and "
        "step counts, and exit: nothing is trained or written, no pretrained weights are read.",
    ),
    json_out: bool = typer.Option(False, "--json", help="With --dry-run: print it as one JSON object."),
) -> None:
    settings = {name: value for name, value in locals().items() if name in _FIELDS}
    from remamber.engine import distributed as D

    if resume and overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if json_out and not dry_run:
        raise UsageError("--json prints the plan of --dry-run: add --dry-run")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; training writes a run folder there")
    launching = nproc > 1 and not D.launched_by_torchrun()
    speaks = not launching and os.environ.get("RANK", "0") == "0"  # the one process that prints notes
    # Before the launch, and in every rank: rank 0 writes its config only after the process group
    # has formed, so no rank can find the config of the run it belongs to.
    if resume:
        try:
            cfg = TrainConfig.load(out / TRAIN_CONFIG_NAME)
        except InputError as e:
            raise typer.BadParameter(str(e), param_hint="'--resume'") from None
    else:
        if (out / TRAIN_CONFIG_NAME).exists() and not overwrite:
            raise InputError(
                f"--out {out} already holds a training run: continue it with --resume, "
                "replace it with --overwrite, or choose another --out"
            )
        if data is None:
            from remamber.data.catalog import default_out

            data = default_out(dataset)
            if not data.exists():
                raise InputError(
                    f"no prepared dataset at {data}; run `remamber prepare {dataset}` or pass --data FOLDER"
                )
        cfg = TrainConfig(**{**settings, "data": str(data), "out": str(out), "val_split": val_split or None})
        if text_lr_scale is not None and speaks:
            sys.stderr.write("note: --text-lr-scale is deprecated: use --text-lr (an absolute rate)\n")
    try:
        cfg = cfg.resolved()
    except SettingError as e:
        raise UsageError(f"--{e.name.replace('_', '-')} must be {e.requirement} (got {e.value!r})") from None
    if dry_run:
        if os.environ.get("RANK", "0") == "0":
            _print_plan(cfg, int(os.environ.get("WORLD_SIZE", nproc)), json_out)
        return
    if resume and not (out / CHECKPOINTS_DIR / "last" / STATE_NAME).is_file():
        if speaks:
            sys.stderr.write(
                f"note: {out} has no checkpoint yet (it stopped before its first one): "
                f"starting the run afresh from its {TRAIN_CONFIG_NAME}\n"
            )
        clear_run(out, keep_config=True)
        resume = False
    elif overwrite:
        clear_run(out)
    if launching:
        _launch(nproc)
    _run(cfg, resume)


def _flags(message: str) -> str:
    """A library message with its settings shown as this command's flags."""
    from remamber.cli.main import _as_flags

    return _as_flags(message, ["train"])


def _print_plan(cfg: TrainConfig, world: int, as_json: bool) -> None:
    """``--dry-run``: what the run would do, on stdout."""
    import json

    from remamber.engine.train import plan_training

    plan = plan_training(cfg, world)
    plan.notes = [_flags(n) for n in plan.notes]
    if as_json:
        sys.stdout.write(json.dumps(plan.to_dict()) + "\n")
    else:
        sys.stdout.write("\n".join(plan.lines()) + "\n")


def _run(cfg, resume: bool) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from remamber.engine import distributed as D
    from remamber.engine.allocator import keep_freed_memory
    from remamber.engine.train import Trainer

    console = Console(stderr=True)
    try:
        trainer = Trainer(cfg, resume=resume, console=console)
        if trainer.device.type == "cpu":  # the process's memory is ours: keep what each step frees
            keep_freed_memory()
        main = trainer.main
        if main and trainer.backbone_report is not None:
            sys.stdout.write("\n".join(trainer.backbone_report.lines()) + "\n")
            sys.stdout.flush()
        if main:
            for note in trainer.notes:
                sys.stderr.write(f"note: {_flags(note)}\n")
        progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.1f} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not main,
        )
        with progress:
            task = progress.add_task(
                "train",
                total=trainer.total_steps,
                completed=trainer.step,
                epoch=trainer.epoch,
                loss=float("nan"),
                lr=cfg.lr,
                ips=0.0,
            )

            def on_step(rec: dict) -> None:
                fields = {"epoch": rec["epoch"], "loss": rec["loss"], "lr": rec["lr"]}
                if "images_per_s" in rec:
                    fields["ips"] = rec["images_per_s"]
                progress.update(task, completed=rec["step"], **fields)

            result = trainer.fit(on_step)
        if main:
            best = (
                f"; best val {result.best_metric} {result.best_score:.4f} in {result.best}"
                if result.best_score is not None
                else ""
            )
            console.print(f"trained {result.steps} steps; last checkpoint {result.last}{best}", highlight=False)
    finally:
        D.cleanup()
