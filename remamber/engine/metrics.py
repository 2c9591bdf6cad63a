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

Generalized RIS (GRES; gRefCOCO, where a sentence names zero, one or several objects), as
ReLA's ``refer_evaluation.py`` computes it, with "predicted empty" = the predicted mask has no
pixel (the mask every inference path makes, so a presence head that empties it counts):

* the classic metrics above count the *target* samples only (no-target samples have no IoU);
* ``gIoU`` = mean per-sample IoU over *all* samples, a no-target sample scoring 1 when
  predicted empty and 0 otherwise;
* ``cIoU`` = cumulative I / cumulative U over all samples: a no-target sample adds its
  predicted pixels to U, none when predicted empty;
* ``N-acc`` = share of no-target samples predicted empty; ``T-acc`` = share of target samples
  *not* predicted empty (None where a group has no such samples; ReLA prints 0 then).

A summary carries them only when a no-target or multi-target sample was seen, so classic
datasets summarise exactly as before.

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

from remamber.data.manifest import TARGET_KINDS

#: IoU levels of the precision metrics, in tenths (P@50 ... P@90).
PRECISION_TENTHS = (5, 6, 7, 8, 9)
PRECISION_KEYS = tuple(f"P@{t * 10}" for t in PRECISION_TENTHS)
#: The metric keys of a summary, in display order (all fractions in [0, 1]).
METRIC_KEYS = ("mIoU", "oIoU") + PRECISION_KEYS
#: The GRES metric keys of a generalized summary, in display order (fractions, or None).
GENERALIZED_KEYS = ("gIoU", "cIoU", "N-acc", "T-acc")


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


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class _Totals:
    """Counts of one group of samples (all, one expression type or one target kind).

    ``samples``, ``inter``, ``union``, ``hits`` and ``iou_sum`` count target samples only; the
    four GRES outcome counts are ReLA's TP/FN (no-target samples predicted empty / not) and
    TN/FP (target samples predicted not empty / empty); ``stray`` sums the predicted pixels of
    no-target samples predicted not empty (their U).
    """

    samples: int = 0
    inter: int = 0
    union: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(PRECISION_TENTHS))
    none_empty: int = 0
    none_filled: int = 0
    target_filled: int = 0
    target_empty: int = 0
    stray: int = 0
    iou_sum: ExactSum = field(default_factory=ExactSum)

    @property
    def no_target(self) -> int:
        return self.none_empty + self.none_filled

    def add(self, inter: int, union: int, no_target: bool, pred_empty: bool | None) -> None:
        if no_target:
            if pred_empty:
                self.none_empty += 1
            else:
                self.none_filled += 1
                self.stray += union
            return
        self.samples += 1
        self.inter += inter
        self.union += union
        self.hits = [h + x for h, x in zip(self.hits, precision_hits(inter, union))]
        self.iou_sum.add(iou(inter, union))
        if pred_empty is not None:
            self.target_empty += int(pred_empty)
            self.target_filled += int(not pred_empty)

    def merge(self, other: _Totals) -> None:
        self._set_counts([a + b for a, b in zip(self.counts(), other.counts())])
        self.iou_sum.merge(other.iou_sum)

    def counts(self) -> list[int]:
        """Every integer count, as one row (what :meth:`MetricAccumulator.reduce` sums)."""
        tail = [self.none_empty, self.none_filled, self.target_filled, self.target_empty, self.stray]
        return [self.samples, self.inter, self.union, *self.hits, *tail]

    def _set_counts(self, row: list[int]) -> None:
        self.samples, self.inter, self.union, self.hits = row[0], row[1], row[2], list(row[3:-5])
        self.none_empty, self.none_filled, self.target_filled, self.target_empty, self.stray = row[-5:]

    @classmethod
    def from_counts(cls, row: list[int]) -> _Totals:
        """The totals of a :meth:`counts` row (with an empty IoU sum)."""
        out = cls()
        out._set_counts(row)
        return out

    def summary(self, generalized: bool = False) -> dict[str, Any]:
        n = self.samples
        if generalized and not n:  # no target sample: the classic metrics are undefined
            out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
        else:
            out = {"mIoU": self.iou_sum.value / n if n else 0.0, "oIoU": self.inter / self.union if self.union else 0.0}
            out.update((key, h / n if n else 0.0) for key, h in zip(PRECISION_KEYS, self.hits))
        out["I"] = self.inter
        out["U"] = self.union
        if not generalized:
            return {"samples": n, **out}
        total = n + self.no_target
        cumulative_union = self.union + self.stray
        return {
            "samples": total,
            "target_samples": n,
            "no_target_samples": self.no_target,
            **out,
            # a no-target sample predicted empty scores exactly 1: added to the exact IoU sum
            "gIoU": math.fsum([*self.iou_sum.partials, float(self.none_empty)]) / total if total else None,
            "cIoU": self.inter / cumulative_union if cumulative_union else 0.0,
            "N-acc": _share(self.none_empty, self.no_target),
            "T-acc": _share(self.target_filled, self.target_filled + self.target_empty),
        }


