"""The Mamba decoder (ReMamber_Mamba, ``decoder="mamba"``): the official structure, forward and
backward, save and load, fused against unfused, ONNX, its settings, and ``remamber train
--decoder``. Parity with the official code is tests/test_official.py's (its Mamba fixture)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from model_fixtures import assert_one_line_error, run_cli

from remamber.hub.folders import load_pretrained, save_pretrained
from remamber.modeling.config import ModelConfig
from remamber.modeling.decoder import MambaDecoder, UpSample2D
from remamber.modeling.presets import build_model, preset_config
from remamber.modeling.ss2d import SS2D
from remamber.utils.errors import ConfigError

# A micro tiny model with the Mamba decoder: every level has blocks, the second two.
MICRO = preset_config("tiny").replace(
    image_size=64,
    dims=[8, 16, 32, 64],
    depths=[1, 1, 1, 1],
    local_hidden=8,
    channel_scan_size=4,
    decoder="mamba",
    decoder_depths=[1, 2, 1, 1],
    decoder_local_hidden=12,
)


def _model(cfg: ModelConfig = MICRO, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def _inputs(model, n: int = 2):
    g = torch.Generator().manual_seed(1)
    image = torch.randn(n, 3, model.config.image_size, model.config.image_size, generator=g)
    ids, mask, _ = model.tokenize(["the second green square from the left", "a star"][:n])
    return image, ids, mask


def _trained_like(model: nn.Module) -> nn.Module:
    """BatchNorms with statistics and affine terms of their own, so that folding them is tested."""
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def test_the_decoder_has_the_official_structure():
    """Official MambaDecoder (DESIGN.md section 8): per level coarse to fine, the text maps, in_proj
    3C -> C, plain SS2D blocks without MLP, UpSample2D to C / 2, the skip merge on the first three."""
    decoder = _model().decoder
    assert isinstance(decoder, MambaDecoder) and len(decoder.levels) == 4
    widths = [64, 32, 16, 8]
    for i, level in enumerate(decoder.levels):
        assert level.in_proj.weight.shape == (widths[i], 3 * widths[i])
        assert len(level.blocks) == MICRO.decoder_depths[i]
        assert all(type(b.op) is SS2D and b.mlp is None and not b.op.gate for b in level.blocks)
        assert isinstance(level.upsample, UpSample2D) and level.upsample.proj.weight.shape == (
            widths[i] // 2,
            widths[i],
        )
        assert level.local_text.unsqueeze[0].weight.shape == (12, MICRO.max_text_len, 3, 3)
        assert (level.skip is None) == (i == 3)
    assert decoder.levels[0].skip[0].weight.shape == (32, 64, 3, 3)
    assert decoder.proj_out[1][0].weight.shape == (4, 4, 3, 3) and decoder.proj_out[2].weight.shape == (1, 4, 3, 3)
    # the official base ReMamber_Mamba decoder has 36.46M parameters (conv decoder: 9.48M)
    base = MambaDecoder.from_config(preset_config("base-mamba"))
    assert round(sum(p.numel() for p in base.parameters()) / 1e6, 2) == 36.46
    assert preset_config("base-mamba").replace(preset="base", decoder="conv") == preset_config("base")


def test_forward_and_backward_reach_every_parameter_and_read_the_text():
    model = _model()
    image, ids, mask = _inputs(model)
    out = model(image, ids, mask)
    assert out.shape == (2, 1, 64, 64)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.decoder.named_parameters()), [
        n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum()
    ]
    model.eval()
    with torch.no_grad():
        words, _ = model.text_encoder(ids, mask)
        feats = model.encoder(image, words, words[:, 0], mask)
        other = torch.randn_like(words)
        assert (model.decoder(feats, words) - model.decoder(feats, other)).abs().max() > 1e-4


def test_a_model_folder_rebuilds_the_decoder(tmp_path):
    model = _model().eval()
    inputs = _inputs(model, 1)
    with torch.no_grad():
        expected = model(*inputs)
    folder = save_pretrained(model, tmp_path / "m")
    saved = json.loads((folder / "config.json").read_text())
    assert (saved["decoder"], saved["decoder_depths"], saved["decoder_local_hidden"]) == ("mamba", [1, 2, 1, 1], 12)
    assert "- variant: decoder mamba, decoder_depths [1, 2, 1, 1]" in (folder / "README.md").read_text()
    loaded = load_pretrained(folder)
    assert isinstance(loaded.decoder, MambaDecoder)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), expected)


def test_the_fused_model_gives_the_unfused_logits(monkeypatch):
    from remamber.inference.fuse import ConvBNReLU, FusedSS2D
    from remamber.ops import numba_utils, ss2d_cpu

    if not numba_utils.AVAILABLE:
        pytest.skip("needs numba")
    model = _trained_like(_model().eval())
    inputs = _inputs(model)
    with torch.inference_mode():
        plain = model(*inputs)
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: True)  # small calls take the kernel too
    model.fuse()
    decoder = model.decoder
    assert all(type(b.op) is FusedSS2D for level in decoder.levels for b in level.blocks)
    assert all(isinstance(level.skip[i], ConvBNReLU) for level in decoder.levels[:3] for i in (0, 3))
    assert isinstance(decoder.proj_out[1][0], ConvBNReLU)
    with torch.inference_mode():
        fused = model(*inputs)
    assert (fused - plain).abs().max() <= 5e-5 * plain.abs().max()
    model.unfuse()
    with torch.inference_mode():
        assert torch.equal(model(*inputs), plain)


def test_onnx_export_verifies(tmp_path):
    from remamber.export.onnx import export_onnx

    # the fewest scans that still pass through every level: export time grows with them
    cfg = MICRO.replace(depths=[0, 0, 0, 0], twister_depths=[0, 0, 0, 0], decoder_depths=[1, 0, 0, 1])
    folder = save_pretrained(_trained_like(_model(cfg).eval()), tmp_path / "m")
    _, report = export_onnx(str(folder), tmp_path / "onnx", verify=True)
    assert report["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["decoder"] == "mamba"


def test_decoder_settings_are_validated():
    cfg = MICRO.to_dict()
    with pytest.raises(ConfigError, match="unknown decoder 'unet' \\(known: conv, mamba\\)"):
        ModelConfig.from_dict(dict(cfg, decoder="unet"))
    with pytest.raises(ConfigError, match="decoder_depths must be a list of 4 entries"):
        ModelConfig.from_dict(dict(cfg, decoder_depths=[2, 2]))
    with pytest.raises(ConfigError, match=r"decoder_depths\[1\] must be an integer >= 0"):
        ModelConfig.from_dict(dict(cfg, decoder_depths=[1, -1, 1, 1]))
    with pytest.raises(ConfigError, match="decoder_local_hidden must be an integer >= 1"):
        ModelConfig.from_dict(dict(cfg, decoder_local_hidden=0))
    old = {
        k: v for k, v in preset_config("tiny").to_dict().items() if k not in ("decoder_depths", "decoder_local_hidden")
    }
    assert ModelConfig.from_dict(old).decoder_depths == [2, 4, 2, 2]  # folders saved before the Mamba decoder load


def test_train_cli_builds_the_mamba_decoder(small_shapes, tmp_path):
    common = ["train", "--data", str(small_shapes), "--preset", "tiny", "--image-size", "64", "--batch-size", "2"]
    common += ["--max-steps", "1", "--val-split", "", "--limit", "2"]
    out = tmp_path / "run"
    res = run_cli(*common, "--out", str(out), "--decoder", "mamba")
    assert res.code == 0, res.stderr
    saved = json.loads((out / "checkpoints" / "last" / "config.json").read_text())
    assert (saved["decoder"], saved["decoder_depths"]) == ("mamba", [2, 4, 2, 2])
    assert_one_line_error(
        run_cli(*common, "--out", str(tmp_path / "bad"), "--decoder", "unet"), "unknown decoder 'unet'"
    )
