"""The HTTP API and the page of ``remamber serve`` (FastAPI).

``create_app`` wires a loaded predictor, behind a :class:`~remamber.serve.batching.Batcher`, to:

- ``GET /``: the page (``static/index.html``), self-contained, no CDN;
- ``GET /health``: status, model, device, queue depth (no key needed, for probes);
- ``GET /v1/model``: the model's config summary and card;
- ``POST /v1/segment``: image + one or more phrases -> masks (multipart or JSON).

Errors are ``{"error": message}`` with a status; a traceback never reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from remamber import __version__
from remamber.hub.shipped import SHIPPED_MODELS
from remamber.inference.processing import Prediction
from remamber.inference.results import prediction_fields
from remamber.serve.batching import Batcher, BatcherClosed, QueueFull
from remamber.serve.inputs import (
    MAX_TEXTS,
    ApiError,
    SegmentRequest,
    check_content_length,
    check_pixel_budget,
    decode_image,
    parse_json,
    parse_multipart,
    read_body,
)

STATIC = Path(__file__).resolve().parent / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
log = logging.getLogger("remamber.serve")


@dataclass
class ModelInfo:
    """What the server tells clients about its model."""

    name: str
    preset: str
    device: str
    format: str  # pytorch or onnx
    image_size: int
    max_text_len: int
    parameters: int | None = None
    card: str | None = None
    config: dict = field(default_factory=dict)

    @property
    def demo(self) -> bool:
        """A shipped synthetic-shapes model: useless on photos, and the page says so."""
        return self.preset == "tiny" and self.name in SHIPPED_MODELS


@dataclass
class ServeSettings:
    """Limits and access of one server."""

    max_upload_bytes: int = 20 * 2**20
    max_batch: int = 8
    max_queue: int = 64
    api_key: str | None = None
    retry_after_s: int = 1
    # Host headers accepted (None: any). A server on a loopback address accepts only loopback
    # names, so that a web page cannot reach it through DNS rebinding.
    allowed_hosts: list[str] | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def probs_map(probs: np.ndarray, max_side: int) -> np.ndarray:
    """Probabilities as 8-bit grey (0..255), shrunk so that the longest side is at most
    ``max_side`` (never enlarged): what the page re-thresholds without a new request."""
    h, w = probs.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        probs = np.asarray(Image.fromarray(probs.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def result_entry(text: str, pred: Prediction, req: SegmentRequest) -> dict:
    """One phrase's result: the fields of ``remamber segment --json`` plus the PNGs asked for."""
    entry = {"text": text, **prediction_fields(pred), "truncated": bool(pred.truncated)}
    if req.mask_png:
        entry["mask_png"] = _png_b64(pred.mask.astype(np.uint8) * 255)
    if req.probs_png:
        entry["probs_png"] = _png_b64(probs_map(pred.probs, req.probs_png))
    return entry


def _provided_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


DECODE_SLOTS = 2  # images decoded at once
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


def _host_name(request: Request) -> str:
    """The Host header without its port (``[::1]:8000`` -> ``[::1]``)."""
    host = request.headers.get("host", "").strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


SEGMENT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image", "text"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "The image file."},
                    "text": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": f"One or more phrases (repeat the field; at most {MAX_TEXTS}).",
                    },
                    "threshold": {"type": "number", "default": 0.5, "description": "Mask = probability > threshold."},
                    "presence_threshold": {
                        "type": "number",
                        "default": 0.5,
                        "description": "Models with a presence head: below it the mask is empty (found false).",
                    },
                    "mask_png": {"type": "boolean", "default": False, "description": "Add each mask as a PNG."},
                    "probs_png": {
                        "type": "integer",
                        "default": 0,
                        "description": "Add each probability map as an 8-bit grey PNG, longest side at most this.",
                    },
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image", "text"],
                "properties": {
                    "image": {"type": "string", "description": "The image file in base64 (or a data: URL)."},
                    "text": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "threshold": {"type": "number", "default": 0.5},
                    "presence_threshold": {"type": "number", "default": 0.5},
                    "mask_png": {"type": "boolean", "default": False},
                    "probs_png": {"type": "integer", "default": 0},
                },
            }
        },
    },
}


