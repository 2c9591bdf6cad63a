"""3x3 convolutions: Winograd F(4x4, 3x3) (``remamber.ops.winograd``) against the direct one.

For the decoder's 3x3 layers (``base`` at 480 and 1024 px, ``small`` at 480 px, ``tiny`` at
256 px) and a few shapes around the threshold where :func:`use_winograd` switches, times
``F.conv2d`` and :func:`conv3x3_winograd` on the same inputs (inference, fastest of ``--repeat``
calls after a warm-up, freed memory kept in the process as ``remamber segment`` does; Winograd
with its transformed filters made beforehand, as the decoder keeps them, and the time to make
them recorded as ``filters_s``), and the max error of each against a float64 convolution,
relative to the largest output. Writes ``benchmarks/results/conv.json``.

    python benchmarks/conv.py      # 1-2 minutes on 2 cores
"""

from __future__ import annotations

import functools

import torch
from common import allocator_note, best_of, machine, timing_parser

from remamber.engine.allocator import keep_freed_memory
from remamber.ops.winograd import conv3x3_ref, conv3x3_winograd, use_winograd, winograd_filters
from remamber.utils.io import write_json

# (in, out, size, where): the decoder's neck convolutions are hidden + dims[0] -> hidden at a
# quarter of the input size, then hidden -> hidden at half of it.
SHAPES = [
    (640, 512, 120, "base 480 px, neck 1"),
    (512, 512, 240, "base 480 px, neck 2"),
    (640, 512, 256, "base 1024 px, neck 1"),
    (512, 512, 512, "base 1024 px, neck 2"),
    (480, 384, 120, "small 480 px, neck 1"),
    (384, 384, 240, "small 480 px, neck 2"),
    (96, 64, 64, "tiny 256 px, neck 1"),
    (64, 64, 128, "tiny 256 px, neck 2"),
    (128, 128, 48, "threshold"),
    (128, 128, 96, "threshold"),
    (256, 256, 48, "threshold"),
]


def bench(cin: int, cout: int, size: int, repeat: int) -> dict:
    """Times and errors of both paths for one layer shape (random input, weights and bias)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cin, size, size, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g)
    with torch.inference_mode():
        exact = conv3x3_ref(x.double(), weight.double(), bias.double())
        scale = exact.abs().max()
        filters = winograd_filters(weight)  # made once per weight, as the fused decoder does
        row = {"filters_s": round(best_of(lambda: winograd_filters(weight), repeat)[0], 4)}
        winograd = lambda x, weight, bias: conv3x3_winograd(x, weight, bias, filters)  # noqa: E731
        for name, fn in (("direct", conv3x3_ref), ("winograd", winograd)):
            fn(x, weight, bias)  # warm-up
            seconds, out = best_of(functools.partial(fn, x, weight, bias), repeat)
            row[f"{name}_s"] = round(seconds, 4)
            row[f"{name}_max_rel_err"] = float((out.double() - exact).abs().max() / scale)
        row["speedup"] = round(row["direct_s"] / row["winograd_s"], 2)
        row["winograd_taken"] = use_winograd(x, weight, bias)
    return row


def main() -> None:
    ap = timing_parser(__doc__, "conv.json", 3)
    args = ap.parse_args()
    kept = keep_freed_memory()
    rows = []
    for cin, cout, size, where in SHAPES:
        row = {"in": cin, "out": cout, "size": size, "where": where, **bench(cin, cout, size, args.repeat)}
        rows.append(row)
        print(
            f"{where:22s} {cin:4d} -> {cout:4d} at {size}x{size}: direct {row['direct_s']:.4f} s, winograd "
            f"{row['winograd_s']:.4f} s (x{row['speedup']}), max rel err {row['direct_max_rel_err']:.1e} / "
            f"{row['winograd_max_rel_err']:.1e}, used: {row['winograd_taken']}",
            flush=True,
        )
    write_json(
        args.out,
        {
            "command": "python benchmarks/conv.py",
            "machine": machine(),
            "allocator": allocator_note(kept),
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
