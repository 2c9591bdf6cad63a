"""Export a model to ONNX: one graph from (image, input_ids, attention_mask) to mask logits (and,
for a model with a presence head, presence logits).

The selective scan is exported through its loop-free form (``scan_backend("parallel")``:
segment sums inside chunks and across chunks), so no Python loop unrolls into the graph.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from remamber.hub.card import model_card
from remamber.hub.folders import load_pretrained, staged_folder, write_model_files
from remamber.inference.onnx_predictor import INPUT_NAMES, ONNX_NAME, OUTPUT_NAME, PRESENCE_OUTPUT_NAME, OnnxPredictor
from remamber.utils.errors import InputError, WeightsError

SAMPLE_TEXTS = ["the red circle on the left", "man in red shirt"]

ONNX_NOTES = """## ONNX

This folder holds `model.onnx` (exported with `remamber export --format onnx`): inputs `image`
(n, 3, S, S) float32 normalised as in `config.json`, `input_ids` and `attention_mask` (n, T) int64
from the tokenizer here, padded to T = `max_text_len`; output `logits` (n, 1, S, S){presence}. The
batch size is dynamic. `remamber segment --weights <this folder>` runs it with onnxruntime.
"""
PRESENCE_NOTE = (
    " and `presence_logits` (n,), the log-odds that the phrase names anything (below the presence "
    "threshold, 0.5 by default, the mask is empty)"
)


# Opsets the export takes: attention (scaled_dot_product_attention) needs 14; 20 is the newest the
# TorchScript exporter documents.
MIN_OPSET, MAX_OPSET = 14, 20


def check_opset(opset: int) -> int:
    """``opset``, or InputError when the export cannot use it."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset}: choose {MIN_OPSET} to {MAX_OPSET} (the default is 17)")
    return opset


def _require_onnx():
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise WeightsError("ONNX export needs onnx and onnxruntime: pip install 'remamber[onnx]'")
    import onnx

    return onnx


def sample_inputs(model, n: int = 2, seed: int = 0) -> tuple[Any, Any, Any]:
    """A random image batch and tokenized phrases for tracing and checking."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    images = torch.randn(n, 3, size, size, generator=gen)
    ids, mask, _ = model.tokenize([SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(n)])
    return images, ids, mask


def output_names(model) -> list[str]:
    """The graph's outputs: the mask logits, and the presence logits for a model with a presence head."""
    return [OUTPUT_NAME, PRESENCE_OUTPUT_NAME] if model.config.presence_head else [OUTPUT_NAME]


def _graph(model):
    """The module to trace: ``model`` itself (one output), or a view of it returning both outputs."""
    import torch

    if not model.config.presence_head:
        return model

    class WithPresence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images, input_ids, attention_mask):
            return tuple(self.model(images, input_ids, attention_mask, return_presence=True))

    # In eval mode like the model: the exporter sets the mode it finds back afterwards, on the
    # wrapped model too.
    return WithPresence().eval()


def export_onnx(weights: str, out: Path, opset: int = 17, verify: bool = False) -> tuple[Path, dict]:
    """Write an ONNX model folder; with ``verify``, compare onnxruntime with PyTorch."""
    import torch

    from remamber.ops.selective_scan import scan_backend

    check_opset(opset)
    onnx = _require_onnx()
    model = load_pretrained(weights).eval()
    inputs = sample_inputs(model)
    outputs = output_names(model)
    axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *outputs)}
    report: dict[str, Any] = {}
    with staged_folder(out) as tmp:
        path = tmp / ONNX_NAME
        with scan_backend("parallel"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in shapes
            torch.onnx.export(
                _graph(model),
                inputs,
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
        report.update(onnx_nodes=len(graph.graph.node), onnx_bytes=path.stat().st_size, opset=opset)
        notes = ONNX_NOTES.format(presence=PRESENCE_NOTE if model.config.presence_head else "")
        write_model_files(model, tmp, model_card(model.config, notes))
        if verify:
            report.update(verify_model(model, OnnxPredictor(tmp, model.config)))
    return Path(out), report


def verify_model(model, predictor: OnnxPredictor, n: int = 3) -> dict:
    """Largest |logit difference| between onnxruntime and PyTorch on ``n`` random samples, for the
    mask logits and (keys ``presence_*``) the presence logits; a graph whose outputs are not the
    model's is a WeightsError."""
    import torch

    images, ids, mask = sample_inputs(model, n=n, seed=1)
    with torch.no_grad():
        ref = model(images, ids, mask, return_presence=True)
    got = predictor.run(images.numpy(), ids.numpy(), mask.numpy())
    expected = [ref.logits] + ([ref.presence_logits] if ref.presence_logits is not None else [])
    if len(got) != len(expected):
        raise WeightsError(f"the ONNX graph has {len(got)} output(s) where the model has {len(expected)}")
    report: dict[str, Any] = {"verify_samples": n}
    for prefix, want, have in zip(("", "presence_"), expected, got):
        want = want.numpy()
        diff, scale = float(np.abs(have - want).max()), float(np.abs(want).max())
        report[f"{prefix}max_abs_diff"] = diff
        report[f"{prefix}max_abs_logit"] = scale
        report[f"{prefix}max_rel_diff"] = diff / max(scale, 1e-12)
    return report
