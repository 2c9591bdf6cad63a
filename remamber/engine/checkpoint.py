"""Training checkpoints: a model folder that segment/eval load directly, plus the trainer state.

``RUNDIR/checkpoints/{last,best}/`` each hold ``config.json``, ``model.safetensors`` (EMA
weights when EMA is on), tokenizer files, a model card and ``trainer_state.pt``
(``training.json`` too: what the model card's training section shows): raw weights,
optimizer, scheduler, grad scaler, EMA, RNG states and the data position.  The state file is
read back with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remamber.hub.card import model_card, training_section
from remamber.hub.folders import TRAINING_NAME, save_pretrained
from remamber.utils.errors import InputError
from remamber.utils.io import write_json

STATE_NAME = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches, as tensors and plain data."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, trainer_state: dict[str, Any], training: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically: model folder, trainer state and ``training.json``
    (dataset, settings, progress and the latest validation; the model card shows it)."""
    return save_pretrained(
        model,
        folder,
        card=model_card(model.config, training_section(training)),
        extra_files={
            STATE_NAME: lambda path: torch.save(trainer_state, path),
            TRAINING_NAME: lambda path: write_json(path, training),
        },
    )


def load_trainer_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint's trainer state safely (weights_only=True)."""
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        raise InputError(f"no checkpoint to resume at {folder} ({STATE_NAME} is missing); start without `resume`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: refuse, never unpickle freely
        raise InputError(f"{path} is not a readable trainer state ({type(e).__name__}: {e})") from None
