"""Converting the authors' ReMamber_Conv and ReMamber_Mamba checkpoints: the fixtures (small
official models run by benchmarks/official_parity.py, their checkpoints, inputs and logits)
convert and reproduce the official logits; the variant is read off the file; the strict check,
the weights-only load, the wrong variant and the CLI path give clear errors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from model_fixtures import assert_one_line_error, run_cli

from remamber.utils.errors import InputError, WeightsError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_small"
CKPT = FIXTURE / "official_conv_small.pth"
MAMBA_FIXTURE = FIXTURE.parent / "official_small_mamba"
MAMBA_CKPT = MAMBA_FIXTURE / "official_mamba_small.pth"
TOLERANCE = 1e-4


def small_tokenizer():
    """A word-level tokenizer that fits the fixtures' 100-token text vocabulary."""
    from remamber.modeling.text import build_scratch_tokenizer

    return build_scratch_tokenizer([f"w{i}" for i in range(96)])


@pytest.fixture(scope="module")
def io():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def mamba_io():
    from safetensors.torch import load_file

    return load_file(str(MAMBA_FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def official_state():
    return torch.load(str(CKPT), map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def mamba_state():
    return torch.load(str(MAMBA_CKPT), map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from remamber.export.official import convert_official

    return convert_official(CKPT, out=tmp_path_factory.mktemp("official") / "small", tokenizer=small_tokenizer())


def _max_diff(model, io) -> float:
    with torch.no_grad():
        out = model(io["image"], io["input_ids"], io["attention_mask"])
    assert out.shape == io["logits"].shape
    return (out - io["logits"]).abs().max().item()


def test_converted_fixture_reproduces_the_official_logits(converted, io):
    from remamber.hub.folders import load_pretrained, read_config

    config = read_config(converted)
    assert config.dims == [8, 16, 32, 64] and config.depths == [1, 1, 2, 1] and config.twister_depths == [2, 2, 2, 2]
    assert (config.d_state, config.channel_scan_size, config.local_hidden, config.decoder_dim) == (2, 4, 32, 32)
    assert config.dt_rank == "auto" and config.mlp_ratio == 4.0 and not config.conv_bias and config.max_text_len == 20
    assert config.text_config["hidden_size"] == 64 and config.text_config["num_hidden_layers"] == 2
    assert config.text_config["vocab_size"] == 100
    card = (converted / "README.md").read_text()
    assert "official ReMamber_Conv checkpoint `official_conv_small.pth`" in card and "sha256" in card
    model = load_pretrained(converted)
    assert _max_diff(model, io) <= TOLERANCE


def test_converted_mamba_fixture_reproduces_the_official_logits(tmp_path, mamba_io):
    from remamber.export.official import convert_official
    from remamber.hub.folders import load_pretrained, read_config

    folder = convert_official(MAMBA_CKPT, out=tmp_path / "mamba", tokenizer=small_tokenizer())  # variant read off
    config = read_config(folder)
    assert config.decoder == "mamba" and config.preset == "official"
    assert config.decoder_depths == [2, 4, 2, 2] and config.decoder_local_hidden == 12
    assert config.dims == [6, 12, 24, 48] and config.depths == [1, 1, 1, 1] and config.twister_depths == [2, 2, 2, 2]
    assert (config.d_state, config.ssm_ratio, config.mlp_ratio, config.channel_scan_size, config.local_hidden) == (
        2,
        1.0,
        1.0,
        4,
        8,
    )
    assert config.text_config["hidden_size"] == 16 and config.text_config["num_hidden_layers"] == 1
    card = (folder / "README.md").read_text()
    assert "official ReMamber_Mamba checkpoint `official_mamba_small.pth`" in card
    model = load_pretrained(folder)
    assert _max_diff(model, mamba_io) <= TOLERANCE
    model.fuse()  # the decoder's SS2D blocks and conv-BatchNorm-ReLU runs too
    assert _max_diff(model, mamba_io) <= TOLERANCE


def test_the_official_names_map_one_to_one():
    from remamber.export.official import official_to_ours, ours_to_official

    pairs = {
        "backbone.patch_embed.5.weight": "encoder.patch_embed.5.weight",
        "backbone.layers.2.blocks.14.op.x_proj_weight": "encoder.stages.2.blocks.14.op.x_proj_weight",
        "backbone.layers.0.downsample.1.weight": "encoder.stages.0.downsample.1.weight",
        "backbone.multimodal_blocks.3.blocks.1.ln_1.bias": "encoder.stages.3.twister.blocks.1.norm.bias",
        "backbone.multimodal_blocks.1.blocks.0.self_attention.ss1d.A_logs": "encoder.stages.1.twister.blocks.0.mixer.ss1d.A_logs",
        "backbone.text_guidencee.2.0.weight": "encoder.stages.2.twister.global_text.0.weight",
        "backbone.local_text_fusion.0.unsqueeze.0.weight": "encoder.stages.0.twister.local_text.unsqueeze.0.weight",
        "decoder.mixer3.conv1.bn.running_var": "decoder.mixer3.conv1.bn.running_var",
        # the Mamba decoder: official lists per kind, ours one module per level
        "decoder.multimodal_blocks.1.blocks.3.ln_1.weight": "decoder.levels.1.blocks.3.norm.weight",
        "decoder.multimodal_blocks.0.blocks.1.self_attention.A_logs": "decoder.levels.0.blocks.1.op.A_logs",
        "decoder.multimodal_blocks.3.downsample.proj.weight": "decoder.levels.3.upsample.proj.weight",
        "decoder.in_proj.2.weight": "decoder.levels.2.in_proj.weight",
        "decoder.text_guidencee.1.0.bias": "decoder.levels.1.global_text.0.bias",
        "decoder.local_text_fusion.3.unsqueeze.0.weight": "decoder.levels.3.local_text.unsqueeze.0.weight",
        "decoder.hire_fusion.2.fusion.4.running_mean": "decoder.levels.2.skip.4.running_mean",
        "decoder.proj_out.1.0.weight": "decoder.proj_out.1.0.weight",
    }
    for official, ours in pairs.items():
        assert official_to_ours(official) == ours
        assert ours_to_official(ours) == official
    # text names are canonical (no text_model level) on the official side; ours follow transformers' layout
    assert official_to_ours("text_encoder.final_layer_norm.weight") == "text_encoder.model.final_layer_norm.weight"
    assert (
        ours_to_official("text_encoder.model.final_layer_norm.weight")
        == "text_encoder.text_model.final_layer_norm.weight"
    )
    assert official_to_ours("backbone.classifier.head.weight") is None


def _convert_error(state: dict, tmp_path: Path, **extra) -> str:
    from remamber.export.official import build_from_official

    path = tmp_path / "edited.pth"
    torch.save({"model": state, **extra}, str(path))
    with pytest.raises(WeightsError) as err:
        build_from_official(path, tokenizer=small_tokenizer())
    return str(err.value)


def test_a_missing_tensor_is_named(official_state, tmp_path):
    state = dict(official_state)
    del state["backbone.layers.2.blocks.1.op.Ds"]
    msg = _convert_error(state, tmp_path)
    assert "1 missing" in msg and "backbone.layers.2.blocks.1.op.Ds" in msg
    assert "unexpected" not in msg and "wrong shape" not in msg


def test_an_extra_tensor_is_named(official_state, tmp_path):
    state = dict(official_state, **{"backbone.layers.0.blocks.0.op.extra_gate": torch.zeros(3)})
    msg = _convert_error(state, tmp_path)
    assert "1 unexpected" in msg and "backbone.layers.0.blocks.0.op.extra_gate" in msg and "missing" not in msg


def test_a_wrong_shape_is_named_with_both_shapes(official_state, tmp_path):
    key = "decoder.neck.4.weight"
    state = dict(official_state, **{key: torch.zeros(32, 32, 5, 5)})
    msg = _convert_error(state, tmp_path)
    assert "1 of the wrong shape" in msg and f"{key} (32, 32, 5, 5) (model: (32, 32, 3, 3))" in msg


def test_every_problem_is_reported_at_once(official_state, tmp_path):
    state = dict(official_state)
    for key in ("backbone.layers.0.blocks.0.norm2.weight", "text_encoder.text_model.final_layer_norm.bias"):
        del state[key]
    state["backbone.spare"] = torch.zeros(1)
    state["decoder.neck.8.bias"] = torch.zeros(2)
    msg = _convert_error(state, tmp_path)
    assert "2 missing" in msg and "backbone.layers.0.blocks.0.norm2.weight" in msg
    assert "text_encoder.text_model.final_layer_norm.bias" in msg
    assert "1 unexpected" in msg and "backbone.spare" in msg
    assert "1 of the wrong shape" in msg and "decoder.neck.8.bias (2,)" in msg


def test_harmless_extras_load_and_position_ids_are_ignored(official_state, tmp_path, io):
    from remamber.export.official import build_from_official

    state = dict(official_state, **{"text_encoder.text_model.embeddings.position_ids": torch.arange(77)[None]})
    path = tmp_path / "best_checkpoint.pth"
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(model="ReMamber_Conv", lr=5e-5)}, str(path))
    model = build_from_official(path, tokenizer=small_tokenizer())
    assert _max_diff(model, io) <= TOLERANCE
    state["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77).flip(0)[None]
    assert "position_ids is not 0..76" in _convert_error(state, tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_pickle_with_a_forbidden_global_is_refused(official_state, tmp_path, capfd):
    from remamber.export.official import load_official_state

    path = tmp_path / "evil.pth"
    torch.save({"model": official_state, "payload": _RunsCode()}, str(path))
    with pytest.raises(WeightsError, match="refused to load: the file needs the global .*system"):
        load_official_state(path)
    assert "this must never run" not in capfd.readouterr().out


def test_the_variant_is_read_off_the_file_and_the_other_one_is_refused(official_state, mamba_state, tmp_path):
    from remamber.export.official import build_from_official, convert_official, detect_variant

    assert detect_variant(official_state) == "conv" and detect_variant(mamba_state) == "mamba"
    with pytest.raises(WeightsError, match="is a ReMamber_Conv checkpoint .*not ReMamber_Mamba: pass `variant` conv"):
        convert_official(CKPT, variant="mamba", out=tmp_path / "x", tokenizer=small_tokenizer())
    with pytest.raises(WeightsError, match="is a ReMamber_Mamba checkpoint .*not ReMamber_Conv: pass `variant` mamba"):
        convert_official(MAMBA_CKPT, variant="conv", out=tmp_path / "x", tokenizer=small_tokenizer())
    with pytest.raises(InputError, match="`variant` 'unet': choose conv or mamba"):
        convert_official(CKPT, variant="unet", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert build_from_official(MAMBA_CKPT, "mamba", tokenizer=small_tokenizer()).config.decoder == "mamba"
    both = dict(official_state, **{"decoder.proj_out.2.weight": torch.zeros(1, 4, 3, 3)})
    assert "tensors of both decoders" in _convert_error(both, tmp_path)
    neither = {k: v for k, v in official_state.items() if not k.startswith("decoder.")}
    assert "no decoder tensors" in _convert_error(neither, tmp_path)


def _convert_mamba_error(state: dict, tmp_path: Path) -> str:
    from remamber.export.official import build_from_official

    path = tmp_path / "edited_mamba.pth"
    torch.save({"model": state}, str(path))
    with pytest.raises(WeightsError) as err:
        build_from_official(path, tokenizer=small_tokenizer())
    return str(err.value)


def test_a_mamba_checkpoint_is_checked_strictly_in_official_names(mamba_state, tmp_path):
    state = dict(mamba_state)
    del state["decoder.multimodal_blocks.1.blocks.3.self_attention.Ds"]
    state["decoder.hire_fusion.3.fusion.0.weight"] = torch.zeros(3, 6, 3, 3)  # the finest level has no skip merge
    state["decoder.in_proj.0.weight"] = torch.zeros(48, 96)
    msg = _convert_mamba_error(state, tmp_path)
    assert msg.count("does not fit ReMamber_Mamba") == 1
    assert "1 missing" in msg and "decoder.multimodal_blocks.1.blocks.3.self_attention.Ds" in msg
    assert "1 unexpected (in the checkpoint, not used by ReMamber_Mamba)" in msg
    assert "decoder.hire_fusion.3.fusion.0.weight" in msg
    assert "1 of the wrong shape" in msg and "decoder.in_proj.0.weight (48, 96) (model: (48, 144))" in msg


def test_a_tokenizer_larger_than_the_text_vocabulary_is_refused():
    from remamber.export.official import build_from_official
    from remamber.modeling.text import build_scratch_tokenizer

    with pytest.raises(
        WeightsError, match="the tokenizer has 208 tokens but the checkpoint's text encoder knows only 100"
    ):
        build_from_official(CKPT, tokenizer=build_scratch_tokenizer())


def test_cli_converts_end_to_end(tmp_path, io):
    from remamber.hub.folders import load_pretrained

    tok_dir = tmp_path / "tok"
    small_tokenizer().save_pretrained(str(tok_dir))
    out = tmp_path / "converted"
    res = run_cli("export", "--from-official", str(CKPT), "--out", str(out), "--tokenizer", str(tok_dir), "--json")
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["variant"] == "conv" and {"config.json", "model.safetensors", "README.md"} <= set(result["files"])
    assert _max_diff(load_pretrained(out), io) <= TOLERANCE


def test_cli_errors_are_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    assert_one_line_error(
        run_cli("export", "--from-official", str(junk), "--out", str(tmp_path / "o")),
        "not a readable PyTorch checkpoint",
    )
    assert_one_line_error(
        run_cli("export", "--from-official", str(MAMBA_CKPT), "--variant", "conv", "--out", str(tmp_path / "o")),
        "is a ReMamber_Mamba checkpoint",
        "not ReMamber_Conv: pass --variant mamba",
    )
    assert_one_line_error(
        run_cli("export", "--from-official", str(CKPT), "--variant", "unet", "--out", str(tmp_path / "o")),
        "--variant 'unet': choose conv or mamba",
    )
    # the default tokenizer is CLIP's: offline with an empty cache it cannot be had
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    assert_one_line_error(
        run_cli("export", "--from-official", str(CKPT), "--out", str(tmp_path / "o"), env=offline),
        "openai/clip-vit-large-patch14",
    )
    assert not (tmp_path / "o").exists()


def test_cli_from_official_refuses_a_weights_argument_and_onnx(tmp_path):
    res = run_cli("export", "some/model", "--from-official", str(CKPT), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "not both")
    res = run_cli("export", "--from-official", str(CKPT), "--format", "onnx", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "--format hub")
    res = run_cli("export", "--variant", "mamba", "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "--variant and --tokenizer go with --from-official")
