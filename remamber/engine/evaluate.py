"""Evaluate a ReMamber model on a prepared split: per-sample I/U, mIoU, oIoU, P@X (and the GRES
metrics gIoU, cIoU, N-acc, T-acc on splits with no-target or multi-target sentences).

The library half of ``remamber eval`` (the trainer calls :func:`evaluate` for validation).
Definitions are in :mod:`remamber.engine.metrics`. Under torchrun (an initialised process
group) each process evaluates its own shard (``distributed.shard_indices``: every sample
exactly once), counts are summed with ``all_reduce`` and the per-sample rows gathered, so
every process returns the result of the whole split.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remamber.data.manifest import target_kind
from remamber.engine import distributed
from remamber.engine.metrics import MetricAccumulator, sample_iou
from remamber.inference.fuse import fused
from remamber.inference.processing import to_prediction
from remamber.utils.errors import InputError, check_presence_threshold, check_threshold
from remamber.utils.io import atomic_open, atomic_path

#: Where predictions are compared with the ground truth.
EVAL_SIZES = ("original", "input")
#: Columns of the per-sample report (``EvalResult.rows`` entries have these keys and ``kind``).
ROW_FIELDS = ("index", "sent_id", "ref_id", "image", "text", "expr_type", "I", "U", "IoU")
#: Columns of the per-sample report of a generalized split: the target kind (none/single/multi) too.
GENERALIZED_ROW_FIELDS = (*ROW_FIELDS, "kind")


@dataclass
class EvalResult:
    """What :func:`evaluate` found.

    ``summary``: ``samples``, ``mIoU``, ``oIoU``, ``P@50`` ... ``P@90`` (fractions in [0, 1]),
    ``I`` and ``U`` (sums), and ``by_type`` when records carry an ``expr_type``; on a generalized
    split also the GRES keys and ``by_kind`` (:meth:`MetricAccumulator.summary`).
    ``rows``: one dict per sample (``ROW_FIELDS`` and ``kind``; ``IoU`` is 1 or 0 for a
    no-target sample, as gIoU counts it) in dataset order. ``settings``: threshold,
    eval_size, dataset name and split. ``truncated``: texts cut at the model's token limit.
    """

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    truncated: int = 0
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return int(self.summary["samples"])

    @property
    def miou(self) -> float:
        return float(self.summary["mIoU"])

    @property
    def oiou(self) -> float:
        return float(self.summary["oIoU"])

    @property
    def generalized(self) -> bool:
        """Whether the split had no-target or multi-target samples (the summary has the GRES metrics)."""
        return "gIoU" in self.summary

    def to_dict(self) -> dict[str, Any]:
        """Summary and settings as one JSON-ready object (no per-sample rows)."""
        return {**self.summary, **self.settings, "truncated": self.truncated, "seconds": round(self.seconds, 3)}


def mask_file_name(index: int, sent_id: Any = None) -> str:
    """File name of a saved predicted mask: ``<index:06d>_<sent_id>.png`` (dataset order)."""
    return f"{index:06d}.png" if sent_id is None else f"{index:06d}_{sent_id}.png"


def check_eval_size(eval_size: str) -> str:
    if eval_size not in EVAL_SIZES:
        raise InputError(f"eval_size {eval_size!r}: choose from: {', '.join(EVAL_SIZES)}")
    return eval_size


class _EvalItems(torch.utils.data.Dataset):
    """The samples ``indices`` of ``dataset``, each with its ground truth at the eval size."""

    def __init__(self, dataset: Any, indices: Sequence[int], original: bool) -> None:
        self.dataset, self.indices, self.original = dataset, list(indices), original

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = self.indices[k]
        item = self.dataset[i]
        if self.original:
            gt = np.asarray(self.dataset.load_mask(i)) != 0
        else:
            gt = item["mask"].reshape(item["mask"].shape[-2:]).numpy() > 0.5
        return {"image": item["image"], "text": item["text"], "index": i, "gt": gt}


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "text": [b["text"] for b in batch],
        "index": [b["index"] for b in batch],
        "gt": [b["gt"] for b in batch],
    }


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers (run it unwrapped:
    shards may have different numbers of batches, and a wrapper would sync on each forward)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


class _Progress:
    """A Rich progress bar over samples on stderr (main process, terminals only)."""

    def __init__(self, total: int, enabled: bool, description: str) -> None:
        self.total, self._bar, self._task = total, None, None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            done = self._bar.tasks[0].completed
            self._bar.update(self._task, completed=min(self.total, done + n))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
            self._bar = None


def _record(dataset: Any, i: int) -> dict[str, Any]:
    return dataset.record(i) if hasattr(dataset, "record") else {}


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    threshold: float = 0.5,
    eval_size: str = "original",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    save_masks: str | os.PathLike | None = None,
    progress: bool = True,
    limit: int | None = None,
    num_workers: int = 0,
    sharded: bool | None = None,
    fuse: bool = True,
    presence_threshold: float = 0.5,
) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` (a :class:`remamber.data.dataset.ReferringDataset`).

    Images and masks go through the inference paths' pre- and post-processing
    (:mod:`remamber.inference.processing`: the dataset's :func:`model_input`, and
    :func:`to_prediction` here), so a sample's mask is the one ``remamber segment`` gives.
    ``threshold``: mask = ``sigmoid(logits) > threshold``. ``eval_size``: ``"original"``
    (logits upsampled bilinearly to each image's original size, compared with the
    original mask) or ``"input"`` (compared at the model input size with the mask resized
    by nearest neighbour, as the dataset gives it). ``device``: where to run; None = where
    the model is (a model elsewhere is moved there). ``save_masks``: folder for each
    predicted mask as a 0/255 PNG at the eval size (:func:`mask_file_name`; each process
    writes its own shard). ``progress``: a Rich bar on stderr (main process, terminals
    only); False is silent. ``limit``: only the first ``limit`` samples.
    ``num_workers``: DataLoader worker processes.

    ``sharded``: None (default) shards the samples over the processes when a
    torch.distributed group is active -- then every process must call this, and each
    returns the result for all samples; False evaluates every sample in this process with
    no collective calls (e.g. on rank 0 alone).

    ``fuse``: run the model with its inference-only modules swapped in
    (:func:`remamber.inference.fuse.fused`); a model that came unfused is given back unfused.

    ``presence_threshold``: a model with a presence head predicts an empty mask for a sample
    whose presence is below it (as ``remamber segment`` does).

    The model is put in eval mode and given back in the mode it came in. A
    DistributedDataParallel wrapper is looked through.
    """
    threshold = check_threshold(threshold)
    presence_threshold = check_presence_threshold(presence_threshold)
    eval_size = check_eval_size(eval_size)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1 (got {batch_size})")
    if limit is not None and limit < 0:
        raise InputError(f"limit must be at least 0 (got {limit})")
    core = _unwrap(model)
    if device is None:
        device = next(core.parameters()).device
    device = torch.device(device)
    if next(core.parameters()).device != device:
        core.to(device)

    n = len(dataset) if limit is None else min(limit, len(dataset))
    collective = distributed.is_distributed() if sharded is None else (sharded and distributed.is_distributed())
    shard = distributed.shard_indices(n) if collective else list(range(n))
    items = _EvalItems(dataset, shard, original=(eval_size == "original"))
    loader = torch.utils.data.DataLoader(
        items,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    masks_dir = Path(save_masks) if save_masks is not None else None
    if masks_dir is not None:
        masks_dir.mkdir(parents=True, exist_ok=True)

    acc = MetricAccumulator()
    rows: list[dict[str, Any]] = []
    truncated = 0
    was_training = core.training
    core.eval()
    start = time.perf_counter()
    world = distributed.world_size() if collective else 1
    label = " ".join(str(v) for v in (getattr(dataset, "name", None), getattr(dataset, "split", None)) if v)
    bar = _Progress(n, progress and distributed.is_main(), f"eval {label}".strip())
    try:
        with torch.inference_mode(), fused(core) if fuse else contextlib.nullcontext():
            for batch in loader:
                ids, attention, cut = core.tokenize(batch["text"])
                truncated += sum(bool(c) for c in cut)
                out = core(
                    batch["image"].to(device, non_blocking=True),
                    ids.to(device),
                    attention.to(device),
                    return_presence=True,
                )
                logits = out.logits[:, 0].float().cpu().numpy()
                head = out.presence_logits
                presence = [None] * len(logits) if head is None else head.float().cpu().tolist()
                for j, i in enumerate(batch["index"]):
                    gt = batch["gt"][j]
                    # as `remamber segment` makes its mask (the same function): at the eval size
                    size = (gt.shape[1], gt.shape[0])
                    pred = to_prediction(logits[j], size, threshold, False, presence[j], presence_threshold).mask
                    inter, union = sample_iou(pred, gt)
                    rec = _record(dataset, i)
                    kind = target_kind(rec)
                    # "predicted empty" (GRES) is the mask itself: whatever emptied it counts
                    score = acc.add(inter, union, rec.get("expr_type"), kind, pred_empty=not pred.any())
                    rows.append(
                        {
                            "index": i,
                            "sent_id": rec.get("sent_id"),
                            "ref_id": rec.get("ref_id"),
                            "image": rec.get("file_name"),
                            "text": batch["text"][j],
                            "expr_type": rec.get("expr_type"),
                            "I": inter,
                            "U": union,
                            "IoU": score,
                            "kind": kind,
                        }
                    )
                    if masks_dir is not None:
                        _save_mask(masks_dir / mask_file_name(i, rec.get("sent_id")), pred)
                bar.advance(len(batch["index"]) * world)
    finally:
        bar.close()
        core.train(was_training)

    total = acc.reduce() if collective else acc
    if collective:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rows)
        rows = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        truncated = int(distributed.all_reduce_sum(_count_tensor(truncated)).item())
    settings = {
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "threshold": threshold,
        "presence_threshold": presence_threshold,
        "eval_size": eval_size,
    }
    return EvalResult(total.summary(), rows, settings, truncated, time.perf_counter() - start)


