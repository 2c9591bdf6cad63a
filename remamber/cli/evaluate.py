"""``remamber eval``: mIoU, oIoU and P@X of a model on a split of a prepared dataset.

Thin: options, checks, printing and files; the work is :func:`remamber.engine.evaluate.evaluate`.
Heavy imports happen inside the command so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from remamber.cli.options import device_option, presence_threshold_option, threshold_option, weights_option
from remamber.data.catalog import KNOWN_DATASETS, SHAPES_NAME, default_out
from remamber.utils.errors import InputError

DATASETS = (*KNOWN_DATASETS, SHAPES_NAME)
EVAL_SIZES = ("original", "input")

HELP = """Evaluate a model on a split of a prepared dataset: mIoU, oIoU and P@50..P@90.

Examples:

  remamber eval --split testA                        (the default model on the prepared RefCOCO in the data home)

  remamber eval --weights ./my-model --dataset refcocog --split val --json

  remamber eval --weights ./my-model --data ./shapes --split test --report out/test.csv --save-masks out/masks

  torchrun --nproc_per_node=2 -m remamber eval --weights ./my-model --split val     (each process takes a shard)

Metrics (every sentence is one sample):

* mask = sigmoid(logits) > threshold (default 0.5; strictly greater, so a probability exactly at the threshold is not in the mask).

* a model with a presence head predicts an empty mask where its presence is below --presence-threshold (0.5).

* compared at the original image size by default (logits upsampled bilinearly to it); --eval-size input compares at the model input size against the ground truth resized with nearest neighbour.

* per sample I = |pred & gt|, U = |pred | gt|, IoU = I / U (0 when both masks are empty).

* mIoU = mean of the per-sample IoUs (every sentence weighs the same); oIoU (overall IoU) = sum I / sum U over all samples (large objects weigh more). Papers report either; they are not comparable.

* P@X = share of samples with IoU >= X (greater or equal: IoU exactly 0.5 counts for P@50), X = 0.5, 0.6, 0.7, 0.8, 0.9.

The table shows percent; --json prints one object with samples, mIoU, oIoU, P@50 ... P@90 as fractions in [0, 1], the sums I and U, and the settings (weights, data, split, threshold, eval_size, ...). Datasets with expression types (shapes) add the same metrics per type (table rows; "by_type" in JSON).

