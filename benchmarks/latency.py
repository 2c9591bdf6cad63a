"""CPU latency and peak memory of one segmentation (one image, one phrase) per preset and
input size, the fitted exponent of time vs image tokens, the attention-conditioning fusion
variant (``PRESET:attention``: cross-attention to the words, then an SS2D, instead of the Mamba
Twister), and CLIPSeg (random weights, from transformers) at the same sizes as the peer a user
would pick instead.
Writes benchmarks/results/latency.json.

    python benchmarks/latency.py            # presets tiny, small, medium, base, base with the attention
                                            # fusion, and CLIPSeg at 256, 480, 640, 1024
    python benchmarks/latency.py --quick    # tiny and CLIPSeg at 256 and 480 only
    python benchmarks/latency.py --models tiny:attention,small:attention,base:attention \
        --out benchmarks/results/latency_attention.json   # the attention fusion at every preset

Each measurement runs in a fresh subprocess (so peak RSS is its own): build the model with
random weights, one warm-up call, then the median of timed calls under inference_mode. The
process keeps freed memory as `remamber segment` and `remamber eval` do on a CPU
(:mod:`remamber.engine.allocator`); ``--allocator default`` measures glibc's defaults instead.

    python benchmarks/latency.py --models base --allocator default --out benchmarks/results/latency_base_glibc_default.json
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import machine

SIZES = (256, 480, 640, 1024)
PRESETS = ("tiny", "small", "medium", "base")
RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"


def _timed(fn, budget_s: float = 20.0, max_runs: int = 5) -> float:
    fn()  # warm-up (numba compile, allocator)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (not times or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def random_inputs(model, size: int) -> tuple:
    """A random image, random token ids of the model's full text length, and their mask."""
    import torch

    T = model.config.max_text_len
    return (
        torch.randn(1, 3, size, size),
        torch.randint(0, model.config.text_config["vocab_size"], (1, T)),
        torch.ones(1, T, dtype=torch.long),
    )


def measure(model_name: str, size: int, allocator: str = "kept") -> dict:
    """One measurement in this process: seconds per call and peak RSS in MiB."""
    import torch

    from remamber.engine.allocator import keep_freed_memory

    if allocator == "kept" and not keep_freed_memory():
        raise SystemExit(
            "freed memory cannot be kept here (not glibc, or REMAMBER_KEEP_FREED_MEMORY=0); use --allocator default"
        )

    torch.manual_seed(0)
    if model_name == "clipseg":
        from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

        model = CLIPSegForImageSegmentation(CLIPSegConfig()).eval()  # CIDAS/clipseg-rd64-refined shapes
        feeds = dict(
            pixel_values=torch.randn(1, 3, size, size),
            input_ids=torch.randint(0, 49407, (1, 20)),
            attention_mask=torch.ones(1, 20, dtype=torch.long),
            interpolate_pos_encoding=True,
        )
        call = lambda: model(**feeds)  # noqa: E731
    else:
        from remamber.modeling.presets import build_model, preset_config

        preset, _, fusion = model_name.partition(":")
        config = preset_config(preset).replace(image_size=size)
        model = build_model(config.replace(fusion=fusion) if fusion else config).eval().fuse()  # as segment runs it
        args = random_inputs(model, size)
        call = lambda: model(*args)  # noqa: E731
    with torch.inference_mode():
        seconds = _timed(call)
    return {
        "model": model_name,
        "size": size,
        "tokens": (size // 4) ** 2,
        "seconds": round(seconds, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def fit_exponent(rows: list[dict]) -> float | None:
    """Least-squares slope of log(seconds) against log(tokens)."""
    if len(rows) < 2:
        return None
    xs = [math.log(r["tokens"]) for r in rows]
    ys = [math.log(r["seconds"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny and CLIPSeg at 256 and 480 only")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of tiny,small,medium,base,clipseg; PRESET:FUSION for a fusion variant (base:attention)",
    )
    parser.add_argument(
        "--allocator",
        choices=("kept", "default"),
        default="kept",
        help="kept: freed memory stays in the process, as remamber segment/eval on a CPU; default: glibc's",
    )
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.allocator)))
        return

    from remamber.modeling.config import FUSIONS
    from remamber.modeling.presets import preset_config
    from remamber.utils.io import write_json

    models = ("tiny", "clipseg") if args.quick else (*PRESETS, "base:attention", "clipseg")
    if args.models:
        models = tuple(m for m in args.models.split(",") if m)
        unknown = {
            m
            for m in models
            if m != "clipseg" and not (m.partition(":")[0] in PRESETS and m.partition(":")[2] in ("", *FUSIONS))
        }
        if unknown:
            parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    sizes = SIZES[:2] if args.quick else SIZES
    configs = [(m, s) for m in models for s in sizes]
    configs += [
        (p, preset_config(p).image_size) for p in PRESETS if p in models and preset_config(p).image_size not in sizes
    ]
    rows = []
    for model, size in configs:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", model, str(size), "--allocator", args.allocator],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            rows.append({"model": model, "size": size, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    exponents = {
        m: fit_exponent([r for r in rows if r["model"] == m and "seconds" in r and r["size"] in sizes]) for m in models
    }
    native = {
        p: next(
            (r for r in rows if r["model"] == p and r["size"] == preset_config(p).image_size and "seconds" in r), None
        )
        for p in PRESETS
        if p in models
    }
    write_json(
        args.out,
        {
            "command": " ".join(["python benchmarks/latency.py", *sys.argv[1:]]),
            "machine": machine(),
            "what": "one forward (image + phrase -> logits), batch 1, random weights, median seconds; peak RSS of the process",
            "allocator": {
                "kept": "freed memory kept in the process (as remamber segment/eval on a CPU)",
                "default": "glibc defaults",
            }[args.allocator],
            "goal": {"exponent_at_most": 1.1},
            "exponent_time_vs_tokens": exponents,
            "native": native,
            "results": rows,
        },
    )
    print("exponents:", exponents)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
