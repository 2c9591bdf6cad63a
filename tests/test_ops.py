"""The selective scan and cross scan: our PyTorch path against the reference, forward and backward."""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from remamber.ops import (
    cross_merge,
    cross_scan,
    numba_utils,
    scan_backend,
    scan_cpu,
    selective_scan,
    selective_scan_chunked,
    selective_scan_parallel,
    selective_scan_ref,
)

scan_module = importlib.import_module("remamber.ops.selective_scan")  # the module, not its function
PATHS = {"chunked": selective_scan_chunked, "fused": scan_cpu.selective_scan_fused, "parallel": selective_scan_parallel}
TORCH_PATHS = {"chunked": selective_scan_chunked, "parallel": selective_scan_parallel}


def _seeded_like(t: torch.Tensor) -> torch.Tensor:
    """An output gradient from a fixed seed (a failure reproduces exactly)."""
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(123), dtype=t.dtype)


def _inputs(b, d, l, n, bc="grouped", groups=4, dtype=torch.float32, a_min=-3.0, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u, delta = rnd(b, d, l), rnd(b, d, l) * dt_scale
    A = a_min * torch.rand(d, n, generator=g, dtype=dtype) - 1e-3
    if bc == "grouped":
        B, C = rnd(b, groups, n, l), rnd(b, groups, n, l)
    elif bc == "shared":
        B, C = rnd(b, n, l), rnd(b, n, l)
    else:  # time-invariant
        B, C = rnd(d, n), rnd(d, n)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=rnd(d), z=rnd(b, d, l), delta_bias=rnd(d))


CASES = [
    dict(b=2, d=8, l=37, n=1, bc="grouped"),
    dict(b=1, d=8, l=64, n=16, bc="grouped"),
    dict(b=2, d=6, l=50, n=4, bc="shared"),
    dict(b=1, d=4, l=17, n=3, bc="constant"),
    dict(b=1, d=4, l=1, n=2, bc="shared"),
    dict(b=1, d=8, l=150, n=6, bc="grouped"),  # several chunks, the last one short; 4 + 2 states
    dict(b=2, d=4, l=200, n=1, bc="shared"),
    dict(b=1, d=8, l=131, n=3, bc="grouped"),  # the narrow kernel's later state dimensions, across chunks
]


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("path", list(PATHS))
def test_fast_paths_match_reference_forward_backward(case, with_z, path):
    if path == "fused" and case["bc"] == "constant":
        assert not scan_cpu.supports(torch.zeros(1, 4, 3), torch.zeros(4, 2), torch.zeros(4, 2))
        return
    kw = _inputs(**case)
    if not with_z:
        kw["z"] = None
    leaves = {k: v.requires_grad_() for k, v in kw.items() if v is not None}
    ref, ref_state = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out, state = PATHS[path](**kw, delta_softplus=True, return_last_state=True)
    assert out.shape == (case["b"], case["d"], case["l"])
    assert _max_rel(out, ref) <= 1e-5 and _max_rel(state, ref_state) <= 1e-5
    grad_out = _seeded_like(ref)
    g_ref = torch.autograd.grad(ref, list(leaves.values()), grad_out)
    g_new = torch.autograd.grad(out, list(leaves.values()), grad_out)
    for name, a, b in zip(leaves, g_new, g_ref):
        assert _max_rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("n", [1, 4])
def test_fused_without_D_or_delta_bias(n):
    kw = _inputs(1, 8, 100, n)
    kw.update(D=None, delta_bias=None)
    leaves = {k: v.requires_grad_() for k, v in kw.items() if v is not None}
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
    assert _max_rel(out, ref) <= 1e-5
    g = _seeded_like(ref)
    for name, a, b in zip(
        leaves, torch.autograd.grad(out, list(leaves.values()), g), torch.autograd.grad(ref, list(leaves.values()), g)
    ):
        assert _max_rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_fused_backward_any_split_of_the_channels(blocks, monkeypatch):
    """The backward splits each group's channels into blocks by thread count; an uneven split and
    empty blocks (5 for 3 channels) give the reference's gradients too."""
    monkeypatch.setattr(scan_cpu, "_blocks", lambda b, g, per_group: blocks)
    kw = _inputs(2, 12, 150, 2)  # 4 groups of 3 channels, 3 chunks
    leaves = {k: v.requires_grad_() for k, v in kw.items() if v is not None}
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
    g = _seeded_like(ref)
    for name, a, b in zip(
        leaves, torch.autograd.grad(out, list(leaves.values()), g), torch.autograd.grad(ref, list(leaves.values()), g)
    ):
        assert _max_rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("path", list(TORCH_PATHS))
