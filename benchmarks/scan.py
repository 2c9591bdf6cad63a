"""Selective-scan speed: our CPU paths against the reference loop, same process, same inputs.

The reference is ``selective_scan_ref`` (mamba_ssm's semantics: precompute exp(delta*A) and
delta*B*u, loop over L); its backward is autograd through that loop. For each shape the script
times forward and forward+backward of: the reference, the fused numba kernel (CPU default) and
the chunked PyTorch path, checks they agree, and writes benchmarks/results/scan.json.
Every timing is the fastest of ``--repeat`` calls after a warm-up call, the reference's forward
included (its timings swing most between calls); only the reference's slow backward is timed once.
The reference's autograd backward through its Python loop grows about 4x per doubling of
``l`` (each per-step index adds a full-size gradient), so past ``REF_BWD_MAX_L`` steps it is
timed on a prefix of ``REF_BWD_MAX_L`` steps and scaled *linearly* to ``l``: that understates
the reference, so the backward speedups reported there are lower bounds. The JSON records the
prefix as ``reference_backward_from_l``. Both run with freed memory kept in the process (as
``remamber train`` does, :mod:`remamber.engine.allocator`): on this VM a fresh ``mmap`` per large
buffer made timings of the large shapes swing several-fold between runs.
``memory_floor_forward_s`` is one elementwise pass over the same ``u`` and ``delta`` (read both,
write one output): a forward that only streamed its inputs would take that long, so
``fused_forward_vs_floor`` says how far the kernel is from being memory-bound.

    python benchmarks/scan.py            # all shapes of issue 5 (a few minutes on 2 cores)
    python benchmarks/scan.py --quick    # small shapes only
"""

from __future__ import annotations

import time

import torch
from common import allocator_note, best_of, machine, timing_parser

from remamber.engine.allocator import keep_freed_memory
from remamber.ops import scan_cpu
from remamber.ops.selective_scan import selective_scan_chunked, selective_scan_ref
from remamber.utils.io import write_json

# (b, d, l, n) at ReMamber shapes: stage 1 at 480 (120x120 tokens, 4 directions x 256 channels),
# stage 1 at 256 (64x64, 4 x 192), stage 3 at 480 with batch 8 (30x30, 4 x 512).
SHAPES = [(1, 1024, 14400, 1), (1, 1024, 14400, 16), (1, 768, 4096, 1), (1, 768, 4096, 16), (8, 2048, 900, 1)]
QUICK = [(1, 256, 1024, 1), (1, 256, 1024, 16)]
REF_BWD_MAX_L = 1024
PATHS = {"reference": selective_scan_ref, "fused": scan_cpu.selective_scan_fused, "chunked": selective_scan_chunked}


def inputs(b: int, d: int, l: int, n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(b, d, l),
        delta=r(b, d, l),
        A=-torch.rand(d, n, generator=g) * 4 - 0.5,
        B=r(b, 4, n, l),
        C=r(b, 4, n, l),
        D=r(d),
        delta_bias=r(d) * 0.5,
    )


LEAVES = ("u", "delta", "A", "B", "C", "D", "delta_bias")  # the inputs gradients are taken for


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12))


def timed(fn, repeat: int) -> float:
    return best_of(fn, repeat)[0]


