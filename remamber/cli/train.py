"""``remamber train``: train ReMamber on a prepared dataset, on a CPU, one GPU or many."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from remamber.utils.errors import InputError

HELP = """Train ReMamber on a prepared dataset (see `remamber prepare`).

Defaults follow the paper: AdamW, lr 5e-5, cosine decay (after optional linear warmup), dice + BCE loss, no weight decay on A_log, D, norms and biases; AMP (bf16, or fp16 with loss scaling) on CUDA.

RUNDIR gets train_config.json, log.jsonl (one JSON line per logged step and per validation) and checkpoints/last and checkpoints/best (best validation oIoU): model folders that `remamber segment` and `remamber eval` load directly, plus the optimizer, scheduler, RNG and data-order state. `--resume` continues a run exactly (same weights as an uninterrupted run); Ctrl-C saves and exits; a NaN loss stops the run and keeps the last good checkpoint.

Variants (saved in the model's config.json): --fusion, --scan and --interaction (the paper's Tables 1, 3 and 4), --backbone (MambaOut, MambaVision); benchmarks/ablation.py trains them side by side.

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


def train(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Prepared dataset folder. Default: the prepared --dataset in the data home.",
        show_default=False,
    ),
    dataset: str = typer.Option(
        "refcoco",
        "--dataset",
        help="Dataset name in the data home when --data is not given (refcoco, refcoco+, refcocog, shapes).",
    ),
    out: Path = typer.Option(Path("runs/remamber"), "--out", "-o", help="Run folder (RUNDIR)."),
    preset: str = typer.Option("tiny", "--preset", help="Model preset: tiny, small or base (official ReMamber_Conv)."),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Input size (multiple of 32). Default: the preset's.", show_default=False
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from these weights (folder or Hub id) instead of a fresh preset.",
        show_default=False,
    ),
    text_encoder: str | None = typer.Option(
        None,
        "--text-encoder",
        help="Hugging Face text model (Hub id or folder), or 'scratch'. Default: the preset's.",
        show_default=False,
    ),
    fusion: str | None = typer.Option(
        None,
        "--fusion",
        help="Text fusion: twister (default), attention, in-context, film or hmnet.",
        show_default=False,
    ),
    scan: str | None = typer.Option(
        None,
        "--scan",
        help="Twister scan order: channel-spatial (default), spatial-channel, parallel, channel or spatial.",
        show_default=False,
    ),
    interaction: str | None = typer.Option(
        None, "--interaction", help="Twister text maps: both (default), global or local.", show_default=False
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="Stage blocks: vss (VMamba, default), mambaout (gated CNN) or mambavision.",
        show_default=False,
    ),
    recap_every: int | None = typer.Option(
        None, "--recap-every", help="hmnet fusion: image tokens between text recaps (default 64).", show_default=False
    ),
    freeze_text: bool = typer.Option(False, "--freeze-text", help="Do not train the text encoder."),
    text_lr_scale: float = typer.Option(
        1.0,
        "--text-lr-scale",
        help="Learning rate of the text encoder, as a multiple of --lr (e.g. 0.1 for a pretrained text encoder).",
    ),
    epochs: int = typer.Option(50, "--epochs", help="Epochs."),
    max_steps: int = typer.Option(0, "--max-steps", help="Stop after this many optimizer steps (0: run all epochs)."),
    time_limit: float = typer.Option(
        0.0, "--time-limit", help="Stop (and save) after this many minutes (0: no limit)."
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Samples per process per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw (the paper's) or sgd (momentum 0.9)."),
    lr: float = typer.Option(5e-5, "--lr", help="Peak learning rate."),
    min_lr: float = typer.Option(1e-6, "--min-lr", help="Learning rate at the end of the cosine decay."),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warmup steps."),
    weight_decay: float = typer.Option(
        0.01, "--weight-decay", help="AdamW weight decay (not on A_log, D, norms, biases)."
    ),
    clip_grad: float = typer.Option(0.0, "--clip-grad", help="Clip the gradient norm to this (0: off)."),
    ema: float = typer.Option(
        0.0, "--ema", help="EMA decay of the weights, e.g. 0.999 (0: off); checkpoints then hold the EMA weights."
    ),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="Mixed precision. Default: on for CUDA, off on CPU.", show_default=False
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, data order and augmentation."),
    limit: int = typer.Option(0, "--limit", help="Use only the first N training samples (0: all)."),
    val_split: str = typer.Option("val", "--val-split", help="Validation split ('' for none)."),
    val_every: int = typer.Option(0, "--val-every", help="Validate every N steps (0: at each epoch end)."),
    val_limit: int = typer.Option(0, "--val-limit", help="Validate on the first N samples (0: all)."),
    ckpt_every: int = typer.Option(
        0, "--ckpt-every", help="Also write checkpoints/last every N steps (0: at epoch ends only)."
    ),
    log_every: int = typer.Option(10, "--log-every", help="Log every N steps to log.jsonl."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from checkpoints/last (its saved settings apply)."
    ),
    nproc: int = typer.Option(
        1, "--nproc", help="Start K processes with torch.distributed (one per GPU, or CPU processes)."
    ),
) -> None:
    from remamber.engine import distributed as D
    from remamber.engine.train import TRAIN_CONFIG_NAME, TrainConfig

    # Before the launch, and in every rank: rank 0 writes its config only after the process group
    # has formed, so no rank can find the config of the run it belongs to.
    if not resume:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; training writes a run folder there")
        if (out / TRAIN_CONFIG_NAME).exists():
            raise InputError(
                f"--out {out} already holds a training run: continue it with --resume, or choose another --out"
            )
    if nproc > 1 and not D.launched_by_torchrun():
        _launch(nproc)
    if resume:
        cfg = TrainConfig.load(out / TRAIN_CONFIG_NAME)
    else:
        from remamber.data.catalog import default_out

        if data is None:
            data = default_out(dataset)
            if not data.exists():
                raise InputError(f"no prepared dataset at {data}; run `remamber prepare {dataset}` or pass --data DIR")
        cfg = TrainConfig(
            data=str(data),
            out=str(out),
            preset=preset,
            image_size=image_size,
            init=init,
            text_encoder=text_encoder,
            fusion=fusion,
            scan=scan,
            interaction=interaction,
            backbone=backbone,
            recap_every=recap_every,
            freeze_text=freeze_text,
            text_lr_scale=text_lr_scale,
            val_split=val_split or None,
            epochs=epochs,
            max_steps=max_steps,
            time_limit=time_limit,
            batch_size=batch_size,
            grad_accum=grad_accum,
            optimizer=optimizer,
            lr=lr,
            min_lr=min_lr,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            clip_grad=clip_grad,
            ema=ema,
            amp=amp,
            device=device,
            workers=workers,
            seed=seed,
            limit=limit,
            val_every=val_every,
            val_limit=val_limit,
            ckpt_every=ckpt_every,
            log_every=log_every,
        )
    _run(cfg, resume)


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
            best = f"; best val oIoU {result.best_oiou:.4f} in {result.best}" if result.best_oiou is not None else ""
            console.print(f"trained {result.steps} steps; last checkpoint {result.last}{best}", highlight=False)
    finally:
        D.cleanup()
