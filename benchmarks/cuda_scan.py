"""The selective scan and the presets on a CUDA GPU. Writes benchmarks/results/cuda_scan.json.

Scan, at the shapes of benchmarks/scan.py: mamba-ssm's CUDA kernel (what ``selective_scan``
dispatches to for CUDA tensors when mamba-ssm is installed), our chunked PyTorch path (the
fallback without it) and mamba-ssm's own ``selective_scan_ref``, each against our reference
loop on the same GPU: forward and forward+backward seconds, and the max relative error of the
output and of every gradient (u, delta, A, B, C, D, delta_bias) against the reference's. The
two loops (ours and mamba-ssm's reference) are timed on one call each, the others as the best of
``--repeat`` calls after a warm-up call.
Presets: one forward (batch 1, random weights, inference mode) at 480 and 1024 with either scan.

    python benchmarks/cuda_scan.py            # needs a CUDA GPU; about three minutes on an H100
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
from common import best_of, machine
from latency import random_inputs
from scan import LEAVES, SHAPES, inputs, max_rel

from remamber.modeling.presets import PRESETS, build_model, preset_config
from remamber.ops.selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref
from remamber.utils.io import write_json

scan_module = importlib.import_module("remamber.ops.selective_scan")
RESULTS = Path(__file__).resolve().parent / "results" / "cuda_scan.json"
SIZES = (480, 1024)
PRESET_WARMUP, PRESET_CALLS = 3, 10  # whole-model forwards: warm-up calls, then the best of this many


def gpu_timed(fn, repeat: int, warmup: bool = True) -> tuple[float, object]:
    """Best seconds of ``repeat`` synchronised calls (after one warm-up call unless ``warmup`` is
    False) and the last call's result."""
    if warmup:
        fn()
    return best_of(fn, repeat, torch.cuda.synchronize)


def mamba_reference():
    """mamba-ssm's own ``selective_scan_ref``, or None when mamba-ssm does not import."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as ref
    except Exception:
        return None
    return ref


def bench_shape(shape: tuple, paths: dict, repeat: int) -> dict:
    kw = {k: v.cuda() for k, v in inputs(*shape).items()}
    for k in LEAVES:  # leaves once, outside the timed calls (autograd.grad does not accumulate)
        kw[k].requires_grad_()
    grad_out = torch.randn(
        shape[0], shape[1], shape[2], device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )
    row: dict = {"shape": dict(zip("bdln", shape))}
    seconds, results = {}, {}
    for name, fn in paths.items():
        loop = "reference" in name  # a Python loop over l: timed once, no warm-up (seconds per call)
        reps = 1 if loop else repeat

        def fwd():
            with torch.no_grad():
                return fn(**kw, delta_softplus=True)

        def fwd_bwd():
            out = fn(**kw, delta_softplus=True)
            return out.detach(), torch.autograd.grad(out, [kw[k] for k in LEAVES], grad_out)

        seconds[name] = gpu_timed(fwd, reps, warmup=not loop)[0]
        seconds[name + "_bwd"], results[name] = gpu_timed(fwd_bwd, reps, warmup=not loop)
        row[f"{name}_forward_s"] = round(seconds[name], 6)
        row[f"{name}_forward_backward_s"] = round(seconds[name + "_bwd"], 6)
        torch.cuda.empty_cache()
    ref_out, ref_grads = results["reference"]
    for name in paths:
        if name == "reference":
            continue
        out, grads = results[name]
        row[f"{name}_forward_speedup"] = round(seconds["reference"] / seconds[name], 1)
        row[f"{name}_forward_backward_speedup"] = round(seconds["reference_bwd"] / seconds[name + "_bwd"], 1)
        row[f"{name}_max_rel_err"] = {
            "out": max_rel(out, ref_out),
            **{k: max_rel(g, r) for k, g, r in zip(LEAVES, grads, ref_grads)},
        }
    print(row, flush=True)
    return row


def preset_forward(preset: str, size: int, use_mamba: bool, repeat: int) -> float:
    """Seconds of one forward of ``preset`` at ``size`` (random weights) with or without mamba-ssm."""
    torch.manual_seed(0)
    model = build_model(preset_config(preset).replace(image_size=size)).cuda().eval()
    image, ids, mask = (t.cuda() for t in random_inputs(model, size))
    kernel = scan_module._mamba_cuda_kernel
    if not use_mamba:  # the dispatcher's fallback: as if mamba-ssm were absent
        scan_module._mamba_cuda_kernel = lambda: None
    try:
        with torch.inference_mode():
            for _ in range(PRESET_WARMUP):  # cuDNN picks its algorithms, the allocator fills
                model(image, ids, mask)
            return gpu_timed(lambda: model(image, ids, mask), max(repeat, PRESET_CALLS))[0]
    finally:
        scan_module._mamba_cuda_kernel = kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/cuda_scan.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 throughout
    kernel = scan_module._mamba_cuda_kernel()
    paths = {"reference": selective_scan_ref, "chunked": selective_scan_chunked}
    if kernel is not None:
        paths["mamba_ssm"] = selective_scan  # the dispatcher, which runs mamba-ssm's kernel here
        reference = mamba_reference()
        if reference is not None:
            paths["mamba_ssm_reference"] = reference
    try:
        import mamba_ssm

        mamba = {"version": mamba_ssm.__version__, "kernel_used_by_selective_scan": kernel is not None}
    except Exception as e:
        mamba = {"error": f"{type(e).__name__}: {e}"}
    rows = [bench_shape(shape, paths, args.repeat) for shape in SHAPES]
    presets = []
    for preset in PRESETS:
        for size in SIZES:
            row = {
                "preset": preset,
                "size": size,
                "chunked_s": round(preset_forward(preset, size, False, args.repeat), 4),
            }
            if kernel is not None:
                row["mamba_ssm_s"] = round(preset_forward(preset, size, True, args.repeat), 4)
                row["mamba_ssm_speedup"] = round(row["chunked_s"] / row["mamba_ssm_s"], 2)
            print(row, flush=True)
            presets.append(row)
    props = torch.cuda.get_device_properties(0)
    write_json(
        args.out,
        {
            "command": " ".join(["python benchmarks/cuda_scan.py", *sys.argv[1:]]),
            "machine": machine(
                gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
            ),
            "mamba_ssm": mamba,
            "what": "fp32 on the GPU (TF32 off); scan seconds are the best of --repeat synchronised calls after a "
            "warm-up (the two reference loops: one call, no warm-up); preset seconds the best of "
            f"max(--repeat, {PRESET_CALLS}) after {PRESET_WARMUP} warm-up calls; errors are max |x - ref| / max |ref| "
            "against our reference loop",
            "scan": rows,
            "presets_forward": presets,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
