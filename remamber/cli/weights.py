"""Which model a command uses: ``--weights`` or the shipped default."""

from __future__ import annotations

import sys
from pathlib import Path

from remamber.hub.shipped import DEFAULT_MODEL, is_shipped_model, shipped_folder
from remamber.utils.errors import WeightsError

DEMO_NOTE = (
    "note: the shipped models know synthetic shapes only; for photos pass --weights "
    "(a converted ReMamber checkpoint: remamber export --from-official ...) or train on RefCOCO"
)
_noted = False  # DEMO_NOTE is said once per process, however many models a command loads


def default_weights() -> Path | None:
    """The shipped default model folder, if this installation has it."""
    return shipped_folder(DEFAULT_MODEL)


def weights_or_default(weights: str | None) -> str:
    """``--weights`` as given, or the shipped default model (an error when there is none)."""
    if weights is not None:
        return weights
    found = default_weights()
    if found is None:
        raise WeightsError(
            "no --weights given and no default model is installed: pass --weights with a model folder "
            "or a Hub id (owner/name); train one with `remamber train`"
        )
    return str(found)


def _note_if_demo(folder: Path) -> None:
    """Say on stderr (never stdout, which --json owns) what the shipped demo models cannot do."""
    global _noted
    if not _noted and is_shipped_model(folder):
        _noted = True
        sys.stderr.write(DEMO_NOTE + "\n")


def load_model(weights: str | None, device):
    """Load the PyTorch model named by ``--weights`` (or the default) onto ``device``; on the CPU
    the command's process keeps freed memory for its next image (:mod:`remamber.engine.allocator`)."""
    import torch

    from remamber.engine.allocator import keep_freed_memory
    from remamber.hub.folders import load_pretrained, resolve_weights

    device = torch.device(device)
    folder = resolve_weights(weights_or_default(weights))
    _note_if_demo(folder)
    model = load_pretrained(folder, device=str(device))
    if device.type == "cpu":  # as `remamber train` does
        keep_freed_memory()
    return model


def load_predictor(weights: str | None, device: str, threshold: float, presence_threshold: float = 0.5):
    """A predictor for ``--weights`` (or the default): onnxruntime for an ONNX folder, else PyTorch."""
    from remamber.hub.folders import read_config, resolve_weights
    from remamber.inference.onnx_predictor import OnnxPredictor, is_onnx_folder

    folder = resolve_weights(weights_or_default(weights))
    if is_onnx_folder(folder):
        if device not in ("auto", "cpu"):
            raise WeightsError(f"--device {device}: ONNX models run on the CPU here (use --device cpu or auto)")
        return OnnxPredictor(folder, read_config(folder), threshold, presence_threshold)
    from remamber.inference.predictor import Predictor, resolve_device

    dev = resolve_device(device)
    return Predictor(load_model(str(folder), dev), dev, threshold, presence_threshold=presence_threshold)
