"""The page of ``remamber serve`` in a real headless Chromium, against a live ``remamber serve``.

Needs Playwright for Python (``pip install playwright``) and a Chromium binary: Debian's
``chromium`` package (``/usr/bin/chromium``), or the one named by ``REMAMBER_CHROMIUM``; without
them the test is skipped and says why. ``REMAMBER_SCREENSHOT=path.png`` also saves a screenshot
of the page after it segmented an example (how ``examples/serve-page.png`` was made).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import run_cli
from PIL import Image
from serve_fixtures import EXAMPLES, serve_process

SHAPES3 = EXAMPLES / "shapes-3.png"
PHRASE = "the big yellow object"


def _missing(reason: str) -> None:
    """Skip, or fail where REMAMBER_REQUIRE_BROWSER=1 (.ci/run sets it: CI must run this test)."""
    if os.environ.get("REMAMBER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and REMAMBER_REQUIRE_BROWSER=1 asks for the browser test")
    pytest.skip(reason)


def _chromium() -> str:
    candidates = [os.environ.get("REMAMBER_CHROMIUM")] + [
        shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    ]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    _missing("no Chromium found (apt-get install chromium, or set REMAMBER_CHROMIUM to its path)")


def _mask_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def _example_texts(image: str) -> list[str]:
    static = Path(__file__).resolve().parents[1] / "remamber" / "serve" / "static" / "examples"
    return next(e["texts"] for e in json.loads((static / "examples.json").read_text()) if e["image"] == image)


def _areas(page) -> list[int]:
    return [int(li.get_attribute("data-area")) for li in page.locator("#results li").all()]


@pytest.mark.slow
def test_page_segments_like_the_cli(tmp_path):
    try:
        from playwright import sync_api
    except ImportError:
        _missing("Playwright for Python is not installed (pip install playwright)")
    chromium = _chromium()
    res = run_cli("segment", str(SHAPES3), PHRASE, "--json", "--no-overlay", "--out", str(tmp_path / "cli"))
    assert res.code == 0, res.stderr
    cli = json.loads(res.stdout)
    expected = _mask_png(Path(cli["mask"]))

    with serve_process() as (url, _proc), sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800}, accept_downloads=True)
            posts: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(url + "/")
            page.wait_for_selector("#model b")
            assert "remamber-tiny-gshapes" in page.inner_text("#model")
            assert page.is_visible("#demo") and "synthetic-shapes demo model" in page.inner_text("#demo")

            page.set_input_files("#file", str(SHAPES3))
            expect = sync_api.expect  # waits without evaluating strings, which the page's CSP forbids
            expect(page.locator("#status")).to_contain_text("256 x 256")
            page.fill("#texts", PHRASE)
            page.click("#go")
            page.wait_for_selector("#results li", timeout=60_000)
            assert "1 mask in" in page.inner_text("#status") and "remamber-tiny-gshapes" in page.inner_text("#status")
            assert posts == [url + "/v1/segment"]
            assert _areas(page) == [cli["area"]]

            with page.expect_download() as dl:
                page.click("#results li .mask-download")
            assert dl.value.suggested_filename == "shapes-3.the-big-yellow-object.mask.png"
            got = _mask_png(Path(dl.value.path()))
            iou = (got & expected).sum() / (got | expected).sum()
            assert got.shape == expected.shape and iou >= 0.99, iou

            drawn = page.evaluate("document.getElementById('canvas').toDataURL()")
            page.fill("#threshold", "0.97")  # re-thresholded in the page: no new request
            assert page.inner_text("#tval") == "0.97"
            high = _areas(page)[0]
            assert 0 < high < cli["area"] and posts == [url + "/v1/segment"]
            assert page.evaluate("document.getElementById('canvas').toDataURL()") != drawn
            page.fill("#threshold", "0.05")
            assert _areas(page)[0] > cli["area"]
            with page.expect_download() as dl:
                page.click("#results li .mask-download")
            low = _mask_png(Path(dl.value.path()))
            assert (
                low.shape == expected.shape and (low & expected).sum() == expected.sum() and low.sum() > expected.sum()
            )

            with page.expect_download() as dl:
                page.click("#json")
            body = json.loads(Path(dl.value.path()).read_text())
            assert body["results"][0]["rle"] == cli["rle"]

            # Drop and paste bring an image in too (events made in the page, as a drag or Ctrl+V would).
            give = """async ([kind, name]) => {
                const blob = await (await fetch('/static/examples/shapes-1.png')).blob();
                const dt = new DataTransfer();
                dt.items.add(new File([blob], name, {type: 'image/png'}));
                if (kind === 'drop') {
                    document.getElementById('drop').dispatchEvent(
                        new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
                } else {
                    window.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
                }
            }"""
            page.evaluate(give, ["drop", "dropped.png"])
            expect(page.locator("#status")).to_contain_text("dropped.png: 256 x 256")
            assert page.locator("#results li").count() == 0  # a new image clears the old masks
            page.evaluate(give, ["paste", "clip.png"])
            expect(page.locator("#status")).to_contain_text("clip.png: 256 x 256")

            # An example: one click fills the image and its phrases; each phrase gets its own mask.
            page.fill("#threshold", "0.5")
            page.locator("#examples button").nth(2).click()
            expect(page.locator("#texts")).to_have_value("\n".join(_example_texts("shapes-3.png")))
            page.click("#go")
            expect(page.locator("#results li")).to_have_count(2, timeout=60_000)
            assert all(a > 0 for a in _areas(page))
            shot = os.environ.get("REMAMBER_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)

            page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the window
            assert page.evaluate("document.documentElement.scrollWidth") <= 391
            assert errors == []
        finally:
            browser.close()


def test_page_is_packaged():
    """The page and the example pictures ship inside the package (package data)."""
    static = Path(__file__).resolve().parents[1] / "remamber" / "serve" / "static"
    assert (static / "index.html").is_file() and (static / "app.js").is_file()
    for e in json.loads((static / "examples" / "examples.json").read_text()):
        assert (static / "examples" / e["image"]).read_bytes() == (EXAMPLES / e["image"]).read_bytes()
        with Image.open(io.BytesIO((EXAMPLES / e["image"]).read_bytes())) as im:
            assert im.size[0] > 0
