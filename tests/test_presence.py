"""The presence head ("not in the picture"): the config field and old folders, the loss and its
targets, and the one "not found" rule through Predictor, segment, serve, eval and ONNX."""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import assert_one_line_error, run_cli
from PIL import Image

from remamber.data.masks import encode_mask
from remamber.engine.losses import presence_loss, referring_loss, segmentation_loss
from remamber.hub.folders import load_pretrained, save_pretrained
from remamber.inference.predictor import Predictor
from remamber.inference.processing import to_prediction
from remamber.inference.results import prediction_fields
from remamber.modeling.config import ModelConfig
from remamber.modeling.presence import PRIOR, PresenceHead
from remamber.modeling.presets import build_model, preset_config
from remamber.utils.errors import ConfigError, InputError, check_presence_threshold

PHRASE = "the red circle"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def absent_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model folder at 64 px with its presence head's bias at -30: "nothing here" for any
    input; every other weight is the tiny model's."""
    model = load_pretrained(tiny_model_dir)
    model.config = model.config.replace(image_size=64)  # small inputs: a fast test
    with torch.no_grad():
        model.presence.fc2.bias.fill_(-30.0)
    return save_pretrained(model, tmp_path_factory.mktemp("models") / "absent")


@pytest.fixture()
def image():
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))


def _inputs(model, n: int = 2, size: int = 64):
    ids, mask, _ = model.tokenize([PHRASE, "the big blue square on the left"][:n])
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)), ids, mask


def test_config_field_round_trips_and_old_configs_have_no_head():
    cfg = preset_config("tiny")
    assert cfg.presence_head is True  # on for new models
    for value in (True, False):
        changed = cfg.replace(presence_head=value)
        assert ModelConfig.from_dict(changed.to_dict()) == changed
    old = cfg.to_dict()
    del old["presence_head"]  # a config.json written before the field existed
    assert ModelConfig.from_dict(old).presence_head is False
    with pytest.raises(ConfigError, match="presence_head"):
        ModelConfig.from_dict(dict(cfg.to_dict(), presence_head="yes"))