def _count_tensor(value: int) -> torch.Tensor:
    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return torch.tensor([value], dtype=torch.int64, device=device)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    from remamber.inference.images import save_mask

    save_mask(path, mask)


# --------------------------------------------------------------------------- report files


def report_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The CSV path and the histogram PNG beside it (same stem, ``.png``)."""
    csv_path = Path(path)
    if csv_path.suffix.lower() == ".png":
        raise InputError(f"report {path}: give the CSV file name; the histogram is written beside it as .png")
    return csv_path, csv_path.with_suffix(".png")


def write_report(result: EvalResult, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the per-sample CSV (``ROW_FIELDS``; ``GENERALIZED_ROW_FIELDS`` for a generalized
    split) and the IoU histogram PNG beside it, atomically."""
    csv_path, png_path = report_paths(path)
    fields = GENERALIZED_ROW_FIELDS if result.generalized else ROW_FIELDS
    with atomic_open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**row, "expr_type": row.get("expr_type") or "", "IoU": f"{row['IoU']:.6f}"})
    image = iou_histogram(
        [r["IoU"] for r in result.rows],
        title=_histogram_title(result),
    )
    with atomic_path(png_path) as tmp:
        image.save(tmp, format="PNG")
    return csv_path, png_path


def _histogram_title(result: EvalResult) -> str:
    s = result.summary
    name = " ".join(str(v) for v in (result.settings.get("dataset"), result.settings.get("split")) if v)
    head = f"{name}: " if name else ""
    if result.generalized:
        return f"{head}IoU of {s['samples']} samples - gIoU {100 * s['gIoU']:.2f}%, cIoU {100 * s['cIoU']:.2f}%"
    return (
        f"{head}IoU of {s['samples']} samples - mIoU {100 * s['mIoU']:.2f}%, "
        f"oIoU {100 * s['oIoU']:.2f}%, P@50 {100 * s['P@50']:.2f}%"
    )


