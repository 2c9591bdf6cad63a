"""Starting the visual backbone from VMamba's ImageNet checkpoints: files written here in the
layout of the released ones (VMamba's names and shapes, a yacs config, model and model_ema,
optimizer, epoch) load into the presets with every backbone tensor filled and identical values;
the released files' settings fit their presets; bad files (another preset's, a ReMamber
checkpoint, a pickle that asks to run code, a truncated file, no weights) are refused in one line."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import CliResult, assert_one_line_error
from yacs.config import CfgNode

from remamber.hub.vmamba import (
    RELEASES,
    BackboneArch,
    fitting_presets,
    load_backbone_weights,
    read_vmamba_checkpoint,
)
from remamber.utils.errors import InputError, WeightsError

OFFICIAL_CKPT = Path(__file__).resolve().parent / "fixtures" / "official_small" / "official_conv_small.pth"
README = Path(__file__).resolve().parents[1] / "README.md"


def vmamba_shapes(dim: int, depths, ssm_ratio: float, mlp_ratio: float = 4.0, d_state: int = 1) -> dict:
    """VMamba v2's tensor names and shapes (classification/models/vmamba.py: patch embed v2,
    VSS blocks with SS2D v05_noz, downsample v3, LayerNorm2d, classifier), written out from its
    code, not from ours."""
    shapes = {
        "patch_embed.0.weight": (dim // 2, 3, 3, 3),
        "patch_embed.0.bias": (dim // 2,),
        "patch_embed.2.weight": (dim // 2,),
        "patch_embed.2.bias": (dim // 2,),
        "patch_embed.5.weight": (dim, dim // 2, 3, 3),
        "patch_embed.5.bias": (dim,),
        "patch_embed.7.weight": (dim,),
        "patch_embed.7.bias": (dim,),
    }
    for i, depth in enumerate(depths):
        c = dim * 2**i
        inner, rank, hidden = int(ssm_ratio * c), math.ceil(c / 16), int(mlp_ratio * c)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            shapes.update(
                {
                    b + "norm.weight": (c,),
                    b + "norm.bias": (c,),
                    b + "op.in_proj.weight": (inner, c),
                    b + "op.conv2d.weight": (inner, 1, 3, 3),
                    b + "op.x_proj_weight": (4, rank + 2 * d_state, inner),
                    b + "op.dt_projs_weight": (4, inner, rank),
                    b + "op.dt_projs_bias": (4, inner),
                    b + "op.A_logs": (4 * inner, d_state),
                    b + "op.Ds": (4 * inner,),
                    b + "op.out_norm.weight": (inner,),
                    b + "op.out_norm.bias": (inner,),
                    b + "op.out_proj.weight": (c, inner),
                    b + "norm2.weight": (c,),
                    b + "norm2.bias": (c,),
                    b + "mlp.fc1.weight": (hidden, c),
                    b + "mlp.fc1.bias": (hidden,),
                    b + "mlp.fc2.weight": (c, hidden),
                    b + "mlp.fc2.bias": (c,),
                }
            )
        if i < 3:
            d = f"layers.{i}.downsample."
            shapes.update(
                {
                    d + "1.weight": (2 * c, c, 3, 3),
                    d + "1.bias": (2 * c,),
                    d + "3.weight": (2 * c,),
                    d + "3.bias": (2 * c,),
                }
            )
    top = dim * 8
    shapes.update(
        {
            "classifier.norm.weight": (top,),
            "classifier.norm.bias": (top,),
            "classifier.head.weight": (1000, top),
            "classifier.head.bias": (1000,),
        }
    )
    return shapes


def fake_state(shapes: dict, offset: float, random: bool = False) -> dict:
    """A state dict of these shapes: random values, or one distinct constant per tensor (stored
    as a broadcast view, so that a file of base's shapes takes kilobytes)."""
    gen = torch.Generator().manual_seed(int(offset * 1000))
    if random:
        return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    return {k: torch.full((1,), offset + n / 1000).expand(s) for n, (k, s) in enumerate(shapes.items())}


def yacs_config(name: str) -> CfgNode:
    """The part of VMamba's yacs config that names the model (a real CfgNode, frozen as saved)."""
    cfg = CfgNode()
    cfg.MODEL = CfgNode()
    cfg.MODEL.NAME = name
    cfg.MODEL.VSSM = CfgNode()
    cfg.MODEL.VSSM.DEPTHS = [2, 2, 5, 2]
    cfg.TRAIN = CfgNode()
    cfg.TRAIN.BASE_LR = 1e-3
    cfg.freeze()
    return cfg


def write_vmamba(path: Path, shapes: dict, random: bool = False, **entries) -> tuple[dict, dict]:
    """A checkpoint as VMamba's save_checkpoint_ema writes it; returns its model and model_ema."""
    model, ema = fake_state(shapes, 1.0, random), fake_state(shapes, 5.0, random)
    ckpt = {
        "model": model,
        "model_ema": ema,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "lr_scheduler": {"t_initial": 300, "base_values": [1e-3]},
        "max_accuracy": 82.5,
        "scaler": {"scale": 65536.0},
        "epoch": 262,
        "config": yacs_config("vssm1_tiny_0230"),
        "max_accuray_ema": 82.6,
    }
    ckpt.update(entries)
    torch.save(ckpt, path)
    return model, ema


@functools.cache
def light_model(preset: str):
    """The preset's model with a one-layer text tower of the same width (building CLIP's twelve
    layers adds nothing here and takes seconds): every backbone and fusion shape is the preset's.
    Shared by the tests: only the first loads weights into it, the others expect refusals."""
    from remamber.modeling.presets import preset_config
    from remamber.modeling.remamber import ReMamber

    cfg = preset_config(preset)
    return ReMamber(cfg.replace(text_config=dict(cfg.text_config, num_hidden_layers=1, vocab_size=64)))


def backbone_names(model) -> list[str]:
    """The model's tensors that a VMamba file fills: the encoder's, bar its Twister layers."""
    return [k for k in model.state_dict() if k.startswith("encoder.") and ".twister." not in k]


def assert_backbone_is(model, state: dict) -> None:
    """Every backbone tensor of the model holds the file's tensor of VMamba's name."""
    ours = model.state_dict()
    for k in backbone_names(model):
        name = k.removeprefix("encoder.").replace("stages.", "layers.", 1)
        assert torch.equal(ours[k], state[name]), k


# --------------------------------------------------------------------------- the presets and the released files


@pytest.mark.parametrize("preset, release", [("small", 0), ("medium", 1), ("base", 2)])
def test_each_released_backbone_loads_into_its_preset(tmp_path, preset, release):
    rel = RELEASES[release]
    shapes = vmamba_shapes(rel.dim, rel.depths, rel.ssm_ratio)
    path = tmp_path / rel.file
    model_state, _ = write_vmamba(path, shapes)
    model = light_model(preset)
    report = load_backbone_weights(model, path)
    assert sorted(report.loaded) == sorted(backbone_names(model))
    assert_backbone_is(model, model_state)
    assert report.key == "model" and report.key_reason.startswith("auto")
    assert report.dropped == [k for k in shapes if k.startswith("classifier.")]
    assert report.release == rel and report.config_name == "vssm1_tiny_0230"
    assert set(report.new_parts()) == {"twister", "decoder", "presence"}
    assert report.text_encoder > 0 and not any(k.startswith("text_encoder.") for k in report.new)
    assert json.loads(json.dumps(report.to_dict()))["new"] == report.new_parts()


def test_the_released_files_fit_exactly_their_presets_as_the_readme_says():
    # base-mamba is base with the Mamba decoder: the same visual backbone
    expected = [["small"], ["medium"], ["base", "base-mamba"], [], [], []]
    for rel, presets in zip(RELEASES, expected):
        shapes = vmamba_shapes(rel.dim, rel.depths, rel.ssm_ratio)
        arch = BackboneArch.of_state(fake_state(shapes, 0.0))
        assert arch == rel.arch, rel.file
        assert fitting_presets(arch) == presets, rel.file
        preset = presets[0] if presets else None
        row = next(
            line for line in README.read_text(encoding="utf-8").splitlines() if f"[`{rel.file}`]({rel.url})" in line
        )
        assert row.split("|")[-2].split()[0] == (f"`{preset}`" if preset else "none"), row


def test_model_ema_on_request_and_when_model_is_missing(tmp_path):
    shapes = vmamba_shapes(32, [1, 1, 2, 1], 2.0, mlp_ratio=2.0)  # the tiny preset's backbone
    from remamber.modeling.presets import build_model

    model = build_model("tiny")
    path = tmp_path / "v.pth"
    _, ema = write_vmamba(path, shapes, random=True)
    report = load_backbone_weights(model, path, key="model_ema")
    assert report.key == "model_ema" and report.key_reason == "asked for"
    assert_backbone_is(model, ema)
    write_vmamba(path, shapes, random=True, model=None)  # no 'model' entry: auto takes the EMA
    report = load_backbone_weights(model, read_vmamba_checkpoint(path))
    assert report.key == "model_ema" and "no 'model'" in report.key_reason
    with pytest.raises(WeightsError, match="has no 'model' weights"):
        read_vmamba_checkpoint(path, key="model")
    with pytest.raises(InputError, match="choose auto, model or model_ema"):
        read_vmamba_checkpoint(path, key="ema")


def test_another_presets_file_names_the_first_tensor_and_what_fits(tmp_path):
    rel = RELEASES[0]  # VMamba-T: small's backbone
    path = tmp_path / "t.pth"
    write_vmamba(path, vmamba_shapes(rel.dim, rel.depths, rel.ssm_ratio))
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(light_model("base"), path)
    message = str(info.value)
    assert (
        "patch_embed.0.weight is (48, 3, 3, 3) in the file but encoder.patch_embed.0.weight is (64, 3, 3, 3)" in message
    )
    assert "VMamba-T [s2l5]" in message and "it fits `preset` small" in message
    with pytest.raises(WeightsError, match=r"the file lacks 180 of its backbone tensors \(e.g. layers\.2\.blocks\.5\."):
        load_backbone_weights(light_model("medium"), path)  # same widths, 5 blocks in stage 3 instead of 15


def test_a_vssm1_file_fits_no_preset_and_says_so(tmp_path):
    rel = RELEASES[3]  # vssm1_tiny_0230s: ssm_ratio 1
    path = tmp_path / rel.file
    write_vmamba(path, vmamba_shapes(rel.dim, rel.depths, rel.ssm_ratio))
    with pytest.raises(WeightsError) as info:
        load_backbone_weights(light_model("small"), path)
    message = str(info.value)
    assert "VMamba-T [s1l8] (vssm1_tiny_0230s_ckpt_epoch_264.pth)" in message and "ssm_ratio 1" in message
    assert "no preset has this backbone (small takes VMamba-T [s2l5]" in message


# --------------------------------------------------------------------------- reading the file safely


class _RunsCode:
    """A pickle payload: unpickling it calls ``func(arg)``."""

    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, exec])
