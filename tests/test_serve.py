"""``remamber serve``: the HTTP API (every status), equality with ``segment --json``, the API key,
the upload limit, batching of concurrent requests, and the command itself."""

from __future__ import annotations

import base64
import builtins
import io
import json
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from model_fixtures import run_cli
from PIL import Image
from serve_fixtures import EXAMPLES, live_app, png_header_only, serve_process

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from remamber.serve.app import ServeSettings, create_app  # noqa: E402

SHAPES3 = EXAMPLES / "shapes-3.png"
PHRASE = "the big yellow object"


def _decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _png_array(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def served():
    """The shipped default model, loaded as `remamber serve` loads it: (predictor, ModelInfo)."""
    from remamber.cli.serve import load_served_model

    return load_served_model(None, "cpu")


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(*served), raise_server_exceptions=False) as c:
        yield c


def _post(client, path=SHAPES3, texts=(PHRASE,), **fields):
    files = {"image": (path.name, path.read_bytes(), "image/png")}
    data = {"text": list(texts), **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/segment", files=files, data=data)


def test_health_and_model(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "remamber-tiny-gshapes" and health["preset"] == "tiny"
    assert health["device"] == "cpu" and health["demo"] is True and health["auth"] is False
    assert health["queue"]["waiting"] == 0 and health["queue"]["max_batch"] == 8
    model = client.get("/v1/model").json()
    assert model["name"] == "remamber-tiny-gshapes" and model["demo"] is True and model["format"] == "pytorch"
    assert model["config"]["preset"] == "tiny" and model["image_size"] == model["config"]["image_size"]
    assert "# ReMamber" in model["card"] and model["parameters"] > 1_000_000
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]


def test_segment_equals_cli_json(client, tmp_path):
    """Multipart and JSON requests give the same fields and the same mask as `remamber segment --json`."""
    res = run_cli("segment", str(SHAPES3), PHRASE, "--json", "--no-overlay", "--out", str(tmp_path / "cli"))
    assert res.code == 0, res.stderr
    cli = json.loads(res.stdout)

    got = _post(client, mask_png="true", probs_png=100)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["width"], body["height"]) == (cli["width"], cli["height"]) and body["seconds"] > 0
    (result,) = body["results"]
    assert result["text"] == PHRASE and result["rle"] == cli["rle"] and result["area"] == cli["area"]
    # The server runs the fused scan kernel from the first call, as `segment --batch` does; a lone
    # `segment` call may take the chunked path, whose rounding differs in the last float digits.
    assert abs(result["mean_prob"] - cli["mean_prob"]) <= 1e-5
    mask = _png_array(result["mask_png"])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, _decode_rle(cli["rle"]))
    assert _png_array(result["probs_png"]).shape == (100, 100)

    as_json = client.post(
        "/v1/segment", json={"image": base64.b64encode(SHAPES3.read_bytes()).decode(), "text": PHRASE}
    ).json()
    assert as_json["results"][0]["rle"] == cli["rle"] and "mask_png" not in as_json["results"][0]
    data_url = "data:image/png;base64," + base64.b64encode(SHAPES3.read_bytes()).decode()
    assert (
        client.post("/v1/segment", json={"image": data_url, "text": [PHRASE]}).json()["results"][0]["rle"] == cli["rle"]
    )


def test_segment_equals_cli_batch_exactly(client, tmp_path):
    """Against `segment --batch` (same scan path as the server) every field but seconds is equal."""
    examples = json.loads((EXAMPLES / "examples.json").read_text())[:6]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(json.dumps({"image": str(EXAMPLES / e["image"]), "text": e["text"]}) + "\n" for e in examples)
    )
    res = run_cli("segment", "--batch", str(jobs), "--json", "--no-overlay", "--out", str(tmp_path / "cli"))
    assert res.code == 0, res.stderr
    for e, line in zip(examples, res.stdout.splitlines()):
        cli = json.loads(line)
        (result,) = _post(client, EXAMPLES / e["image"], [e["text"]]).json()["results"]
        assert {k: result[k] for k in ("text", "area", "mean_prob", "rle")} == {
            k: cli[k] for k in ("text", "area", "mean_prob", "rle")
        }


