"""Model folders: save/load round trip, Hub specs, the Hub cache offline, and broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import assert_one_line_error, run_cli

from remamber.hub.folders import load_pretrained, parse_hub_spec, resolve_weights, save_pretrained
from remamber.utils.errors import ConfigError, InputError, WeightsError


def _outputs(model):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 128, 128)
    ids, mask, _ = model.tokenize(["the red circle", "a small blue square below the star"])
    with torch.inference_mode():
        return model(x, ids, mask)


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tiny_model_dir):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    loaded = load_pretrained(tiny_model_dir)
    assert loaded.config == tiny_model.config
    assert not loaded.training
    saved, back = tiny_model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    a, b = _outputs(loaded), _outputs(tiny_model)  # the scan path may differ between calls (rounding)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    assert loaded.tokenize(["red circle"])[0].tolist() == tiny_model.tokenize(["red circle"])[0].tolist()


def test_save_replaces_an_existing_folder(tiny_model, tmp_path):
    target = tmp_path / "m"
    save_pretrained(tiny_model, target)
    (target / "stale.txt").write_text("old")
    save_pretrained(tiny_model, target)
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("owner/name", ("owner/name", None)),
        ("owner/name@v1.0", ("owner/name", "v1.0")),
        ("hf://owner/name", ("owner/name", None)),
        ("hf://owner/name@abc123", ("owner/name", "abc123")),
        ("./relative/path", None),
        ("a/b/c", None),
    ],
)
def test_parse_hub_spec(spec, expected):
    assert parse_hub_spec(spec) == expected


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="no such model folder"):
        resolve_weights(str(tmp_path / "nope" / "deeper"))


def _broken_copy(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_broken_folders_are_refused_with_one_line(tiny_model_dir, tmp_path):
    no_weights = _broken_copy(tiny_model_dir, tmp_path, "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        load_pretrained(no_weights)

    corrupt = _broken_copy(tiny_model_dir, tmp_path, "corrupt")
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_pretrained(corrupt)

    mismatch = _broken_copy(tiny_model_dir, tmp_path, "mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["dims"] = [48, 96, 192, 384]
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="do not match its config"):
        load_pretrained(mismatch)

    unknown = _broken_copy(tiny_model_dir, tmp_path, "unknown")
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["preset"] = "tiny"
    cfg["bogus_field"] = 1
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unknown fields: bogus_field"):
        load_pretrained(unknown)


def _hub_cache(tmp_path, model_dir, repo="acme/tiny-remamber", revisions=("main",)):
    """Lay out a Hugging Face hub cache holding ``model_dir`` as ``repo``."""
    cache = tmp_path / "hub"
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    for rev in revisions:
        (root / "refs" / rev).write_text(commit)
    return cache


def test_load_through_hub_cache_offline(tiny_model_dir, tmp_path, rgb_image):
    cache = _hub_cache(tmp_path, tiny_model_dir, revisions=("main", "v1"))
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf")}
    for spec in ("acme/tiny-remamber", "hf://acme/tiny-remamber@v1"):
        res = run_cli(
            "segment", str(rgb_image), "red circle", "--weights", spec, "--out", str(tmp_path / "o"), "--json", env=env
        )
        assert res.code == 0, res.stderr
        assert json.loads(res.stdout)["area"] >= 0
    missing = run_cli(
        "segment", str(rgb_image), "red circle", "--weights", "acme/not-cached", "--out", str(tmp_path), env=env
    )
    assert_one_line_error(missing, "acme/not-cached", "HF_HUB_OFFLINE")


def test_written_files_get_usual_permissions(tiny_model, tmp_path):
    import os

    from remamber.utils.io import umask, write_json

    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask()
    folder = save_pretrained(tiny_model, tmp_path / "m")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask()
    assert os.access(folder / "config.json", os.R_OK)
    for f in folder.iterdir():  # safetensors writes its file 0600 by itself
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask(), f.name


# --------------------------------------------------------------------------- ReMamber as a ModelHubMixin


def _same_outputs(a, b) -> bool:
    """Whether two models give identical logits (on the fused CPU scan for both, whichever path
    the process would otherwise pick for a single call)."""
    from remamber.inference.predictor import prefer_fused_scan

    prefer_fused_scan(torch.device("cpu"), a.config.d_state)
    return torch.equal(_outputs(a), _outputs(b))


def test_mixin_save_then_from_pretrained_round_trips(tiny_model, tmp_path):
    from huggingface_hub import ModelHubMixin

    from remamber import ReMamber

    assert isinstance(tiny_model, ModelHubMixin)
    folder = tmp_path / "m"
    tiny_model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert json.loads((folder / "config.json").read_text()) == tiny_model.config.to_dict()  # ours, not the mixin's
    loaded = ReMamber.from_pretrained(folder)
    assert loaded.config == tiny_model.config and not loaded.training
    assert _same_outputs(loaded, tiny_model)
    assert load_pretrained(folder).state_dict().keys() == loaded.state_dict().keys()

    (folder / "stale.txt").write_text("old")
    tiny_model.save_pretrained(folder)  # replaces the folder as a whole, as save_pretrained does
    assert not (folder / "stale.txt").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(InputError, match="refusing to replace"):  # the user's files are never overwritten
        tiny_model.save_pretrained(tmp_path / "notes")


def test_mixin_from_pretrained_takes_a_shipped_name():
    from remamber import ReMamber
    from remamber.hub.shipped import DEFAULT_MODEL, SHIPPED_MODELS

    model = ReMamber.from_pretrained(DEFAULT_MODEL)
    assert model.config == load_pretrained(SHIPPED_MODELS[DEFAULT_MODEL]).config


def test_mixin_from_pretrained_reads_the_hub_cache_offline(tiny_model, tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from remamber import ReMamber

    cache = _hub_cache(tmp_path, tiny_model_dir, revisions=("main", "v1"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import
    for spec, options in (
        ("acme/tiny-remamber", {}),
        ("hf://acme/tiny-remamber@v1", {}),
        ("acme/tiny-remamber", {"revision": "v1"}),
    ):
        model = ReMamber.from_pretrained(spec, cache_dir=cache, **options)
        assert model.config == tiny_model.config and _same_outputs(model, tiny_model), spec
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        ReMamber.from_pretrained("acme/not-cached", cache_dir=cache)


def test_mixin_push_to_hub_goes_through_our_upload(tiny_model, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:  # as in test_export: no network
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, self.token))

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            sent = sorted(p.name for p in Path(folder_path).iterdir())  # the folder exists during the upload
            calls.append(("upload", repo_id, sorted(allow_patterns), sent, commit_message))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_model.push_to_hub("me/model", private=True, token="tok", commit_message="first")
    files = ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert url == "https://huggingface.co/me/model/commit/abc"
    assert calls == [("create", "me/model", True, "tok"), ("upload", "me/model", files, files, "first")]
