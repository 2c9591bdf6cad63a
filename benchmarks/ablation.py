"""Ablation of the fusion, scan-order, interaction and backbone variants under identical conditions.

Every variant is the `tiny` preset with one setting changed, trained by the real CLI on the same
`prepare shapes` data with the same seed, steps and settings, then evaluated by `remamber eval`
on the val and test splits; parameters and CPU latency of all variants are measured in one
process at the end.  Writes benchmarks/results/ablation.json and the table
benchmarks/results/ablation.md (the paper's Table 1 columns: mIoU, oIoU, P@50, P@70 per split).

    python benchmarks/ablation.py                                  # the recorded run (2 CPU cores)
    python benchmarks/ablation.py --groups fusion --seeds 1,2      # add seeds to a group
    python benchmarks/ablation.py --steps 2 --image-size 64 --runs /tmp/abl --out /tmp/abl.json  # smoke run

Runs already in the results file (same variant, seed and settings) are not repeated, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# name -> (group, the flags that make the variant); the default model appears in every group.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "twister": ("fusion", {}),
    "attention": ("fusion", {"fusion": "attention"}),
    "in-context": ("fusion", {"fusion": "in-context"}),
    "film": ("fusion", {"fusion": "film"}),
    "hmnet": ("fusion", {"fusion": "hmnet"}),
    "spatial-channel": ("scan", {"scan": "spatial-channel"}),
    "parallel": ("scan", {"scan": "parallel"}),
    "channel": ("scan", {"scan": "channel"}),
    "spatial": ("scan", {"scan": "spatial"}),
    "global": ("interaction", {"interaction": "global"}),
    "local": ("interaction", {"interaction": "local"}),
    "mambaout": ("backbone", {"backbone": "mambaout"}),
    "mambavision": ("backbone", {"backbone": "mambavision"}),
}
GROUP_TITLES = {
    "fusion": "Fusion (paper Table 1; hmnet from HMNet)",
    "scan": "Twister scan order (paper Table 3)",
    "interaction": "Twister text interactions (paper Table 4)",
    "backbone": "Backbone blocks (MambaOut, MambaVision)",
}
DEFAULT_NAMES = {"fusion": "twister", "scan": "channel-spatial", "interaction": "both", "backbone": "vss"}
SPLITS = ("val", "test")
METRICS = ("mIoU", "oIoU", "P@50", "P@70")


def remamber(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remamber", *args], capture_output=True, text=True, cwd=REPO)


def prepare_data(data: Path) -> list[str]:
    cmd = [
        "prepare",
        "shapes",
        "--out",
        str(data),
        "--train",
        "2000",
        "--val",
        "150",
        "--test",
        "150",
        "--size",
        "128",
        "--seed",
        "0",
        "--no-target-share",  # single-target sentences, as recorded
        "0",
        "--multi-target-share",
        "0",
    ]
    if not (data / "dataset.json").exists():
        res = remamber(*cmd)
        if res.returncode:
            sys.exit(f"prepare failed: {res.stderr.strip()}")
    return cmd


def train_command(args: argparse.Namespace, flags: dict[str, str], seed: int, out: Path) -> list[str]:
    cmd = [
        "train",
        "--data",
        str(args.data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--image-size",
        str(args.image_size),
        "--epochs",
        "100",
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--min-lr",
        "1e-5",
        "--warmup-steps",
        str(min(50, args.steps // 10)),
        "--clip-grad",
        "1.0",
        "--val-split",
        "",
        "--log-every",
        "25",
        "--seed",
        str(seed),
    ]
    for key, value in flags.items():
        cmd += [f"--{key}", value]
    return cmd


def run_variant(args: argparse.Namespace, name: str, flags: dict[str, str], seed: int) -> dict:
    out = Path(args.runs) / f"{name}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)  # the script's own run folder: a rerun trains it afresh
    cmd = train_command(args, flags, seed, out)
    start = time.time()
    res = remamber(*cmd)
    if res.returncode:
        raise RuntimeError(f"training {name} failed: {res.stderr.strip().splitlines()[-1:]}")
    minutes = (time.time() - start) / 60
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in log if "loss" in r]
    record = {
        "variant": name,
        "seed": seed,
        "train_command": "remamber " + " ".join(cmd),
        "train_minutes": round(minutes, 2),
        "final_loss": losses[-1] if losses else None,
        "splits": {},
    }
    for split in SPLITS:
        ev = remamber(
            "eval", "--weights", str(out / "checkpoints" / "last"), "--data", str(args.data), "--split", split, "--json"
        )
        if ev.returncode:
            raise RuntimeError(f"eval of {name} on {split} failed: {ev.stderr.strip()}")
        result = json.loads(ev.stdout)
        record["splits"][split] = {k: result[k] for k in ("samples", *METRICS)}
    return record


def measure_models(args: argparse.Namespace, trained: dict[str, int]) -> dict[str, dict]:
    """Parameters and single-image CPU latency of every trained variant (``name -> seed`` of the
    run to load), all in this one process."""
    import torch

    from remamber.hub.folders import load_pretrained

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    names = list(trained)
    for name in [names[0], *names]:  # the first model twice: its first pass warms up the process
        model = load_pretrained(Path(args.runs) / f"{name}-s{trained[name]}" / "checkpoints" / "last").eval().fuse()
        ids, mask, _ = model.tokenize(["the second green square from the left"])
        times = {}
        for size in (args.image_size, 256):
            image = torch.randn(1, 3, size, size)
            with torch.inference_mode():
                for _ in range(2):
                    model(image, ids, mask)
                runs = []
                for _ in range(args.latency_runs):
                    t = time.perf_counter()
                    model(image, ids, mask)
                    runs.append(time.perf_counter() - t)
            times[str(size)] = round(statistics.median(runs), 4)
        out[name] = {
            "params_M": round(model.parameter_counts()["total"] / 1e6, 3),
            "fusion_params_M": round(model.parameter_counts()["fusion"] / 1e6, 3),
            "latency_s": times,
        }
    return out


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per variant: the mean over seeds of every metric per split, and the seeds' spread of oIoU."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["variant"], []).append(r)
    out = {}
    for name, rs in by_name.items():
        mean = {s: {m: statistics.fmean(r["splits"][s][m] for r in rs) for m in METRICS} for s in SPLITS}
        spread = {
            s: (max(r["splits"][s]["oIoU"] for r in rs) - min(r["splits"][s]["oIoU"] for r in rs)) for s in SPLITS
        }
        out[name] = {"seeds": sorted(r["seed"] for r in rs), "mean": mean, "oIoU_range_over_seeds": spread}
    return out


def table(summary: dict[str, dict], models: dict[str, dict], image_size: int) -> str:
    """The Markdown tables, one per group, in percent (means over seeds)."""
    lines = []
    head = " | ".join(f"{s} {m}" for s in SPLITS for m in METRICS)
    for group, title in GROUP_TITLES.items():
        names = ["twister"] + [n for n, (g, _) in VARIANTS.items() if g == group and n != "twister"]
        names = [n for n in names if n in summary]
        if len(names) < 2:
            continue
        lines += [
            f"**{title}**",
            "",
            f"| variant | seeds | {head} | test oIoU range over seeds | params (M) | CPU s @{image_size} | CPU s @256 |",
            "|---" * (6 + 2 * len(METRICS)) + "|",
        ]
        for n in names:
            s = summary[n]
            cells = " | ".join(f"{100 * s['mean'][sp][m]:.1f}" for sp in SPLITS for m in METRICS)
            label = DEFAULT_NAMES[group] + " (default)" if n == "twister" else n
            mm = models.get(n, {})
            lat = mm.get("latency_s", {})
            spread = f"{100 * s['oIoU_range_over_seeds']['test']:.1f}" if len(s["seeds"]) > 1 else "-"
            lines.append(
                f"| {label} | {len(s['seeds'])} | {cells} | {spread} | {mm.get('params_M', '')} | {lat.get(str(image_size), '')} | {lat.get('256', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "runs" / "ablation" / "shapes")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "ablation")
    p.add_argument("--out", type=Path, default=RESULTS / "ablation.json")
    p.add_argument("--groups", default="fusion,scan,interaction,backbone")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latency-runs", type=int, default=5)
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    groups = args.groups.split(",")
    settings = {k: getattr(args, k) for k in ("steps", "image_size", "batch_size", "lr")}

    prepare_cmd = prepare_data(args.data)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = [r for r in previous.get("runs", []) if previous.get("settings") == settings]
    done = {(r["variant"], r["seed"]) for r in runs}
    names = [n for n, (g, _) in VARIANTS.items() if g in groups or n == "twister"]
    for seed in args.seeds:
        for name in names:
            if (name, seed) in done:
                continue
            print(f"{name} seed {seed} ...", flush=True)
            rec = run_variant(args, name, VARIANTS[name][1], seed)
            runs.append(rec)
            done.add((name, seed))
            print(f"  {rec['train_minutes']} min; test oIoU {100 * rec['splits']['test']['oIoU']:.1f}", flush=True)
            _write(args.out, settings, prepare_cmd, runs, previous.get("models", {}))
    trained = {
        n: min(r["seed"] for r in runs if r["variant"] == n) for n in VARIANTS if any(r["variant"] == n for r in runs)
    }
    models = measure_models(args, trained)
    result = _write(args.out, settings, prepare_cmd, runs, models)
    md = table(result["summary"], models, args.image_size)
    from remamber.utils.io import atomic_open

    with atomic_open(args.out.with_suffix(".md"), "w") as f:
        f.write(md + "\n")
    print(md)


def _write(out: Path, settings: dict, prepare_cmd: list[str], runs: list[dict], models: dict) -> dict:

    from remamber.utils.io import write_json

    result = {
        "benchmark": "ablation",
        "settings": settings,
        "prepare_command": "remamber " + " ".join(prepare_cmd),
        "machine": machine(),
        "runs": runs,
        "summary": summarize(runs),
        "models": models,
    }
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
