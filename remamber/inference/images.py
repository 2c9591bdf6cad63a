"""Image files in and out: robust reading (EXIF, odd modes, bombs) and mask/overlay writing."""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from remamber.utils.errors import InputError
from remamber.utils.io import atomic_path

OVERLAY_COLOR = (255, 48, 48)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any Pillow mode: 16/32-bit and float greys are rescaled, alpha is dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1e-12)
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


class ImageDecodeError(Exception):
    """Bytes that do not decode to a usable image; ``kind`` is ``bomb`` (over Pillow's
    decompression-bomb limit), ``unknown`` (not an image format) or ``corrupt``."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail


def decode_rgb(source: BinaryIO, allow_large: bool = False) -> Image.Image:
    """Decode an image file object as RGB, upright per its EXIF orientation: what ``segment`` reads
    from a file and ``serve`` from a request, so both see the same pixels. Decoding problems raise
    :class:`ImageDecodeError`; each caller words them for its user.

    The size is checked against Pillow's decompression-bomb limit from the header, before any pixel
    is decoded, rather than by turning Pillow's warning into an error: warning filters are
    process-wide and not thread-safe, and the server decodes in several threads. ``allow_large``
    lifts Pillow's own (2x) limit for this call by changing its global setting, so it is meant for
    single-threaded callers (the ``segment`` command)."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow warns past the limit while opening; the check below decides, the warning only
            # would be printed.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if allow_large:
                Image.MAX_IMAGE_PIXELS = None
            with Image.open(source) as img:
                if not allow_large and limit is not None and img.size[0] * img.size[1] > limit:
                    raise ImageDecodeError("bomb", str(limit))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError:
        raise ImageDecodeError("bomb", str(limit)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("unknown") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError("corrupt", str(e) or type(e).__name__) from None
    finally:
        if allow_large:
            Image.MAX_IMAGE_PIXELS = limit


def load_image(path: str | os.PathLike, allow_large: bool = False) -> Image.Image:
    """Read an image file as RGB, upright per its EXIF orientation; bad files raise InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    try:
        with open(path, "rb") as f:
            return decode_rgb(f, allow_large)
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except ImageDecodeError as e:
        if e.kind == "bomb":
            raise InputError(
                f"{path}: the image is larger than Pillow's decompression-bomb limit ({e.detail} pixels); "
                "pass `allow_large` if you trust it"
            ) from None
        if e.kind == "unknown":
            raise InputError(f"{path}: not an image file (Pillow cannot identify it)") from None
        raise InputError(f"{path}: the image is truncated or corrupt ({e.detail})") from None


def _unaccented(c: str) -> str:
    """A Latin letter without its accents (``é`` -> ``e``); any other character as it is."""
    parts = unicodedata.normalize("NFKD", c)
    return parts[0] if parts[0].isascii() and all(unicodedata.combining(x) for x in parts[1:]) else c


def text_slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe slug of a phrase: ``"Man in red shirt!"`` -> ``man-in-red-shirt``; accents
    of Latin letters dropped (``café`` -> ``cafe``), other scripts kept whole (``黄色的圆``,
    ``हिन्दी``), at most ``max_len`` characters."""
    letters = "".join(_unaccented(c) for c in unicodedata.normalize("NFKC", text).lower())
    kept = "".join(c if unicodedata.category(c)[0] in "LNM" else "-" for c in letters)
    slug = re.sub("-+", "-", kept).strip("-")
    return slug[:max_len].rstrip("-") or "text"


def _cut(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def output_stem(image_path: str | os.PathLike, text: str) -> str:
    """``<image-stem>.<text-slug>``, the name the outputs of one image and phrase share, cut to
    100 + 90 UTF-8 bytes so that file names stay within file-system limits (255 bytes)."""
    return f"{_cut(Path(image_path).stem, 100)}.{_cut(text_slug(text), 90).rstrip('-')}"


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a boolean mask as a 0/255 greyscale PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its edge."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def overlay(image: Image.Image, mask: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the mask tinted and its outline drawn."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    color = np.array(OVERLAY_COLOR, dtype=np.float32)
    arr[mask] = (1 - alpha) * arr[mask] + alpha * color
    edge = _boundary(mask, max(1, round(max(mask.shape) / 300)))
    arr[edge] = color
    return Image.fromarray(arr.round().astype(np.uint8), mode="RGB")


def save_overlay(path: str | os.PathLike, image: Image.Image, mask: np.ndarray) -> None:
    """Write the overlay picture as JPEG, atomically."""
    with atomic_path(path) as tmp:
        overlay(image, mask).save(tmp, format="JPEG", quality=90)
