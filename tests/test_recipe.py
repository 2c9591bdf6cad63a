"""Training recipes: the parameter groups of each, flags over recipes, `train --dry-run`, and the
settings that contradict each other."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from model_fixtures import run_cli

from remamber.cli.main import main
from remamber.data.manifest import PreparedDataset
from remamber.engine.train import lr_factor, param_groups, part_rates
from remamber.engine.train_config import RECIPES, TrainConfig
from remamber.utils.errors import InputError

SMALL = ["--preset", "tiny", "--image-size", "64", "--batch-size", "4", "--val-split", ""]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d", out="o", **kw)


def _named_groups(model, groups) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_paper_recipe_groups_follow_the_official_optimizer(tiny_model):
    """create_optimizer: VMamba's own tensors (patch embed, stage blocks, downsampling) at 2.5e-5,
    CLIP at 2.5e-5, the rest (Twister with its text maps, decoder) at 5e-5; weight decay 1e-4
    on every tensor, norms, biases, A_logs and Ds included."""
    cfg = _cfg(recipe="paper").resolved()
    groups = param_groups(tiny_model, part_rates(cfg), cfg.weight_decay, cfg.decay_all)
    named = _named_groups(tiny_model, groups)
    assert list(named) == ["new", "backbone", "text"]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(5e-5, 1e-4), (2.5e-5, 1e-4), (2.5e-5, 1e-4)]
    assert sorted(n for ns in named.values() for n in ns) == sorted(n for n, _ in tiny_model.named_parameters())
    assert all(re.match(r"encoder\.(patch_embed|stages\.\d\.(blocks|downsample))\.", n) for n in named["backbone"])
    assert all(re.match(r"(encoder\.stages\.\d\.twister|decoder|presence)\.", n) for n in named["new"])
    assert all(n.startswith("text_encoder.") for n in named["text"])
    assert any(n.endswith("A_logs") for n in named["backbone"]) and any(n.endswith(".bias") for n in named["new"])


def test_default_recipe_has_one_rate_and_no_decay_on_a_log_d_norms_and_biases(tiny_model):
    cfg = _cfg(lr=1e-3).resolved()
    assert (cfg.recipe, cfg.backbone_lr, cfg.text_lr, cfg.weight_decay, cfg.ema) == ("default", 1e-3, 1e-3, 0.01, 0.0)
    groups = param_groups(tiny_model, part_rates(cfg), cfg.weight_decay, cfg.decay_all)
    assert {g["lr"] for g in groups} == {1e-3}
    named = _named_groups(tiny_model, groups)
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in named[g["name"]]}
    decay = {n for g in groups if g["weight_decay"] == 0.01 for n in named[g["name"]]}
    assert len(decay) + len(no_decay) == len(list(tiny_model.parameters()))
    assert any(n.endswith("A_logs") for n in no_decay) and any(n.endswith(".Ds") for n in no_decay)
    assert any(n.endswith("norm.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    params = dict(tiny_model.named_parameters())
    assert all(params[n].dim() > 1 and not n.endswith(("A_logs", ".Ds")) for n in decay)


def test_flags_win_over_the_recipe_and_resolving_twice_changes_nothing():
    given = dict(backbone_lr=1e-4, weight_decay=0.05, decay_all=False, ema=0.0, image_size=64, drop_path_rate=0.0)
    cfg = _cfg(recipe="paper", **given).resolved()
    assert {k: getattr(cfg, k) for k in given} == given and cfg.text_lr == 2.5e-5
    assert cfg.resolved() == cfg
    # backbone weights make paper the default recipe; a recipe given explicitly wins
    assert _cfg(backbone_weights="vssm.pth").resolved().recipe == "paper"
    assert _cfg(backbone_weights="vssm.pth", recipe="default").resolved().ema == 0.0
    paper = RECIPES["paper"].values
    resolved = _cfg(backbone_weights="vssm.pth").resolved()
    assert {k: getattr(resolved, k) for k in paper} == paper
    # the deprecated scale becomes an absolute rate; a frozen text encoder has none
    assert _cfg(lr=1e-3, text_lr_scale=0.1).resolved().text_lr == pytest.approx(1e-4)
    frozen = _cfg(recipe="paper", freeze_text=True).resolved()
    assert frozen.text_lr is None and "text" not in part_rates(frozen)


def test_a_train_config_saved_before_recipes_resumes_with_the_same_settings():
    """What train_config.json held before recipes existed: every rate at --lr, weight decay
    0.01 but not on A_log, D, norms and biases, the preset's drop path."""
    old = dataclasses.asdict(_cfg(lr=2e-4, weight_decay=0.01, ema=0.999))
    for key in ("recipe", "backbone_weights", "backbone_key", "text_lr", "backbone_lr", "decay_all", "drop_path_rate"):
        del old[key]
    old["text_lr_scale"] = 1.0
    cfg = TrainConfig(**old).resolved()
    assert (cfg.recipe, cfg.backbone_lr, cfg.text_lr, cfg.weight_decay, cfg.decay_all) == (
        "default",
        2e-4,
        2e-4,
        0.01,
        False,
    )
    assert (cfg.ema, cfg.drop_path_rate, cfg.image_size) == (0.999, None, None)


