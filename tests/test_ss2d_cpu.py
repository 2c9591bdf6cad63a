"""SS2D's fused CPU inference scan (cross-scan, selective scan, cross-merge in one kernel) against
the plain composition, and the fused SS2D (remamber.inference.fuse) that runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from remamber.inference.fuse import FusedModelError, FusedSS2D, fuse, unfuse
from remamber.modeling.ss2d import SS2D
from remamber.ops import numba_utils, scan_backend, ss2d_cpu

pytestmark = pytest.mark.skipif(not numba_utils.AVAILABLE, reason="needs numba")


def _weights(d: int, n: int, rank: int, a_max: float = 3.0, dt_max: float = 1.0, seed: int = 0):
    """SS2D's scan parameters; ``A = -exp(A_log)`` down to ``-exp(a_max)``, delta biases up to ``dt_max``."""
    g = torch.Generator().manual_seed(seed)
    x_proj = torch.randn(4, rank + 2 * n, d, generator=g) / d**0.5
    dt_proj = torch.randn(4, d, rank, generator=g) / rank**0.5
    dt_bias = torch.rand(4, d, generator=g) * (dt_max + 4.0) - 4.0
    A = -torch.exp(torch.rand(4 * d, n, generator=g) * (a_max + 1.0) - 1.0)
    D = torch.randn(4 * d, generator=g)
    return x_proj, dt_proj, dt_bias, A, D


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


SHAPES = [
    dict(b=2, d=8, h=5, w=7, n=1, r=3),
    dict(b=1, d=40, h=9, w=4, n=2, r=6),  # ranks four at a time and one by one; blocks of 32 and 8 on 2 threads
    dict(b=2, d=16, h=1, w=40, n=1, r=4),  # the Twister's channel scan: one row
    dict(b=1, d=24, h=6, w=6, n=16, r=3),
    dict(b=1, d=17, h=3, w=3, n=1, r=1),
    dict(b=1, d=32, h=30, w=31, n=1, r=9),  # 930 steps per order
]


@pytest.mark.parametrize("s", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("deltas", ["in-kernel", "batched-product"])
def test_fused_matches_the_composition(s, channels_last, deltas, monkeypatch):
    if deltas == "batched-product":
        monkeypatch.setattr(ss2d_cpu, "MAX_RANK_INSIDE", 0)
    x = torch.randn(s["b"], s["d"], s["h"], s["w"], generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weights = _weights(s["d"], s["n"], rank=s["r"])
    out = ss2d_cpu.cross_selective_scan(x, *weights)
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _max_rel(out, ss2d_cpu.cross_selective_scan_ref(x, *weights)) <= 1e-5


@pytest.mark.parametrize("rank", [4, 2 * ss2d_cpu.MAX_RANK_INSIDE])  # deltas made in the kernel, and read
def test_trained_weight_ranges(rank):
    """A down to -50, deltas up to ~5, 4096 steps per order: nothing overflows, same numbers."""
    x = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(2))
    weights = _weights(32, 1, rank=rank, a_max=3.92, dt_max=5.0)
    assert weights[3].min() < -45
    assert _max_rel(ss2d_cpu.cross_selective_scan(x, *weights), ss2d_cpu.cross_selective_scan_ref(x, *weights)) <= 1e-5


@pytest.mark.parametrize("block", [16, 32, 256])
def test_any_channel_block_gives_the_same_result(block, monkeypatch):
    x = torch.randn(2, 48, 7, 5, generator=torch.Generator().manual_seed(3))
    weights = _weights(48, 1, rank=2)
    whole = ss2d_cpu.cross_selective_scan(x, *weights)
    monkeypatch.setattr(ss2d_cpu, "block_size", lambda b, d: block)
    assert torch.equal(ss2d_cpu.cross_selective_scan(x, *weights), whole)


def _module(gate: bool) -> SS2D:
    torch.manual_seed(0)
    m = SS2D(12, gate=gate).eval()
    with torch.no_grad():
        m.A_logs.uniform_(-1.0, 3.9)
        m.dt_projs_bias.uniform_(-4.0, 1.6)
    return m


@pytest.mark.parametrize("gate", [False, True])
def test_fused_ss2d_takes_the_kernel_and_matches_the_reference_scan(gate, monkeypatch):
    m = _module(gate)
    x = torch.randn(2, 12, 6, 5)
    calls = []
    fused = ss2d_cpu.cross_selective_scan
    monkeypatch.setattr(ss2d_cpu, "cross_selective_scan", lambda *a: calls.append(1) or fused(*a))
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: True)  # small call: as once the kernel is in the process
    with torch.inference_mode():
        with scan_backend("ref"):  # the composed path with the plain reference loop
            ref = m(x)
        assert calls == []  # an unfused SS2D is plain PyTorch: never the kernel
        fuse(m)
        assert type(m) is FusedSS2D and fuse(m) is m and type(m) is FusedSS2D  # idempotent
        y = m(x)
        assert calls == [1]
    assert _max_rel(y, ref) <= 1e-5
    unfuse(m)
    assert type(m) is SS2D and "fused_A" not in dict(m.named_buffers())