def test_chunk_size_does_not_change_result(chunk, path):
    kw = _inputs(1, 4, 40, 2)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    assert _max_rel(TORCH_PATHS[path](**kw, delta_softplus=True, chunk=chunk), ref) <= 1e-5


@pytest.mark.parametrize("n", [1, 16])  # the fused path's narrow and wide kernels
@pytest.mark.parametrize("path", ["chunked", "fused"])  # parallel: its own test below, all leaves
def test_trained_weight_ranges_do_not_overflow(path, n):
    """A down to -50, delta up to 5, a long sequence: exp(-cumsum) would overflow; ours must not."""
    kw = _inputs(1, 8, 4096, n, a_min=-50.0, dt_scale=0.0)
    kw["delta"] = 5.0 * torch.rand(1, 8, 4096, generator=torch.Generator().manual_seed(1))
    kw["delta_bias"] = None
    leaves = [kw[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    ref = selective_scan_ref(**kw)
    out = PATHS[path](**kw)
    assert torch.isfinite(out).all()
    assert _max_rel(out, ref) <= 1e-5
    g = _seeded_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert torch.isfinite(a).all() and _max_rel(a, b) <= 1e-5


def test_parallel_trained_weight_ranges_all_gradients():
    """A down to -50, delta up to 5 after softplus, l = 4000 (padded chunks): exact, finite grads."""
    length = 4000
    kw = _inputs(1, 2, length, 4, groups=2, a_min=-50.0, seed=2)  # small: the reference backward is slow
    kw["delta"] = 10.0 * torch.rand(1, 2, length, generator=torch.Generator().manual_seed(1)) - 5.0
    kw["delta_bias"] = 0.1 * kw["delta_bias"]
    log_decay = torch.nn.functional.softplus(kw["delta"] + kw["delta_bias"][:, None])[:, :, None] * kw["A"][..., None]
    assert torch.isinf(torch.exp(-log_decay.cumsum(-1))).any()  # a scan through exp(-cumsum) overflows here
    leaves = {k: v.requires_grad_() for k, v in kw.items()}
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = selective_scan_parallel(**kw, delta_softplus=True)
    assert torch.isfinite(out).all() and _max_rel(out, ref) <= 1e-5
    g = _seeded_like(ref)
    g_ref = torch.autograd.grad(ref, list(leaves.values()), g)
    for name, a, b in zip(leaves, torch.autograd.grad(out, list(leaves.values()), g), g_ref):
        assert torch.isfinite(a).all() and _max_rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("path", list(TORCH_PATHS))
def test_fp64_agrees_tightly(path):
    kw = _inputs(1, 4, 30, 3, dtype=torch.float64)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = TORCH_PATHS[path](**kw, delta_softplus=True)
    assert out.dtype == torch.float64
    assert _max_rel(out, ref) <= 1e-6  # both compute in fp32, as mamba does


@pytest.mark.parametrize("backend", ["auto", "torch", "ref"])
def test_dispatch_on_cpu_never_imports_mamba(backend, monkeypatch):
    monkeypatch.setenv("REMAMBER_SCAN", backend)
    calls = []
    for name in ("selective_scan_fused",):
        monkeypatch.setattr(
            scan_cpu, name, lambda *a, _f=getattr(scan_cpu, name), **k: calls.append(name) or _f(*a, **k)
        )
    monkeypatch.setattr(scan_cpu, "compiled", lambda d_state: False)  # as in a fresh process
    kw = _inputs(1, 4, 10, 1)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    with torch.no_grad():  # small inference call: the chunked path (no JIT compilation)
        out = selective_scan(**kw, delta_softplus=True)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5) and calls == []
    monkeypatch.setattr(scan_module, "FUSED_MIN_INFERENCE", 40)
    with torch.no_grad():  # large enough inference call
        selective_scan(**kw, delta_softplus=True)
    monkeypatch.setattr(scan_module, "FUSED_MIN_INFERENCE", 1 << 22)
    monkeypatch.setattr(scan_cpu, "compiled", lambda d_state: True)
    with torch.no_grad():  # small inference call once the kernel is in the process
        selective_scan(**kw, delta_softplus=True)
    kw["u"].requires_grad_(True)
    out = selective_scan(**kw, delta_softplus=True)  # training
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert calls == (["selective_scan_fused"] * 3 if backend == "auto" else [])
    assert "mamba_ssm" not in sys.modules


@pytest.mark.parametrize("n, other", [(1, 4), (4, 1)])  # the narrow kernel and the wide one
def test_kernel_counts_as_compiled_after_a_fused_call(n, other):
    """In a fresh process (this one has compiled both long ago): not before, after, and only that kernel."""
    code = f"""
import torch
from remamber.ops import scan_cpu
kw = dict(u=torch.randn(1, 4, 10), delta=torch.randn(1, 4, 10), A=-torch.rand(4, {n}), B=torch.randn(1, {n}, 10), C=torch.randn(1, {n}, 10))
before = scan_cpu.compiled({n})
scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
print(before, scan_cpu.compiled({n}), scan_cpu.compiled({other}))
print(scan_cpu.preload({other}), scan_cpu.compiled({other}))  # what eval and segment --batch run first
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "False", "True", "True"]


def _count_parallel_calls(monkeypatch) -> list:
    calls = []
    real = scan_module.selective_scan_parallel
    monkeypatch.setattr(scan_module, "selective_scan_parallel", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_parallel_backend_by_env_and_by_context(monkeypatch):
    kw = _inputs(1, 4, 10, 1)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    calls = _count_parallel_calls(monkeypatch)
    monkeypatch.setenv("REMAMBER_SCAN", "parallel")
    assert _max_rel(selective_scan(**kw, delta_softplus=True), ref) <= 1e-5 and len(calls) == 1
    monkeypatch.setenv("REMAMBER_SCAN", "ref")
    with scan_backend("parallel"):  # the block wins over the variable, and nests
        with scan_backend("auto"):
            selective_scan(**kw, delta_softplus=True)
        assert len(calls) == 1
        assert _max_rel(selective_scan(**kw, delta_softplus=True), ref) <= 1e-5 and len(calls) == 2
    selective_scan(**kw, delta_softplus=True)  # restored: back to REMAMBER_SCAN=ref
    assert len(calls) == 2 and scan_module.current_backend() == "ref"
    with pytest.raises(ValueError, match="unknown scan backend"):
        with scan_backend("cuda"):
            pass
    with pytest.raises(RuntimeError), scan_backend("parallel"):
        raise RuntimeError  # restored on an exception too
    assert scan_module.current_backend() == "ref"


class _TinyScan(torch.nn.Module):
    """What a Mamba block hands the scan: grouped per-step B and C, softplus on delta, D and z."""

    def __init__(self, d: int = 8, n: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = torch.nn.Parameter(-torch.rand(d, n, generator=g) * 10 - 1e-3)
        self.D = torch.nn.Parameter(torch.randn(d, generator=g))
        self.delta_bias = torch.nn.Parameter(torch.randn(d, generator=g))

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, self.A, B, C, self.D, z, self.delta_bias, delta_softplus=True)


@pytest.mark.parametrize("length", [64, 60])
def test_parallel_scan_exports_to_small_loop_free_onnx(length):
    import onnx
    import onnxruntime as ort

    model, d, n, g = _TinyScan().eval(), 8, 4, 2
    names = ["u", "delta", "B", "C", "z"]

    def inputs(b, seed):
        gen = torch.Generator().manual_seed(seed)
        shapes = [(b, d, length), (b, d, length), (b, g, n, length), (b, g, n, length), (b, d, length)]
        return tuple(torch.randn(*s, generator=gen) for s in shapes)

    buf = io.BytesIO()
    with scan_backend("parallel"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about sizes read as Python ints
        torch.onnx.export(
            model,
            inputs(2, 0),
            buf,
            input_names=names,
            output_names=["y"],
            dynamic_axes={k: {0: "batch"} for k in [*names, "y"]},
            opset_version=17,
            dynamo=False,
        )
    graph = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(graph)
    ops = [node.op_type for node in graph.graph.node]
    assert not {"Loop", "Scan", "If"} & set(ops)
    assert len(ops) < 200, len(ops)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = inputs(3, 1)  # another batch size, through the dynamic axis
    (got,) = session.run(None, {k: v.numpy() for k, v in zip(names, feeds)})
    with torch.no_grad():
        want = selective_scan_ref(
            feeds[0], feeds[1], model.A, feeds[2], feeds[3], model.D, feeds[4], model.delta_bias, delta_softplus=True
        )
    assert _max_rel(torch.from_numpy(got), want) <= 1e-4


def test_fused_handles_long_sequences_across_chunks_and_batches():
    kw = _inputs(3, 8, 3 * scan_cpu.CHUNK + 5, 2, groups=2)
    leaves = [kw[k].requires_grad_() for k in ("u", "delta", "B", "C")]
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
    assert _max_rel(out, ref) <= 1e-5
    g = _seeded_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert _max_rel(a, b) <= 1e-5


@pytest.mark.parametrize("n", [1, 3, 6])
@pytest.mark.parametrize("with_z", [False, True])
def test_fused_inference_variant_matches_reference(n, with_z, monkeypatch):
    """Without gradients the kernels are compiled without the saved chunk states (and, with no
    gate, without ``z``): the same numbers, state included."""
    keep_starts = []
    apply = scan_cpu._FusedScan.apply
    monkeypatch.setattr(scan_cpu._FusedScan, "apply", lambda *a: keep_starts.append(a[-1]) or apply(*a))
    kw = _inputs(2, 8, 2 * scan_cpu.CHUNK + 9, n, groups=2)
    if not with_z:
        kw["z"] = None
    kw["u"].requires_grad_()  # as a model's parameters: no gradients all the same under no_grad
    ref, ref_state = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    with torch.no_grad():
        out, state = scan_cpu.selective_scan_fused(**kw, delta_softplus=True, return_last_state=True)
    assert not out.requires_grad and keep_starts == [False]
    assert _max_rel(out, ref) <= 1e-5 and _max_rel(state, ref_state) <= 1e-5


def _cross_scan_by_index(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    rows = [x[:, :, i, j] for i in range(h) for j in range(w)]
    cols = [x[:, :, i, j] for j in range(w) for i in range(h)]
    seqs = [rows, cols, rows[::-1], cols[::-1]]
    return torch.stack([torch.stack(s, dim=-1) for s in seqs], dim=1)


@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (1, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cross_scan_orders_and_merge_is_adjoint(hw, channels_last):
    h, w = hw
    x = torch.randn(2, 3, h, w)
    if channels_last:  # what LayerNorm2d and the CPU's 1x1 convolutions hand on
        x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    x.requires_grad_()
    xs = cross_scan(x)
    assert torch.equal(xs, _cross_scan_by_index(x))
    ys = torch.randn(2, 4, 3, h * w, requires_grad=True)
    merged = cross_merge(ys, h, w)
    # <scan(x), y> == <x, merge(y)>: merge is scan's adjoint, so it undoes each order and sums
    assert torch.allclose((xs * ys).sum(), (x.flatten(2) * merged).sum(), atol=1e-5)
    # merge of a scan counts each pixel 4 times
    assert torch.allclose(cross_merge(cross_scan(x), h, w), 4 * x.flatten(2))
    (gx,) = torch.autograd.grad((xs * ys).sum(), x)
    assert torch.allclose(gx.flatten(2), merged, atol=1e-5)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA_CASES = [c for c in CASES if c["bc"] != "constant"] + [
    dict(b=1, d=8, l=4096, n=16, bc="grouped", a_min=-50.0, dt_scale=3.0),  # trained-weight ranges
]
CUDA_TOL = 1e-4  # max relative error against the fp32 reference (mamba-ssm builds with --use_fast_math)


@needs_cuda
@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("with_z", [False, True])
def test_cuda_dispatch_matches_reference_forward_backward(case, with_z, monkeypatch):
    """On a CUDA tensor the dispatcher runs mamba-ssm's kernel when mamba_ssm is installed (an
    installed one that fails to import is an error here), else the chunked PyTorch path; either
    way it matches the reference computed on the CPU, forward and every gradient."""
    monkeypatch.delenv("REMAMBER_SCAN", raising=False)
    calls = []
    mamba_installed = importlib.util.find_spec("mamba_ssm") is not None
    if mamba_installed:
        kernel = scan_module._mamba_cuda_kernel()
        assert kernel is not None, "mamba_ssm is installed but does not import"
        monkeypatch.setattr(
            scan_module, "_mamba_cuda_kernel", lambda: lambda *a, **k: calls.append(1) or kernel(*a, **k)
        )
    kw = _inputs(**case)
    if not with_z:
        kw["z"] = None
    leaves = {k: v.requires_grad_() for k, v in kw.items() if v is not None}
    on_gpu = {k: v.detach().cuda().requires_grad_() for k, v in leaves.items()}
    ref, ref_state = selective_scan_ref(**kw, delta_softplus=True, return_last_state=True)
    out, state = selective_scan(**on_gpu, delta_softplus=True, return_last_state=True)
    assert len(calls) == (1 if mamba_installed else 0)
    assert _max_rel(out.cpu(), ref) <= CUDA_TOL and _max_rel(state.cpu(), ref_state) <= CUDA_TOL
    grad_out = _seeded_like(ref)
    g_ref = torch.autograd.grad(ref, list(leaves.values()), grad_out)
    g_new = torch.autograd.grad(out, list(on_gpu.values()), grad_out.cuda())
    for name, a, b in zip(leaves, g_new, g_ref):
        assert _max_rel(a.cpu(), b) <= CUDA_TOL, name


def test_fused_forward_places_its_output_behind_delta():
    """The forward's output starts OUTPUT_LAG bytes past delta's data, modulo a page (its speed
    depended on that placement: 17.6-20 ms near delta, 25 ms far from it at (8, 2048, 900, 1))."""
    stream = np.empty(1000, np.float32)[3:]  # any address
    out = scan_cpu._empty_near((2, 3, 50), stream)
    assert out.shape == (2, 3, 50) and out.dtype == np.float32 and out.flags.c_contiguous
    assert (out.ctypes.data - stream.ctypes.data) % scan_cpu.PAGE == scan_cpu.OUTPUT_LAG
    kw = _inputs(1, 4, 300, 1)
    with torch.no_grad():
        y = scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
    assert (y.data_ptr() - kw["delta"].data_ptr()) % scan_cpu.PAGE == scan_cpu.OUTPUT_LAG
    assert _max_rel(y, selective_scan_ref(**kw, delta_softplus=True)) <= 1e-5


def _loop(fn):
    """A compiled loop ``run(x, out)`` applying the kernels' inline float32 function ``fn``."""
    numba = pytest.importorskip("numba")

    @numba.njit(fastmath=True, error_model="numpy")
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return run