def test_a_pickle_that_asks_to_run_code_is_refused_and_runs_nothing(tmp_path, func):
    marker = tmp_path / "ran"
    code = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.pth"
    write_vmamba(path, vmamba_shapes(32, [1, 1, 2, 1], 2.0, mlp_ratio=2.0), config=_RunsCode(func, code))
    with pytest.raises(WeightsError, match=rf"refused to load: the file asks to call \w+\.{func.__name__}"):
        read_vmamba_checkpoint(path)
    assert not marker.exists()


class _Bag(list):
    """A list subclass with constructor arguments and attributes, as a training script might save."""

    def __new__(cls, size: int):
        return super().__new__(cls)

    def __init__(self, size: int) -> None:
        super().__init__(range(size))
        self.size = size

    def __getnewargs__(self):
        return (self.size,)


def test_other_objects_are_read_as_inert_data(tmp_path):
    from remamber.utils.inert_pickle import InertObject, load_checkpoint

    path = tmp_path / "v.pth"
    write_vmamba(path, vmamba_shapes(32, [1, 1, 2, 1], 2.0, mlp_ratio=2.0), extra=_Bag(3))
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    assert isinstance(config, InertObject) and not isinstance(config, CfgNode)
    assert type(config).inert_name == "yacs.config.CfgNode"
    assert config["MODEL"]["VSSM"]["DEPTHS"] == [2, 2, 5, 2] and config.state["__immutable__"] is True
    bag = ckpt["extra"]  # its class is this test module's, which the loader never imports
    assert type(bag).inert_name == f"{__name__}._Bag" and not isinstance(bag, _Bag)
    assert bag.args == (3,) and bag.list_items == [0, 1, 2] and bag.state == {"size": 3}


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(InputError, match=r"`backbone_weights` nope\.pth: no such file"):
        read_vmamba_checkpoint("nope.pth")
    with pytest.raises(InputError, match="not a file"):
        read_vmamba_checkpoint(tmp_path)
    with pytest.raises(InputError, match="a Hub file is hf://owner/name/path/to/file"):
        read_vmamba_checkpoint("hf://just-a-name")


