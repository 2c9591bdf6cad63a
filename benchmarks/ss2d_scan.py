"""SS2D's scan on the CPU for inference: the fused kernel (``remamber.ops.ss2d_cpu``: cross-scan,
selective scan and cross-merge in one pass over the channels-last map) against the composed path
(``SS2D.scan``'s copy of the map in four orders, per-order projections, the fused row kernels of
``remamber.ops.scan_cpu`` and the merge: what training and an unfused model run; a model fused by
``remamber.inference.fuse`` runs the kernel).

At every SS2D scan shape of ``base`` at 480 px (``d_inner`` channels; the Twister's spatial scans
included; its channel scans are one row of 3C positions with 512 channels), same module weights
(trained-like ranges: A down to -50, delta biases up to ~1.6) and channels-last input, fastest of
``--repeat`` calls after a warm-up, freed memory kept in the process as ``remamber segment`` does.
Both timings include the output LayerNorm, which reads the fused kernel's channels-last output
directly. Writes ``benchmarks/results/ss2d_scan.json``.

    python benchmarks/ss2d_scan.py      # about half a minute on 2 cores
"""

from __future__ import annotations

import copy
import functools

import torch
from common import best_of, timing_parser, write_per_forward

from remamber.engine.allocator import keep_freed_memory
from remamber.inference.fuse import fuse
from remamber.modeling.ss2d import SS2D
from remamber.ops import ss2d_cpu

# (d_model, map height, map width, calls per 480 px forward of base, where)
SHAPES = [
    (128, 120, 120, 4, "stage 1"),
    (256, 60, 60, 4, "stage 2"),
    (512, 30, 30, 17, "stage 3"),
    (1024, 15, 15, 4, "stage 4"),
    (256, 1, 384, 2, "channel scan, stage 1"),
    (256, 1, 768, 2, "channel scan, stage 2"),
    (256, 1, 1536, 2, "channel scan, stage 3"),
    (256, 1, 3072, 2, "channel scan, stage 4"),
]


def main() -> None:
    ap = timing_parser(__doc__, "ss2d_scan.json", 7)
    args = ap.parse_args()
    kept = keep_freed_memory()
    ss2d_cpu.preload()  # every call below on the kernel, whatever its size
    torch.manual_seed(0)
    rows, before, after = [], 0.0, 0.0
    with torch.inference_mode():
        for d_model, h, w, calls, where in SHAPES:
            module = SS2D(d_model, gate=h == 1).eval()
            module.A_logs.uniform_(-1.0, 3.9)
            module.dt_projs_bias.uniform_(-4.0, 1.6)
            x = torch.randn(1, module.d_inner, h, w).to(memory_format=torch.channels_last)
            fused = fuse(copy.deepcopy(module))  # the same weights, the scan swapped for the kernel
            assert ss2d_cpu.takes(x, module.d_state)
            fused_out, plain_out = fused.scan(x), module.scan(x)  # warm-up (and the kernels compiled)
            row = {
                "where": where,
                "channels": module.d_inner,
                "height": h,
                "width": w,
                "delta_rank": module.dt_rank,
                "deltas": "in the kernel" if module.dt_rank <= ss2d_cpu.MAX_RANK_INSIDE else "batched product",
                "block": ss2d_cpu.block_size(1, module.d_inner),
                "calls_per_forward": calls,
            }
            row["composed_ms"] = round(best_of(functools.partial(module.scan, x), args.repeat)[0] * 1e3, 2)
            row["fused_ms"] = round(best_of(functools.partial(fused.scan, x), args.repeat)[0] * 1e3, 2)
            row["speedup"] = round(row["composed_ms"] / row["fused_ms"], 2)
            row["max_rel_diff"] = float((fused_out - plain_out).abs().max() / plain_out.abs().max())
            before += calls * row["composed_ms"]
            after += calls * row["fused_ms"]
            rows.append(row)
            print(
                f"{where:22s} {module.d_inner:5d} x {h}x{w}: composed {row['composed_ms']} ms, fused {row['fused_ms']} ms "
                f"(x{row['speedup']}), max rel diff {row['max_rel_diff']:.1e}",
                flush=True,
            )
    write_per_forward(args.out, "python benchmarks/ss2d_scan.py", kept, rows, {"composed": before, "fused": after})


if __name__ == "__main__":
    main()