--report FILE writes one CSV row per sample (index, sent_id, ref_id, image, text, expr_type, I, U, IoU) and an IoU histogram PNG beside it (same name, .png). --save-masks FOLDER writes each predicted mask as a 0/255 PNG at the eval size, named <index>_<sent_id>.png. Files are written whole or not at all. Bad input exits with code 2.
"""


def _not_prepared(folder: Path, dataset: str | None, explicit_data: bool) -> InputError:
    what = "does not exist" if not folder.exists() else f"is not a prepared dataset (no {folder / 'dataset.json'})"
    if explicit_data:
        which = dataset or "|".join(DATASETS)
        return InputError(f"--data {folder} {what}; make it with `remamber prepare {which} --out {folder}`")
    name = dataset or "refcoco"
    return InputError(
        f"{name} is not prepared in the data home: {folder} {what}; "
        f"make it with `remamber prepare {name}`, or point --data at a prepared folder"
    )


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    source = ctx.get_parameter_source(name)  # an enum of typer's (vendored) click or of click
    return source is not None and getattr(source, "name", "") != "DEFAULT"


def _writable(path: Path, flag: str, want_dir: bool) -> None:
    """Refuse an output path that cannot be written, before any work (nothing is created)."""
    if path.exists():
        if want_dir and not path.is_dir():
            raise InputError(f"{flag} {path}: exists and is not a folder")
        if not want_dir and path.is_dir():
            raise InputError(f"{flag} {path}: is a folder; give a file name")
    probe = path if (want_dir and path.is_dir()) else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write there ({probe} is not a writable folder)")


def _open_split(folder: Path, split: str, images_root: Path | None, dataset: str | None, explicit: bool):
    """Check the prepared folder, the split and the images; returns (PreparedDataset, records)."""
    from remamber.data.manifest import INFO_FILE, PreparedDataset

    if not (folder / INFO_FILE).is_file():
        raise _not_prepared(folder, dataset, explicit)
    prepared = PreparedDataset.open(folder)
    if split not in prepared.splits:
        raise InputError(f"--split {split}: {folder} has no such split; it has: {', '.join(prepared.splits)}")
    root = Path(images_root) if images_root is not None else folder / prepared.info["images_root"]
    if not root.is_dir():
        hint = "pass --images-root FOLDER where the images are now" if images_root is None else "check --images-root"
        raise InputError(f"images folder {root} does not exist; {hint}")
    return prepared, root


def _check_images(records: list[dict], root: Path, explicit_root: bool) -> None:
    missing = [r["file_name"] for r in records if not (root / r["file_name"]).is_file()]
    if missing:
        names = sorted(set(missing))
        hint = "check --images-root" if explicit_root else "if the images moved, pass --images-root FOLDER"
        raise InputError(f"{len(names)} image(s) of this split are missing in {root} (first: {names[0]}); {hint}")


def _print_table(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from remamber.engine.evaluate import iter_metric_rows
    from remamber.engine.metrics import METRIC_KEYS

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 110))
    table = Table(title=title, title_justify="left")
    table.add_column("samples" if "by_type" not in summary else "type", style="bold")
    if "by_type" in summary:
        table.add_column("samples", justify="right")
    for key in METRIC_KEYS:
        table.add_column(f"{key} %", justify="right")
    for name, s in iter_metric_rows(summary):
        cells = [f"{100 * float(s[k]):.2f}" for k in METRIC_KEYS]
        if "by_type" in summary:
            table.add_row(name, str(s["samples"]), *cells, end_section=(name == "all"))
        else:
            table.add_row(str(s["samples"]), *cells)
    console.print(table)


def evaluate(
    ctx: typer.Context,
    split: str = typer.Option(
        ...,
        "--split",
        metavar="NAME",
        help="Split to evaluate: train, val, test, testA, testB (what the prepared folder has).",
        show_default=False,
    ),
    weights: str | None = weights_option(),
    dataset: str = typer.Option(
        "refcoco",
        "--dataset",
        metavar="NAME",
        help=f"Which prepared dataset of the data home (where `remamber prepare NAME` put it): {', '.join(DATASETS)}.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="FOLDER",
        help="A prepared dataset folder (any `remamber prepare ... --out FOLDER`); overrides --dataset.",
        show_default=False,
    ),
    threshold: float = threshold_option(),
    presence_threshold: float = presence_threshold_option(),
    eval_size: str = typer.Option(
        "original",
        "--eval-size",
        metavar="NAME",
        help="original: compare at the original image size (logits upsampled bilinearly); input: at the model "
        "input size (ground truth resized with nearest).",
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", metavar="N", help="Samples per forward pass."),
    device: str = device_option(),
    images_root: Path | None = typer.Option(
        None,
        "--images-root",
        metavar="FOLDER",
        help="Where the images are, if they moved since `remamber prepare`.",
        show_default="as prepared",
    ),
    limit: int = typer.Option(0, "--limit", metavar="N", help="Only the first N samples (quick checks; 0: all)."),
    workers: int = typer.Option(0, "--workers", metavar="N", help="Data-loading worker processes."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object: samples, mIoU, oIoU, P@50..P@90 (fractions in [0, 1]), I, U, "
        "by_type (when present) and the settings used.",
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        metavar="FILE",
        help="Write per-sample I, U, IoU as CSV to FILE and an IoU histogram PNG beside it.",
        show_default=False,
    ),
    save_masks: Path | None = typer.Option(
        None,
        "--save-masks",
        metavar="FOLDER",
        help="Write each predicted mask as a 0/255 PNG (at the eval size) into FOLDER.",
        show_default=False,
    ),
) -> None:
    # ---- check everything that can be checked before loading a model
    if dataset not in DATASETS:
        raise InputError(f"--dataset {dataset!r}: unknown; choose from: {', '.join(DATASETS)}")
    if eval_size not in EVAL_SIZES:
        raise InputError(f"--eval-size {eval_size!r}: choose from: {', '.join(EVAL_SIZES)}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1 (got {batch_size})")
    if limit < 0:
        raise InputError(f"--limit must be 0 (all) or more (got {limit})")
    if workers < 0:
        raise InputError(f"--workers must be 0 or more (got {workers})")
    folder = data if data is not None else default_out(dataset)
    named = dataset if data is None or _given(ctx, "dataset") else None
    prepared, root = _open_split(folder, split, images_root, named, data is not None)
    records = prepared.records(split)
    if not records:
        raise InputError(f"--split {split}: {folder} has no samples in this split")
    n = min(limit, len(records)) if limit else len(records)
    _check_images(records[:n], root, images_root is not None)
    if report is not None:
        from remamber.engine.evaluate import report_paths

        try:
            paths = report_paths(report)
        except InputError as e:
            raise typer.BadParameter(str(e), param_hint="'--report'") from None
        for p in paths:
            _writable(p, "--report", want_dir=False)
    if save_masks is not None:
        _writable(save_masks, "--save-masks", want_dir=True)

    # ---- the work
    from remamber.cli.weights import default_weights, load_model
    from remamber.data.dataset import ReferringDataset
    from remamber.engine import distributed
    from remamber.engine.evaluate import evaluate as run_eval
    from remamber.engine.evaluate import write_report
    from remamber.inference.predictor import prefer_fused_scan, resolve_device

    dev = resolve_device(device)
    distributed.init_distributed(dev)
    try:
        model = load_model(weights, dev)
        cfg = model.config
        prefer_fused_scan(dev, cfg.d_state)  # every batch on one path, in every process
        ds = ReferringDataset(
            folder,
            split,
            cfg.image_size,
            train=False,
            mean=cfg.pixel_mean,
            std=cfg.pixel_std,
            images_root=images_root,
        )
        result = run_eval(
            model,
            ds,
            threshold=threshold,
            presence_threshold=presence_threshold,
            eval_size=eval_size,
            batch_size=batch_size,
            device=dev,
            save_masks=save_masks,
            progress=True,
            limit=limit or None,
            num_workers=workers,
        )
        if not distributed.is_main():
            return
        used_weights = weights if weights is not None else str(default_weights())
        out = {
            **result.summary,
            "weights": used_weights,
            "data": str(folder),
            "dataset": prepared.name,
            "split": split,
            "threshold": threshold,
            "presence_threshold": presence_threshold,
            "eval_size": eval_size,
            "limit": limit or None,
            "device": str(dev),
            "processes": distributed.world_size(),
            "truncated": result.truncated,
            "seconds": round(result.seconds, 3),
        }
        if report is not None:
            csv_path, png_path = write_report(result, report)
            out["report"], out["histogram"] = str(csv_path), str(png_path)
        if save_masks is not None:
            out["masks"] = str(save_masks)
        if result.truncated:
            sys.stderr.write(
                f"warning: {result.truncated} text(s) were longer than the model's token limit and were truncated\n"
            )
        if json_out:
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return
        size = "original image size" if eval_size == "original" else f"input size {cfg.image_size}"
        title = f"{prepared.name} {split}: {result.samples} samples, threshold {threshold:g}, {size}"
        _print_table(result.summary, title)
        for key in ("report", "histogram", "masks"):
            if key in out:
                typer.echo(f"{key}: {out[key]}")
    finally:
        distributed.cleanup()