def histogram_counts(ious: Sequence[float], bins: int = 10) -> list[int]:
    """Counts of IoUs in ``bins`` equal bins over [0, 1]; each bin holds its lower edge, the
    last also 1.0 (so with 10 bins, bin 5 is exactly the samples with 0.5 <= IoU < 0.6)."""
    counts = [0] * bins
    for v in ious:
        k = min(bins - 1, max(0, int(np.floor(float(v) * bins + 1e-9))))
        counts[k] += 1
    return counts


def iou_histogram(ious: Sequence[float], bins: int = 10, title: str = "", size: tuple[int, int] = (720, 420)):
    """A bar chart of the per-sample IoUs as a Pillow image (no matplotlib)."""
    from PIL import Image, ImageDraw, ImageFont

    counts = histogram_counts(ious, bins)
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, 20, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(counts) if counts and max(counts) > 0 else 1
    draw.text((left, 12), title or f"IoU histogram ({len(ious)} samples)", fill="black", font=font)
    # axes
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black", width=1)
    for k in range(5):  # y ticks
        value = round(peak * k / 4)
        y = top + plot_h - plot_h * value / peak
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((left - 8, y), str(value), fill="black", font=font, anchor="rm")
    bar_w = plot_w / bins
    for k, c in enumerate(counts):
        x0 = left + k * bar_w
        h = plot_h * c / peak
        if c:
            draw.rectangle([x0 + 2, top + plot_h - h, x0 + bar_w - 2, top + plot_h], fill=(70, 130, 180))
            draw.text((x0 + bar_w / 2, top + plot_h - h - 2), str(c), fill="black", font=font, anchor="md")
    for k in range(bins + 1):  # x ticks at the bin edges
        x = left + k * bar_w
        draw.line([(x, top + plot_h), (x, top + plot_h + 4)], fill="black")
        draw.text((x, top + plot_h + 6), f"{k / bins:.1f}", fill="black", font=font, anchor="ma")
    draw.text((left + plot_w / 2, height - 14), "IoU", fill="black", font=font, anchor="mm")
    return img


def iter_metric_rows(summary: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("all", summary)``, ``(kind, summary)`` per target kind (generalized splits), then
    ``(type, summary)`` per expression type, for tables."""
    yield "all", summary
    yield from (summary.get("by_kind") or {}).items()
    yield from (summary.get("by_type") or {}).items()


__all__ = [
    "EVAL_SIZES",
    "ROW_FIELDS",
    "GENERALIZED_ROW_FIELDS",
    "EvalResult",
    "evaluate",
    "write_report",
    "iou_histogram",
    "histogram_counts",
    "mask_file_name",
    "report_paths",
    "iter_metric_rows",
]
