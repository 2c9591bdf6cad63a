"""The JSON fields of one prediction, shared by ``remamber segment --json`` and ``remamber serve``
so that both report the same numbers and the same RLE for the same mask."""

from __future__ import annotations

import numpy as np

from remamber.inference.processing import Prediction


def mask_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an ``(H, W)`` bool mask: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def prediction_fields(pred: Prediction) -> dict:
    """``area`` (pixels), ``mean_prob`` (inside the mask, 6 decimals) and ``rle`` of a prediction."""
    return {"area": pred.area, "mean_prob": round(pred.mean_prob, 6), "rle": mask_rle(pred.mask)}
