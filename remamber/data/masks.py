"""Binary masks as COCO run-length encodings (RLE), through pycocotools.

A mask in a manifest is ``{"size": [height, width], "counts": "<compressed string>"}``:
the COCO compressed RLE, column-major, with ``counts`` as text so that it fits in JSON.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

Rle = dict  # {"size": [h, w], "counts": str}


def encode_mask(mask: np.ndarray) -> Rle:
    """Encode a 2-D 0/1 (or bool) array as a compressed COCO RLE with text counts."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return _text_counts(rle)


def decode_rle(rle: Rle) -> np.ndarray:
    """Decode a compressed COCO RLE (text or bytes counts) to an ``(h, w)`` uint8 array of 0/1."""
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(_bytes_counts(rle))


def union_rle(rles: list[Rle], height: int, width: int) -> Rle:
    """The union of masks as one compressed RLE; all zeros when ``rles`` is empty."""
    union = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        union |= decode_rle(rle)
    return encode_mask(union)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> Rle:
    """Turn a COCO ``segmentation`` into one compressed RLE with text counts.

    Accepts a list of polygons (one or several parts, merged as a union), an uncompressed
    RLE (``counts`` a list of run lengths) or a compressed RLE (``counts`` a string).
    Raises ``ValueError`` with a short reason when the value is none of those.
    """
    if isinstance(segmentation, dict):
        rle = _rle_from_dict(segmentation, height, width)
    elif isinstance(segmentation, list) and segmentation:
        rle = _rle_from_polygons(segmentation, height, width)
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE dict")
    return _text_counts(rle)


def _rle_from_polygons(polygons: list, height: int, width: int) -> dict:
    parts = [_padded_polygon(p) for p in polygons]
    rles = coco_mask.frPyObjects(parts, height, width)
    return coco_mask.merge(rles, intersect=0) if len(rles) > 1 else rles[0]


def _padded_polygon(polygon: Any) -> list[float]:
    """Check one polygon ``[x1, y1, x2, y2, ...]``; repeat its last point up to 3 points.

    pycocotools reads a 4-number list as a box, not as a 2-point polygon, so short
    (degenerate) polygons are padded to stay polygons.
    """
    if not isinstance(polygon, list) or not polygon:
        raise ValueError("a polygon must be a non-empty list of numbers")
    if len(polygon) % 2 or not all(_is_number(v) for v in polygon):
        raise ValueError("a polygon must hold an even count of numbers")
    coords = [float(v) for v in polygon]
    while len(coords) < 6:
        coords.extend(coords[-2:])
    return coords


def _rle_from_dict(rle: dict, height: int, width: int) -> dict:
    size = rle.get("size")
    counts = rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ValueError("an RLE needs 'size': [height, width]")
    if [int(size[0]), int(size[1])] != [int(height), int(width)]:
        raise ValueError(f"RLE size {list(size)} differs from the image size [{height}, {width}]")
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != height * width:
            raise ValueError("uncompressed RLE run lengths do not add up to height*width")
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, (str, bytes)):
        return _bytes_counts({"size": [height, width], "counts": counts})
    raise ValueError("an RLE needs 'counts' as a list (uncompressed) or a string (compressed)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bytes_counts(rle: Rle) -> dict:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _text_counts(rle: dict) -> Rle:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}
