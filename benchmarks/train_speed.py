"""Training throughput of `tiny` on the CPU (images/s), in one run: as `remamber train` runs it
(fused scan kernel, freed memory kept in the process), with the plain PyTorch scan instead, and
with glibc's default allocator settings instead; plus the share of each step spent in the scan.
Writes benchmarks/results/train_speed.json.

    python benchmarks/train_speed.py            # 96 px batch 16 (the shapes recipe) and 128 px batch 8
    python benchmarks/train_speed.py --quick    # 96 px only, fewer steps

One step = forward, dice + BCE loss, backward and an AdamW update, on random images, masks and
sentences (the speed does not depend on the data). Each backend starts from the same weights;
timings are the median over the timed steps, after warm-up steps (numba compiles on first use).
Every measurement runs in a fresh process (the allocator setting is per process); each config is
measured in two rounds (all configs, then all again) and the faster round kept.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine

from remamber.engine.allocator import keep_freed_memory
from remamber.engine.losses import segmentation_loss
from remamber.engine.train import PARTS, param_groups
from remamber.modeling.presets import build_model, preset_config
from remamber.modeling.text import BASIC_VOCAB
from remamber.ops import scan_cpu
from remamber.ops.selective_scan import scan_backend
from remamber.utils.io import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
# label -> (scan backend, keep freed memory)
CONFIGS = {"release_memory": ("auto", False), "train": ("auto", True), "pytorch_scan": ("torch", True)}
SCAN_EVENTS = ("_FusedScan", "_FusedScanBackward")
ROUNDS = 2  # the faster of two rounds per config


def make_batch(size: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Random images, box masks and sentences."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    masks = torch.zeros(batch, 1, size, size)
    for m in masks:
        y, x = rng.randrange(size // 2), rng.randrange(size // 2)
        m[:, y : y + size // 3, x : x + size // 3] = 1.0
    texts = [" ".join(rng.choices(BASIC_VOCAB, k=rng.randint(3, 8))) for _ in range(batch)]
    return images, masks, texts


def measure(size: int, batch: int, backend: str, keep_memory: bool, steps: int, warmup: int) -> dict:
    """Median seconds per training step of a fresh `tiny` (seed 0) with one scan backend, in a
    process whose allocator is glibc's default unless ``keep_memory``."""
    if keep_memory and not keep_freed_memory():
        raise SystemExit(
            "freed memory cannot be kept here (not glibc, or REMAMBER_KEEP_FREED_MEMORY=0); this benchmark needs it"
        )
    torch.manual_seed(0)
    model = build_model(preset_config("tiny").replace(image_size=size))
    model.train()
    opt = torch.optim.AdamW(param_groups(model, dict.fromkeys(PARTS, 1e-4), 0.01))
    images, masks, texts = make_batch(size, batch, seed=1)
    ids, attn, _ = model.tokenize(texts)

    def step() -> None:
        loss = segmentation_loss(model(images, ids, attn), masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    with scan_backend(backend):
        for i in range(warmup + steps):
            start = time.perf_counter()
            step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
    events = {e.key: e.cpu_time_total for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    scan = sum(events.get(k, 0.0) for k in SCAN_EVENTS)
    sec = statistics.median(times)
    return {
        "step_s": round(sec, 4),
        "images_per_s": round(batch / sec, 2),
        "scan_share": round(scan / total, 3) if total else None,
    }


def measure_in_subprocess(size: int, batch: int, label: str, steps: int) -> dict:
    """:func:`measure` for one config in a fresh process (the allocator setting is per process)."""
    cmd = [sys.executable, __file__, "--one", str(size), str(batch), label, "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="96 px only, fewer steps")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", nargs=3, metavar=("SIZE", "BATCH", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, batch, label = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(measure(size, batch, *CONFIGS[label], args.steps, warmup=2)))
        return
    cases = [(96, 16)] if args.quick else [(96, 16), (128, 8)]
    steps = 4 if args.quick else args.steps
    rows = []
    for size, batch in cases:
        row = {"image_size": size, "batch_size": batch}
        for _ in range(ROUNDS):  # every config once per round, so no config always runs first
            for label in CONFIGS:
                m = measure_in_subprocess(size, batch, label, steps)
                print(f"{size} px batch {batch} {label:15s} {m}", flush=True)
                if label not in row or m["step_s"] < row[label]["step_s"]:
                    row[label] = m
        row["fused_vs_pytorch_scan"] = round(row["pytorch_scan"]["step_s"] / row["train"]["step_s"], 2)
        row["kept_vs_released_memory"] = round(row["release_memory"]["step_s"] / row["train"]["step_s"], 2)
        rows.append(row)
    write_json(
        args.out,
        {
            "command": "python benchmarks/train_speed.py" + (" --quick" if args.quick else ""),
            "machine": machine(numba_threads=scan_cpu.numba.get_num_threads() if scan_cpu.AVAILABLE else None),
            "what": "tiny, scratch text encoder, random data; forward + loss + backward + AdamW; median of timed steps, faster of 2 rounds",
            "configs": {
                "train": "fused scan, freed memory kept (as remamber train on a CPU)",
                "pytorch_scan": "the plain PyTorch (chunked) scan instead",
                "release_memory": "glibc's default allocator settings instead",
            },
            "scan_share": "fraction of the profiled step's CPU time inside the fused scan's forward and backward",
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
