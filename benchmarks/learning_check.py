"""Learning check: `tiny` trained on synthetic shapes on a CPU within a time budget must clearly
beat trivial baselines (whole image; largest object; largest object of the colour the sentence
names), evaluated on the test split. Writes benchmarks/results/learning_check.json.

    python benchmarks/learning_check.py                       # the recorded run (about 30 min, 2 cores)
    python benchmarks/learning_check.py --minutes 2 --train-images 40 --out /tmp/lc.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from common import machine

REPO = Path(__file__).resolve().parents[1]
CLEAR_MARGIN = 0.05  # "clearly beats": 5 points over the best baseline on each of mIoU, oIoU and P@50
COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
    "cyan",
)


def objects_by_image(data: Path) -> dict[int, list[dict]]:
    """Every drawn shape of every image, from the REFER instances the generator wrote."""
    inst = json.loads((data / "refer" / "shapes" / "instances.json").read_text())
    out: dict[int, list[dict]] = {}
    for ann in inst["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann)
    return out


def baseline_masks(record: dict, objects: list[dict]) -> dict[str, np.ndarray]:
    """The trivial predictions for one sample."""
    from remamber.data.masks import decode_rle, segmentation_to_rle

    h, w = record["height"], record["width"]
    masks = [decode_rle(segmentation_to_rle(o["segmentation"], h, w)).astype(bool) for o in objects]
    largest = max(range(len(objects)), key=lambda i: objects[i]["area"])
    words = re.findall(r"[a-z]+", record["sentence"].lower())
    named = next((c for c in words if c in COLOURS), None)
    coloured = [i for i, o in enumerate(objects) if named and o.get("attributes", {}).get("color") == named]
    by_colour = max(coloured, key=lambda i: objects[i]["area"]) if coloured else largest
    return {
        "whole image": np.ones((h, w), bool),
        "largest object": masks[largest],
        "named colour (largest)": masks[by_colour],
    }


def evaluate_baselines(data: Path, split: str) -> dict[str, dict]:
    from remamber.data.manifest import PreparedDataset
    from remamber.data.masks import decode_rle
    from remamber.engine.metrics import MetricAccumulator

    objects = objects_by_image(data)
    accs: dict[str, MetricAccumulator] = {}
    for rec in PreparedDataset.open(data).records(split):
        gt = decode_rle(rec["mask"]).astype(bool)
        for name, pred in baseline_masks(rec, objects[rec["image_id"]]).items():
            accs.setdefault(name, MetricAccumulator()).add_masks(pred, gt, rec.get("expr_type"))
    return {name: acc.summary() for name, acc in accs.items()}


def curve(run: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return {
        "loss": [[r["step"], round(r["loss"], 5)] for r in rows if "loss" in r],
        "val_oIoU": [[r["step"], round(r["val"]["oIoU"], 5)] for r in rows if r.get("event") == "val"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("runs/learning-check/shapes"))
    ap.add_argument("--run", type=Path, default=Path("runs/learning-check/run"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "learning_check.json")
    ap.add_argument("--minutes", type=float, default=28.0, help="training time budget")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--max-steps", type=int, default=2800)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--text-lr-scale", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from remamber.data.dataset import ReferringDataset
    from remamber.data.shapes import prepare_shapes
    from remamber.engine.allocator import keep_freed_memory
    from remamber.engine.evaluate import evaluate
    from remamber.engine.train import TrainConfig, Trainer
    from remamber.hub.folders import load_pretrained

    counts = {"train": args.train_images, "val": 60, "test": 100}
    # single-target sentences, as recorded (the defaults add phrases naming no or several objects)
    prepare_shapes(args.data, counts=counts, seed=args.seed, no_target_share=0, multi_target_share=0)
    cfg = TrainConfig(
        data=str(args.data),
        out=str(args.run),
        preset="tiny",
        image_size=args.image_size,
        text_lr=args.lr * args.text_lr_scale,
        epochs=1000,
        max_steps=args.max_steps,
        time_limit=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 100,
        warmup_steps=50,
        clip_grad=1.0,
        val_every=200,
        val_limit=200,
        ckpt_every=200,
        log_every=20,
        seed=args.seed,
    )
    start = time.perf_counter()
    trainer = Trainer(cfg)
    keep_freed_memory()  # as `remamber train` on a CPU
    result = trainer.fit()
    train_minutes = (time.perf_counter() - start) / 60
    model = load_pretrained(result.last)
    test = ReferringDataset(
        args.data, "test", model.config.image_size, mean=model.config.pixel_mean, std=model.config.pixel_std
    )
    ours = evaluate(model, test, progress=False).summary
    baselines = evaluate_baselines(args.data, "test")

    rows = {"remamber tiny": ours, **baselines}
    print(f"\ntest split, {ours['samples']} samples; tiny trained {result.steps} steps in {train_minutes:.1f} min")
    print(f"{'method':<26}{'oIoU':>8}{'mIoU':>8}{'P@50':>8}{'P@70':>8}")
    for name, s in rows.items():
        print(f"{name:<26}{100 * s['oIoU']:8.2f}{100 * s['mIoU']:8.2f}{100 * s['P@50']:8.2f}{100 * s['P@70']:8.2f}")
    cur = curve(args.run)
    print("training curve (step, loss):", cur["loss"][:: max(1, len(cur["loss"]) // 12)])
    print("validation oIoU (step, oIoU):", cur["val_oIoU"])
    margins = {k: round(ours[k] - max(s[k] for s in baselines.values()), 5) for k in ("mIoU", "oIoU", "P@50")}
    print("margin over the best baseline (points):", {k: round(100 * v, 2) for k, v in margins.items()})
    record = {
        "command": "python benchmarks/learning_check.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "train": {
            "steps": result.steps,
            "minutes": round(train_minutes, 2),
            "config": {k: v for k, v in vars(cfg).items()},
        },
        "test": {name: {k: v for k, v in s.items()} for name, s in rows.items()},
        "curve": cur,
        "margins": margins,
        "beats_baselines": all(v >= CLEAR_MARGIN for v in margins.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from remamber.utils.io import write_json

    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