# --------------------------------------------------------------------------- the command line


TINY_SHAPES = vmamba_shapes(32, [1, 1, 2, 1], 2.0, mlp_ratio=2.0)  # the tiny preset's backbone
TINY_BACKBONE = sum(1 for k in TINY_SHAPES if not k.startswith("classifier."))


def cli(capsys, *args: str) -> CliResult:
    """``remamber ARGS`` in this process (its error boundary included): faster than a subprocess."""
    from remamber.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return CliResult(exit_info.value.code or 0, out, err)


def test_cli_export_writes_a_model_folder_with_the_backbone(tmp_path, capsys):
    from remamber.hub.folders import load_pretrained

    path = tmp_path / "vssm_tiny.pth"
    model_state, _ = write_vmamba(path, TINY_SHAPES, random=True)
    out = tmp_path / "start"
    res = cli(capsys, "export", "--backbone-weights", str(path), "--preset", "tiny", "--out", str(out))
    assert res.code == 0, res.stderr
    assert f"loaded {TINY_BACKBONE} tensors" in res.stdout and "dropped 4 ImageNet classifier tensors" in res.stdout
    assert "twister" in res.stdout and "decoder" in res.stdout
    assert_backbone_is(load_pretrained(out), model_state)
    card = (out / "README.md").read_text()
    assert "## Source" in card and "vssm_tiny.pth" in card


