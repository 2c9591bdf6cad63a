"""Fusion, scan-order, interaction and backbone variants: the hybrid scan against its loop,
what each variant does to information flow, and every combination built, trained one step,
saved and loaded."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import assert_one_line_error, run_cli

from remamber.hub.folders import load_pretrained, save_pretrained
from remamber.modeling.backbones import GatedCNNBlock, MambaVisionMixer, SelfAttention
from remamber.modeling.config import BACKBONES, FUSIONS, INTERACTIONS, SCANS, ModelConfig
from remamber.modeling.fusion import HybridSS2D
from remamber.modeling.presets import build_model, preset_config
from remamber.modeling.ss2d import SS2D
from remamber.ops.hybrid_scan import hybrid_scan, hybrid_scan_ref
from remamber.utils.errors import ConfigError

# A micro tiny preset: every variant builds and runs in well under a second.
MICRO = preset_config("tiny").replace(
    image_size=64, dims=[16, 32, 32, 64], local_hidden=16, decoder_dim=16, channel_scan_size=4
)

COMBOS = [dict(fusion=f, backbone=b) for f in FUSIONS for b in BACKBONES] + [
    dict(scan=s, interaction=i, backbone=b)
    for s in SCANS
    for i in INTERACTIONS
    for b in BACKBONES
    if (s, i) != (SCANS[0], INTERACTIONS[0])
]


def _hybrid_inputs(every_padding: int = 2):
    g = torch.Generator().manual_seed(0)
    b, K, d, n, l, t = 2, 4, 5, 3, 37, 6
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    sdelta = torch.rand(b, K, d, t, generator=g, dtype=torch.float64) * 0.5
    sdelta[..., t - every_padding :] = 0.0  # padded text tokens
    args = [
        r(b, K, d, l),
        torch.rand(b, K, d, l, generator=g, dtype=torch.float64) * 5.0,  # u, delta up to 5
        -torch.rand(K, d, n, generator=g, dtype=torch.float64) * 50.0,  # A down to -50
        r(b, K, n, l),
        r(b, K, n, l),
        r(K, d),
        r(b, K, d, t),
        sdelta,
        r(b, K, n, t),
    ]
    return [a.requires_grad_() for a in args]


@pytest.mark.parametrize("every", [1, 7, 64])
def test_hybrid_scan_matches_its_loop_forward_and_backward(every):
    args = _hybrid_inputs()
    ref, fast = hybrid_scan_ref(*args, every), hybrid_scan(*args, every)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-10)
    g_ref = torch.autograd.grad(ref.square().sum(), args)
    g_fast = torch.autograd.grad(fast.square().sum(), args)
    for a, b in zip(g_ref, g_fast):
        assert torch.allclose(b, a, rtol=1e-9, atol=1e-9 * float(a.abs().max()))


def test_hybrid_scan_skips_padded_support_tokens():
    args = [a.detach() for a in _hybrid_inputs(every_padding=2)]
    full = hybrid_scan(*args, 8)
    trimmed = args[:6] + [args[6][..., :-2], args[7][..., :-2], args[8][..., :-2]]
    assert torch.allclose(hybrid_scan(*trimmed, 8), full, atol=1e-12)


def _flow(op, text=None, mask=None):
    """Which output pixels change when one input pixel of a 12x12 map changes."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 12, 12)
    y = x.clone()
    y[0, :, 6, 6] += 1.0
    with torch.no_grad():
        a, b = (op(v) if text is None else op(v, text, mask) for v in (x, y))
    return (a - b).abs().amax(1)[0] > 1e-6