def test_old_model_folder_loads_without_a_head_and_segments_as_before(tiny_model, tmp_path):
    """A folder whose config.json lacks the field loads headless (its weights, which have no head,
    load strictly) and gives the mask logits of the same weights with a head."""
    headless = build_model(preset_config("tiny").replace(presence_head=False, image_size=64)).eval()
    plain = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("presence.")}
    assert len(plain) < len(tiny_model.state_dict())
    headless.load_state_dict(plain)
    folder = save_pretrained(headless, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["presence_head"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained(folder)
    assert loaded.presence is None and loaded.parameter_counts()["presence"] == 0
    x, ids, mask = _inputs(loaded)
    with torch.no_grad():
        logits = loaded(x, ids, mask)
        out = loaded(x, ids, mask, return_presence=True)
        with_head = tiny_model(x, ids, mask, return_presence=True)
    assert out.presence_logits is None and torch.equal(out.logits, logits)
    assert torch.equal(logits, with_head.logits)  # the head never touches the mask path
    assert with_head.presence_logits.shape == (2,)
    shipped = load_pretrained("remamber-tiny-shapes")  # the default before the presence head is such a folder
    assert shipped.config.presence_head is False and shipped.presence is None
    assert load_pretrained().config.presence_head is True  # the default model has one


def test_presence_loss_forward_backward_on_a_tiny_model():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    x, ids, mask = _inputs(model)
    target = torch.zeros(2, 1, 64, 64)
    target[0, :, 10:30, 12:40] = 1.0  # the second sample names nothing: empty mask, present 0
    present = torch.tensor([1.0, 0.0])
    out = model(x, ids, mask, return_presence=True)
    loss = referring_loss(out.logits, target, out.presence_logits, present, 0.5)
    bce = F.binary_cross_entropy_with_logits(out.presence_logits, present)
    assert torch.allclose(loss, segmentation_loss(out.logits, target) + 0.5 * bce)
    assert torch.allclose(presence_loss(out.presence_logits, present), bce)
    assert torch.equal(referring_loss(out.logits, target, None, present, 0.5), segmentation_loss(out.logits, target))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name, p in model.presence.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_presence_head_starts_at_its_prior_and_learns_to_tell_absent_from_present():
    torch.manual_seed(0)
    head = PresenceHead(32, 16)
    feats, sentences = torch.randn(8, 32, 3, 3), torch.randn(8, 16)
    present = torch.tensor([1.0, 0.0] * 4)
    with torch.no_grad():
        start = head(feats, sentences).sigmoid()
    assert torch.allclose(start, torch.full((8,), PRIOR), atol=0.05)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        presence_loss(head(feats, sentences), present).backward()
        opt.step()
    with torch.no_grad():
        p = head(feats, sentences).sigmoid()
    assert (p[present == 1] > 0.5).all() and (p[present == 0] < 0.5).all()


def _no_target_copy(small_shapes, tmp_path):
    """small_shapes with train record 0 made a GRES no-target record (empty mask) and record 2 an
    explicit target; record 1 stays a classic record."""
    from remamber.data.manifest import PreparedDataset

    folder = tmp_path / "gres"
    shutil.copytree(small_shapes, folder)
    prepared = PreparedDataset.open(folder)
    records = prepared.records("train")
    first = records[0]
    first.update(no_target=True, ann_ids=[], ann_id=-1)
    first["mask"] = encode_mask(np.zeros((first["height"], first["width"]), dtype=bool))
    records[2].update(no_target=False, ann_ids=[records[2]["ann_id"]])
    path = folder / prepared.info["splits"]["train"]["manifest"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


def test_no_target_sample_has_an_empty_mask_and_presence_target_0(small_shapes, tmp_path):
    from remamber.data.dataset import ReferringDataset, collate_fn, names_something

    ds = ReferringDataset(_no_target_copy(small_shapes, tmp_path), "train", 64, train=True)
    items = [ds[i] for i in range(3)]
    assert items[0]["present"].item() == 0.0 and items[0]["mask"].sum() == 0
    assert items[1]["present"].item() == 1.0 and items[1]["mask"].sum() > 0  # no field: a non-empty mask
    assert items[2]["present"].item() == 1.0
    assert collate_fn(items)["present"].tolist() == [0.0, 1.0, 1.0]
    assert names_something({}, np.zeros((4, 4), np.uint8)) is False  # no field and an empty mask


def test_training_steps_the_presence_head_on_no_target_samples(small_shapes, tmp_path):
    from remamber.engine.train import Trainer
    from remamber.engine.train_config import TrainConfig

    data = _no_target_copy(small_shapes, tmp_path)
    common = dict(data=str(data), preset="tiny", image_size=64, batch_size=3, max_steps=1, epochs=1, limit=3)
    common.update(val_split=None, device="cpu", lr=1e-3, seed=0)
    trainer = Trainer(TrainConfig(out=str(tmp_path / "run"), presence_weight=1.0, **common))
    start = trainer.model.presence.fc2.bias.item()
    trainer.fit()
    assert trainer.model.presence.fc2.bias.item() != pytest.approx(start, abs=1e-6)
    assert load_pretrained(tmp_path / "run" / "checkpoints" / "last").config.presence_head is True
    headless = Trainer(TrainConfig(out=str(tmp_path / "run2"), presence_head=False, **common))
    assert headless.model.presence is None
    headless.fit()  # the mask loss alone


def test_resume_keeps_the_metric_that_picked_the_best_checkpoint(small_shapes, tmp_path):
    """A generalized validation split ranks checkpoints by gIoU; a resumed run still says so."""
    from remamber.engine.train import Trainer
    from remamber.engine.train_config import TrainConfig

    data = _no_target_copy(small_shapes, tmp_path)  # its train split has a no-target record
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), preset="tiny", image_size=64, batch_size=3, max_steps=1,
        epochs=1, limit=3, val_split="train", val_every=1, val_limit=3, device="cpu", lr=1e-3, seed=0,
    )  # fmt: skip
    result = Trainer(cfg).fit()
    assert result.best_metric == "gIoU" and result.best_score is not None
    resumed = Trainer(cfg, resume=True)
    assert resumed.best_metric == "gIoU" and resumed.best == result.best_score


def test_old_training_runs_resume_without_a_head(tmp_path):
    from remamber.engine.train_config import TrainConfig

    cfg = TrainConfig(data="d", out="o")
    assert cfg.presence_head is None  # new runs: the preset's default (on)
    saved = {k: v for k, v in json.loads(json.dumps(cfg.__dict__)).items() if not k.startswith("presence")}
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert TrainConfig.load(tmp_path / "train_config.json").presence_head is False
    with pytest.raises(InputError, match="presence_weight"):
        TrainConfig(data="d", out="o", presence_weight=-1.0).validate()


def test_to_prediction_empties_the_mask_below_the_presence_threshold():
    logits = np.array([[3.0, -3.0], [0.5, -0.5]], np.float32)
    plain = to_prediction(logits, (2, 2), 0.5)
    found = to_prediction(logits, (2, 2), 0.5, presence_logit=2.0)
    lost = to_prediction(logits, (2, 2), 0.5, presence_logit=-2.0)
    assert plain.presence is None and plain.found and plain.mask.tolist() == [[True, False], [True, False]]
    assert found.found and found.presence == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert np.array_equal(found.mask, plain.mask)
    assert not lost.found and not lost.mask.any() and lost.area == 0 and lost.mean_prob == 0.0
    assert np.array_equal(lost.probs, plain.probs)  # the probabilities are kept
    assert to_prediction(logits, (2, 2), 0.5, presence_logit=-2.0, presence_threshold=0.0).found
    assert to_prediction(logits, (2, 2), 0.5, presence_logit=-1e6).presence == 0.0
    fields = prediction_fields(lost)
    assert fields["found"] is False and fields["presence"] == pytest.approx(0.119203, abs=1e-6)
    assert prediction_fields(plain)["presence"] is None and prediction_fields(plain)["found"] is True
    for bad in (1.0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match="presence_threshold"):
            check_presence_threshold(bad)


def test_predictor_says_not_found_when_presence_is_low(absent_dir, tiny_model_dir, image):
    absent = Predictor(load_pretrained(absent_dir))
    pred = absent.predict(image, PHRASE)
    assert not pred.found and pred.presence < 1e-6 and pred.area == 0
    reference_model = load_pretrained(tiny_model_dir)
    reference_model.config = reference_model.config.replace(image_size=64)
    reference = Predictor(reference_model).predict(image, PHRASE)
    assert reference.found and reference.presence == pytest.approx(PRIOR, abs=0.05)
    kept, cut = absent.predict_many([image, image], [PHRASE, PHRASE], presence_thresholds=[0.0, 0.5])
    assert kept.found and np.array_equal(kept.mask, reference.mask) and not cut.found
    with pytest.raises(InputError, match="presence_threshold"):
        Predictor(load_pretrained(absent_dir), presence_threshold=1.0)
    shipped = Predictor(load_pretrained("remamber-tiny-shapes")).predict(image, PHRASE)  # no head: presence null
    assert shipped.presence is None and shipped.found


def test_segment_says_not_found_and_reports_presence(absent_dir, rgb_image, tmp_path):
    from typer.testing import CliRunner

    from remamber.cli.main import app

    def segment(*args: str):  # in this process: the model folder loads fast
        res = CliRunner().invoke(app, ["segment", str(rgb_image), PHRASE, "--weights", str(absent_dir), *args])
        assert res.exit_code == 0, res.output
        return res.stdout

    out = segment("--out", str(tmp_path))
    assert f'"{PHRASE}": not found (presence 0.000); wrote empty mask ' in out
    (mask_file,) = tmp_path.glob("*.mask.png")
    assert not np.asarray(Image.open(mask_file)).any()
    result = json.loads(segment("--out", str(tmp_path / "b"), "--json", "--presence-threshold", "0"))
    assert result["found"] is True and 0 <= result["presence"] < 1e-6
    bad = run_cli("segment", str(rgb_image), PHRASE, "--presence-threshold", "1", "--out", str(tmp_path / "c"))
    assert_one_line_error(bad, "--presence-threshold", "presence_threshold must be at least 0 and below 1")


def test_server_reports_presence_and_takes_a_presence_threshold(absent_dir, image):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from remamber.serve.app import ModelInfo, create_app

    info = ModelInfo(name="absent", preset="tiny", device="cpu", format="pytorch", image_size=128, max_text_len=20)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    body = buf.getvalue()
    with TestClient(create_app(Predictor(load_pretrained(absent_dir)), info)) as client:

        def post(**fields):
            files = {"image": ("x.png", body, "image/png")}
            return client.post("/v1/segment", files=files, data={"text": [PHRASE], **fields})

        data = post().json()
        (result,) = data["results"]
        assert data["presence_threshold"] == 0.5
        assert result["found"] is False and result["presence"] < 1e-6 and result["area"] == 0
        assert post(presence_threshold="0").json()["results"][0]["found"] is True
        refused = post(presence_threshold="1")
        assert refused.status_code == 422 and "presence_threshold" in refused.json()["error"]
        as_json = {"image": base64.b64encode(body).decode(), "text": PHRASE, "presence_threshold": 0.0}
        assert client.post("/v1/segment", json=as_json).json()["results"][0]["found"] is True


def test_eval_takes_the_predicted_mask_from_the_presence_rule(absent_dir, tiny_model_dir, small_shapes):
    from remamber.data.dataset import ReferringDataset
    from remamber.engine.evaluate import evaluate

    model = load_pretrained(absent_dir)
    ds = ReferringDataset(small_shapes, "test", model.config.image_size)
    lost = evaluate(model, ds, batch_size=4, progress=False, limit=4)
    assert all(row["I"] == 0 for row in lost.rows) and lost.settings["presence_threshold"] == 0.5
    kept = evaluate(model, ds, batch_size=4, progress=False, limit=4, presence_threshold=0.0)
    reference_model = load_pretrained(tiny_model_dir)  # the same weights but the presence bias
    reference = evaluate(reference_model, ds, batch_size=4, progress=False, limit=4)
    assert [(r["I"], r["U"]) for r in kept.rows] == [(r["I"], r["U"]) for r in reference.rows]


@pytest.mark.slow  # two ONNX exports
def test_onnx_export_carries_the_presence_output(absent_dir, tiny_model, image, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from remamber.export.onnx import export_onnx
    from remamber.hub.folders import read_config
    from remamber.inference.onnx_predictor import OnnxPredictor

    out, report = export_onnx(str(absent_dir), tmp_path / "onnx", verify=True)
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["logits", "presence_logits"]
    assert report["max_abs_diff"] <= 1e-4 and report["presence_max_abs_diff"] <= 1e-4
    assert report["presence_max_abs_logit"] >= 29  # the forced bias
    pred = OnnxPredictor(out, read_config(out)).predict(image, PHRASE)
    assert not pred.found and pred.presence < 1e-6 and pred.area == 0
    # a model without the head exports the one output it always had; the ONNX predictor reports null
    headless = build_model(preset_config("tiny").replace(presence_head=False, image_size=64))
    headless.load_state_dict({k: v for k, v in tiny_model.state_dict().items() if not k.startswith("presence.")})
    plain, report = export_onnx(
        str(save_pretrained(headless, tmp_path / "plain")), tmp_path / "plain-onnx", verify=True
    )
    assert [o.name for o in onnx.load(str(plain / "model.onnx")).graph.output] == ["logits"]
    assert "presence_max_abs_diff" not in report and report["max_abs_diff"] <= 1e-4
    result = OnnxPredictor(plain, read_config(plain)).predict(image, PHRASE)
    assert result.presence is None and result.found


def test_init_weights_without_a_head_get_a_new_one_with_presence_head(small_shapes, tmp_path):
    """`train --init` of a model without a presence head (the shipped `remamber-tiny-shapes`) and `--presence-head`:
    every weight of the init model is kept and a fresh head is added; the other way round (taking
    a head away) is an architecture change and refused."""
    from safetensors.torch import load_file

    from remamber.hub.shipped import shipped_folder

    headless = "remamber-tiny-shapes"
    base = ["train", "--data", str(small_shapes), "--image-size", "64", "--batch-size", "2", "--val-split", ""]
    run = tmp_path / "run"
    res = run_cli(
        *base,
        "--out",
        str(run),
        "--init",
        headless,
        "--presence-head",
        "--max-steps",
        "1",
        "--lr",
        "1e-30",
        "--min-lr",
        "0",
    )
    assert res.code == 0, res.stderr
    trained = load_pretrained(run / "checkpoints" / "last")
    assert trained.config.presence_head and trained.presence is not None
    before = load_file(str(shipped_folder(headless) / "model.safetensors"))
    after = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert set(after) - set(before) == {k for k in after if k.startswith("presence.")} != set()
    kept = [k for k in before if "running_" not in k and "num_batches" not in k]  # BatchNorm statistics move
    assert all(torch.allclose(before[k].float(), after[k].float(), rtol=1e-6, atol=1e-20) for k in kept)

    res = run_cli(
        *base, "--out", str(tmp_path / "run2"), "--init", str(run / "checkpoints" / "last"), "--no-presence-head"
    )
    assert_one_line_error(res, "--presence-head", "--init")


def test_the_default_model_says_not_found_and_finds_all_of_them(tmp_path):
    """The shipped default model (`remamber-tiny-gshapes`, with a presence head), no --weights:
    the README's "not found" example, and a plural phrase that names several objects gets one
    mask over them."""
    res = run_cli(
        "segment",
        str(EXAMPLES / "shapes-3.png"),
        "the purple star",
        "all the red objects",
        "--json",
        "--out",
        str(tmp_path),
    )
    assert res.code == 0, res.stderr
    star, red = [json.loads(line) for line in res.stdout.splitlines()]
    assert star["found"] is False and star["presence"] < 0.5 and star["area"] == 0
    assert red["found"] is True and red["presence"] > 0.5 and red["area"] > 300
