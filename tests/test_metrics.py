"""Metrics on hand-computed cases (remamber.engine.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from remamber.engine.metrics import (
    METRIC_KEYS,
    ExactSum,
    MetricAccumulator,
    binarize,
    iou,
    precision_hits,
    sample_iou,
)


def _mask(shape, *boxes):
    m = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_sample_iou_overlap_numpy_and_torch():
    pred = _mask((4, 4), (0, 2, 0, 2))  # 4 px
    gt = _mask((4, 4), (0, 2, 1, 3))  # 4 px, overlap 2 px
    assert sample_iou(pred, gt) == (2, 6)
    assert sample_iou(torch.from_numpy(pred), torch.from_numpy(gt)) == (2, 6)
    assert sample_iou(pred.astype(np.uint8) * 255, gt.astype(np.uint8)) == (2, 6)  # any non-zero is foreground
    assert iou(2, 6) == pytest.approx(1 / 3)


def test_empty_prediction_empty_gt_and_both_empty():
    gt = _mask((3, 3), (0, 1, 0, 3))
    empty = np.zeros((3, 3), dtype=bool)
    assert sample_iou(empty, gt) == (0, 3)  # empty prediction: IoU 0
    assert sample_iou(gt, empty) == (0, 3)  # empty ground truth: every predicted pixel is wrong
    assert sample_iou(empty, empty) == (0, 0)  # both empty: U = 0 ...
    assert iou(0, 0) == 0.0  # ... and IoU 0 by definition
    acc = MetricAccumulator()
    acc.add(0, 0)
    s = acc.summary()
    assert s["samples"] == 1 and s["mIoU"] == 0.0 and s["oIoU"] == 0.0 and s["P@50"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        sample_iou(np.zeros((2, 2)), np.zeros((2, 3)))


def test_miou_and_oiou_differ():
    # a big object predicted well, a small one missed:
    # sample 1: I = 90, U = 100 (IoU 0.9); sample 2: I = 0, U = 10 (IoU 0)
    acc = MetricAccumulator()
    acc.add(90, 100)
    acc.add(0, 10)
    s = acc.summary()
    assert s["samples"] == 2
    assert s["mIoU"] == pytest.approx((0.9 + 0.0) / 2)  # 0.45
    assert s["oIoU"] == pytest.approx(90 / 110)  # 0.818...
    assert s["mIoU"] != pytest.approx(s["oIoU"])
    assert (s["I"], s["U"]) == (90, 110)
    assert [s[k] for k in ("P@50", "P@60", "P@70", "P@80", "P@90")] == [0.5] * 5


def test_precision_uses_greater_or_equal():
    assert precision_hits(1, 2) == [1, 0, 0, 0, 0]  # IoU exactly 0.5 counts for P@50
    assert precision_hits(3, 5) == [1, 1, 0, 0, 0]  # exactly 0.6 for P@60 (no float rounding)
    assert precision_hits(7, 10) == [1, 1, 1, 0, 0]
    assert precision_hits(9, 10) == [1, 1, 1, 1, 1]
    assert precision_hits(899, 1000) == [1, 1, 1, 1, 0]
    assert precision_hits(0, 0) == [0] * 5
    acc = MetricAccumulator()
    for inter, union in [(1, 2), (49, 100), (4, 5), (1, 1)]:
        acc.add(inter, union)
    s = acc.summary()
    assert s["P@50"] == 0.75 and s["P@60"] == 0.5 and s["P@80"] == 0.5 and s["P@90"] == 0.25
    assert s["mIoU"] == pytest.approx((0.5 + 0.49 + 0.8 + 1.0) / 4)


def test_threshold_edge_is_strict():
    logits = torch.tensor([[-1.0, 0.0, 1e-6, 3.0]])  # sigmoid(0) == 0.5 exactly
    assert binarize(logits, 0.5).tolist() == [[False, False, True, True]]
    assert binarize(logits.numpy(), 0.5).tolist() == [[False, False, True, True]]
    t = float(torch.sigmoid(torch.tensor(1.0)))  # a threshold equal to a pixel's probability
    assert not binarize(torch.tensor([1.0]), t).item()  # that pixel is out
    assert binarize(torch.tensor([1.0]), t - 1e-6).item()
    with pytest.raises(ValueError):
        binarize(logits, 1.0)


def test_accumulator_by_type_merge_and_order_independence():
    rng = np.random.default_rng(0)
    samples = [
        (int(u * f), int(u), t)
        for u, f, t in zip(
            rng.integers(1, 5000, 101), rng.random(101), rng.choice(["attribute", "position", "relation"], 101)
        )
    ]
    whole = MetricAccumulator()
    for inter, union, t in samples:
        whole.add(inter, union, t)
    # split in three shards, merged in another order: bit-for-bit the same summary
    shards = [MetricAccumulator() for _ in range(3)]
    for k, (inter, union, t) in enumerate(samples):
        shards[k % 3].add(inter, union, t)
    merged = MetricAccumulator().merge(shards[2]).merge(shards[0]).merge(shards[1])
    assert merged.summary() == whole.summary()
    s = whole.summary()
    assert set(s["by_type"]) == {"attribute", "position", "relation"}
    assert sum(v["samples"] for v in s["by_type"].values()) == s["samples"] == 101
    assert sum(v["I"] for v in s["by_type"].values()) == s["I"]
    for key in METRIC_KEYS:
        assert 0.0 <= s[key] <= 1.0
    assert s["mIoU"] == math.fsum(iou(i, u) for i, u, _ in samples) / 101


def test_no_by_type_without_types_and_empty_summary():
    acc = MetricAccumulator()
    assert acc.summary() == {
        "samples": 0,
        "mIoU": 0.0,
        "oIoU": 0.0,
        "P@50": 0.0,
        "P@60": 0.0,
        "P@70": 0.0,
        "P@80": 0.0,
        "P@90": 0.0,
        "I": 0,
        "U": 0,
    }
    acc.add_masks(np.ones((2, 2)), np.ones((2, 2)))
    assert "by_type" not in acc.summary() and acc.summary()["mIoU"] == 1.0
    with pytest.raises(ValueError):
        acc.add(5, 3)


def test_exact_sum_is_order_free():
    values = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3] * 3
    a, b = ExactSum(values), ExactSum(reversed(values))
    assert a.value == b.value == math.fsum(values)


def test_reduce_without_distributed_is_a_copy():
    acc = MetricAccumulator()
    acc.add(1, 2, "x")
    red = acc.reduce()
    assert red is not acc and red.summary() == acc.summary()