class MetricAccumulator:
    """Accumulates per-sample ``(I, U)``; summarises as mIoU, oIoU and P@50..P@90, plus the GRES
    metrics (gIoU, cIoU, N-acc, T-acc) once a no-target or multi-target sample was added.

    ``add(I, U, expr_type, kind=..., pred_empty=...)`` adds one sample (``expr_type`` also
    counts it in that type's group, ``kind`` in that target kind's), ``merge(other)`` adds
    another accumulator, ``reduce()`` sums over the processes of a torch.distributed group,
    ``summary()`` gives the metrics as fractions in [0, 1].
    """

    def __init__(self) -> None:
        self._all = _Totals()
        self._by_type: dict[str, _Totals] = {}
        self._by_kind: dict[str, _Totals] = {}

    @property
    def samples(self) -> int:
        return self._all.samples + self._all.no_target

    @property
    def types(self) -> list[str]:
        """Expression types seen, sorted."""
        return sorted(self._by_type)

    @property
    def generalized(self) -> bool:
        """Whether a no-target or multi-target sample was added (the summary has the GRES metrics)."""
        return self._all.no_target > 0 or "multi" in self._by_kind

    def add(
        self,
        inter: int,
        union: int,
        expr_type: str | None = None,
        kind: str = "single",
        pred_empty: bool | None = None,
    ) -> float:
        """Add one sample; returns its IoU (for a no-target sample: 1 if predicted empty, else 0).

        ``kind``: ``none``, ``single`` or ``multi`` (``remamber.data.manifest.target_kind``).
        ``pred_empty``: whether the predicted mask has no pixel (what N-acc and T-acc count); for
        a no-target sample it defaults to ``U == 0`` (its ground truth is empty), a target sample
        without it is left out of T-acc.
        """
        inter, union = int(inter), int(union)
        if inter < 0 or union < inter:
            raise ValueError(f"need 0 <= I <= U, got I={inter}, U={union}")
        if kind not in TARGET_KINDS:
            raise ValueError(f"kind {kind!r}: choose from {', '.join(TARGET_KINDS)}")
        if pred_empty and inter:
            raise ValueError(f"an empty prediction cannot overlap the ground truth (I={inter})")
        no_target = kind == "none"
        if no_target and pred_empty is None:
            pred_empty = union == 0
        groups = [self._all, self._by_kind.setdefault(kind, _Totals())]
        if expr_type is not None:
            groups.append(self._by_type.setdefault(str(expr_type), _Totals()))
        for group in groups:
            group.add(inter, union, no_target, pred_empty)
        if no_target:
            return float(bool(pred_empty))
        return iou(inter, union)

    def add_masks(self, pred: Any, gt: Any, expr_type: str | None = None, kind: str = "single") -> tuple[int, int]:
        """Add one sample from its predicted and ground-truth masks; returns ``(I, U)``."""
        inter, union = sample_iou(pred, gt)
        self.add(inter, union, expr_type, kind, pred_empty=not bool(_as_bool(pred).any()))
        return inter, union

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add every sample of ``other`` (in place); returns self."""
        self._all.merge(other._all)
        for mine, theirs in ((self._by_type, other._by_type), (self._by_kind, other._by_kind)):
            for key, totals in theirs.items():
                mine.setdefault(key, _Totals()).merge(totals)
        return self

    def copy(self) -> MetricAccumulator:
        return MetricAccumulator().merge(self)

    def summary(self) -> dict[str, Any]:
        """``{"samples", "mIoU", "oIoU", "P@50", ..., "P@90", "I", "U"}`` plus ``"by_type"``
        (``{type: same keys}``) when any sample had an expression type.

        Generalized (a no-target or multi-target sample seen): ``samples`` counts every
        sample, ``target_samples`` and ``no_target_samples`` split it, the classic keys are
        over the target samples (None without any), ``gIoU``, ``cIoU``, ``N-acc``, ``T-acc`` are
        added, and ``"by_kind"`` (``{kind: same keys}``, kinds in ``TARGET_KINDS`` order).
        """
        generalized = self.generalized
        out = self._all.summary(generalized)
        if generalized:
            out["by_kind"] = {k: self._by_kind[k].summary(True) for k in TARGET_KINDS if k in self._by_kind}
        if self._by_type:
            out["by_type"] = {k: self._by_type[k].summary(generalized) for k in sorted(self._by_type)}
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
        dist.all_gather_object(gathered, (sorted(self._by_type), sorted(self._by_kind)))
        type_keys = sorted({k for types, _ in gathered for k in types})
        kind_keys = sorted({k for _, kinds in gathered for k in kinds})
        groups = (
            [self._all]
            + [self._by_type.get(k, _Totals()) for k in type_keys]
            + [self._by_kind.get(k, _Totals()) for k in kind_keys]
        )
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        counts = torch.tensor([g.counts() for g in groups], dtype=torch.int64, device=device)
        counts = distributed.all_reduce_sum(counts).cpu().tolist()
        partials: list[Any] = [None] * world
        dist.all_gather_object(partials, [g.iou_sum.partials for g in groups])

        merged = []
        for gi, row in enumerate(counts):
            total = _Totals.from_counts(row)
            for per_rank in partials:
                total.iou_sum.merge(ExactSum(per_rank[gi]))
            merged.append(total)
        out = MetricAccumulator()
        out._all = merged[0]
        seen = [t.samples or t.no_target for t in merged]
        n_types = len(type_keys)
        out._by_type = {k: t for k, t, s in zip(type_keys, merged[1:], seen[1:]) if s}
        out._by_kind = {k: t for k, t, s in zip(kind_keys, merged[1 + n_types :], seen[1 + n_types :]) if s}
        return out


def percent(summary: dict[str, Any]) -> dict[str, float]:
    """The metric values of a summary in percent (``METRIC_KEYS`` only)."""
    return {k: 100.0 * float(summary[k]) for k in METRIC_KEYS}
