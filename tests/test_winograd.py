"""Winograd F(4x4, 3x3) convolutions (an inference path) against the plain convolution, and when
the fused decoder (remamber.inference.fuse) takes them."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from remamber.inference.fuse import ConvBNReLU, FusedModelError, fuse
from remamber.modeling.decoder import ConvDecoder
from remamber.modeling.layers import BatchNorm2d
from remamber.ops import winograd
from remamber.ops.winograd import conv3x3_ref, conv3x3_winograd, use_winograd

TOL = 5e-5  # max error relative to the largest output; F(4, 3) in float32 measures about 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "n, cin, cout, h, w, bias, block",
    [
        (1, 16, 8, 8, 8, True, winograd.BLOCK_FLOATS),
        (2, 5, 3, 7, 9, False, winograd.BLOCK_FLOATS),  # sizes that are not multiples of the tile
        (1, 3, 4, 1, 1, True, winograd.BLOCK_FLOATS),  # one pixel: every tap but the centre is padding
        (2, 6, 5, 13, 6, True, 36 * 2 * 2 * 6),  # one tile row per block: four blocks
    ],
)
def test_winograd_matches_the_plain_convolution(n, cin, cout, h, w, bias, block):
    g = torch.Generator().manual_seed(h * w + cin)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    ref = conv3x3_ref(x, weight, b)
    with torch.inference_mode():
        out = conv3x3_winograd(x, weight, b, block_floats=block)
        assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert _rel(out, ref) <= TOL
        # the filters made beforehand, and a channels-last input
        given = conv3x3_winograd(
            x.to(memory_format=torch.channels_last), weight, b, winograd.winograd_filters(weight), block
        )
        assert torch.equal(given, out)


def _conv_bn_relu(cin: int, cout: int, seed: int = 0) -> nn.Sequential:
    """Conv 3x3, BatchNorm with trained-like statistics (so that folding them is tested), ReLU; eval mode."""
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), BatchNorm2d(cout), nn.ReLU()).eval()
    bn = seq[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.3, 0.3)
    return seq


def test_fused_conv_makes_its_filters_once_at_fuse_time(monkeypatch):
    seq = _conv_bn_relu(128, 128)
    x = torch.randn(1, 128, 48, 48)
    with torch.inference_mode():
        plain = seq(x)
    made = []
    filters = winograd.winograd_filters
    monkeypatch.setattr(winograd, "winograd_filters", lambda w: made.append(1) or filters(w))
    fuse(seq)
    assert isinstance(seq[0], ConvBNReLU) and isinstance(seq[1], nn.Identity) and len(made) == 1
    with torch.inference_mode():
        first = seq(x)
        assert torch.equal(seq(x), first) and len(made) == 1  # no filters made per call
    assert _rel(first, plain) <= TOL
    fuse(seq)  # idempotent: nothing left to fuse
    assert isinstance(seq[0], ConvBNReLU) and len(made) == 1


def test_winograd_is_taken_for_large_cpu_inference_only(monkeypatch):
    x = torch.randn(1, 128, 48, 48)
    conv = nn.Conv2d(128, 128, 3, padding=1)
    with torch.no_grad():
        assert use_winograd(x, conv.weight, conv.bias)
        assert not use_winograd(x[:, :, :40, :40], conv.weight, conv.bias)  # too few pixels
        assert not use_winograd(x[:, :64], conv.weight[:, :64], conv.bias)  # too few channels
        assert not use_winograd(x.double(), conv.weight.double(), conv.bias.double())
    assert not use_winograd(x, conv.weight, conv.bias)  # the weights want gradients: training keeps F.conv2d
    with torch.inference_mode():
        assert use_winograd(x, conv.weight, conv.bias)
        narrow = _conv_bn_relu(64, 128)
        plain = narrow(x[:, :64])
        narrow = fuse(narrow)[0]
        assert narrow.filters is None  # too few channels: never Winograd, the BatchNorm folded into the weights
        assert _rel(narrow(x[:, :64]), plain) <= 1e-6
        wide = _conv_bn_relu(128, 128)
        plain = wide(x)
        fused = fuse(wide)[0]
        assert _rel(fused(x), plain) <= TOL
        assert fused(x[:0]).shape == (0, 128, 48, 48)  # an empty batch
        assert not use_winograd(x, torch.randn(128, 128, 5, 5))  # not a 3x3 kernel
        assert not use_winograd(x, conv.weight, conv.bias.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 products: the direct convolution
            assert not use_winograd(x, conv.weight, conv.bias)
        monkeypatch.setattr(winograd.numba_utils, "AVAILABLE", False)  # no numba: the direct convolution
        assert not use_winograd(x, conv.weight, conv.bias)
        assert fuse(_conv_bn_relu(128, 128))[0].filters is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_winograd_is_not_traced_into_an_export():
    seq = fuse(_conv_bn_relu(128, 128))
    x = torch.randn(1, 128, 48, 48)
    with torch.no_grad():
        traced = torch.jit.trace(seq, x, check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::bmm" not in kinds


def test_decoder_with_winograd_matches_the_plain_decoder(monkeypatch):
    torch.manual_seed(0)
    dims, hidden = [32, 64, 96, 128], 128
    decoder = ConvDecoder(dims, hidden).eval()
    assert type(decoder.neck[0]) is nn.Conv2d and type(decoder.neck[4]) is nn.Conv2d  # plain PyTorch unfused
    assert set(decoder.neck[0].state_dict()) == {"weight", "bias"}
    keys = list(decoder.state_dict())
    for bn in (decoder.neck[1], decoder.neck[5]):  # trained-like statistics, so that folding them is tested
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
    feats = [torch.randn(1, d, 56 // 2**i, 56 // 2**i) for i, d in enumerate(dims)]
    taken = []
    monkeypatch.setattr(
        "remamber.ops.winograd.conv3x3_winograd", lambda *a, **k: taken.append(sorted(k)) or conv3x3_winograd(*a, **k)
    )
    with torch.inference_mode():
        plain = decoder(feats)
        assert taken == []  # the unfused decoder never takes Winograd
        fuse(decoder)
        fast = decoder(feats)
    assert taken == [["affine", "relu"]] * 2 and _rel(fast, plain) <= TOL  # BatchNorm and ReLU folded in
    with pytest.raises(FusedModelError, match="cannot compute gradients"):
        decoder([f.requires_grad_() for f in feats])
    with pytest.raises(FusedModelError, match="cannot train"):
        decoder.neck[0].train()
    with pytest.raises(FusedModelError, match="cannot be saved"):
        decoder.state_dict()
    from remamber.inference.fuse import unfuse

    unfuse(decoder)
    assert list(decoder.state_dict()) == keys and type(decoder.neck[0]) is nn.Conv2d


def test_fuse_leaves_hooked_runs_alone():
    seq = _conv_bn_relu(128, 128)
    seq[1].register_forward_hook(lambda *a: None)  # hooks run only through module calls: keep the modules
    fuse(seq)
    assert type(seq[0]) is nn.Conv2d


@pytest.mark.parametrize("bias", [False, True])
def test_winograd_applies_a_folded_batchnorm_and_relu(bias):
    g = torch.Generator().manual_seed(5)
    x, weight = torch.randn(2, 7, 11, 9, generator=g), torch.randn(6, 7, 3, 3, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    scale, shift = torch.rand(6, generator=g) + 0.5, torch.randn(6, generator=g)
    affine = conv3x3_ref(x, weight, b) * scale[:, None, None] + shift[:, None, None]
    assert (affine < 0).any()
    with torch.inference_mode():
        assert _rel(conv3x3_winograd(x, weight, b, affine=(scale, shift)), affine) <= TOL
        assert _rel(conv3x3_winograd(x, weight, b, affine=(scale, shift), relu=True), torch.relu(affine)) <= TOL