def test_threshold_and_several_phrases(client, served):
    texts = ["the big yellow object", "the second small red object from the right", "the star"]
    before = client.get("/health").json()["forward_calls"]
    body = _post(client, texts=texts, threshold=0.9).json()
    assert client.get("/health").json()["forward_calls"] == before + 1  # one request's phrases: one pass
    assert [r["text"] for r in body["results"]] == texts and body["threshold"] == 0.9
    predictor = served[0]
    with Image.open(SHAPES3) as im:
        probs = predictor.predict(im.convert("RGB"), texts[0]).probs
    got = _decode_rle(body["results"][0]["rle"])
    sure = np.abs(probs - 0.9) > 1e-4
    assert np.array_equal(got[sure], (probs > 0.9)[sure])


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"files": {"image": ("a.png", b"not an image", "image/png")}, "data": {"text": "x"}}, 400, "not an image"),
        (
            {"files": {"image": ("a.png", png_header_only(20000, 20000), "image/png")}, "data": {"text": "x"}},
            400,
            "decompression-bomb",
        ),
        ({"files": {"image": ("a.png", b"", "image/png")}, "data": {"text": "x"}}, 400, "empty"),
        ({"json": {"image": "not base64 !!", "text": "x"}}, 400, "base64"),
        ({"json": {"image": "https://example.com/a.png", "text": "x"}}, 400, "not fetched"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
        ({"files": {"image": ("a.png", SHAPES3.read_bytes(), "image/png")}}, 422, "no text"),
        ({"files": {"image": ("a.png", SHAPES3.read_bytes(), "image/png")}, "data": {"text": "   "}}, 422, "empty"),
        (
            {
                "files": {"image": ("a.png", SHAPES3.read_bytes(), "image/png")},
                "data": {"text": "x", "threshold": "1.5"},
            },
            422,
            "threshold",
        ),
        (
            {
                "files": {"image": ("a.png", SHAPES3.read_bytes(), "image/png")},
                "data": {"text": "x", "threshold": "abc"},
            },
            422,
            "threshold",
        ),
        (
            {
                "files": {"image": ("a.png", SHAPES3.read_bytes(), "image/png")},
                "data": {"text": "x", "threshold": "nan"},
            },
            422,
            "threshold",
        ),
        ({"json": {"text": "x"}}, 422, "no image"),
        ({"json": {"image": base64.b64encode(SHAPES3.read_bytes()).decode(), "text": ""}}, 422, "empty"),
        ({"json": {"image": base64.b64encode(SHAPES3.read_bytes()).decode(), "text": ["x"] * 33}}, 422, "too many"),
        (  # a lone surrogate escape: refused before it is queued, as segment refuses it
            {
                "content": b'{"image": "' + base64.b64encode(SHAPES3.read_bytes()) + b'", "text": "a \\udcff"}',
                "headers": {"content-type": "application/json"},
            },
            422,
            "not valid UTF-8",
        ),
    ],
)
def test_bad_requests(client, kwargs, status, fragment):
    res = client.post("/v1/segment", **kwargs)
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and fragment in body["error"], body
    assert "Traceback" not in res.text
    assert client.get("/health").status_code == 200  # still serving


def test_unknown_paths_are_json(client):
    res = client.get("/v1/nothing")
    assert res.status_code == 404 and set(res.json()) == {"error"}
    res = client.get("/v1/segment")
    assert res.status_code == 405 and set(res.json()) == {"error"}


def test_api_key(served):
    app = create_app(*served, ServeSettings(api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").json()["auth"] is True  # probes need no key
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "s3cre"}):
            for res in (c.get("/v1/model", headers=headers), c.post("/v1/segment", headers=headers, json={})):
                assert res.status_code == 401 and "API key" in res.json()["error"]
                assert res.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        res = c.post(
            "/v1/segment",
            headers={"X-API-Key": "s3cret"},
            files={"image": ("a.png", SHAPES3.read_bytes(), "image/png")},
            data={"text": PHRASE},
        )
        assert res.status_code == 200


