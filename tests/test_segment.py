"""``remamber segment`` end to end through the real CLI, image reading, and every bad input."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import assert_one_line_error, run_cli
from PIL import Image

from remamber.inference.images import load_image, overlay, text_slug
from remamber.utils.errors import InputError, WeightsError


def _read_mask(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_segment_end_to_end_json(tiny_model_dir, rgb_image, tmp_path):
    out = tmp_path / "out"
    res = run_cli(
        "segment", str(rgb_image), "The red circle!", "--weights", str(tiny_model_dir), "--out", str(out), "--json"
    )
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert set(result) >= {"image", "text", "mask", "overlay", "area", "mean_prob", "rle", "width", "height", "seconds"}
    assert result["mask"] == str(out / "photo.the-red-circle.mask.png")
    assert result["overlay"] == str(out / "photo.the-red-circle.overlay.jpg")
    mask = _read_mask(result["mask"])
    assert mask.shape == (90, 120) and set(np.unique(mask)) <= {0, 255}
    assert result["area"] == int((mask == 255).sum())
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": result["rle"]["size"], "counts": result["rle"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask == 255)
    with Image.open(result["overlay"]) as ov:
        assert ov.size == (120, 90) and ov.mode == "RGB"
    assert 0.0 <= result["mean_prob"] <= 1.0


def test_threshold_and_no_overlay(tiny_model_dir, rgb_image, tmp_path):
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor

    with Image.open(rgb_image) as im:
        probs = Predictor(load_pretrained(tiny_model_dir)).predict(im, "circle").probs
    areas = []
    for threshold in (f"{q:.6f}" for q in np.quantile(probs, [0.3, 0.7])):  # two thresholds inside the model's range
        out = tmp_path / threshold
        res = run_cli(
            "segment",
            str(rgb_image),
            "circle",
            "--weights",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--no-overlay",
            "--threshold",
            threshold,
            "--json",
            "--device",
            "cpu",
        )
        assert res.code == 0, res.stderr
        result = json.loads(res.stdout)
        assert result["overlay"] is None and not list(out.glob("*.overlay.jpg"))
        expected, sure = probs > float(threshold), np.abs(probs - float(threshold)) > 1e-5  # rounding aside
        got = _read_mask(result["mask"]) > 0
        assert np.array_equal(got[sure], expected[sure]) and abs(result["area"] - int(expected.sum())) <= (~sure).sum()
        areas.append(result["area"])
    assert areas[0] > areas[1] > 0


def test_batch_keeps_going_and_exits_nonzero(tiny_model_dir, rgb_image, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            [
                json.dumps({"image": str(rgb_image), "text": "red circle"}),
                "{not json",
                json.dumps({"image": str(tmp_path / "missing.png"), "text": "x"}),
                json.dumps({"image": str(tmp_path / "notes.txt"), "text": "x"}),
                "",
                json.dumps({"image": str(rgb_image), "text": "blue square"}),
            ]
        )
        + "\n"
    )
    res = run_cli(
        "segment", "--batch", str(jobs), "--weights", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--json"
    )
    assert res.code == 1
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r.get("text") for r in records if "error" not in r] == ["red circle", "blue square"]
    assert sorted(r["line"] for r in records if "error" in r) == [2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "photo.blue-square.mask.png",
        "photo.blue-square.overlay.jpg",
        "photo.red-circle.mask.png",
        "photo.red-circle.overlay.jpg",
    ]
    assert "error: line 2" in res.stderr and "error: line 3" in res.stderr and "missing.png" in res.stderr
    assert "Traceback" not in res.stderr


class _StubPredictor:
    """Masks the left half; raises a plain RuntimeError (no RemamberError) on the text "boom"."""

    config = type("Config", (), {"max_text_len": 77})()

    def predict(self, img, text):
        from remamber.inference.processing import Prediction

        if text == "boom":
            raise RuntimeError("the kernel failed")
        mask = np.zeros((img.height, img.width), bool)
        mask[:, : img.width // 2] = True
        return Prediction(mask=mask, probs=mask.astype(np.float32), truncated=False)

    def predict_many(self, images, texts):
        return [self.predict(img, text) for img, text in zip(images, texts)]


def test_batch_names_never_collide_and_any_failure_is_one_item(rgb_image, tmp_path, capsys):
    from remamber.cli.segment import _run_batch

    other = tmp_path / "b" / "photo.jpg"  # the same stem in another folder
    other.parent.mkdir()
    other.write_bytes(rgb_image.read_bytes())
    long_name = tmp_path / ("p" * 240 + ".jpg")  # a name near the 255-byte limit
    long_name.write_bytes(rgb_image.read_bytes())
    jobs = [
        (rgb_image, "the yellow circle"),
        (other, "the yellow circle"),
        (rgb_image, "The yellow circle!"),
        (rgb_image, "黄色的圆"),
        (rgb_image, "红色的方块"),
        (rgb_image, "boom"),
        (long_name, "a " * 200),
        (rgb_image, "café"),
    ]
    batch = tmp_path / "jobs.jsonl"
    batch.write_text(
        "".join(json.dumps({"image": str(i), "text": t}, ensure_ascii=False) + "\n" for i, t in jobs), encoding="utf-8"
    )
    out = tmp_path / "out"
    out.mkdir()
    assert _run_batch(_StubPredictor(), str(batch), out, True, False, True) == 1  # only "boom" failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r.get("error") for r in lines] == [None] * 5 + ["RuntimeError: the kernel failed", None, None]
    masks = [Path(r["mask"]).name for r in lines if "mask" in r]
    assert masks[:5] == [
        "photo.the-yellow-circle.mask.png",
        "photo.the-yellow-circle-2.mask.png",
        "photo.the-yellow-circle-3.mask.png",
        "photo.黄色的圆.mask.png",
        "photo.红色的方块.mask.png",
    ]
    assert masks[6] == "photo.cafe.mask.png" and len(masks[5].encode()) < 255
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".mask.png")) == sorted(masks)


def test_batch_from_stdin(tiny_model_dir, rgb_image, tmp_path):
    stdin = json.dumps({"image": str(rgb_image), "text": "star"}) + "\n"
    res = run_cli("segment", "--batch", "-", "--weights", str(tiny_model_dir), "--out", str(tmp_path), stdin=stdin)
    assert res.code == 0, res.stderr
    assert (tmp_path / "photo.star.mask.png").exists()
    assert "photo.star.mask.png" in res.stdout


def test_long_text_is_truncated_with_a_warning(tiny_model_dir, rgb_image, tmp_path):
    res = run_cli("segment", str(rgb_image), "red " * 40, "--weights", str(tiny_model_dir), "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    assert "warning: text longer than 20 tokens was truncated" in res.stderr


def _exif_rotated_jpeg(path):
    """A 40x20 (w x h) JPEG whose EXIF says: rotate 90 degrees (orientation 6) to display."""
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())


def test_exif_orientation_and_16bit_through_cli(tiny_model_dir, tmp_path):
    _exif_rotated_jpeg(tmp_path / "rot.jpg")
    Image.fromarray((np.arange(30 * 50).reshape(30, 50) * 40).astype(np.uint16)).save(tmp_path / "deep.png")
    jobs = "\n".join(json.dumps({"image": str(tmp_path / n), "text": "x"}) for n in ("rot.jpg", "deep.png"))
    res = run_cli("segment", "--batch", "-", "--weights", str(tiny_model_dir), "--out", str(tmp_path / "o"), stdin=jobs)
    assert res.code == 0, res.stderr
    assert _read_mask(tmp_path / "o" / "rot.x.mask.png").shape == (40, 20)  # displayed upright: 20 wide, 40 tall
    assert _read_mask(tmp_path / "o" / "deep.x.mask.png").shape == (30, 50)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "P-transparent", "I;16", "CMYK", "1", "F"])
def test_image_modes_load_as_rgb(mode, tmp_path):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    if mode == "P-transparent":
        img = base.convert("P")
        img.info["transparency"] = 0
        path = tmp_path / "p.png"
        img.save(path, transparency=0)
    elif mode == "I;16":
        path = tmp_path / "i16.png"
        Image.fromarray((rng.integers(0, 65535, (12, 16))).astype(np.uint16)).save(path)
    elif mode == "CMYK":
        path = tmp_path / "cmyk.jpg"
        base.convert("CMYK").save(path)
    elif mode == "F":
        path = tmp_path / "f.tiff"
        Image.fromarray(rng.random((12, 16), dtype=np.float32)).save(path)
    else:
        path = tmp_path / f"{mode}.png"
        base.convert(mode).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (16, 12)
    if mode == "I;16":
        assert np.asarray(img).max() > 128  # rescaled from 16 bits, not clipped to white or black


def test_exif_transpose(tmp_path):
    _exif_rotated_jpeg(tmp_path / "rot.jpg")
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 10)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(InputError, match="decompression-bomb limit"):
        load_image(path)
    assert load_image(path, allow_large=True).size == (20, 10)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored


def _png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _bad_inputs(tmp_path, rgb_image):
    (tmp_path / "notes.jpg").write_text("hello, not an image")
    data = rgb_image.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    (tmp_path / "a_file").write_text("")
    return [
        ([str(tmp_path / "missing.jpg"), "x"], "no such file"),
        ([str(tmp_path / "notes.jpg"), "x"], "not an image file"),
        ([str(tmp_path / "cut.jpg"), "x"], "truncated or corrupt"),
        ([str(rgb_image), "   "], "text is empty"),
        ([str(tmp_path / "bomb.png"), "x"], "--allow-large"),
        ([str(rgb_image), "x", "--out", str(tmp_path / "a_file" / "sub")], "cannot write there"),
        ([str(rgb_image), "x", "--threshold", "1.5"], "--threshold"),
        ([str(rgb_image), "x", "--weights", str(tmp_path / "no" / "model")], "no such model folder"),
        ([str(rgb_image)], "missing TEXT"),
        ([str(rgb_image), "x", "--bogus"], "No such option"),
    ]


def test_every_bad_input_is_one_line_and_nonzero(tmp_path, rgb_image):
    for args, fragment in _bad_inputs(tmp_path, rgb_image):
        out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
        res = run_cli("segment", *args, *out)
        assert_one_line_error(res, fragment)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    res = run_cli("segment", str(tmp_path / "bomb.png"), "x", "--allow-large", "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "truncated or corrupt")  # past the bomb guard, it fails on the missing pixels


def test_debug_shows_traceback(tmp_path):
    res = run_cli("segment", str(tmp_path / "missing.jpg"), "x", "--debug")
    assert res.code == 2 and "Traceback" in res.stderr and "error: " in res.stderr


def test_no_weights_and_no_default_model_says_how_to_get_one(monkeypatch, tmp_path):
    from remamber.cli import weights
    from remamber.hub.shipped import DEFAULT_MODEL, SHIPPED_MODELS

    monkeypatch.setitem(SHIPPED_MODELS, DEFAULT_MODEL, tmp_path / "absent")
    with pytest.raises(WeightsError, match="pass --weights"):
        weights.load_model(None, "cpu")


def test_cpu_commands_keep_freed_memory(monkeypatch):
    """segment and eval load their model through load_model, which keeps freed memory on a CPU."""
    from remamber.cli import weights
    from remamber.engine import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    weights.load_model(None, "cpu")
    assert calls == [1]


def test_help_explains_every_flag_and_default():
    res = run_cli("segment", "--help", env={"COLUMNS": "200"})
    assert res.code == 0
    for flag in ("--weights", "--out", "--device", "--threshold", "--json", "--no-overlay", "--batch", "--allow-large"):
        assert flag in res.stdout, flag
    for default in ("[default: .]", "[default: auto]", "[default: 0.5]"):
        assert default in res.stdout, default
    top = run_cli("--help", env={"COLUMNS": "200"})
    assert top.code == 0 and "segment" in top.stdout and "prepare" in top.stdout
    version = run_cli("--version")
    assert version.code == 0 and version.stdout.startswith("remamber ")


def test_cli_import_is_light():
    """`remamber --help` must not import torch or transformers (it answers in about a second)."""
    import subprocess
    import sys

    code = "import sys, remamber.cli.main; print(sorted(m for m in ('torch', 'transformers', 'pycocotools') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_slug_and_overlay():
    assert text_slug("The man in RED shirt!") == "the-man-in-red-shirt"
    assert text_slug("???") == "text" and text_slug("café") == "cafe" and text_slug("黄色的 圆!") == "黄色的-圆"
    assert text_slug("パン") == "パン" and text_slug("हिन्दी") == "हिन्दी" and text_slug("ﬁsh_Ｏne") == "fish-one"
    img = Image.new("RGB", (10, 8), (0, 0, 0))
    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:8] = True
    arr = np.asarray(overlay(img, mask))
    assert (arr[~mask] == 0).all() and (arr[mask][:, 0] > 0).all()
    assert tuple(arr[2, 3]) == (255, 48, 48) and tuple(arr[4, 5]) != (255, 48, 48)  # outline vs tinted inside


def test_several_phrases_run_in_one_forward_pass(capsys, monkeypatch, tiny_model_dir, rgb_image, tmp_path):
    """``segment IMAGE TEXT TEXT ...``: one batched forward pass, the same masks as one phrase at a
    time, and a repeated phrase gets its own file name."""
    from remamber.cli.main import main
    from remamber.inference.predictor import Predictor

    def run(*texts: str) -> list[dict]:
        with pytest.raises(SystemExit) as exit_info:
            main(["segment", str(rgb_image), *texts, "-w", str(tiny_model_dir), "--json", "--out", str(tmp_path)])
        out, err = capsys.readouterr()
        assert exit_info.value.code in (None, 0), err
        return [json.loads(line) for line in out.splitlines()]

    singles = [run(text)[0] for text in ("red circle", "blue square")]
    calls = []
    original = Predictor.logits
    monkeypatch.setattr(
        Predictor, "logits", lambda self, images, texts: calls.append(len(texts)) or original(self, images, texts)
    )
    together = run("red circle", "blue square", "red circle")
    assert calls == [3]
    assert [r["text"] for r in together] == ["red circle", "blue square", "red circle"]
    for single, batched in zip(singles + singles[:1], together):
        assert batched["rle"] == single["rle"] and batched["area"] == single["area"]
    assert Path(together[2]["mask"]).name == "photo.red-circle-2.mask.png"
    assert len({r["mask"] for r in together}) == 3
