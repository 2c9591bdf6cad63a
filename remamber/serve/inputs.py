"""Reading a segment request: the size-limited body, multipart or JSON fields, the image bytes.

Everything stays in memory: the body is read up to the upload limit and parsed from there, so no
part of a request is ever spooled to a temporary file (as Starlette's form parser would do for
uploads over 1 MB).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from remamber.inference.images import ImageDecodeError, decode_rgb
from remamber.inference.processing import check_text
from remamber.utils.errors import InputError, check_presence_threshold, check_threshold

MAX_TEXTS = 32  # phrases in one request
MAX_TEXT_CHARS = 1000
MAX_PROBS_SIDE = 4096
# Pixels times phrases of one request: each phrase's mask and probabilities are made at the
# image's size (5 bytes a pixel), so this bounds what one request can hold in memory (~1.3 GB).
MAX_PIXEL_PHRASES = 256 * 2**20


class ApiError(Exception):
    """A request the server refuses: an HTTP status and one clear message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class SegmentRequest:
    """The fields of one ``POST /v1/segment``, checked."""

    image: bytes
    texts: list[str]
    threshold: float = 0.5
    presence_threshold: float = 0.5  # models with a presence head: below it the mask is empty
    mask_png: bool = False
    probs_png: int = 0  # longest side of the probability map to return; 0: none


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over the upload limit of {limit / 2**20:g} MB")


def check_content_length(value: str | None, limit: int) -> None:
    """Refuse a body whose declared length is over ``limit`` before reading any of it."""
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise ApiError(400, "the Content-Length header is not a number") from None
    if length > limit:
        raise too_large(limit)


async def read_body(receive_chunks, limit: int) -> bytes:
    """Collect the body from an async iterator of chunks, refusing it as soon as it passes ``limit``."""
    body = bytearray()
    async for chunk in receive_chunks:
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


def check_pixel_budget(size: tuple[int, int], phrases: int) -> None:
    """Refuse a request whose masks would take too much memory: a large image with many phrases."""
    pixels = size[0] * size[1]
    if pixels * phrases > MAX_PIXEL_PHRASES:
        most = max(1, MAX_PIXEL_PHRASES // pixels)
        raise ApiError(
            413, f"the image is too large for {phrases} phrases: at most {most} per request at {size[0]}x{size[1]}"
        )


def _flag(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ApiError(422, f"{name} must be true or false (got {value!r})")


def _threshold_field(value, check: Callable[[float], float]) -> float:
    """A form or JSON threshold through the command line's own ``check`` (:func:`check_threshold`
    or :func:`check_presence_threshold`), so both refuse the same values with the same words; 0.5,
    their default, when absent."""
    if value is None or value == "":
        return 0.5
    try:
        number = value if isinstance(value, bool) else float(value)  # a bool stays one: the checks refuse it
    except (TypeError, ValueError):
        number = value  # not a number: the check refuses it and names it
    try:
        return check(number)
    except InputError as e:
        raise ApiError(422, str(e)) from None


def _probs_side(value) -> int:
    if value is None or value == "" or value is False:
        return 0
    if value is True:
        return 1024
    try:
        side = int(value)
    except (TypeError, ValueError):
        raise ApiError(422, f"probs_png must be a whole number of pixels (got {value!r})") from None
    if not 0 <= side <= MAX_PROBS_SIDE:
        raise ApiError(422, f"probs_png must be between 0 and {MAX_PROBS_SIDE} pixels (got {side})")
    return side


def _texts(values: list, max_texts: int) -> list[str]:
    if not values:
        raise ApiError(422, 'no text: give one or more "text" fields naming the object to segment')
    if any(not isinstance(t, str) for t in values):
        raise ApiError(422, "each text must be a string")
    try:
        values = [check_text(t) for t in values]
    except InputError as e:
        raise ApiError(422, str(e)) from None
    if len(values) > max_texts:
        raise ApiError(422, f"too many texts: at most {max_texts} per request (got {len(values)})")
    if any(len(t) > MAX_TEXT_CHARS for t in values):
        raise ApiError(422, f"a text is longer than {MAX_TEXT_CHARS} characters")
    return values


def _finish(image: bytes | None, texts: list, fields: dict, max_texts: int) -> SegmentRequest:
    if image is None:
        raise ApiError(422, 'no image: send it as the "image" field')
    if not image:
        raise ApiError(400, "the image is empty")
    return SegmentRequest(
        image=image,
        texts=_texts(texts, max_texts),
        threshold=_threshold_field(fields.get("threshold"), check_threshold),
        presence_threshold=_threshold_field(fields.get("presence_threshold"), check_presence_threshold),
        mask_png=_flag(fields.get("mask_png", False), "mask_png"),
        probs_png=_probs_side(fields.get("probs_png")),
    )


def parse_json(body: bytes, max_texts: int = MAX_TEXTS) -> SegmentRequest:
    """``{"image": base64 or data URL, "text": str or [str], "threshold", "presence_threshold",
    "mask_png", "probs_png"}``."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the JSON body must be an object")
    encoded = data.get("image")
    image = None
    if encoded is not None:
        if not isinstance(encoded, str):
            raise ApiError(400, "image must be a base64 string (or a data: URL)")
        if encoded.startswith(("http://", "https://", "file:")):
            raise ApiError(400, "image must be the image itself in base64: URLs are not fetched")
        if encoded.startswith("data:"):
            encoded = encoded.partition(",")[2]
        try:
            image = base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image is not valid base64") from None
    texts = data.get("text", data.get("texts"))
    texts = [texts] if isinstance(texts, str) else texts
    if texts is not None and not isinstance(texts, list):
        raise ApiError(422, "text must be a string or a list of strings")
    return _finish(image, texts or [], data, max_texts)


def parse_multipart(body: bytes, content_type: str, max_texts: int = MAX_TEXTS) -> SegmentRequest:
    """``image`` (a file part) and one or more ``text`` fields, with optional ``threshold``,
    ``presence_threshold``, ``mask_png`` and ``probs_png``; parsed in memory with python-multipart's
    streaming parser."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header = {"name": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1][0][header["name"].lower()] = header["value"]
        header["name"], header["value"] = b"", b""

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception:  # python-multipart raises its own error types for malformed bodies
        raise ApiError(400, "the multipart body is malformed") from None
    image, texts, fields = None, [], {}
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name == "image":
            image = bytes(data)
            continue
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"field {name!r} is not UTF-8 text") from None
        if name in ("text", "texts"):
            texts.append(value)
        else:
            fields[name] = value
    return _finish(image, texts, fields, max_texts)


def decode_image(data: bytes) -> Image.Image:
    """Image bytes -> upright RGB image, as ``remamber segment`` reads a file; 400 for anything else."""
    try:
        return decode_rgb(io.BytesIO(data))
    except ImageDecodeError as e:
        if e.kind == "bomb":
            raise ApiError(400, f"the image is larger than the decompression-bomb limit ({e.detail} pixels)") from None
        if e.kind == "unknown":
            raise ApiError(400, "not an image (Pillow cannot identify it)") from None
        raise ApiError(400, "the image is truncated or corrupt") from None