def test_upload_limit_refused_before_the_body_is_read(served):
    """413 on a declared Content-Length over the limit with no body sent at all, and on a chunked
    body (no length) as soon as the bytes received pass the limit."""
    app = create_app(*served, ServeSettings(max_upload_bytes=2**20))
    with live_app(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(
                b"POST /v1/segment HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 104857600\r\n\r\n"
            )
            head = _read_response(s)
        assert head.startswith("HTTP/1.1 413"), head
        assert "upload limit of 1 MB" in head

        sent, total, chunk = 0, 20 * 2**20, b"x" * 65536
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(
                b"POST /v1/segment HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            try:
                while sent < total and not select.select([s], [], [], 0)[0]:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except OSError:  # the server closed the connection after answering
                pass
            head = _read_response(s)
        assert head.startswith("HTTP/1.1 413"), head
        assert sent < total / 2
        with httpx.Client(base_url=url, timeout=60) as c:  # a small upload is fine, and the server lives
            assert (
                c.post("/v1/segment", files={"image": SHAPES3.read_bytes()}, data={"text": PHRASE}).status_code == 200
            )


def _read_response(s: socket.socket) -> str:
    """Status line, headers and body of one HTTP response (read until its length or the close)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        try:
            more = s.recv(65536)
        except ConnectionResetError:
            break
        if not more:
            break
        data += more
    return data.decode("latin-1")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class _Gated:
    """The real predictor behind a gate, counting forward calls (batch sizes)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.config = inner.config
        self.gate = threading.Event()
        self.calls: list[int] = []

    def predict_many(self, images, texts, thresholds=None, presence_thresholds=None):
        assert self.gate.wait(60), "gate never opened"
        self.calls.append(len(texts))
        if "boom" in texts:
            raise RuntimeError("boom in the model")
        return self.inner.predict_many(images, texts, thresholds, presence_thresholds)


def _wait_for(predicate, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_concurrent_requests_share_forward_passes(served):
    predictor, info = served
    gated = _Gated(predictor)
    n = 12
    examples = json.loads((EXAMPLES / "examples.json").read_text())
    jobs = [examples[k % len(examples)] for k in range(n)]
    app = create_app(gated, info, ServeSettings(max_batch=8, max_queue=64))
    with live_app(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        alone = {}
        gated.gate.set()
        for e in examples:  # each phrase alone first: the reference masks
            body = _post(c, EXAMPLES / e["image"], [e["text"]]).json()
            alone[(e["image"], e["text"])] = _decode_rle(body["results"][0]["rle"])
        gated.gate.clear()
        gated.calls.clear()
        responses: list = [None] * n

        def post(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as own:
                responses[k] = _post(own, EXAMPLES / jobs[k]["image"], [jobs[k]["text"]])

        threads = [threading.Thread(target=post, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()

        def all_queued() -> bool:
            q = c.get("/health").json()["queue"]
            return q["waiting"] + q["running"] == n

        _wait_for(all_queued, "every request to be queued")
        gated.gate.set()
        for t in threads:
            t.join(120)
    assert all(r is not None and r.status_code == 200 for r in responses), [getattr(r, "text", r) for r in responses]
    assert sum(gated.calls) == n and len(gated.calls) < n and max(gated.calls) == 8, gated.calls
    for job, res in zip(jobs, responses):
        got = _decode_rle(res.json()["results"][0]["rle"])
        # A batch rounds differently from a lone call in the last float digits: allow a pixel or two
        # right at the threshold to differ.
        assert (got != alone[(job["image"], job["text"])]).sum() <= 2


def test_queue_full_is_503_with_retry_after(served):
    predictor, info = served
    gated = _Gated(predictor)
    app = create_app(gated, info, ServeSettings(max_batch=1, max_queue=3))
    with live_app(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        results: dict = {}

        def post(name: str, texts) -> None:
            with httpx.Client(base_url=url, timeout=120) as own:
                results[name] = _post(own, texts=texts)

        first = threading.Thread(target=post, args=("first", [PHRASE]))
        first.start()
        _wait_for(lambda: c.get("/health").json()["queue"]["running"] == 1, "the first request to run")
        second = threading.Thread(target=post, args=("second", [PHRASE, "the star"]))
        second.start()
        _wait_for(lambda: c.get("/health").json()["queue"]["waiting"] == 2, "the second request to wait")
        refused = _post(c, texts=[PHRASE, "the star"])  # 2 + 2 > 3
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "queue is full" in refused.json()["error"]
        gated.gate.set()
        first.join(120)
        second.join(120)
        assert results["first"].status_code == 200 and results["second"].status_code == 200
        assert _post(c, texts=[PHRASE, "the star"]).status_code == 200


def test_a_failing_item_fails_only_its_request(served):
    predictor, info = served
    gated = _Gated(predictor)
    gated.gate.set()
    with TestClient(create_app(gated, info), raise_server_exceptions=False) as c:
        res = _post(c, texts=["boom"])
        assert res.status_code == 500 and res.json() == {"error": "internal server error (see the server's log)"}
        assert _post(c).status_code == 200
    batcher_items = []
    from remamber.serve.batching import Batcher

    b = Batcher(gated.predict_many, max_batch=4, max_queue=8)
    with Image.open(SHAPES3) as im:
        img = im.convert("RGB")
    batcher_items = b.submit([(img, PHRASE, 0.5, 0.5), (img, "boom", 0.5, 0.5), (img, "the star", 0.5, 0.5)])
    assert batcher_items[0].result(60).area > 0 and batcher_items[2].result(60) is not None
    with pytest.raises(RuntimeError, match="boom"):
        batcher_items[1].result(60)
    b.close(60)


def test_batcher_close_finishes_queued_items(served):
    from remamber.serve.batching import Batcher, BatcherClosed

    predictor, _ = served
    gated = _Gated(predictor)
    b = Batcher(gated.predict_many, max_batch=2, max_queue=8)
    with Image.open(SHAPES3) as im:
        img = im.convert("RGB")
    futures = b.submit([(img, PHRASE, 0.5, 0.5)] * 5)
    closer = threading.Thread(target=b.close, args=(60,))
    closer.start()
    gated.gate.set()
    closer.join(60)
    assert all(f.result(0).area > 0 for f in futures) and sum(gated.calls) == 5
    with pytest.raises(BatcherClosed):
        b.submit([(img, PHRASE, 0.5, 0.5)])


def test_nothing_from_a_request_is_written_to_disk(client, monkeypatch):
    """A 3 MB upload (over Starlette's 1 MB spool) goes through with every way to write a file refused."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(buf, format="PNG")
    assert buf.tell() > 3 * 2**20

    def refuse(*_a, **_k):
        raise AssertionError("a temporary file was made")

    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"opened {file!r} for writing")
        return real_open(file, mode, *args, **kwargs)

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(builtins, "open", read_only_open)
    res = client.post(
        "/v1/segment", files={"image": ("big.png", buf.getvalue(), "image/png")}, data={"text": PHRASE, "mask_png": "1"}
    )
    monkeypatch.undo()
    assert res.status_code == 200, res.text
    assert (res.json()["width"], res.json()["height"]) == (1200, 900)


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no external font
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "https://" not in js.text and "http://" not in js.text
    examples = client.get("/static/examples/examples.json").json()
    assert {e["image"] for e in examples} == {p.name for p in EXAMPLES.glob("shapes-*.png")}
    for e in examples:
        assert client.get(f"/static/examples/{e['image']}").content == (EXAMPLES / e["image"]).read_bytes()


def test_cli_help_is_light_and_serve_is_listed():
    code = (
        "import sys, remamber.cli.main; print(sorted(m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out
    res = run_cli("serve", "--help")
    assert res.code == 0 and "--max-batch" in res.stdout and "--api-key" in res.stdout
    res = run_cli("serve", "--max-batch", "0")
    assert res.code == 2 and "--max-batch" in res.stderr and "Traceback" not in res.stderr


def test_loopback_detection():
    from remamber.cli.serve import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5") and not _is_loopback("example.com")
    from remamber.cli.serve import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("0.0.0.0", "key") is None
    assert "without an API key" in exposure_warning("0.0.0.0", None)


@pytest.mark.slow
def test_serve_command_end_to_end_and_sigterm(tiny_model_dir):
    """The real command: --weights, --api-key from the environment, a request; SIGTERM while a
    request runs lets it finish, then the server stops."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (1600, 1600, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
    with serve_process("--weights", str(tiny_model_dir), "--max-batch", "4", env={"REMAMBER_API_KEY": "k"}) as (
        url,
        proc,
    ):
        key = {"X-API-Key": "k"}
        with httpx.Client(base_url=url, timeout=120) as c:
            health = c.get("/health").json()
            assert health["model"] == "tiny" and health["demo"] is False and health["auth"] is True
            assert health["queue"]["max_batch"] == 4
            assert c.post("/v1/segment", json={"text": "x"}).status_code == 401
            res = c.post("/v1/segment", headers=key, files={"image": SHAPES3.read_bytes()}, data={"text": "x"})
            assert res.status_code == 200 and res.json()["results"][0]["rle"]["size"] == [256, 256]

            slow: dict = {}

            def post_slow() -> None:  # 32 phrases on a 2.6 Mpx image: several batches and upsamplings
                with httpx.Client(base_url=url, timeout=300) as own:
                    slow["res"] = own.post(
                        "/v1/segment",
                        headers=key,
                        files={"image": buf.getvalue()},
                        data={"text": [f"object {k}" for k in range(32)]},
                    )
                    slow["at"] = time.monotonic()

            thread = threading.Thread(target=post_slow)
            thread.start()
            _wait_for(lambda: c.get("/health").json()["queue"]["running"] > 0, "the slow request to run")
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        thread.join(300)
        proc.wait(120)
        assert slow["res"].status_code == 200 and len(slow["res"].json()["results"]) == 32
        assert slow["at"] > sent  # it was in flight when the signal came
        assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in proc.stderr.read()


def test_predict_many_equals_predict(tiny_model_dir):
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor

    predictor = Predictor(load_pretrained(tiny_model_dir))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (64, 64))]
    texts, cuts = ["the red circle", "a square"], [0.5, 0.3]
    many = predictor.predict_many(images, texts, cuts)
    for image, text, cut, got in zip(images, texts, cuts, many):
        one = predictor.predict(image, text)
        assert got.probs.shape == (image.size[1], image.size[0])
        assert np.abs(got.probs - one.probs).max() < 1e-5
        assert np.array_equal(got.mask, got.probs > cut)
    assert predictor.predict_many([], []) == []
    with pytest.raises(ValueError, match="same length"):
        predictor.predict_many(images, texts[:1])


@pytest.mark.slow
def test_serve_an_onnx_folder(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from remamber.cli.serve import load_served_model
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor

    out = tmp_path / "tiny-onnx"
    res = run_cli("export", str(tiny_model_dir), "--format", "onnx", "--out", str(out))
    assert res.code == 0, res.stderr
    predictor, info = load_served_model(str(out), "cpu")
    assert info.format == "onnx" and info.name == "tiny-onnx" and info.parameters is None
    with Image.open(SHAPES3) as im:
        img = im.convert("RGB")
    texts = ["the star", "the big yellow object", "x"]
    many = predictor.predict_many([img] * 3, texts, [0.5] * 3)
    reference = Predictor(load_pretrained(tiny_model_dir))
    for text, got in zip(texts, many):
        assert np.abs(got.probs - reference.predict(img, text).probs).max() < 1e-4
    with TestClient(create_app(predictor, info)) as c:
        body = _post(c, texts=texts).json()
        assert [r["text"] for r in body["results"]] == texts and c.get("/health").json()["format"] == "onnx"


def test_loopback_server_refuses_other_host_names(served):
    """DNS rebinding: a page of another site that resolves its name to 127.0.0.1 gets nothing."""
    from remamber.serve.app import LOOPBACK_HOSTS

    with TestClient(create_app(*served, ServeSettings(allowed_hosts=LOOPBACK_HOSTS))) as c:
        assert c.get("/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/health", headers={"host": "localhost"}).status_code == 200
        assert c.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
        res = c.get("/health", headers={"host": "evil.example:8000"})
        assert res.status_code == 400 and "loopback" in res.json()["error"]


def test_large_image_with_many_phrases_is_refused(client, monkeypatch):
    import remamber.serve.inputs as inputs

    monkeypatch.setattr(inputs, "MAX_PIXEL_PHRASES", 3 * 256 * 256)
    assert _post(client, texts=["a", "b", "c"]).status_code == 200
    res = _post(client, texts=["a", "b", "c", "d"])
    assert res.status_code == 413 and "at most 3 per request at 256x256" in res.json()["error"]
