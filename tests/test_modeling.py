"""Shapes and gradients of every module, presets, parameter counts, and config round trips."""

from __future__ import annotations

import pytest
import torch

from remamber.modeling.config import ModelConfig
from remamber.modeling.decoder import ConvDecoder, upsample_conv, upsample_conv_ref
from remamber.modeling.presets import PRESETS, build_model, preset_config
from remamber.modeling.ss2d import SS2D
from remamber.modeling.twister import GlobalTextGuidance, LocalTextInteraction, Twister, TwisterLayer
from remamber.modeling.vss import Downsample, PatchEmbed, VSSBlock
from remamber.utils.errors import ConfigError


def _check_grads(module: torch.nn.Module, out: torch.Tensor, *inputs: torch.Tensor) -> None:
    out.square().mean().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got no gradient"
    for x in inputs:
        assert x.grad is not None and torch.isfinite(x.grad).all()


SSM = dict(d_state=2, ssm_ratio=2.0, dt_rank="auto", d_conv=3, conv_bias=False)


@pytest.mark.parametrize("gate", [False, True])
def test_ss2d(gate):
    m = SS2D(16, gate=gate, d_in=24, d_state=2)
    x = torch.randn(2, 24, 5, 6, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 16, 5, 6)
    assert m.x_proj_weight.shape == (4, m.dt_rank + 4, 32) and m.A_logs.shape == (4 * 32, 2)
    assert torch.allclose(m.A_logs.exp()[0], torch.tensor([1.0, 2.0]))  # A = -(1..N)
    dt = torch.nn.functional.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    _check_grads(m, y, x)


def test_patch_embed_downsample_vss_block():
    pe, ds, blk = PatchEmbed(3, 16), Downsample(16, 32), VSSBlock(16, mlp_ratio=2.0, **SSM)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    f = pe(x)
    assert f.shape == (2, 16, 16, 16)
    g = blk(f)
    assert g.shape == f.shape
    h = ds(g)
    assert h.shape == (2, 32, 8, 8)
    mod = torch.nn.ModuleList([pe, ds, blk])
    _check_grads(mod, h, x)


def test_text_guidance_and_twister():
    img = torch.randn(2, 16, 6, 7, requires_grad=True)
    words = torch.randn(2, 5, 24, requires_grad=True)
    pooled = torch.randn(2, 24, requires_grad=True)
    g = GlobalTextGuidance(24, 16)(img, words, pooled)  # every text map is called as (img, words, pooled)
    assert g.shape == img.shape and (g >= 0).all()
    local = LocalTextInteraction(16, 24, 32, n_words=5)(img, words)
    assert local.shape == img.shape
    tw = Twister(16, channel_scan_size=4, **SSM)
    assert tw.ss1d.gate and not tw.ss2d.gate and tw.ss2d.in_proj.in_features == 48
    layer = TwisterLayer(16, 2, text_dim=24, local_hidden=32, n_words=5, channel_scan_size=4, **SSM)
    out = layer(img, words, pooled)
    assert out.shape == img.shape
    _check_grads(layer, out, img, words, pooled)


def test_decoder_upsamples_to_4x_finest():
    dims = [8, 16, 32, 64]
    feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i, requires_grad=True) for i, c in enumerate(dims)]
    dec = ConvDecoder(dims, 24)
    out = dec(feats)
    assert out.shape == (2, 1, 128, 128)
    _check_grads(dec, out, *feats)


