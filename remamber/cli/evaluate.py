"""``remamber eval``: mIoU, oIoU and P@X (and the GRES metrics) of a model on a split of a prepared
dataset, or on every standard split (``--split all``).

Thin: options, checks, printing and files; the work is :func:`remamber.engine.evaluate.evaluate`.
Heavy imports happen inside the command so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from remamber.cli.options import device_option, presence_threshold_option, threshold_option, weights_option
from remamber.data.catalog import KNOWN_DATASETS, SHAPES_NAME, default_out
from remamber.data.manifest import INFO_FILE, PreparedDataset
from remamber.utils.errors import InputError

DATASETS = (*KNOWN_DATASETS, SHAPES_NAME)
EVAL_SIZES = ("original", "input")
#: ``--split all``: every split of a prepared folder but this one.
ALL_SPLITS, TRAIN_SPLIT = "all", "train"
#: The datasets of the paper's Table 2 (what ``--split all`` evaluates), in its order, as it names them.
TABLE_DATASETS = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "G-Ref"}

HELP = """Evaluate a model on a split of a prepared dataset, or on every split (--split all): mIoU, oIoU and P@50..P@90, and gIoU, cIoU, N-acc and T-acc on generalized splits.

Examples:

  remamber eval --split testA                        (the default model on the prepared RefCOCO in the data home)

  remamber eval --weights ./my-model --split all     (every split but train of RefCOCO, RefCOCO+ and G-Ref)

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

Generalized splits (gRefCOCO: sentences that name no object or several), as GRES (ReLA) evaluates them; "predicted empty" = the mask has no pixel:

* mIoU, oIoU and P@X count the target samples only; gIoU = mean IoU over all samples, a no-target sample scoring 1 when predicted empty, else 0; cIoU = sum I / sum U over all samples (a no-target sample adds its predicted pixels to U); N-acc = share of no-target samples predicted empty; T-acc = share of target samples not predicted empty.

* the table adds these columns and a row per target kind (none, single, multi); --json adds gIoU, cIoU, N-acc, T-acc (null where a group has no such samples), target_samples, no_target_samples and "by_kind".

