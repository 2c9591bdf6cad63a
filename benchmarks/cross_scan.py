"""The cross scan of channels-last maps: ``remamber.ops.cross_scan`` against the plain composition
it replaced (stack and concatenate views read through the input's strides), same inputs.

At every SS2D input shape of ``base`` at 480 px (``d_inner`` channels, channels-last as a
LayerNorm2d hands them on), fastest of ``--repeat`` calls after a warm-up, inference, freed
memory kept in the process as ``remamber segment`` does; also :func:`channels_first` alone
against ``x.contiguous()``. Writes ``benchmarks/results/cross_scan.json``.

    python benchmarks/cross_scan.py      # a few seconds
"""

from __future__ import annotations

import torch
from common import best_of, timing_parser, write_per_forward
from torch import Tensor

from remamber.engine.allocator import keep_freed_memory
from remamber.ops.cross_scan import channels_first, cross_scan

# (channels, side, calls per 480 px forward of base): stages 1-4 (d_inner = 2 x dim; the Twister's
# spatial scans included) and the Twister's channel scans are too small to matter.
SHAPES = [(256, 120, 4), (512, 60, 4), (1024, 30, 17), (2048, 15, 4)]


def plain_cross_scan(x: Tensor) -> Tensor:
    """The composition before: views of ``x`` stacked, reversed and concatenated."""
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    fwd = torch.stack([rows, cols], dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def main() -> None:
    ap = timing_parser(__doc__, "cross_scan.json", 9)
    args = ap.parse_args()
    kept = keep_freed_memory()
    rows, before, after = [], 0.0, 0.0
    with torch.inference_mode():
        for channels, side, calls in SHAPES:
            x = torch.randn(1, channels, side, side).to(memory_format=torch.channels_last)
            assert torch.equal(cross_scan(x), plain_cross_scan(x))
            row = {"channels": channels, "side": side, "calls_per_forward": calls}
            for name, fn in (
                ("plain", plain_cross_scan),
                ("cross_scan", cross_scan),
                ("contiguous", Tensor.contiguous),
                ("channels_first", channels_first),
            ):
                fn(x)  # warm-up
                row[f"{name}_ms"] = round(best_of(lambda: fn(x), args.repeat)[0] * 1e3, 2)
            row["speedup"] = round(row["plain_ms"] / row["cross_scan_ms"], 2)
            before += calls * row["plain_ms"]
            after += calls * row["cross_scan_ms"]
            rows.append(row)
            print(
                f"{channels:5d} x {side}x{side}: plain {row['plain_ms']} ms, cross_scan {row['cross_scan_ms']} ms "
                f"(x{row['speedup']}); contiguous {row['contiguous_ms']} ms, channels_first {row['channels_first_ms']} ms",
                flush=True,
            )
    write_per_forward(args.out, "python benchmarks/cross_scan.py", kept, rows, {"plain": before, "cross_scan": after})


if __name__ == "__main__":
    main()
