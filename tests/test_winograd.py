"""Winograd F(4x4, 3x3) convolutions (an inference path) against the plain convolution, and when
the decoder takes them."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from remamber.modeling.decoder import Conv3x3, ConvDecoder
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


def test_decoder_conv_makes_its_filters_once_per_weight(monkeypatch):
    conv = Conv3x3(128, 128).eval()
    x = torch.randn(1, 128, 48, 48)
    made = []
    filters = winograd.winograd_filters
    monkeypatch.setattr(winograd, "winograd_filters", lambda w: made.append(1) or filters(w))
    with torch.inference_mode():
        first = conv(x)
        assert torch.equal(conv(x), first) and len(made) == 1
    with torch.no_grad():
        conv.weight.mul_(2.0)  # an in-place change: a new version of the weight
    with torch.inference_mode():
        assert len(made) == 1 and _rel(conv(x), conv3x3_ref(x, conv.weight, conv.bias)) <= TOL and len(made) == 2
    other = Conv3x3(128, 128).state_dict()
    conv.load_state_dict(other, assign=True)  # another tensor
    with torch.inference_mode():
        assert _rel(conv(x), conv3x3_ref(x, other["weight"], other["bias"])) <= TOL and len(made) == 3
    assert copy.deepcopy(conv)._filters is None and pickle.loads(pickle.dumps(conv))._filters is None
    conv.float()  # .to() and the like drop them
    assert conv._filters is None


def test_winograd_is_taken_for_large_cpu_inference_only(monkeypatch):
    x = torch.randn(1, 128, 48, 48)
    conv = Conv3x3(128, 128)
    with torch.no_grad():
        assert use_winograd(x, conv.weight, conv.bias)
        assert not use_winograd(x[:, :, :40, :40], conv.weight, conv.bias)  # too few pixels
        assert not use_winograd(x[:, :64], conv.weight[:, :64], conv.bias)  # too few channels
        assert not use_winograd(x.double(), conv.weight.double(), conv.bias.double())
    assert not use_winograd(x, conv.weight, conv.bias)  # the weights want gradients: training keeps F.conv2d
    with torch.inference_mode():
        assert use_winograd(x, conv.weight, conv.bias)
        narrow = Conv3x3(64, 128)
        assert torch.equal(narrow(x[:, :64]), conv3x3_ref(x[:, :64], narrow.weight, narrow.bias))
        assert _rel(conv(x), conv3x3_ref(x, conv.weight, conv.bias)) <= TOL
        assert conv(x[:0]).shape == (0, 128, 48, 48)  # an empty batch
        assert not use_winograd(x, torch.randn(128, 128, 5, 5))  # not a 3x3 kernel
        assert not use_winograd(x, conv.weight, conv.bias.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 products: the direct convolution
            assert not use_winograd(x, conv.weight, conv.bias)
        monkeypatch.setattr(winograd.scan_cpu, "AVAILABLE", False)  # no numba: the direct convolution
        assert not use_winograd(x, conv.weight, conv.bias)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_winograd_is_not_traced_into_an_export():
    conv = Conv3x3(128, 128).eval()
    x = torch.randn(1, 128, 48, 48)
    with torch.no_grad():
        traced = torch.jit.trace(conv, x, check_trace=False)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::bmm" not in kinds


def test_decoder_with_winograd_matches_the_plain_decoder(monkeypatch):
    torch.manual_seed(0)
    dims, hidden = [32, 64, 96, 128], 128
    decoder = ConvDecoder(dims, hidden).eval()
    assert isinstance(decoder.neck[0], Conv3x3) and isinstance(decoder.neck[4], Conv3x3)
    assert set(decoder.neck[0].state_dict()) == {"weight", "bias"}  # same keys as nn.Conv2d
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
        fast = decoder(feats)
        monkeypatch.setattr("remamber.ops.winograd.use_winograd", lambda *a: False)
        plain = decoder(feats)
    assert taken == [["affine", "relu"]] * 2 and _rel(fast, plain) <= TOL  # BatchNorm and ReLU folded in
    monkeypatch.setattr("remamber.ops.winograd.use_winograd", use_winograd)  # the real one again
    taken.clear()
    with torch.inference_mode():
        handle = decoder.neck[5].register_forward_hook(lambda *a: None)  # hooks run only through module calls
        decoder(feats)
        handle.remove()
    assert taken == [["affine", "relu"], []]
    taken.clear()
    decoder.requires_grad_(False)  # all frozen but the neck's BatchNorms: no folding, gradients reach them
    decoder.neck[1].requires_grad_(True)
    decoder.neck[5].requires_grad_(True)
    assert use_winograd(feats[0].new_empty(1, 160, 56, 56), decoder.neck[0].weight, decoder.neck[0].bias)
    decoder(feats).sum().backward()
    # the first convolution by Winograd alone (BatchNorm applied after it); the second's input wants
    # gradients, so the direct convolution
    assert taken == [[]] and decoder.neck[1].weight.grad is not None
    decoder.train()  # batch statistics: no folding
    with torch.no_grad():
        decoder(feats)
    assert taken == [[], [], []]


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