--split all evaluates every split but train: of the prepared RefCOCO, RefCOCO+ and G-Ref in the data home (those not prepared are skipped with a note), of --dataset NAME when given, or of --data FOLDER. The model is loaded once; the table has a column per dataset and split and rows oIoU and mIoU (as the paper's Table 2); --json prints one object with the settings and "results", one object per dataset and split (the keys above plus dataset, data, split); --report and --save-masks get one file or folder per split (<report stem>.<dataset>.<split>.csv, FOLDER/<dataset>/<split>).

--report FILE writes one CSV row per sample (index, sent_id, ref_id, image, text, expr_type, I, U, IoU; and kind on generalized splits) and an IoU histogram PNG beside it (same name, .png). --save-masks FOLDER writes each predicted mask as a 0/255 PNG at the eval size, named <index>_<sent_id>.png. Files are written whole or not at all. Bad input exits with code 2.
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


def _open_folder(
    folder: Path, images_root: Path | None, dataset: str | None, explicit: bool
) -> tuple[PreparedDataset, Path]:
    """Check a prepared folder and its images folder; returns them."""
    if not (folder / INFO_FILE).is_file():
        raise _not_prepared(folder, dataset, explicit)
    prepared = PreparedDataset.open(folder)
    root = Path(images_root) if images_root is not None else folder / prepared.info["images_root"]
    if not root.is_dir():
        hint = "pass --images-root FOLDER where the images are now" if images_root is None else "check --images-root"
        raise InputError(f"images folder {root} does not exist; {hint}")
    return prepared, root


@dataclass
class _Split:
    """One split to evaluate: its prepared folder, images and records."""

    folder: Path
    prepared: PreparedDataset
    split: str
    root: Path
    records: list[dict]

    @property
    def label(self) -> str:
        """``<dataset>.<split>``: how report files and mask folders of ``--split all`` are told apart."""
        return f"{self.prepared.name}.{self.split}"


def _eval_splits(prepared: PreparedDataset, folder: Path) -> list[str]:
    """Every split of a prepared folder but train, in the usual order (``--split all``)."""
    splits = [s for s in prepared.splits if s != TRAIN_SPLIT]
    if not splits:
        raise InputError(f"--split {ALL_SPLITS}: {folder} has no split besides {TRAIN_SPLIT}")
    return splits


def _plan(
    ctx: typer.Context, split: str, dataset: str, data: Path | None, images_root: Path | None
) -> tuple[list[_Split], list[str]]:
    """The splits to evaluate and the Table 2 datasets skipped as not prepared (``--split all`` in
    the data home: a note on stderr for each)."""
    explicit = data is not None
    if explicit:
        named = dataset if _given(ctx, "dataset") else None
        folders = [(data, named)]
    elif split != ALL_SPLITS or _given(ctx, "dataset"):
        folders = [(default_out(dataset), dataset)]
    else:
        folders = [(default_out(name), name) for name in TABLE_DATASETS]
    skipped = []
    if len(folders) > 1:
        for folder, name in folders:
            if not (folder / INFO_FILE).is_file():
                skipped.append(name)
                sys.stderr.write(
                    f"note: {name} is not prepared in the data home ({folder}); skipped "
                    f"(make it with `remamber prepare {name}`)\n"
                )
        folders = [(folder, name) for folder, name in folders if name not in skipped]
        if not folders:
            raise InputError(
                f"--split {ALL_SPLITS}: none of {', '.join(TABLE_DATASETS)} is prepared in the data home "
                f"({default_out('refcoco').parent}); make one with `remamber prepare refcoco`, "
                "or point --data at a prepared folder"
            )
    plan = []
    for folder, name in folders:
        prepared, root = _open_folder(folder, images_root, name, explicit)
        if split == ALL_SPLITS:
            splits = _eval_splits(prepared, folder)
        elif split in prepared.splits:
            splits = [split]
        else:
            raise InputError(f"--split {split}: {folder} has no such split; it has: {', '.join(prepared.splits)}")
        for one in splits:
            records = prepared.records(one)
            if not records:
                raise InputError(f"--split {one}: {folder} has no samples in this split")
            plan.append(_Split(folder, prepared, one, root, records))
    return plan, skipped


def _check_images(item: _Split, limit: int, explicit_root: bool) -> None:
    """Refuse a split (its first ``limit`` samples; 0: all) whose images are not all there."""
    records = item.records[: limit or None]
    missing = [r["file_name"] for r in records if not (item.root / r["file_name"]).is_file()]
    if missing:
        names = sorted(set(missing))
        hint = "check --images-root" if explicit_root else "if the images moved, pass --images-root FOLDER"
        raise InputError(
            f"{len(names)} image(s) of {item.prepared.name} {item.split} are missing in {item.root} "
            f"(first: {names[0]}); {hint}"
        )


def _cell(value: float | None) -> str:
    """A fraction as a percent cell; "-" where a metric is undefined (a group without such samples)."""
    return "-" if value is None else f"{100 * float(value):.2f}"


def _console(width: int = 110):
    """Rich's console on stdout; at least ``width`` columns wide when stdout is not a terminal."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, width))


def _print_table(summary: dict[str, Any], title: str) -> None:
    """One split: a row for all samples, then one per target kind (generalized splits) and per
    expression type; the GRES columns on generalized splits."""
    from rich.table import Table

    from remamber.engine.evaluate import iter_metric_rows
    from remamber.engine.metrics import GENERALIZED_KEYS, METRIC_KEYS

    keys = METRIC_KEYS + (GENERALIZED_KEYS if "by_kind" in summary else ())
    grouped = "by_type" in summary or "by_kind" in summary
    table = Table(title=title, title_justify="left")
    table.add_column("samples" if not grouped else "type" if "by_kind" not in summary else "group", style="bold")
    if grouped:
        table.add_column("samples", justify="right")
    for key in keys:
        table.add_column(f"{key} %", justify="right")
    kinds = list(summary.get("by_kind") or ())
    for name, s in iter_metric_rows(summary):
        cells = [_cell(s[k]) for k in keys]
        if grouped:
            last_kind = bool(kinds) and name == kinds[-1] and "by_type" in summary
            table.add_row(name, str(s["samples"]), *cells, end_section=(name == "all" or last_kind))
        else:
            table.add_row(str(s["samples"]), *cells)
    _console(150 if "by_kind" in summary else 110).print(table)


def _print_splits_table(results: list[dict[str, Any]], title: str) -> None:
    """``--split all``: the paper's Table 2 layout, a column per dataset and split (grouped by
    dataset), rows oIoU and mIoU (and the GRES metrics when a split is generalized), then samples."""
    from rich.table import Table

    from remamber.engine.metrics import GENERALIZED_KEYS

    keys = ("oIoU", "mIoU") + (GENERALIZED_KEYS if any("gIoU" in r for r in results) else ())
    table = Table()
    table.add_column("%", style="bold")
    shown = None
    for r in results:
        name = TABLE_DATASETS.get(r["dataset"], r["dataset"])
        table.add_column(f"{name if r['data'] != shown else ''}\n{r['split']}", justify="right")
        shown = r["data"]
    for key in keys:
        table.add_row(key, *[_cell(r.get(key)) for r in results], end_section=(key == keys[-1]))
    table.add_row("samples", *[str(r["samples"]) for r in results])
    console = _console()
    console.print(title, highlight=False)
    console.print(table)


def evaluate(
    ctx: typer.Context,
    split: str = typer.Option(
        ...,
        "--split",
        metavar="NAME",
        help="Split to evaluate: train, val, test, testA, testB (what the prepared folder has), or all: every "
        "split but train of the prepared RefCOCO, RefCOCO+ and G-Ref (or of --dataset / --data when given).",
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
        "by_type (when present), the GRES metrics and by_kind (generalized splits) and the settings used; "
        "with --split all, the settings and results: one such object per dataset and split.",
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
    plan, skipped = _plan(ctx, split, dataset, data, images_root)
    every = split == ALL_SPLITS
    for item in plan:
        _check_images(item, limit, images_root is not None)
    if report is not None:
        from remamber.engine.evaluate import report_paths

        try:
            report_paths(report)
        except InputError as e:
            raise typer.BadParameter(str(e), param_hint="'--report'") from None
        for item in plan:
            for p in report_paths(_split_report(report, item) if every else report):
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
        model = load_model(weights, dev)  # once, for every split
        cfg = model.config
        prefer_fused_scan(dev, cfg.d_state)  # every batch on one path, in every process
        done = []  # (split, EvalResult, files written)
        for item in plan:
            masks = save_masks / item.prepared.name / item.split if every and save_masks is not None else save_masks
            ds = ReferringDataset(
                item.folder,
                item.split,
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
                save_masks=masks,
                progress=True,
                limit=limit or None,
                num_workers=workers,
            )
            files = {}
            if report is not None and distributed.is_main():
                csv_path, png_path = write_report(result, _split_report(report, item) if every else report)
                files["report"], files["histogram"] = str(csv_path), str(png_path)
            if masks is not None:
                files["masks"] = str(masks)
            done.append((item, result, files))
        if not distributed.is_main():
            return
        truncated = sum(result.truncated for _, result, _ in done)
        if truncated:
            sys.stderr.write(
                f"warning: {truncated} text(s) were longer than the model's token limit and were truncated\n"
            )
        used_weights = weights if weights is not None else str(default_weights())
        settings = {
            "threshold": threshold,
            "presence_threshold": presence_threshold,
            "eval_size": eval_size,
            "limit": limit or None,
            "device": str(dev),
            "processes": distributed.world_size(),
        }
        size = "original image size" if eval_size == "original" else f"input size {cfg.image_size}"
        how = f"threshold {threshold:g}, {size}"
        if every:
            results = [{**_where(item), **result.summary, **_run(result), **files} for item, result, files in done]
            _show_all(results, skipped, {"weights": used_weights, **settings}, json_out, how)
            return
        item, result, files = done[0]
        out = {**result.summary, "weights": used_weights, **_where(item), **settings, **_run(result), **files}
        if json_out:
            _print_json(out)
            return
        _print_table(result.summary, f"{item.prepared.name} {item.split}: {result.samples} samples, {how}")
        for key, path in files.items():
            typer.echo(f"{key}: {path}")
    finally:
        distributed.cleanup()


def _split_report(report: Path, item: _Split) -> Path:
    """``--split all``: the report file of one split, ``<stem>.<dataset>.<split><suffix>`` beside ``report``."""
    return report.with_name(f"{report.stem}.{item.label}{report.suffix}")


def _where(item: _Split) -> dict[str, str]:
    """The JSON fields that say which split a result is of."""
    return {"data": str(item.folder), "dataset": item.prepared.name, "split": item.split}


def _run(result: Any) -> dict[str, Any]:
    """The JSON fields of how an evaluation ran (texts truncated, seconds)."""
    return {"truncated": result.truncated, "seconds": round(result.seconds, 3)}


def _print_json(out: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _show_all(
    results: list[dict[str, Any]], skipped: list[str], settings: dict[str, Any], json_out: bool, how: str
) -> None:
    """``--split all``: one JSON object (settings, skipped datasets, a result per split) or Table 2."""
    if json_out:
        _print_json({"split": ALL_SPLITS, **settings, "skipped": skipped, "results": results})
        return
    _print_splits_table(results, f"{len(results)} splits, {how} (percent)")
    for r in results:
        for key in ("report", "masks"):
            if key in r:
                typer.echo(f"{r['dataset']} {r['split']} {key}: {r[key]}")
