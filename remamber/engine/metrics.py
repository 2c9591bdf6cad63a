"""Referring-segmentation metrics: per-sample I and U, mIoU, oIoU and P@X.

Definitions (DESIGN.md section 5; every sentence is one sample):

* prediction = ``sigmoid(logits) > threshold`` -- strictly greater: a probability exactly
  at the threshold is *not* in the mask;
* per sample ``I = |pred & gt|``, ``U = |pred | gt|``, ``IoU = I / U`` (0 when ``U == 0``,
  i.e. when both masks are empty);
* ``mIoU`` = mean of the per-sample IoUs; ``oIoU`` (overall IoU) = ``sum I / sum U`` over
  all samples, so large objects weigh more;
* ``P@X`` = share of samples with ``IoU >= X`` for X in 0.5, 0.6, 0.7, 0.8, 0.9 (``>=``:
  an IoU of exactly 0.5 counts for P@50). The comparison is done in integers
  (``10 * I >= 10X * U``), so no float rounding moves a sample across a level.

:class:`MetricAccumulator` keeps integer counts and an exactly rounded float sum of the
IoUs, so the summary does not depend on the order in which samples were added, merged or
reduced over processes: a sharded evaluation gives bit-for-bit the single-process numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: IoU levels of the precision metrics, in tenths (P@50 ... P@90).
PRECISION_TENTHS = (5, 6, 7, 8, 9)
PRECISION_KEYS = tuple(f"P@{t * 10}" for t in PRECISION_TENTHS)
#: The metric keys of a summary, in display order (all fractions in [0, 1]).
METRIC_KEYS = ("mIoU", "oIoU") + PRECISION_KEYS


def _as_bool(mask: Any) -> Any:
    """A boolean view of a numpy array or torch tensor (0/1, bool or 0/255 values)."""
    if isinstance(mask, np.ndarray):
        return mask if mask.dtype == np.bool_ else mask != 0
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(mask, torch.Tensor):
        return mask if mask.dtype == torch.bool else mask != 0
    return np.asarray(mask) != 0


def sample_iou(pred: Any, gt: Any) -> tuple[int, int]:
    """``(I, U)`` of one predicted mask against its ground truth (same shape).

    Masks are numpy arrays or torch tensors of bools or 0/1 (any non-zero value is
    foreground). ``I = |pred & gt|``, ``U = |pred | gt|``.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    inter = (p & g).sum()
    union = (p | g).sum()
    return int(inter), int(union)


def iou(inter: int, union: int) -> float:
    """``I / U``, 0.0 when ``U == 0`` (both masks empty)."""
    return inter / union if union > 0 else 0.0


