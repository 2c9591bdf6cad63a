"""Run an exported ``model.onnx`` folder with onnxruntime: the same predictions, no torch.

An ONNX model folder (``remamber export --format onnx``) holds ``model.onnx`` (inputs
``image`` ``(n, 3, S, S)`` float32, ``input_ids`` and ``attention_mask`` ``(n, T)`` int64;
outputs ``logits`` ``(n, 1, S, S)`` and, for a model with a presence head, ``presence_logits``
``(n,)``), our ``config.json`` and the tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from remamber.hub.folders import ONNX_NAME, WEIGHTS_NAME
from remamber.inference.processing import PairPredictor, clean_texts, model_input
from remamber.inference.tokens import folder_tokenizer, tokenize
from remamber.modeling.config import ModelConfig
from remamber.utils.errors import WeightsError, check_presence_threshold, check_threshold, first_line

INPUT_NAMES = ("image", "input_ids", "attention_mask")
OUTPUT_NAME = "logits"
PRESENCE_OUTPUT_NAME = "presence_logits"


def is_onnx_folder(folder: Path) -> bool:
    """A folder with ``model.onnx`` and no PyTorch weights is run with onnxruntime."""
    return (folder / ONNX_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file()


class OnnxPredictor(PairPredictor):
    """The :class:`remamber.inference.predictor.Predictor` interface over an onnxruntime session (CPU)."""

    def __init__(
        self, folder: Path, config: ModelConfig, threshold: float = 0.5, presence_threshold: float = 0.5
    ) -> None:
        check_threshold(threshold)
        check_presence_threshold(presence_threshold)
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeightsError(
                f"{folder} is an ONNX model: install onnxruntime (pip install 'remamber[onnx]') to run it"
            ) from None
        try:
            self.session = ort.InferenceSession(str(folder / ONNX_NAME), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise WeightsError(f"{folder / ONNX_NAME} is not a loadable ONNX model ({first_line(e)})") from None
        self.tokenizer = folder_tokenizer(folder)
        self.config = config
        self.threshold = threshold
        self.presence_threshold = presence_threshold
        # An export of a model without a presence head (or from before it existed) has one output.
        self.outputs = [OUTPUT_NAME]
        if PRESENCE_OUTPUT_NAME in {o.name for o in self.session.get_outputs()}:
            self.outputs.append(PRESENCE_OUTPUT_NAME)

    def run(self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs (mask logits, then presence logits when it has them) for model inputs."""
        feeds = dict(zip(INPUT_NAMES, (images, input_ids.astype(np.int64), attention_mask.astype(np.int64))))
        return self.session.run(self.outputs, feeds)

    def logits(self, images: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, np.ndarray | None, list[bool]]:
        """Mask logits ``(n, S, S)`` at the input size and presence logits ``(n,)`` (None without
        a presence head) for image/phrase pairs."""
        cfg = self.config
        ids, mask, truncated = tokenize(self.tokenizer, clean_texts(texts), cfg.max_text_len, return_tensors="np")
        x = np.stack([model_input(im, cfg.image_size, cfg.pixel_mean, cfg.pixel_std) for im in images])
        out = self.run(x, ids, mask)
        return out[0][:, 0], (out[1] if len(out) > 1 else None), truncated
