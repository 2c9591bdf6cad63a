"""``remamber serve``: load a model once and serve it over HTTP (an API and a page)."""

from __future__ import annotations

import ipaddress
import math
import socket
import sys
from pathlib import Path

import typer

from remamber.cli.options import device_option, weights_option
from remamber.utils.errors import InputError

HELP = """Serve a model over HTTP: a page at / and an API (POST /v1/segment, GET /v1/model, GET /health; OpenAPI at /docs).

The model loads once (the shipped default without --weights; any model folder, Hub id or ONNX folder that segment takes). Phrases of one request, and requests that wait at the same time, run as one batched forward pass of up to --max-batch items. Serves until Ctrl-C or SIGTERM, finishing the requests in flight.

Examples:

  remamber serve                                   (http://127.0.0.1:8000)

  remamber serve --weights owner/name --port 9000 --max-batch 16

  curl -F image=@photo.jpg -F text="man in red shirt" http://127.0.0.1:8000/v1/segment

Nothing from a request is written to disk and no URL is ever fetched. With an API key (--api-key or REMAMBER_API_KEY) the /v1 endpoints want 'Authorization: Bearer KEY' or 'X-API-Key: KEY'.
"""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_literal(host: str) -> str:
    """``host`` as a Host header names it (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a server that other machines may reach with no key; None when there is none."""
    if _is_loopback(host) or api_key is not None:
        return None
    return (
        f"warning: listening on {host} without an API key: anyone who can reach this machine can use the "
        "model (set --api-key or REMAMBER_API_KEY)"
    )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), or one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def load_served_model(weights: str | None, device: str):
    """``(predictor, ModelInfo)`` for ``--weights`` (or the shipped default), loaded as
    ``remamber segment`` loads it."""
    from remamber.cli.weights import load_predictor, weights_or_default
    from remamber.hub.folders import CARD_NAME, parse_hub_spec, resolve_weights
    from remamber.inference.fuse import parameter_count
    from remamber.serve.app import ModelInfo

    spec = weights_or_default(weights)
    folder = resolve_weights(spec)
    predictor = load_predictor(str(folder), device, 0.5)
    local = not spec.startswith("hf://") and Path(spec).expanduser().exists()
    name = folder.resolve().name if local or parse_hub_spec(spec) is None else spec.removeprefix("hf://")
    card_path = folder / CARD_NAME
    card = card_path.read_text(encoding="utf-8", errors="replace") if card_path.is_file() else None
    config = predictor.config
    model = getattr(predictor, "model", None)
    dev = getattr(predictor, "device", "cpu")
    if hasattr(predictor, "device"):
        from remamber.inference.predictor import prefer_fused_scan

        prefer_fused_scan(predictor.device, config.d_state)  # a server makes many calls, as a batch does
    info = ModelInfo(
        name=name,
        preset=str(getattr(config, "preset", "")),
        device=str(dev),
        format="pytorch" if model is not None else "onnx",
        image_size=int(config.image_size),
        max_text_len=int(config.max_text_len),
        parameters=parameter_count(model) if model is not None else None,
        card=card,
        config=config.to_dict() if hasattr(config, "to_dict") else {},
    )
    return predictor, info


def serve(
    weights: str | None = weights_option(),
    host: str = typer.Option(
        "127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0: every interface)."
    ),
    port: int = typer.Option(
        8000, "--port", metavar="N", help="Port to listen on (0: any free port; the URL printed says which)."
    ),
    device: str = device_option(),
    max_batch: int = typer.Option(8, "--max-batch", metavar="N", help="Most phrases in one forward pass."),
    max_queue: int = typer.Option(
        64,
        "--max-queue",
        metavar="N",
        help="Most phrases waiting for the model; past it, requests get 503 with Retry-After.",
    ),
    max_upload_mb: float = typer.Option(
        20.0, "--max-upload-mb", metavar="X", help="Largest request body, in MB (413 past it)."
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        metavar="KEY",
        envvar="REMAMBER_API_KEY",
        help="Require this key on /v1 (Authorization: Bearer KEY or X-API-Key: KEY). Also REMAMBER_API_KEY.",
        show_default=False,
    ),
) -> None:
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: expected 0 to 65535")
    if max_batch < 1:
        raise InputError(f"--max-batch {max_batch}: expected 1 or more")
    if max_queue < 1:
        raise InputError(f"--max-queue {max_queue}: expected 1 or more")
    if not (max_upload_mb > 0 and math.isfinite(max_upload_mb)):
        raise InputError(f"--max-upload-mb {max_upload_mb}: expected more than 0")
    if api_key is not None and not api_key.strip():
        raise InputError("--api-key is empty")
    try:
        import uvicorn

        from remamber.serve.app import LOOPBACK_HOSTS, ServeSettings, create_app
    except ImportError as e:
        raise InputError(f"remamber serve needs FastAPI and uvicorn ({e}): pip install fastapi uvicorn") from None

    predictor, info = load_served_model(weights, device)
    sock = _bind(host, port)
    warning = exposure_warning(host, api_key)
    if warning:
        sys.stderr.write(warning + "\n")
    settings = ServeSettings(
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_batch=max_batch,
        max_queue=max_queue,
        api_key=api_key,
        allowed_hosts=[*LOOPBACK_HOSTS, _host_literal(host)] if _is_loopback(host) else None,
    )
    app = create_app(predictor, info, settings)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    demo = " (the synthetic-shapes demo model)" if info.demo else ""
    typer.echo(
        f"remamber serve: http://{shown}:{bound_port}/ model {info.name}{demo} on {info.device}; "
        "API docs at /docs; Ctrl-C to stop",
    )
    sys.stdout.flush()
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=60,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