def test_hmnet_image_tokens_do_not_mix_but_plain_ss2d_tokens_do():
    text, mask = torch.randn(1, 5, 8), torch.tensor([[1, 1, 1, 0, 0]])
    hybrid = _flow(HybridSS2D(8, recap_every=16), text, mask)
    assert hybrid.sum() == 9 and hybrid[5:8, 5:8].all()  # the 3x3 depthwise conv only
    assert _flow(SS2D(8)).sum() > 100


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_reads_the_text(fusion):
    torch.manual_seed(0)
    model = build_model(MICRO.replace(fusion=fusion)).eval()
    for p in model.parameters():  # FiLM starts as the identity: move every weight off zero
        p.data.add_(0.01 * torch.randn_like(p))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = [model(image, *model.tokenize([t])[:2]) for t in ("the red circle", "the blue star on the left")]
    assert (outs[0] - outs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", COMBOS, ids=lambda c: "-".join(c.values()))
def test_every_combination_builds_trains_saves_and_loads(variant, tmp_path):
    torch.manual_seed(0)
    model = build_model(MICRO.replace(**variant))
    ids, mask, _ = model.tokenize(["the second green square from the left", "a star"])
    out = model(torch.randn(2, 3, 64, 64), ids, mask, return_presence=True)
    (out.logits.mean() + out.presence_logits.mean()).backward()  # as training: the mask and presence losses
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(image, ids[:1], mask[:1])
    folder = save_pretrained(model, tmp_path / "m")
    assert {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k in variant} == variant
    is_default = all(getattr(ModelConfig(), k) == v for k, v in variant.items())
    assert ("- variant:" in (folder / "README.md").read_text()) != is_default
    loaded = load_pretrained(folder)
    with torch.no_grad():
        assert torch.allclose(loaded(image, ids[:1], mask[:1]), expected, atol=1e-6)


def test_default_variant_keeps_the_official_layout():
    model = build_model(MICRO)
    names = set(model.state_dict())
    assert "encoder.stages.0.twister.blocks.0.mixer.ss1d.A_logs" in names
    assert "encoder.stages.0.twister.global_text.0.weight" in names
    assert not any(".fusion." in n for n in names)
    counts = model.parameter_counts()
    assert counts["fusion"] == counts["twister"] + counts["global_text"] + counts["local_text"]


def test_backbone_blocks_are_the_named_designs():
    mv = build_model(MICRO.replace(backbone="mambavision", depths=[1, 1, 4, 3]))
    kinds = [[type(b.op).__name__ for b in s.blocks] for s in mv.encoder.stages]
    assert kinds == [
        ["MambaVisionMixer"],
        ["MambaVisionMixer"],
        ["MambaVisionMixer", "MambaVisionMixer", "SelfAttention", "SelfAttention"],
        ["MambaVisionMixer", "SelfAttention", "SelfAttention"],
    ]
    mo = build_model(MICRO.replace(backbone="mambaout"))
    assert all(isinstance(b, GatedCNNBlock) for s in mo.encoder.stages for b in s.blocks)
    assert not any("A_log" in n for n, _ in mo.encoder.stages.named_parameters() if n.split(".")[1] == "blocks")
    assert isinstance(MambaVisionMixer(16, 1, "auto", 3, False), torch.nn.Module) and SelfAttention(64).heads == 2


def test_variant_settings_are_validated():
    cfg = MICRO.to_dict()
    with pytest.raises(ConfigError, match="unknown fusion 'concat'"):
        ModelConfig.from_dict(dict(cfg, fusion="concat"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        ModelConfig.from_dict(dict(cfg, backbone="resnet"))
    with pytest.raises(ConfigError, match="twister fusion only"):
        ModelConfig.from_dict(dict(cfg, fusion="film", scan="parallel"))
    with pytest.raises(ConfigError, match="recap_every"):
        ModelConfig.from_dict(dict(cfg, recap_every=0))
    old = {k: v for k, v in cfg.items() if k not in ("fusion", "scan", "interaction", "backbone", "recap_every")}
    assert ModelConfig.from_dict(old).fusion == "twister"  # folders saved before the variants load unchanged


def test_train_cli_builds_the_variant_and_refuses_bad_ones(small_shapes, tmp_path):
    common = [
        "train",
        "--data",
        str(small_shapes),
        "--preset",
        "tiny",
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--val-split",
        "",
        "--limit",
        "2",
    ]
    out = tmp_path / "run"
    res = run_cli(*common, "--out", str(out), "--fusion", "hmnet", "--recap-every", "16", "--backbone", "mambaout")
    assert res.code == 0, res.stderr
    saved = json.loads((out / "checkpoints" / "last" / "config.json").read_text())
    assert (saved["fusion"], saved["recap_every"], saved["backbone"]) == ("hmnet", 16, "mambaout")
    assert_one_line_error(
        run_cli(*common, "--out", str(tmp_path / "bad"), "--fusion", "concat"), "unknown fusion 'concat'"
    )
    assert_one_line_error(
        run_cli(*common, "--out", str(tmp_path / "bad2"), "--fusion", "film", "--scan", "spatial"),
        "twister fusion only",
    )
    clash = run_cli(
        *common, "--out", str(tmp_path / "bad3"), "--init", str(out / "checkpoints" / "last"), "--fusion", "film"
    )
    assert_one_line_error(clash, "--fusion would change the architecture")


@pytest.mark.parametrize(
    "variant",
    [
        dict(fusion="hmnet", backbone="mambavision"),
        dict(fusion="attention", backbone="mambaout"),
        dict(fusion="in-context"),
        dict(fusion="film"),
    ],
    ids=lambda c: "-".join(c.values()),
)
def test_variants_export_to_onnx(variant, tmp_path):
    from remamber.export.onnx import export_onnx

    torch.manual_seed(0)
    folder = save_pretrained(build_model(MICRO.replace(**variant)), tmp_path / "m")
    _, report = export_onnx(str(folder), tmp_path / "onnx", verify=True)
    assert report["max_abs_diff"] < 1e-4


def test_each_variant_table_has_exactly_the_config_choices():
    """One table per kind maps a config name to what it builds; its keys are the config's choices
    (same order: the default first), so that a new choice needs both or fails here."""
    from remamber.modeling import backbones, config, decoder, fusion, twister

    assert tuple(fusion.FUSIONS) == config.FUSIONS
    assert tuple(twister.SCANS) == config.SCANS
    assert tuple(twister.INTERACTIONS) == config.INTERACTIONS
    assert tuple(backbones.BACKBONES) == config.BACKBONES
    assert tuple(decoder.DECODERS) == config.DECODERS