def test_cli_export_through_the_hub_cache_offline_with_json(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--vmamba"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit / "cls").mkdir(parents=True)
    write_vmamba(repo / "snapshots" / commit / "cls" / "vssm.pth", TINY_SHAPES)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # and HF_HUB_CACHE
    spec = "hf://acme/vmamba/cls/vssm.pth"
    res = cli(
        capsys,
        "export",
        "--backbone-weights",
        spec,
        "--backbone-key",
        "model_ema",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert res.code == 0, res.stderr
    backbone = json.loads(res.stdout)["backbone"]
    assert backbone["key"] == "model_ema" and backbone["file"] == "vssm.pth" and backbone["loaded"] == TINY_BACKBONE
    assert backbone["architecture"]["depths"] == [1, 1, 2, 1]  # no --preset: the one the file fits, tiny
    missing = cli(capsys, "export", "--backbone-weights", "acme/vmamba/cls/other.pth", "--out", str(tmp_path / "p"))
    assert_one_line_error(missing, "--backbone-weights acme/vmamba/cls/other.pth", "HF_HUB_OFFLINE")
    assert not (tmp_path / "p").exists()


def test_cli_bad_backbone_files_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing here may need the Hub
    out = tmp_path / "o"
    small = tmp_path / "small.pth"
    write_vmamba(small, vmamba_shapes(96, (2, 2, 5, 2), 2.0))
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "ran"
    write_vmamba(evil, TINY_SHAPES, config=_RunsCode(os.system, f"touch {marker}"))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(small.read_bytes()[: small.stat().st_size // 2])
    no_model = tmp_path / "no_model.pth"
    torch.save({"state_dict": fake_state(TINY_SHAPES, 1.0), "epoch": 3}, no_model)
    official = tmp_path / "official.pth"
    shutil.copy(OFFICIAL_CKPT, official)
    cases = [
        (
            small,
            ["does not fit the backbone of this model (--preset tiny)", "(48, 3, 3, 3) in the file", "--preset small"],
        ),
        (evil, ["refused to load: the file asks to call posix.system"]),
        (truncated, ["not a readable PyTorch checkpoint"]),
        (no_model, ["holds no 'model' or 'model_ema' dict", "state_dict, epoch"]),
        (official, ["is a ReMamber checkpoint", "remamber export --from-official"]),
    ]
    for path, fragments in cases:
        res = cli(capsys, "export", "--backbone-weights", str(path), "--preset", "tiny", "--out", str(out))
        assert_one_line_error(res, str(path), *fragments)
        assert not out.exists() and not marker.exists()
    # refused before small's CLIP text encoder is read from the cache, which has none here
    tiny = tmp_path / "tiny.pth"
    write_vmamba(tiny, TINY_SHAPES)
    res = cli(capsys, "export", "--backbone-weights", str(tiny), "--preset", "small", "--out", str(out))
    assert_one_line_error(res, "(--preset small)", "(16, 3, 3, 3) in the file", "it fits --preset tiny")
    usage = cli(capsys, "export", "--backbone-weights", str(small), "--format", "onnx", "--out", str(out))
    assert_one_line_error(usage, "--format hub")
    usage = cli(capsys, "export", "--preset", "base", "--out", str(out))
    assert_one_line_error(usage, "go with --backbone-weights")


def test_train_starts_the_backbone_from_the_file_and_records_it(tmp_path, capsys, small_shapes):
    """`remamber train --backbone-weights`: the report on stdout and in training.json, the paper
    recipe by default, and the backbone holding the file's values (its rate so small that one
    step leaves them as loaded); a file of another preset stops the run before it writes anything."""
    from remamber.hub.folders import load_pretrained

    path = tmp_path / "vssm_tiny.pth"
    model_state, _ = write_vmamba(path, TINY_SHAPES, random=True)
    run = tmp_path / "run"
    args = ["train", "--data", str(small_shapes), "--preset", "tiny", "--image-size", "64", "--batch-size", "2"]
    args += ["--val-split", "", "--max-steps", "1", "--backbone-lr", "1e-30", "--min-lr", "0", "--ema", "0"]
    res = cli(capsys, *args, "--out", str(run), "--backbone-weights", str(path))
    assert res.code == 0, res.stderr
    assert f"loaded {TINY_BACKBONE} tensors" in res.stdout and "weights used: 'model'" in res.stdout
    training = json.loads((run / "checkpoints" / "last" / "training.json").read_text())
    assert training["settings"]["recipe"] == "paper"
    report = training["backbone_weights"]
    assert report["loaded"] == TINY_BACKBONE and report["key"] == "model" and len(report["dropped"]) == 4
    assert report["new"]["twister"] > 0 and report["new"]["decoder"] > 0
    assert_backbone_is(load_pretrained(run / "checkpoints" / "last"), model_state)

    other = tmp_path / "vssm_small.pth"
    write_vmamba(other, vmamba_shapes(96, [2, 2, 5, 2], 2.0))
    res = cli(capsys, *args, "--out", str(tmp_path / "run2"), "--backbone-weights", str(other))
    assert_one_line_error(res, "vssm_small.pth", "fits --preset small")
    assert not (tmp_path / "run2").exists()
