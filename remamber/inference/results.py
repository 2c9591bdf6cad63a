"""The JSON fields of one prediction, shared by ``remamber segment --json`` and ``remamber serve``
so that both report the same numbers and the same RLE for the same mask."""

from __future__ import annotations

from remamber.data.masks import encode_mask
from remamber.inference.processing import Prediction


def prediction_fields(pred: Prediction) -> dict:
    """``area`` (pixels), ``mean_prob`` (inside the mask, 6 decimals), ``rle``, ``presence`` (6
    decimals; None for a model without a presence head) and ``found`` of a prediction."""
    presence = None if pred.presence is None else round(pred.presence, 6)
    return {
        "area": pred.area,
        "mean_prob": round(pred.mean_prob, 6),
        "rle": encode_mask(pred.mask),
        "presence": presence,
        "found": pred.found,
    }
