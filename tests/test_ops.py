"""The selective scan and cross scan: our PyTorch path against the reference, forward and backward."""

from __future__ import annotations

import sys

import pytest
import torch

from remamber.ops import cross_merge, cross_scan, scan_cpu, selective_scan, selective_scan_chunked, selective_scan_ref

PATHS = {"chunked": selective_scan_chunked, "fused": scan_cpu.selective_scan_fused}


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
    grad_out = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, list(leaves.values()), grad_out)
    g_new = torch.autograd.grad(out, list(leaves.values()), grad_out)
    for name, a, b in zip(leaves, g_new, g_ref):
        assert _max_rel(a, b) <= 1e-5, name


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_size_does_not_change_result(chunk):
    kw = _inputs(1, 4, 40, 2)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    assert _max_rel(selective_scan_chunked(**kw, delta_softplus=True, chunk=chunk), ref) <= 1e-5


@pytest.mark.parametrize("path", list(PATHS))
def test_trained_weight_ranges_do_not_overflow(path):
    """A down to -50, delta up to 5, a long sequence: exp(-cumsum) would overflow; ours must not."""
    kw = _inputs(1, 8, 4096, 16, a_min=-50.0, dt_scale=0.0)
    kw["delta"] = 5.0 * torch.rand(1, 8, 4096, generator=torch.Generator().manual_seed(1))
    kw["delta_bias"] = None
    leaves = [kw[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    ref = selective_scan_ref(**kw)
    out = PATHS[path](**kw)
    assert torch.isfinite(out).all()
    assert _max_rel(out, ref) <= 1e-5
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert torch.isfinite(a).all() and _max_rel(a, b) <= 1e-5


def test_fp64_agrees_tightly():
    kw = _inputs(1, 4, 30, 3, dtype=torch.float64)
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = selective_scan_chunked(**kw, delta_softplus=True)
    assert out.dtype == torch.float64
    assert _max_rel(out, ref) <= 1e-6  # both compute in fp32, as mamba does


@pytest.mark.parametrize("backend", ["auto", "torch", "ref"])
def test_dispatch_on_cpu_never_imports_mamba(backend, monkeypatch):
    monkeypatch.setenv("REMAMBER_SCAN", backend)
    calls = []
    for name in ("selective_scan_fused",):
        monkeypatch.setattr(scan_cpu, name, lambda *a, _f=getattr(scan_cpu, name), **k: calls.append(name) or _f(*a, **k))
    kw = _inputs(1, 4, 10, 1)
    out = selective_scan(**kw, delta_softplus=True)
    assert torch.allclose(out, selective_scan_ref(**kw, delta_softplus=True), atol=1e-5, rtol=1e-5)
    assert calls == (["selective_scan_fused"] if backend == "auto" else [])
    assert "mamba_ssm" not in sys.modules


def test_fused_handles_long_sequences_across_chunks_and_batches():
    kw = _inputs(3, 8, 3 * scan_cpu.CHUNK + 5, 2, groups=2)
    leaves = [kw[k].requires_grad_() for k in ("u", "delta", "B", "C")]
    ref = selective_scan_ref(**kw, delta_softplus=True)
    out = scan_cpu.selective_scan_fused(**kw, delta_softplus=True)
    assert _max_rel(out, ref) <= 1e-5
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        assert _max_rel(a, b) <= 1e-5


def _cross_scan_by_index(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    rows = [x[:, :, i, j] for i in range(h) for j in range(w)]
    cols = [x[:, :, i, j] for j in range(w) for i in range(h)]
    seqs = [rows, cols, rows[::-1], cols[::-1]]
    return torch.stack([torch.stack(s, dim=-1) for s in seqs], dim=1)


@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (1, 7)])
def test_cross_scan_orders_and_merge_is_adjoint(hw):
    h, w = hw
    x = torch.randn(2, 3, h, w, requires_grad=True)
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