def test_training_text_and_other_backends_take_the_composed_path(monkeypatch):
    m = _module(gate=False)
    x = torch.randn(1, 12, 4, 4)
    monkeypatch.setattr(ss2d_cpu, "cross_selective_scan", lambda *a: pytest.fail("fused path taken"))
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: True)
    y = m(x)  # parameters require grad: a training call
    y.sum().backward()
    assert m.x_proj_weight.grad is not None
    with scan_backend("torch"):  # fusing under another backend leaves the SS2D as it is
        assert type(fuse(m)) is SS2D
    fuse(m)
    with pytest.raises(FusedModelError, match="cannot compute gradients"):
        m(x)  # a fused module refuses a call that wants gradients
    with pytest.raises(FusedModelError, match="cannot train"):
        m.train()
    with torch.no_grad():
        m(x, text=torch.randn(1, 3, 12))  # in-context text tokens: the composed path


def test_small_calls_wait_for_the_kernel_to_be_compiled(monkeypatch):
    x = torch.randn(1, 8, 4, 4)
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: False)
    assert not ss2d_cpu.takes(x, 1)
    assert ss2d_cpu.takes(torch.empty(1, 1024, 32, 32), 1)  # 4 Mi state updates: worth compiling
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: True)
    assert ss2d_cpu.takes(x, 1)
    assert not ss2d_cpu.takes(x.to("meta"), 1)  # not on the CPU


@pytest.mark.parametrize(
    "threads,b,d,expected", [(2, 1, 256, 128), (2, 1, 1024, 256), (16, 1, 256, 16), (2, 1, 24, 16), (4, 2, 100, 64)]
)
def test_block_size(threads, b, d, expected, monkeypatch):
    monkeypatch.setattr(numba_utils.numba, "get_num_threads", lambda: threads)
    assert ss2d_cpu.block_size(b, d) == expected


def test_fused_on_a_target_without_avx512_matches_the_composition(tmp_path):
    """numba compiling for a generic x86-64 (the bit-built exp2, narrower vectors)."""
    code = """
import torch
from remamber.ops import numba_utils, ss2d_cpu
assert numba_utils.fast_exp2 is numba_utils.exp2_bits
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 20, 7, 9, generator=g)
weights = (torch.randn(4, 4, 20, generator=g) / 4, torch.randn(4, 20, 2, generator=g), torch.randn(4, 20, generator=g),
           -torch.rand(80, 1, generator=g) * 20, torch.randn(80, generator=g))
for inside in (2, 0):  # deltas made in the kernel, and read
    ss2d_cpu.MAX_RANK_INSIDE = inside
    a, b = ss2d_cpu.cross_selective_scan(x, *weights), ss2d_cpu.cross_selective_scan_ref(x, *weights)
    print(((a - b).abs().max() / b.abs().max()).item())
"""
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert all(float(v) <= 1e-5 for v in proc.stdout.split()), proc.stdout


def test_preload_brings_the_kernel_into_a_fresh_process(tmp_path):
    code = """
from remamber.ops import ss2d_cpu
before = ss2d_cpu.compiled()
print(before, ss2d_cpu.preload(), len(ss2d_cpu._cross_forward.signatures))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "2"]  # both variants: deltas made inside, and read
