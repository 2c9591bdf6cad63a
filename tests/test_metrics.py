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


# --------------------------------------------------------------------------- generalized (GRES)

# (I, U, kind, pred_empty) of five samples, worked out by hand below
GRES_SAMPLES = [
    (3, 4, "single", False),  # IoU 0.75
    (2, 8, "multi", False),  # IoU 0.25
    (0, 5, "single", True),  # a target predicted empty: IoU 0, a T-acc miss
    (0, 0, "none", True),  # no target, predicted empty: scores 1, an N-acc hit
    (0, 6, "none", False),  # no target, 6 pixels predicted: scores 0, adds 6 to cU
]


def _gres_accumulator(samples=GRES_SAMPLES) -> MetricAccumulator:
    acc = MetricAccumulator()
    for inter, union, kind, empty in samples:
        acc.add(inter, union, None, kind, pred_empty=empty)
    return acc


def test_gres_metrics_by_hand():
    acc = _gres_accumulator()
    assert acc.generalized and acc.samples == 5
    s = acc.summary()
    assert (s["samples"], s["target_samples"], s["no_target_samples"]) == (5, 3, 2)
    # classic metrics: the three target samples only
    assert s["mIoU"] == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    assert (s["I"], s["U"]) == (5, 17) and s["oIoU"] == pytest.approx(5 / 17)
    assert [s[k] for k in ("P@50", "P@70", "P@80")] == pytest.approx([1 / 3, 1 / 3, 0.0])
    # gIoU over all five: the right empty prediction counts 1, the wrong one 0
    assert s["gIoU"] == pytest.approx((0.75 + 0.25 + 0.0 + 1.0 + 0.0) / 5)
    # cIoU: the no-target sample's 6 stray pixels join the cumulative union
    assert s["cIoU"] == pytest.approx(5 / (17 + 6))
    assert s["N-acc"] == 0.5 and s["T-acc"] == pytest.approx(2 / 3)

    kinds = s["by_kind"]
    assert list(kinds) == ["none", "single", "multi"]
    none = kinds["none"]
    assert (none["samples"], none["target_samples"], none["no_target_samples"]) == (2, 0, 2)
    assert none["mIoU"] is None and none["oIoU"] is None and none["P@50"] is None and none["T-acc"] is None
    assert (none["gIoU"], none["cIoU"], none["N-acc"]) == (0.5, 0.0, 0.5)
    single = kinds["single"]
    assert single["samples"] == 2 and single["N-acc"] is None and single["T-acc"] == 0.5
    assert single["mIoU"] == single["gIoU"] == pytest.approx(0.375)
    assert single["oIoU"] == single["cIoU"] == pytest.approx(3 / 9)
    multi = kinds["multi"]
    assert (multi["mIoU"], multi["cIoU"], multi["T-acc"], multi["N-acc"]) == (0.25, 0.25, 1.0, None)


def test_gres_per_sample_score_and_masks():
    acc = MetricAccumulator()
    assert acc.add(0, 0, kind="none", pred_empty=True) == 1.0
    assert acc.add(0, 3, kind="none") == 0.0  # pred_empty defaults to U == 0 for no-target samples
    assert acc.add(0, 0, kind="none") == 1.0
    assert acc.add(1, 4, kind="multi", pred_empty=False) == 0.25
    assert acc.summary()["N-acc"] == pytest.approx(2 / 3)

    # from masks: "predicted empty" is a mask without any pixel
    gt_two = _mask((4, 4), (0, 1, 0, 2), (3, 4, 3, 4))  # two objects: 3 px
    masks = MetricAccumulator()
    assert masks.add_masks(np.zeros((4, 4)), np.zeros((4, 4)), kind="none") == (0, 0)
    assert masks.add_masks(_mask((4, 4), (2, 3, 2, 3)), np.zeros((4, 4)), kind="none") == (0, 1)
    assert masks.add_masks(_mask((4, 4), (0, 1, 0, 1)), gt_two, kind="multi") == (1, 3)
    assert masks.add_masks(np.zeros((4, 4)), gt_two, kind="multi") == (0, 3)
    s = masks.summary()
    assert (s["N-acc"], s["T-acc"]) == (0.5, 0.5)
    assert s["gIoU"] == pytest.approx((1 + 0 + 1 / 3 + 0) / 4)
    assert s["cIoU"] == pytest.approx(1 / (0 + 1 + 3 + 3))