@pytest.mark.parametrize(
    "cin, cout, k, align", [(64, 1, 3, True), (40, 2, 3, False), (50, 1, 5, True), (8, 1, 3, True)]
)
def test_upsample_conv_matches_the_plain_composition(cin, cout, k, align):
    """The decoder's last layer with its taps before the upsampling, forward and backward; the
    last case (8 channels, 9 taps) takes the plain path."""
    g = torch.Generator().manual_seed(0)
    up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align)
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
    x = torch.randn(2, cin, 11, 14, generator=g, requires_grad=True)
    out, ref = upsample_conv(x, up, conv), upsample_conv_ref(x, up, conv)
    assert out.shape == ref.shape == (2, cout, 22, 28)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    grad = torch.randn(ref.shape, generator=g)
    leaves = [x, conv.weight, conv.bias]
    for a, b in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_tiny_model_forward_backward(tiny_model):
    model = build_model("tiny").train()
    ids, mask, truncated = model.tokenize(["the red circle", "the big blue square on the left"])
    assert ids.shape == (2, 20) and mask[0].sum() == 5 and truncated == [False, False]
    x = torch.randn(2, 3, 128, 128)
    logits = model(x, ids, mask)
    assert logits.shape == (2, 1, 128, 128)
    out = model(x, ids, mask, return_presence=True)
    assert out.presence_logits.shape == (2,) and torch.equal(out.logits, logits)
    _check_grads(model, torch.cat([out.logits.flatten(), out.presence_logits]))  # the presence head's too


def test_padding_is_masked_in_the_text_encoder(tiny_model):
    """Padding tokens must not change the words that precede them."""
    ids, mask, _ = tiny_model.tokenize(["red circle"])
    words, _ = tiny_model.text_encoder(ids, mask)
    other = ids.clone()
    other[0, mask[0] == 0] = 7  # different ids in the padded positions
    words2, _ = tiny_model.text_encoder(other, mask)
    n = int(mask.sum())
    assert torch.allclose(words[0, :n], words2[0, :n], atol=1e-6)


def test_truncation_is_reported(tiny_model):
    _, _, truncated = tiny_model.tokenize(["red " * 30])
    assert truncated == [True]


def test_base_parameter_counts_match_official():
    """Official ReMamber_Conv base, read off the official model (shared/DESIGN.md section 7); the
    official model has no presence head, which alone the base preset adds."""
    with_head = build_model("base").parameter_counts()
    counts = {
        k: v / 1e6
        for k, v in build_model(preset_config("base").replace(presence_head=False)).parameter_counts().items()
    }
    print("base parameter counts (M):", {k: round(v, 2) for k, v in counts.items()})
    official = dict(
        total=254.6, text=123.1, visual=131.5, backbone=87.5, twister=29.1, global_text=1.5, local_text=3.9, decoder=9.5
    )
    for key, value in official.items():
        assert round(counts[key], 1) == value, (key, counts[key])
    assert counts["presence"] == 0 and with_head["presence"] > 0
    assert with_head["total"] - with_head["presence"] == round(counts["total"] * 1e6)


def test_presets_build_and_unknown_preset_is_refused():
    assert set(PRESETS) == {"tiny", "small", "medium", "base", "base-mamba"}
    assert preset_config("medium") == preset_config("small").replace(preset="medium", depths=[2, 2, 15, 2])
    assert preset_config("base").image_size == 480 and preset_config("base").dims == [128, 256, 512, 1024]
    assert preset_config("small").text_dim == 512
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_config_round_trip_and_validation(tiny_model):
    cfg = tiny_model.config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown fields: colour"):
        ModelConfig.from_dict(dict(cfg.to_dict(), colour="red"))
    with pytest.raises(ConfigError, match="multiple of 32"):
        ModelConfig.from_dict(dict(cfg.to_dict(), image_size=100))
    with pytest.raises(ConfigError, match="4 entries"):
        ModelConfig.from_dict(dict(cfg.to_dict(), dims=[1, 2]))
    with pytest.raises(ConfigError, match=r"dims\[0\] must be an integer >= 1 \(got 'a'\)"):
        ModelConfig.from_dict(dict(cfg.to_dict(), dims=["a", "b", "c", "d"]))
    for name, value in (
        ("image_size", "big"),
        ("pixel_std", [0.0, 0.0, 0.0]),
        ("ssm_ratio", float("nan")),
        ("conv_bias", "no"),
        ("text_config", "clip"),
        ("text_config", dict(cfg.text_config, hidden_size="big")),
        ("text_pooling", 3),
    ):
        with pytest.raises(ConfigError, match=name.split("_")[0]):
            ModelConfig.from_dict(dict(cfg.to_dict(), **{name: value}))