def _elementwise(fn):
    """``fn`` applied to a float32 array by a compiled loop."""
    run = _loop(fn)
    return lambda x: (run(x, out := np.empty_like(x)), out)[1]


@pytest.mark.parametrize("variant", ["exp2_scalef", "exp2_bits"])
def test_both_exp2_variants_match_numpy(variant):
    """The kernels' exp2 (scalef on AVX-512, float bits elsewhere; only one runs in the kernels of a
    given machine): relative error <= 3e-7 over the float range, 0 below it and huge above it."""
    if variant == "exp2_scalef" and importlib.import_module("llvmlite.binding").llvm_version_info < (17,):
        pytest.skip("llvm.ldexp needs LLVM 17")
    exp2 = _elementwise(getattr(numba_utils, variant))
    x = np.linspace(-125.9, 126.9, 200_001, dtype=np.float32)
    rel = np.abs(exp2(x) / np.exp2(x.astype(np.float64)) - 1)
    assert rel.max() <= 3e-7
    edge = exp2(np.array([-np.inf, -1e30, -500, -150, 150, 500, 1e30, np.inf], np.float32))
    assert (edge[:4] <= 1.2e-38).all() and (edge[:4] >= 0).all() and (edge[4:] >= 1e38).all()
    assert exp2(np.array([0.0, 1.0, -1.0, 10.0], np.float32)).tolist() == [1.0, 2.0, 0.5, 1024.0]