def create_app(predictor, info: ModelInfo, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (anything with ``predict_many``)."""
    settings = settings or ServeSettings()
    state: dict = {}
    # A few decodes at a time (threads of the pool wait here): it bounds the memory that decoded
    # images of simultaneous requests can take.
    decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def decode_bounded(data: bytes):
        with decode_slots:
            return decode_image(data)

    def batcher() -> Batcher:
        if "batcher" not in state:  # made lazily too, for a TestClient used without its context manager
            state["batcher"] = Batcher(predictor.predict_many, settings.max_batch, settings.max_queue)
        return state["batcher"]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher()
        yield
        # Uvicorn has finished the requests in flight by now; the queue is empty or draining.
        state["batcher"].close(timeout=60)

    app = FastAPI(
        title="remamber serve",
        version=__version__,
        description="Referring image segmentation: an image and a phrase in, the mask of the object it names out.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.info = info
    app.state.batcher = batcher

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = _provided_key(request)
        if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}".strip(": "))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)  # the traceback stays in the server's log
        return _error(500, "internal server error (see the server's log)")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        if settings.allowed_hosts is not None and _host_name(request) not in settings.allowed_hosts:
            return _error(400, "this server answers only requests addressed to its loopback name")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Status, model, device and queue depth (no key needed)")
    async def health() -> dict:
        b = batcher()
        return {
            "status": "ok",
            "version": __version__,
            "model": info.name,
            "preset": info.preset,
            "device": info.device,
            "format": info.format,
            "demo": info.demo,
            "auth": settings.api_key is not None,
            "queue": {
                "waiting": b.depth,
                "running": b.running,
                "max_queue": settings.max_queue,
                "max_batch": settings.max_batch,
            },
            "forward_calls": b.forward_calls,
            "max_upload_bytes": settings.max_upload_bytes,
        }

    @app.get("/v1/model", summary="The model's config summary and card")
    async def model(request: Request) -> dict:
        check_key(request)
        summary = asdict(info)
        summary["demo"] = info.demo
        return summary

    @app.post(
        "/v1/segment",
        summary="Segment the objects that one or more phrases name in an image",
        openapi_extra={"requestBody": SEGMENT_BODY},
        responses={
            200: {
                "description": "width, height, seconds and one result per phrase (text, area, mean_prob, rle, "
                "presence, found, ...)"
            },
            400: {"description": "not an image, a decompression bomb, bad base64 or a malformed body"},
            401: {"description": "missing or wrong API key (when the server has one)"},
            413: {"description": "the body is over the upload limit"},
            415: {"description": "neither multipart/form-data nor application/json"},
            422: {"description": "missing or empty text, or a bad threshold or presence_threshold"},
            503: {"description": "the queue is full: retry after Retry-After seconds"},
        },
    )
    async def segment(request: Request) -> JSONResponse:
        start = time.perf_counter()
        check_key(request)
        limit = settings.max_upload_bytes
        check_content_length(request.headers.get("content-length"), limit)
        body = await read_body(request.stream(), limit)
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            req = parse_multipart(body, request.headers["content-type"], min(MAX_TEXTS, settings.max_queue))
        elif ctype.startswith("application/json") or not ctype:
            req = parse_json(body, min(MAX_TEXTS, settings.max_queue))
        else:
            raise ApiError(415, "send multipart/form-data (image file + text fields) or application/json")
        del body
        image = await run_in_threadpool(decode_bounded, req.image)
        req.image = b""  # the bytes are not needed while the request waits for the model
        check_pixel_budget(image.size, len(req.texts))
        try:
            futures = batcher().submit([(image, text, req.threshold, req.presence_threshold) for text in req.texts])
        except QueueFull as e:
            raise ApiError(503, f"busy: {e}; retry later", {"Retry-After": str(settings.retry_after_s)}) from None
        except BatcherClosed:
            raise ApiError(503, "the server is shutting down", {"Retry-After": str(settings.retry_after_s)}) from None
        preds = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        results = await run_in_threadpool(
            lambda: [result_entry(text, pred, req) for text, pred in zip(req.texts, preds)]
        )
        return JSONResponse(
            {
                "width": image.size[0],
                "height": image.size[1],
                "seconds": round(time.perf_counter() - start, 4),
                "threshold": req.threshold,
                "presence_threshold": req.presence_threshold,
                "model": info.name,
                "results": results,
            }
        )

    return app