def bench(shape: tuple, repeat: int) -> dict:
    kw = inputs(*shape)
    outs, row = {}, {"shape": dict(zip("bdln", shape))}
    secs: dict[str, float] = {}  # unrounded: the ratios come from these, the row gets them rounded
    for name, fn in PATHS.items():
        prefix_l = min(shape[2], REF_BWD_MAX_L) if name == "reference" else shape[2]
        shrink = shape[2] / prefix_l
        bwd_kw = {k: (v[..., :prefix_l] if v.dim() >= 3 else v) for k, v in kw.items()}

        def fwd():
            with torch.no_grad():
                outs[name] = fn(**kw, delta_softplus=True)

        def fwd_bwd(src=bwd_kw):
            args = {k: (v.clone().requires_grad_() if k in LEAVES else v) for k, v in src.items()}
            out = fn(**args, delta_softplus=True)
            out.backward(torch.ones_like(out))
            return args["u"].grad

        def fwd_short(src=bwd_kw):
            with torch.no_grad():
                fn(**src, delta_softplus=True)

        fwd()  # warm-up (numba compiles on first use)
        secs[f"{name}_forward"] = timed(fwd, repeat)
        if (
            name == "reference"
        ):  # its backward timed once (the slow one); its gradient is what the others are checked against
            start = time.perf_counter()
            outs["reference_grad_u"] = fwd_bwd()
            fb = time.perf_counter() - start
        else:
            fb = timed(fwd_bwd, repeat)
        backward = fb - (timed(fwd_short, repeat) if shrink > 1 else secs[f"{name}_forward"])
        secs[f"{name}_backward"] = max(backward * shrink, 1e-6)
        if name == "reference":
            row["reference_backward_from_l"] = prefix_l
    prefix = {k: (v[..., : row["reference_backward_from_l"]] if v.dim() >= 3 else v) for k, v in kw.items()}

    def grad_u(fn):  # gradients compared on the inputs the reference's backward saw
        args = {k: (v.clone().requires_grad_() if k in LEAVES else v) for k, v in prefix.items()}
        out = fn(**args, delta_softplus=True)
        out.backward(torch.ones_like(out))
        return args["u"].grad

    # The memory floor of a forward: one elementwise pass that reads u and delta and writes an
    # output of their size (what any scan must at least stream), for the same inputs.
    floor_out = torch.empty_like(kw["u"])
    secs["memory_floor_forward"] = timed(lambda: torch.add(kw["u"], kw["delta"], out=floor_out), repeat + 3)
    row.update({f"{k}_s": round(v, 6) for k, v in secs.items()})
    row["fused_forward_vs_floor"] = round(secs["fused_forward"] / secs["memory_floor_forward"], 1)
    g_ref = outs["reference_grad_u"]
    ref = outs["reference"]
    for name in ("fused", "chunked"):
        row[f"{name}_forward_speedup"] = round(secs["reference_forward"] / secs[f"{name}_forward"], 1)
        row[f"{name}_backward_speedup"] = round(secs["reference_backward"] / secs[f"{name}_backward"], 1)
        row[f"{name}_max_rel_err"] = max_rel(outs[name], ref)
        row[f"{name}_grad_u_max_rel_err"] = max_rel(grad_u(PATHS[name]), g_ref)
    return row


def main() -> None:
    ap = timing_parser(__doc__, "scan.json", 3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    kept = keep_freed_memory()
    rows = []
    for shape in QUICK if args.quick else SHAPES:
        row = bench(shape, args.repeat)
        rows.append(row)
        print(
            f"{shape}: reference fwd {row['reference_forward_s']:.3f}s bwd {row['reference_backward_s']:.3f}s | "
            f"fused fwd {row['fused_forward_s']:.4f}s (x{row['fused_forward_speedup']}) bwd {row['fused_backward_s']:.4f}s "
            f"(x{row['fused_backward_speedup']}) | chunked x{row['chunked_forward_speedup']} / x{row['chunked_backward_speedup']} "
            f"| max rel err {row['fused_max_rel_err']:.1e} | memory floor {row['memory_floor_forward_s']:.4f}s",
            flush=True,
        )
    try:
        import mamba_ssm  # noqa: F401

        mamba = "installed"
    except Exception as e:  # noqa: BLE001 - it does not import on CPU machines
        mamba = f"not importable here ({type(e).__name__})"
    write_json(
        args.out,
        {
            "command": "python benchmarks/scan.py" + (" --quick" if args.quick else ""),
            "machine": machine(numba_threads=scan_cpu.numba.get_num_threads()),
            "mamba_ssm": mamba,
            "allocator": allocator_note(kept),
            "goals": {"forward_speedup": 30, "backward_speedup": 10},
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