@pytest.mark.parametrize(
    "settings, fragments",
    [
        (dict(text_lr=1e-5, freeze_text=True), ("`text_lr`", "`freeze_text`")),
        (dict(text_lr=1e-5, text_lr_scale=0.5), ("`text_lr`", "`text_lr_scale`")),
        (dict(backbone_key="model_ema"), ("`backbone_key`", "`backbone_weights`")),
        (dict(backbone_weights="vssm.pth", init="runs/x"), ("`backbone_weights`", "`init`")),
        (dict(recipe="fast"), ("recipe", "default, paper")),
        (dict(recipe="paper", min_lr=3e-5), ("min_lr", "2.5e-05")),
    ],
)
def test_contradicting_settings_are_refused(settings, fragments):
    with pytest.raises(InputError) as e:
        _cfg(**settings).resolved()
    assert all(f in str(e.value) for f in fragments), str(e.value)


def test_every_group_decays_to_min_lr():
    """As timm's cosine in the official code: each rate ends at min_lr, not at a share of it."""
    for rate in (5e-5, 2.5e-5):
        ratio = 1e-6 / rate
        assert rate * lr_factor(0, 100, 0, ratio) == pytest.approx(rate)
        assert rate * lr_factor(100, 100, 0, ratio) == pytest.approx(1e-6)


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, small_shapes, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(small_shapes), "--out", str(out), *SMALL, "--recipe", "paper", "--epochs", "3"]
    code, text, err = _main(capsys, *args, "--dry-run")
    assert code == 0, err
    assert "recipe: paper" in text and "ema: 0.9999" in text and "decay_all: true" in text
    rows = {
        line.split()[0]: line.split()[1:] for line in text.splitlines() if line.startswith("  ") and ":" not in line
    }
    assert rows["backbone"][2:] == ["2.5e-05", "0.0001"] and rows["new"][2:] == ["5e-05", "0.0001"]
    assert "--ema 0.9999 averages over about 10000 steps" in text  # a note, with the flag's name

    code, text, err = _main(capsys, *args, "--dry-run", "--json", "--nproc", "2", "--weight-decay", "0")
    assert code == 0, err
    plan = json.loads(text)
    n_train = len(PreparedDataset.open(small_shapes).records("train"))
    per_epoch = math.ceil(math.ceil(n_train / 2) / 4)
    assert plan["steps"] == {
        "processes": 2,
        "samples_per_step": 8,
        "per_epoch": per_epoch,
        "epochs": 3,
        "total": 3 * per_epoch,
        "warmup": 0,
    }
    assert plan["data"]["train_samples"] == n_train and plan["data"]["val_split"] is None
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in plan["param_groups"]] == [
        ("new", 5e-5, 0.0),
        ("backbone", 2.5e-5, 0.0),
        ("text", 2.5e-5, 0.0),
    ]
    assert plan["settings"]["image_size"] == 64 and plan["settings"]["recipe"] == "paper"
    assert plan["frozen"] == {"tensors": 0, "parameters": 0} and plan["amp"] == "off"
    assert not out.exists()


