"""`prepare ... --download`: REFER zips from a local HTTP server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import io
import re
import shutil
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from model_fixtures import assert_one_line_error, run_cli

from remamber.data.catalog import KNOWN_DATASETS
from remamber.data.download import download, fetch_refer, refer_zip_url
from remamber.utils.errors import InputError

# Local addresses only, whatever proxy the environment names.
LOCAL_ENV = {"no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1", "COLUMNS": "250", "NO_COLOR": "1"}


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]  # path -> body
    cut: dict[str, int]  # path -> bytes to send before hanging up (once)
    ranges: bool  # whether Range requests are honoured
    requests: list[tuple[str, str | None]]  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match and srv.ranges else 0
        if start >= len(body) > 0 and match:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        cut = srv.cut.pop(self.path, None)
        if cut is not None:  # announce everything, send part of it, hang up
            payload = payload[:cut]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(files: dict[str, bytes]) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files, server.cut, server.ranges, server.requests = files, {}, True, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def _refer_zip(folder: Path, dataset: str) -> bytes:
    """The REFER zip of ``folder`` (``<dataset>/...`` inside, as the published zips are), which is removed."""
    members = {f"{dataset}/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}
    shutil.rmtree(folder)
    return _zip(members)


BODY = bytes(range(256)) * 40  # 10 KiB: several reads


def test_archive_urls_are_the_snapshots():
    assert refer_zip_url("refcoco+") == (
        "https://web.archive.org/web/20220413011656/https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco+.zip"
    )
    assert refer_zip_url("refcocog", "http://mirror/x/") == "http://mirror/x/refcocog.zip"
    assert all(d.original_url.startswith("https://bvisionweb1.cs.unc.edu/") for d in KNOWN_DATASETS.values())


def test_cut_download_resumes_with_range(tmp_path):
    dest = tmp_path / "f.zip"
    with http_server({"/f.zip": BODY}) as server:
        server.cut["/f.zip"] = 3000
        with pytest.raises(InputError, match="run again to resume"):
            download(f"{_base(server)}/f.zip", dest)
        part = tmp_path / "f.zip.part"
        assert not dest.exists() and part.stat().st_size == 3000
        download(f"{_base(server)}/f.zip", dest)
        assert server.requests == [("/f.zip", None), ("/f.zip", "bytes=3000-")]
    assert dest.read_bytes() == BODY and not part.exists()


def test_server_without_ranges_and_stale_part_start_afresh(tmp_path):
    dest = tmp_path / "f.zip"
    part = tmp_path / "f.zip.part"
    with http_server({"/f.zip": BODY}) as server:
        server.ranges = False  # answers 200 with the whole file
        part.write_bytes(b"x" * 100)
        download(f"{_base(server)}/f.zip", dest)
        assert dest.read_bytes() == BODY
        server.ranges = True
        part.write_bytes(b"x" * (len(BODY) + 5))  # longer than the file: 416, then afresh
        download(f"{_base(server)}/f.zip", dest)
        assert dest.read_bytes() == BODY
        assert [r for _, r in server.requests] == ["bytes=100-", f"bytes={len(BODY) + 5}-", None]


def test_http_error_is_one_line(tmp_path):
    with http_server({}) as server:
        with pytest.raises(InputError, match=r"cannot download http://127\.0\.0\.1:\d+/none\.zip: HTTP 404"):
            download(f"{_base(server)}/none.zip", tmp_path / "none.zip")
    assert list(tmp_path.iterdir()) == []


def test_only_the_refer_files_are_unpacked(tmp_path):
    archive = _zip(
        {
            "refcoco/instances.json": b"{}",
            "refcoco/refs(unc).p": b"refs",
            "refcoco/../../evil.p": b"no",
            "../refcoco/refs(x).p": b"no",
            "refcoco/README": b"no",
            "/abs/refcoco/instances.json": b"no",
        }
    )
    root = tmp_path / "refer"
    with http_server({"/refcoco.zip": archive}) as server:
        written = fetch_refer("refcoco", root, _base(server))
    assert sorted(p.name for p in written) == ["instances.json", "refs(unc).p"]
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["refer/refcoco/instances.json", "refer/refcoco/refs(unc).p"]  # the zip is gone too


def test_a_web_page_instead_of_the_zip_is_refused_and_deleted(tmp_path):
    root = tmp_path / "refer"
    with http_server({"/refcoco.zip": b"<html>Wayback Machine</html>"}) as server:
        with pytest.raises(InputError, match="unusable and was deleted: .* not a readable zip"):
            fetch_refer("refcoco", root, _base(server))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_cli_download_then_prepare(refer_fixture, tmp_path):
    fx = refer_fixture
    home = fx.refer_root.parent
    env = {**LOCAL_ENV, "REMAMBER_HOME": str(home)}
    archive = _refer_zip(fx.refer_root / "refcoco", "refcoco")
    with http_server({"/refcoco.zip": archive}) as server:
        result = run_cli("prepare", "refcoco", "--download", "--refer-url", _base(server), "--json", env=env)
        assert result.code == 0, result.stderr
        assert "downloaded refcoco" in result.stderr and '"status": "written"' in result.stdout
        again = run_cli("prepare", "refcoco", "--download", "--refer-url", _base(server), env=env)
        assert again.code == 0 and "downloaded" not in again.stderr
        assert [path for path, _ in server.requests] == ["/refcoco.zip"]  # the files were there: no request
    assert not (fx.refer_root / "refcoco.zip").exists()
    assert_one_line_error(
        run_cli("prepare", "refcoco", "--refer-url", "http://127.0.0.1:9/", env=env), "--refer-url", "--download"
    )
