"""The public API (``import remamber``), the shipped models' names, and the demo model's note."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import remamber
from remamber.hub.shipped import DEFAULT_MODEL, SHIPPED_MODELS

REPO = Path(__file__).resolve().parents[1]


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys, remamber\n"
        "assert 'torch' not in sys.modules, 'import remamber imported torch'\n"
        "from remamber.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'remamber --help imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stdout


def test_public_names_resolve_and_are_listed():
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor
    from remamber.modeling.config import ModelConfig
    from remamber.modeling.presets import build_model
    from remamber.modeling.remamber import ReMamber

    expected = {
        "Predictor": Predictor,
        "load_pretrained": load_pretrained,
        "build_model": build_model,
        "ReMamber": ReMamber,
        "ModelConfig": ModelConfig,
    }
    assert set(remamber.__all__) == set(expected) | {"__version__"} == set(remamber._LAZY) | {"__version__"}
    for name, value in expected.items():
        assert getattr(remamber, name) is value
    assert set(remamber.__all__) <= set(dir(remamber))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        remamber.nope  # noqa: B018


def test_shipped_name_and_default_load_the_shipped_folder():
    from remamber.cli.weights import default_weights
    from remamber.hub.folders import load_pretrained, resolve_weights

    folder = SHIPPED_MODELS[DEFAULT_MODEL]
    assert resolve_weights(DEFAULT_MODEL) == folder == default_weights()
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"} <= {
        p.name for p in folder.iterdir()
    }
    model = load_pretrained()  # no argument: the default model
    assert model.config.preset == "tiny" and not model.training and model.tokenizer is not None


def test_a_local_folder_comes_before_a_shipped_name(tiny_model_dir, tmp_path, monkeypatch):
    from remamber.hub.folders import resolve_weights
    from remamber.utils.errors import WeightsError

    shutil.copytree(tiny_model_dir, tmp_path / DEFAULT_MODEL)
    monkeypatch.chdir(tmp_path)
    assert resolve_weights(DEFAULT_MODEL) == Path(DEFAULT_MODEL)
    with pytest.raises(WeightsError):  # hf:// always means the Hub, which has no owner-less ids
        resolve_weights(f"hf://{DEFAULT_MODEL}")


def test_the_demo_model_says_once_what_it_knows(tiny_model_dir, monkeypatch, capsys):
    from remamber.cli import weights
    from remamber.engine import allocator

    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: True)  # no process-wide change in pytest
    monkeypatch.setattr(weights, "_noted", False)
    weights.load_model(None, "cpu")
    weights.load_predictor(DEFAULT_MODEL, "cpu", 0.5)
    weights.load_model(str(SHIPPED_MODELS[DEFAULT_MODEL]), "cpu")
    out, err = capsys.readouterr()
    assert out == "" and err.count(weights.DEMO_NOTE) == 1, err
    assert "synthetic shapes only" in weights.DEMO_NOTE and "--from-official" in weights.DEMO_NOTE

    monkeypatch.setattr(weights, "_noted", False)
    weights.load_model(str(tiny_model_dir), "cpu")  # any other model: no note
    assert capsys.readouterr().err == ""