@pytest.mark.slow
def test_paper_recipe_with_a_frozen_text_encoder_trains_with_a_note_and_resume_keeps_its_settings(
    capsys, small_shapes, tmp_path
):
    run = tmp_path / "run"
    res = run_cli(
        "train", "--data", str(small_shapes), "--out", str(run), *SMALL, "--recipe", "paper", "--freeze-text",
        "--max-steps", "1", "--ema", "0", "--device", "cpu",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert "note: the paper recipe trains the text encoder at 2.5e-05; --freeze-text keeps it fixed" in res.stderr
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["recipe"], saved["backbone_lr"], saved["text_lr"], saved["weight_decay"]) == (
        "paper",
        2.5e-5,
        None,
        1e-4,
    )
    assert (saved["decay_all"], saved["drop_path_rate"], saved["ema"]) == (True, 0.1, 0.0)
    state = torch.load(run / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"], g["weight_decay"]) for g in groups] == [
        ("new", 5e-5, 1e-4),
        ("backbone", 2.5e-5, 1e-4),
    ]
    assert [g["lr"] for g in groups] == pytest.approx([1e-6, 1e-6])  # the last step: every rate at min_lr
    config = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert config["drop_path_rate"] == 0.1 and config["image_size"] == 64

    code, text, err = _main(capsys, "train", "--out", str(run), "--resume", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(text)["settings"] == saved
    code, text, err = _main(
        capsys, "train", "--data", str(small_shapes), "--out", str(run), *SMALL, "--overwrite", "--dry-run"
    )
    assert code == 0 and "recipe: default" in text, err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "log.jsonl", "train_config.json"]
    assert json.loads((run / "train_config.json").read_text()) == saved


def test_dry_run_and_recipe_bad_input(capsys, small_shapes, tmp_path):
    base = ["train", "--data", str(small_shapes), "--out", str(tmp_path / "r"), *SMALL]
    code, out, err = _main(capsys, *base, "--text-lr", "1e-5", "--freeze-text")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "--text-lr" in err and "--freeze-text" in err and "`" not in err
    code, out, err = _main(capsys, *base, "--recipe", "fast")
    assert code == 2 and "--recipe must be one of default, paper (got 'fast')" in err, err
    code, out, err = _main(capsys, *base, "--json")
    assert code == 2 and "--dry-run" in err.splitlines()[-1], err
    code, out, err = _main(capsys, *base, "--backbone-weights", str(tmp_path / "vssm.pth"), "--max-steps", "1")
    assert code == 2 and err.startswith("error: ") and "--backbone-weights" in err and "vssm.pth" in err, err
    assert not (tmp_path / "r").exists()


def test_drop_path_rate_set_on_a_built_model_matches_a_model_built_with_it():
    """What `drop_path_rate` does to an `init` model: the same stochastic depth per block as a
    fresh build with that rate, and the config says so."""
    from remamber.modeling.presets import build_model, preset_config

    cfg = preset_config("tiny")
    model = build_model(cfg)
    model.set_drop_path_rate(0.2)
    fresh = build_model(cfg.replace(drop_path_rate=0.2))
    rates = lambda m: [b.drop_path.p for s in m.encoder.stages for b in s.blocks]  # noqa: E731
    assert rates(model) == rates(fresh) and rates(model)[0] == 0.0 and rates(model)[-1] == pytest.approx(0.2)
    assert model.config.drop_path_rate == 0.2