def binarize(logits: Any, threshold: float = 0.5) -> Any:
    """The predicted mask: ``sigmoid(logits) > threshold`` (strictly greater).

    ``logits`` is a torch tensor (returns a bool tensor) or a numpy array (returns a
    bool array).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    if isinstance(logits, np.ndarray):
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64))) > threshold
    import torch

    return torch.sigmoid(logits.float()) > threshold


def precision_hits(inter: int, union: int) -> list[int]:
    """1/0 per level X in 0.5..0.9: whether ``IoU >= X`` (exact integer comparison)."""
    if union <= 0:
        return [0] * len(PRECISION_TENTHS)
    return [int(10 * inter >= t * union) for t in PRECISION_TENTHS]


class ExactSum:
    """A float sum that is exactly rounded whatever the order of additions and merges.

    Keeps Shewchuk's non-overlapping partials (as ``math.fsum`` does internally), so
    ``value`` is the correctly rounded sum of every float ever added.
    """

    __slots__ = ("partials",)

    def __init__(self, partials: Iterable[float] | None = None) -> None:
        self.partials: list[float] = []
        for x in partials or ():
            self.add(x)

    def add(self, x: float) -> None:
        x = float(x)
        kept = []
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                kept.append(lo)
            x = hi
        kept.append(x)
        self.partials = kept

    def merge(self, other: ExactSum) -> None:
        for x in other.partials:
            self.add(x)

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


@dataclass
class _Totals:
    """Counts of one group of samples (all, or one expression type)."""

    samples: int = 0
    inter: int = 0
    union: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(PRECISION_TENTHS))
    iou_sum: ExactSum = field(default_factory=ExactSum)

    def add(self, inter: int, union: int) -> None:
        self.samples += 1
        self.inter += inter
        self.union += union
        self.hits = [h + x for h, x in zip(self.hits, precision_hits(inter, union))]
        self.iou_sum.add(iou(inter, union))

    def merge(self, other: _Totals) -> None:
        self.samples += other.samples
        self.inter += other.inter
        self.union += other.union
        self.hits = [a + b for a, b in zip(self.hits, other.hits)]
        self.iou_sum.merge(other.iou_sum)

    def counts(self) -> list[int]:
        return [self.samples, self.inter, self.union, *self.hits]

    def summary(self) -> dict[str, Any]:
        n = self.samples
        out: dict[str, Any] = {
            "samples": n,
            "mIoU": self.iou_sum.value / n if n else 0.0,
            "oIoU": self.inter / self.union if self.union else 0.0,
        }
        for key, h in zip(PRECISION_KEYS, self.hits):
            out[key] = h / n if n else 0.0
        out["I"] = self.inter
        out["U"] = self.union
        return out


class MetricAccumulator:
    """Accumulates per-sample ``(I, U)``; summarises as mIoU, oIoU and P@50..P@90.

    ``add(I, U, expr_type)`` adds one sample (``expr_type`` also counts it in that type's
    group), ``merge(other)`` adds another accumulator, ``reduce()`` sums over the processes
    of a torch.distributed group, ``summary()`` gives the metrics as fractions in [0, 1].
    """

    def __init__(self) -> None:
        self._all = _Totals()
        self._by_type: dict[str, _Totals] = {}

    @property
    def samples(self) -> int:
        return self._all.samples

    @property
    def types(self) -> list[str]:
        """Expression types seen, sorted."""
        return sorted(self._by_type)

    def add(self, inter: int, union: int, expr_type: str | None = None) -> float:
        """Add one sample; returns its IoU."""
        inter, union = int(inter), int(union)
        if inter < 0 or union < inter:
            raise ValueError(f"need 0 <= I <= U, got I={inter}, U={union}")
        self._all.add(inter, union)
        if expr_type is not None:
            self._by_type.setdefault(str(expr_type), _Totals()).add(inter, union)
        return iou(inter, union)

    def add_masks(self, pred: Any, gt: Any, expr_type: str | None = None) -> tuple[int, int]:
        """Add one sample from its predicted and ground-truth masks; returns ``(I, U)``."""
        inter, union = sample_iou(pred, gt)
        self.add(inter, union, expr_type)
        return inter, union

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add every sample of ``other`` (in place); returns self."""
        self._all.merge(other._all)
        for key, totals in other._by_type.items():
            self._by_type.setdefault(key, _Totals()).merge(totals)
        return self

    def copy(self) -> MetricAccumulator:
        return MetricAccumulator().merge(self)

    def summary(self) -> dict[str, Any]:
        """``{"samples", "mIoU", "oIoU", "P@50", ..., "P@90", "I", "U"}`` plus ``"by_type"``
        (``{type: same keys}``) when any sample had an expression type."""
        out = self._all.summary()
        if self._by_type:
            out["by_type"] = {k: self._by_type[k].summary() for k in sorted(self._by_type)}
        return out

    def reduce(self) -> MetricAccumulator:
        """The accumulator of all processes (a copy of this one when not distributed).

        Counts, I and U are summed with ``all_reduce`` (each process must hold a disjoint
        shard of the samples, e.g. from ``distributed.shard_indices``); the IoU sums travel
        as exact partials, so the result equals a single-process run bit for bit. Every
        process must call it.
        """
        from remamber.engine import distributed

        if not distributed.is_distributed():
            return self.copy()
        import torch
        import torch.distributed as dist

        world = distributed.world_size()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, sorted(self._by_type))
        keys = sorted(set().union(*map(set, gathered)))
        groups = [self._all] + [self._by_type.get(k, _Totals()) for k in keys]
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.tensor([g.counts() for g in groups], dtype=torch.int64, device=device)
        counts = distributed.all_reduce_sum(counts).cpu().tolist()
        partials: list[Any] = [None] * world
        dist.all_gather_object(partials, [g.iou_sum.partials for g in groups])

        merged = []
        for gi, row in enumerate(counts):
            total = _Totals(samples=row[0], inter=row[1], union=row[2], hits=list(row[3:]))
            for per_rank in partials:
                total.iou_sum.merge(ExactSum(per_rank[gi]))
            merged.append(total)
        out = MetricAccumulator()
        out._all = merged[0]
        out._by_type = {k: t for k, t in zip(keys, merged[1:]) if t.samples}
        return out


def percent(summary: dict[str, Any]) -> dict[str, float]:
    """The metric values of a summary in percent (``METRIC_KEYS`` only)."""
    return {k: 100.0 * float(summary[k]) for k in METRIC_KEYS}
