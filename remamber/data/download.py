"""Download of the REFER annotation zips (``remamber prepare ... --download``).

A download goes to ``<file>.part`` first and is renamed when it is whole: a cut download is
resumed on the next run with an HTTP Range request (started afresh when the server does not
honour it), and its length is checked against what the server announced. From a zip only the
REFER files of the dataset (``<name>/instances.json``, ``<name>/refs(<split_by>).p``) are taken,
each written whole or not at all under our own path, so a member's name never picks where it goes.
"""

from __future__ import annotations

import http.client
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from remamber import __version__
from remamber.data.catalog import KNOWN_DATASETS
from remamber.data.prepare import Track, no_progress
from remamber.utils.errors import InputError
from remamber.utils.io import atomic_open

CHUNK = 1 << 20
TIMEOUT_S = 60
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def refer_zip_url(dataset: str, base_url: str | None = None) -> str:
    """Where the zip of ``dataset`` is fetched: ``<base_url>/<dataset>.zip``, or by default the web
    archive's snapshot (:attr:`~remamber.data.catalog.KnownDataset.url`)."""
    known = KNOWN_DATASETS.get(dataset)
    if known is None or known.generalized:
        where = f": get its files from {known.url}" if known else ""
        raise InputError(f"`download` does not fetch dataset {dataset!r}{where}")
    return f"{base_url.rstrip('/')}/{dataset}.zip" if base_url else known.url


def download(url: str, dest: Path, track: Track = no_progress) -> None:
    """Fetch ``url`` into ``dest``, resuming ``<dest>.part`` if a previous run left one.

    Raises InputError (one line, naming the URL) when the server or the network fails or the
    file comes out shorter or longer than announced; what arrived stays in ``.part`` for the next run.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": f"remamber/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            start, total = _start_and_total(response, have)
            with open(part, "r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                for chunk in track(_chunks(response), _count_chunks(total, start), f"download {dest.name}"):
                    f.write(chunk)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our .part is longer than the file: start afresh
            part.unlink()
            return download(url, dest, track)
        raise InputError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        kept = part.stat().st_size if part.is_file() else 0
        raise InputError(
            f"cannot download {url}: {getattr(e, 'reason', None) or str(e) or type(e).__name__} "
            f"({kept} bytes kept in {part}; run again to resume)"
        ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise InputError(f"download of {url} stopped at {size} of {total} bytes (kept in {part}; run again to resume)")
    part.replace(dest)


def _start_and_total(response: http.client.HTTPResponse, have: int) -> tuple[int, int | None]:
    """Where the body goes in the file and the file's full length (None when not announced)."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != have:
            raise InputError(
                f"{response.url}: the server resumed at an unexpected place "
                f"({response.headers.get('Content-Range')!r} for {have} bytes held)"
            )
        return have, int(match[3])
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        yield chunk


def _count_chunks(total: int | None, start: int) -> int:
    return 0 if total is None else -(-(total - start) // CHUNK)


def extract_refer(archive: Path, dataset: str, refer_root: Path) -> list[Path]:
    """Write the REFER files of ``dataset`` found in ``archive`` into ``<refer_root>/<dataset>/``.

    Only ``<dataset>/instances.json`` and ``<dataset>/refs(<word>).p`` are taken; InputError
    when the file is not a zip or holds no ``instances.json``.
    """
    wanted = re.compile(rf"{re.escape(dataset)}/(instances\.json|refs\([a-z]+\)\.p)")
    written = []
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist() if wanted.fullmatch(m)]
            if f"{dataset}/instances.json" not in members:
                raise InputError(f"{archive} holds no {dataset}/instances.json: it is not the {dataset} REFER zip")
            for member in sorted(members):
                target = refer_root / dataset / member.split("/", 1)[1]
                with z.open(member) as src, atomic_open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                written.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise InputError(f"{archive} is not a readable zip ({e})") from None
    return written


def fetch_refer(dataset: str, refer_root: Path, base_url: str | None = None, track: Track = no_progress) -> list[Path]:
    """Download the REFER zip of ``dataset`` into ``<refer_root>/<dataset>.zip`` and unpack its files
    into ``<refer_root>/<dataset>/``; returns the files written. A zip already there is used as it
    is and kept; a downloaded one is deleted once unpacked, or when it is not the zip expected (a
    web page in its place, say)."""
    archive = refer_root / f"{dataset}.zip"
    if archive.is_file():
        return extract_refer(archive, dataset, refer_root)
    url = refer_zip_url(dataset, base_url)
    download(url, archive, track)
    try:
        return extract_refer(archive, dataset, refer_root)
    except InputError as e:
        raise InputError(f"the download from {url} is unusable and was deleted: {e}") from None
    finally:
        archive.unlink()
