"""remamber.inference.fuse: the fused model computes the unfused one's logits (within the kernels'
tolerances), fusing is idempotent and reversible, and a fused model refuses training and saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from remamber.inference.fuse import (
    ConvBNReLU,
    FusedModelError,
    FusedSS2D,
    fuse,
    fused,
    is_fused,
    parameter_count,
    unfuse,
)
from remamber.modeling.presets import build_model, preset_config
from remamber.modeling.ss2d import SS2D
from remamber.ops import numba_utils, ss2d_cpu

pytestmark = pytest.mark.skipif(not numba_utils.AVAILABLE, reason="needs numba")

# What the Winograd tests allow (F(4, 3) in float32, relative to the largest output): the fused
# decoder's rounding dominates the SS2D kernel's (<= 1e-5).
TOL = 5e-5

# A small ReMamber_Conv whose decoder is wide enough, and its maps large enough, for Winograd
# (128 x 160 and 128 x 128 channels; 48 x 48 and 96 x 96 pixels at 192 px).
SMALL_CONV = preset_config("tiny").replace(
    image_size=192, dims=[32, 64, 64, 128], local_hidden=32, decoder_dim=128, channel_scan_size=4
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them is tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.6 - 0.3)
    return model


def _inputs(model, n: int = 2):
    x = torch.randn(n, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(2))
    ids, mask, _ = model.tokenize(["the big yellow object", "the second small square from the left"][:n])
    return x, ids, mask


@pytest.mark.parametrize("config", ["tiny", SMALL_CONV], ids=["tiny", "small-conv"])
def test_fused_model_gives_the_unfused_logits(config, monkeypatch):
    torch.manual_seed(0)
    model = _trained_like(build_model(config).eval())
    inputs = _inputs(model)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    with torch.inference_mode():
        plain = model(*inputs)
    monkeypatch.setattr(ss2d_cpu, "compiled", lambda: True)  # small calls too: as once the kernel is loaded
    calls = []
    kernel = ss2d_cpu.cross_selective_scan
    monkeypatch.setattr(ss2d_cpu, "cross_selective_scan", lambda *a: calls.append(1) or kernel(*a))
    assert model.fuse() is model and model.is_fused
    assert isinstance(model.decoder.neck[0], ConvBNReLU) and isinstance(model.decoder.neck[4], ConvBNReLU)
    winograd = model.decoder.neck[0].filters is not None
    assert winograd == (config is SMALL_CONV)  # tiny's decoder is too narrow for Winograd
    ss2ds = [m for m in model.modules() if isinstance(m, FusedSS2D)]
    assert ss2ds and not any(type(m) is SS2D for m in model.modules())
    with torch.inference_mode():
        out = model(*inputs)
    assert len(calls) == len(ss2ds)  # every SS2D took the kernel, once per forward
    assert _rel(out, plain) <= TOL
    model.fuse()  # idempotent: nothing more to swap, the same numbers
    with torch.inference_mode():
        assert torch.equal(model(*inputs), out)
    model.unfuse()
    assert not model.is_fused and list(model.state_dict()) == keys
    assert all(p is params[name] for name, p in model.named_parameters())  # the same parameters
    with torch.inference_mode():
        assert torch.equal(model(*inputs), plain)


def test_a_fused_model_refuses_training_and_saving(tmp_path):
    from remamber.hub.folders import save_pretrained

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with pytest.raises(ValueError, match="eval mode"):
        fuse(build_model("tiny"))  # built in training mode: the BatchNorms' batch statistics
    model.fuse()
    with pytest.raises(FusedModelError, match="cannot train; call unfuse"):
        model.train()
    assert not any(m.training for m in model.modules())  # refused before any module changed mode
    with pytest.raises(FusedModelError, match="cannot compute gradients"):
        model(*_inputs(model))  # outside no_grad / inference_mode: a training call
    with pytest.raises(FusedModelError, match="cannot be saved"):
        save_pretrained(model, tmp_path / "m")
    assert parameter_count(model) == sum(p.numel() for p in build_model("tiny").parameters())
    with pytest.raises(FusedModelError, match="cannot load weights"):
        model.load_state_dict({}, strict=False)  # would leave the folded filters stale
    model.unfuse().train()
    assert model.training
    save_pretrained(model.eval(), tmp_path / "m")


def test_fused_context_gives_the_model_back_unfused():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with fused(model) as m:
        assert m is model and is_fused(model)
    assert not is_fused(model)
    model.fuse()
    with fused(model):  # already fused: stays fused
        pass
    assert is_fused(model)
    unfuse(model)


def test_evaluate_and_predictor_fuse(tiny_model_dir, small_shapes):
    from remamber.data.dataset import ReferringDataset
    from remamber.engine.evaluate import evaluate
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor

    model = load_pretrained(tiny_model_dir).train()  # as the trainer's validation hands it over
    ds = ReferringDataset(small_shapes, "test", model.config.image_size, train=False)
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda m, a: seen.append(is_fused(m)))
    evaluate(model, ds, progress=False, limit=2)
    assert seen and all(seen) and model.training and not is_fused(model)  # fused for the run only
    hook.remove()
    predictor = Predictor(model)
    assert predictor.model is model and is_fused(model) and not model.training
    assert not is_fused(Predictor(load_pretrained(tiny_model_dir), fuse=False).model)