def test_scalef_exp2_is_vectorised_where_it_is_chosen():
    """Where the kernels take the ldexp variant, a loop of it compiles to ``vscalefps`` (no
    per-element ``ldexpf`` call, which older LLVMs and targets without AVX-512VL would emit)."""
    if not numba_utils.use_scalef():
        pytest.skip("numba's target has no AVX-512F/VL or its LLVM calls ldexpf: the bit-built exp2 is used")
    run = _loop(numba_utils.exp2_scalef)
    x = np.linspace(-10, 10, 64, dtype=np.float32)
    run(x, np.empty_like(x))
    asm = "\n".join(run.inspect_asm().values())
    assert "vscalefps" in asm and "ldexp" not in asm


def test_log1p_matches_numpy_on_its_interval():
    w = np.linspace(0, 1, 100_001, dtype=np.float32)
    got = _elementwise(numba_utils.log1p_unit)(w).astype(np.float64)
    want = np.log1p(w.astype(np.float64))
    assert got[0] == 0.0
    assert (np.abs(got[1:] / want[1:] - 1) <= 3e-7).all()  # float32 rounding and a fast reciprocal: ~2-3 ulp


def test_fused_on_a_target_without_avx512_matches_reference(tmp_path):
    """numba compiling for a generic x86-64 (the bit-built exp2, 256-bit or narrower vectors): the
    d_state 1 forward and backward still match the reference."""
    code = """
import torch
from remamber.ops import numba_utils, scan_cpu, selective_scan_ref
assert numba_utils.fast_exp2 is numba_utils.exp2_bits
g = torch.Generator().manual_seed(0)
u, delta = torch.randn(2, 8, 150, generator=g), torch.randn(2, 8, 150, generator=g)
A, D, bias = -3 * torch.rand(8, 1, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
B, C = torch.randn(2, 4, 1, 150, generator=g), torch.randn(2, 4, 1, 150, generator=g)
outs = []
for fn in (scan_cpu.selective_scan_fused, selective_scan_ref):
    x = u.clone().requires_grad_()
    y = fn(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    y.square().sum().backward()
    outs.append((y.detach(), x.grad))
for a, b in zip(*outs):
    print(((a - b).abs().max() / b.abs().max()).item())
"""
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert all(float(v) <= 1e-5 for v in proc.stdout.split()), proc.stdout


@pytest.mark.parametrize("batch", [1, 2])
def test_channels_first_copies_any_layout(batch):
    from remamber.ops.cross_scan import channels_first

    x = torch.randn(batch, 5, 6, 7)
    last = x.to(memory_format=torch.channels_last)
    for given in (x, last, x[..., ::2], last[:, 1:4]):
        out = channels_first(given)
        assert out.is_contiguous() and torch.equal(out, given)
    leaf = last.clone().requires_grad_()
    (g,) = torch.autograd.grad((channels_first(leaf) * x).sum(), leaf)
    assert torch.equal(g, x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_cross_scan_traced_at_one_batch_size_runs_at_another():
    """What an ONNX export needs: nothing in the traced graph fixes the batch size."""
    make = lambda b: torch.randn(b, 3, 4, 5).to(memory_format=torch.channels_last)  # noqa: E731
    traced = torch.jit.trace(cross_scan, make(2), check_trace=False)
    x = make(3)
    assert torch.equal(traced(x), cross_scan(x))
