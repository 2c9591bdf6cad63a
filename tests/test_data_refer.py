"""REFER reading and conversion (library level): counts, sentences and masks exactly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from remamber.data import prepare as prepare_module
from remamber.data.manifest import PreparedDataset
from remamber.data.masks import decode_rle, encode_mask, segmentation_to_rle
from remamber.data.prepare import prepare_refer
from remamber.data.refer import load_refs, load_restricted_pickle
from remamber.utils.errors import InputError


def _prepare(fx, out, **kw):
    return prepare_refer(fx.refer_root, fx.dataset, fx.images_root, out, **kw)


def test_counts_sentences_and_masks_exact(refer_fixture, tmp_path):
    fx = refer_fixture
    result = _prepare(fx, tmp_path / "out")
    assert not result.up_to_date
    info = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert info["name"] == "refcoco" and info["split_by"] == "unc"
    assert info["format_version"] == 1
    assert list(info["splits"]) == ["train", "val", "testA", "testB"]
    for split, expected in fx.counts.items():
        got = info["splits"][split]
        assert (got["samples"], got["refs"], got["images"]) == (
            expected["samples"],
            expected["refs"],
            expected["images"],
        )
    assert len(info["sources"]["refs"]["sha256"]) == 64
    assert len(info["sources"]["instances"]["sha256"]) == 64

    prepared = PreparedDataset.open(tmp_path / "out")
    seen = set()
    for split in prepared.splits:
        for rec in prepared.records(split):
            exp_split, text, mask, ref_id, category = fx.expected[rec["sent_id"]]
            assert split == exp_split
            assert rec["sentence"] == text and rec["raw"] == text.upper()
            assert rec["ref_id"] == ref_id and rec["category"] == category
            assert (rec["height"], rec["width"]) == mask.shape
            assert rec["file_name"] == fx.image_path(rec["image_id"]).name  # relative name
            decoded = decode_rle(rec["mask"])
            assert decoded.dtype == np.uint8
            np.testing.assert_array_equal(decoded, mask)
            seen.add(rec["sent_id"])
    assert seen == set(fx.expected)  # one record per sentence, none lost


def test_unicode_survives(refer_fixture, tmp_path):
    _prepare(refer_fixture, tmp_path / "out")
    texts = {r["sentence"] for r in PreparedDataset.open(tmp_path / "out").records("val")}
    assert {"Übergröße thing", "日本語の文"} <= texts
    train = {r["sentence"] for r in PreparedDataset.open(tmp_path / "out").records("train")}
    assert "café chair ☕" in train


def test_limit_keeps_first_refs_of_each_split(refer_fixture, tmp_path):
    result = _prepare(refer_fixture, tmp_path / "out", limit=1)
    assert {s: v["refs"] for s, v in result.splits.items()} == {"train": 1, "val": 1, "testA": 1, "testB": 1}
    assert result.splits["train"]["samples"] == 2  # ref 1 has two sentences


def test_skip_missing_leaves_out_samples(refer_fixture, tmp_path):
    fx = refer_fixture
    fx.image_path(3).unlink()  # refs 5 (train, 1 sentence) and 6 (val, 1 sentence)
    with pytest.raises(InputError, match="1 of 3 images referenced are missing"):
        _prepare(fx, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = _prepare(fx, tmp_path / "out", skip_missing=True)
    assert result.missing_images == 1 and result.skipped_samples == 2
    assert result.splits["train"]["samples"] == 2 and result.splits["val"]["samples"] == 3


def test_idempotent_and_sensitive_to_inputs(refer_fixture, tmp_path):
    fx = refer_fixture
    out = tmp_path / "out"
    _prepare(fx, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _prepare(fx, out).up_to_date
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    refs = load_refs(fx.refs_path)
    refs[0]["sentences"][0]["sent"] = "changed words"
    fx.write_refs(refs)
    assert not _prepare(fx, out).up_to_date
    assert PreparedDataset.open(out).records("train")[0]["sentence"] == "changed words"


def test_interrupted_run_leaves_no_complete_looking_output(refer_fixture, tmp_path, monkeypatch):
    fx = refer_fixture
    out = tmp_path / "out"
    _prepare(fx, out)
    calls = {"n": 0}
    real = prepare_module.segmentation_to_rle

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prepare_module, "segmentation_to_rle", failing)
    with pytest.raises(KeyboardInterrupt):
        _prepare(fx, out, force=True)
    assert not (out / "dataset.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(InputError, match="not a prepared dataset"):
        PreparedDataset.open(out)


def test_restricted_unpickler_refuses_globals_without_running_them(tmp_path):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "x": Evil()}], protocol=2))
    with pytest.raises(InputError, match="refused to load.*io.open"):
        load_restricted_pickle(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())[0]["x"].close()  # proof: plain pickle runs the global
    assert marker.exists()


def test_restricted_unpickler_reads_plain_data_and_python2_strings(tmp_path):
    path = tmp_path / "p.p"
    data = [{"a": (1, 2.5, None, True), "s": {3, 4}, "u": "ü"}]
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_restricted_pickle(path) == data
    # A Python 2 pickle stores str as bytes (SHORT_BINSTRING); here UTF-8 "café".
    path.write_bytes(b"\x80\x02]q\x00U\x05caf\xc3\xa9q\x01a.")
    assert load_restricted_pickle(path) == ["café"]


def test_polygon_and_rle_conversion_edge_cases():
    # A 2-point polygon is still a polygon (pycocotools would read 4 numbers as a box).
    rle = segmentation_to_rle([[1, 1, 5, 1]], 8, 8)
    assert rle["size"] == [8, 8] and isinstance(rle["counts"], str)
    with pytest.raises(ValueError, match="even count"):
        segmentation_to_rle([[1, 1, 5]], 8, 8)
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[1:4, 2:6] = 1
    with pytest.raises(ValueError, match="differs from the image size"):
        segmentation_to_rle(encode_mask(mask), 7, 6)
    np.testing.assert_array_equal(decode_rle(segmentation_to_rle(encode_mask(mask), 6, 7)), mask)