def test_classic_samples_keep_the_classic_summary():
    """Single-target samples only (a REFER split): no GRES keys, as before; a kind without
    no-target or multi-target samples changes nothing."""
    plain, tagged = MetricAccumulator(), MetricAccumulator()
    for inter, union, t in [(3, 4, "a"), (0, 5, "b"), (2, 2, "a")]:
        plain.add(inter, union, t)
        tagged.add(inter, union, t, "single", pred_empty=inter == 0 and union == 5)
    assert not tagged.generalized
    assert tagged.summary() == plain.summary()
    assert not set(tagged.summary()) & {"gIoU", "cIoU", "N-acc", "T-acc", "by_kind", "target_samples"}


def test_gres_bad_samples_are_errors():
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="kind"):
        acc.add(1, 2, kind="several")
    with pytest.raises(ValueError, match="empty prediction"):
        acc.add(1, 2, kind="single", pred_empty=True)


def _gres_reference(samples):
    """GRES metrics restated from ReLA's ReferEvaluator.evaluate, sample by sample as it loops
    (a no-target sample's I is 0; U counts only when the prediction is not empty; a target
    sample predicted empty has I = 0)."""
    acc_i = acc_u = 0
    acc_iou = 0.0
    tp = fn = tn = fp = 0
    pr = {0.7: 0, 0.8: 0, 0.9: 0}
    targets = 0
    for inter, union, kind, pred_nt in samples:
        if kind == "none":
            if pred_nt:
                tp, acc_iou = tp + 1, acc_iou + 1
            else:
                fn, acc_u = fn + 1, acc_u + union
            continue
        if pred_nt:
            fp, inter = fp + 1, 0
        else:
            tn += 1
        this = inter / union if union else 0.0
        acc_iou, acc_i, acc_u, targets = acc_iou + this, acc_i + inter, acc_u + union, targets + 1
        for t in pr:
            pr[t] += this >= t
    return {
        "gIoU": acc_iou / len(samples),
        "cIoU": acc_i / acc_u,
        "T-acc": tn / (tn + fp),
        "N-acc": tp / (tp + fn),
        **{f"P@{round(t * 100)}": pr[t] / targets for t in pr},
    }


def test_gres_matches_the_reference_rules_on_random_samples():
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(300):
        kind = rng.choice(["none", "single", "multi"], p=[0.3, 0.5, 0.2])
        empty = bool(rng.random() < 0.3)
        if kind == "none":
            samples.append((0, 0 if empty else int(rng.integers(1, 500)), kind, empty))
        else:
            gt = int(rng.integers(1, 500))
            inter = 0 if empty else int(rng.integers(0, gt + 1))
            union = gt if empty else gt + int(rng.integers(0 if inter else 1, 500))
            samples.append((inter, union, kind, empty))
    got = _gres_accumulator(samples).summary()
    for key, want in _gres_reference(samples).items():
        assert got[key] == pytest.approx(want, rel=1e-12), key
    # and order-free: shards merged in another order give the same summary, bit for bit
    shards = [_gres_accumulator(samples[k::3]) for k in range(3)]
    merged = MetricAccumulator().merge(shards[1]).merge(shards[2]).merge(shards[0])
    assert merged.summary() == got


def _reduce_worker(rank: int, world: int, init_file: str, samples, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        acc = _gres_accumulator(samples[rank::world])
        if rank == 0:
            acc.add(1, 2, "only-on-rank-0", "single", pred_empty=False)
        queue.put((rank, acc.reduce().summary()))
    finally:
        dist.destroy_process_group()


def test_reduce_over_processes_keeps_gres_counts(tmp_path):
    """Two gloo processes with different kinds and types in their shards: the reduced summary
    is the single-process one (the GRES counts travel with the classic ones)."""
    import torch.multiprocessing as mp

    samples = GRES_SAMPLES * 3
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), samples, queue), nprocs=2, join=True)
    got = dict(queue.get() for _ in range(2))
    want = _gres_accumulator(samples)
    want.add(1, 2, "only-on-rank-0", "single", pred_empty=False)
    assert got[0] == got[1] == want.summary()
    assert got[0]["by_type"]["only-on-rank-0"]["samples"] == 1
