"""``remamber export``: Hub folders (and a push that sends nothing in tests), ONNX folders that
onnxruntime runs with the PyTorch model's outputs, and the errors of both."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from model_fixtures import assert_one_line_error, run_cli
from PIL import Image

from remamber.utils.errors import WeightsError

EVAL_JSON = {
    "samples": 10,
    "mIoU": 0.5,
    "oIoU": 0.625,
    "P@50": 0.4,
    "P@60": 0.3,
    "P@70": 0.2,
    "P@80": 0.1,
    "P@90": 0.0,
    "dataset": "shapes",
    "split": "test",
    "by_type": {
        "attribute": {
            "samples": 4,
            "mIoU": 0.75,
            "oIoU": 0.8125,
            "P@50": 1.0,
            "P@60": 0.5,
            "P@70": 0.5,
            "P@80": 0.25,
            "P@90": 0.0,
        }
    },
}


@pytest.fixture()
def checkpoint_like(tiny_model_dir, tmp_path):
    """A copy of the tiny model folder with a trainer state and training record, like a checkpoint."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "trainer_state.pt").write_bytes(b"not for the hub")
    record = {
        "dataset": "shapes",
        "train_samples": 123,
        "step": 40,
        "epoch": 1,
        "settings": {"preset": "tiny", "batch_size": 8, "lr": 0.001, "seed": 0},
        "val": None,
    }
    (folder / "training.json").write_text(json.dumps(record))
    return folder


def test_export_hub_writes_a_clean_folder_with_a_card(checkpoint_like, tmp_path):
    from remamber.hub.folders import load_pretrained, load_state

    metrics = tmp_path / "test.json"
    metrics.write_text(json.dumps(EVAL_JSON))
    out = tmp_path / "hub"
    res = run_cli(
        "export", str(checkpoint_like), "--format", "hub", "--out", str(out), "--metrics", str(metrics), "--json"
    )
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert set(result["files"]) == {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training.json",
    }
    card = (out / "README.md").read_text()
    assert "123 training samples" in card and "40 steps" in card and "batch_size=8" in card
    assert "| shapes | test | 10 | 50.00 | 62.50 |" in card
    assert "| shapes | test: attribute | 4 | 75.00 | 81.25 |" in card
    assert "remamber segment" in card and "load_pretrained" in card
    a, b = load_state(checkpoint_like / "model.safetensors"), load_state(out / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    load_pretrained(out)  # loads


def test_push_dry_run_lists_files_and_sends_nothing(checkpoint_like):
    nowhere = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}  # any request would fail
    res = run_cli(
        "export",
        str(checkpoint_like),
        "--out",
        str(checkpoint_like.parent / "x"),
        "--push-to-hub",
        "me/model",
        "--dry-run",
        env=nowhere,
    )
    assert res.code == 0, res.stderr
    assert "would upload to me/model" in res.stdout
    assert "model.safetensors" in res.stdout and "trainer_state.pt" not in res.stdout


def test_push_uploads_the_planned_files(checkpoint_like, monkeypatch):
    import huggingface_hub

    from remamber.hub.publish import push_to_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, allow_patterns, commit_message):
            calls["upload"] = (repo_id, folder_path, sorted(allow_patterns))
            return "https://huggingface.co/me/model/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    upload = push_to_hub(checkpoint_like, "me/model", private=True)
    assert calls["create"] == ("me/model", True, True)
    assert calls["upload"][2] == upload.files and "trainer_state.pt" not in upload.files
    assert "training.json" in upload.files and upload.url.endswith("/abc")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--format", "gif", "--out", "x"], "--format 'gif'"),
        (["--format", "hub"], "Missing option '--out'"),
        (["--out", "x", "--dry-run"], "--push-to-hub"),
        (["--format", "onnx", "--out", "x", "--opset", "3", "--json"], "opset 3: choose 14 to 20"),
        (["--format", "onnx", "--out", "x", "--opset", "99"], "opset 99: choose 14 to 20"),
    ],
)
def test_bad_export_options_are_one_line_errors(tiny_model_dir, args, fragment):
    res = run_cli("export", str(tiny_model_dir), *args)
    assert_one_line_error(res, fragment)
    assert res.stdout == ""


def test_export_never_replaces_what_is_not_a_model_folder(tiny_model_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    (tmp_path / "afile").write_text("hi")
    for out, fragment in (
        ("mine", "not a remamber model folder"),
        ("afile", "is a file"),
        (".", "not a remamber model folder"),
    ):
        assert_one_line_error(
            run_cli("export", str(tiny_model_dir), "--out", out, cwd=tmp_path), fragment, "refusing to replace"
        )
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious" and (tmp_path / "afile").read_text() == "hi"
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # an empty folder, then the model folder written there: both are replaced
        res = run_cli("export", str(tiny_model_dir), "--out", "empty", "--json", cwd=tmp_path)
        assert res.code == 0, res.stderr
    assert (
        json.loads(res.stdout)["out"] == str((tmp_path / "empty").resolve())
        and (tmp_path / "empty" / "config.json").is_file()
    )


def test_export_never_drops_what_a_model_folder_holds_besides_the_export(checkpoint_like, tmp_path):
    """A training checkpoint (its trainer state), a folder with notes, an ONNX export over a PyTorch
    folder: each is refused and left as it was."""
    notes = tmp_path / "noted"
    shutil.copytree(checkpoint_like, notes)
    (notes / "trainer_state.pt").unlink(missing_ok=True)
    (notes / "notes.txt").write_text("mine")
    for out, fmt, fragment in [
        (checkpoint_like, "hub", "trainer_state.pt"),
        (notes, "hub", "notes.txt"),
        (checkpoint_like, "onnx", "another kind"),
    ]:
        before = sorted(p.name for p in out.iterdir())
        assert_one_line_error(run_cli("export", str(checkpoint_like), "--format", fmt, "--out", str(out)), fragment)
        assert sorted(p.name for p in out.iterdir()) == before


def test_push_needs_a_model_folder(tmp_path):
    from remamber.hub.publish import upload_plan

    with pytest.raises(WeightsError, match="not a model folder"):
        upload_plan(tmp_path, "me/model")


# --------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_export(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    res = run_cli("export", str(tiny_model_dir), "--format", "onnx", "--out", str(out), "--verify", "--json")
    assert res.code == 0, res.stderr
    return out, json.loads(res.stdout)


def test_onnx_export_is_small_loop_free_and_verified(onnx_export):
    import onnx

    out, result = onnx_export
    assert set(result["files"]) >= {"model.onnx", "config.json", "tokenizer.json", "README.md"}
    assert "model.safetensors" not in result["files"]
    assert result["max_abs_diff"] <= 1e-4
    assert result["presence_max_abs_diff"] <= 1e-4 and result["presence_max_abs_logit"] > 0  # the second output
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "presence_logits"]
    ops = {node.op_type for node in graph.node}
    assert not ops & {"Loop", "Scan", "If"}
    assert len(graph.node) == result["onnx_nodes"] < 6000
    assert [i.name for i in graph.input] == ["image", "input_ids", "attention_mask"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_onnx_predictor_matches_pytorch(onnx_export, tiny_model_dir):
    from remamber.hub.folders import load_pretrained, read_config
    from remamber.inference.onnx_predictor import OnnxPredictor
    from remamber.inference.predictor import Predictor

    out, _ = onnx_export
    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((90, 120), (200, 150), (64, 64))
    ]
    texts = ["the red circle", "the second big square from the left", "a"]
    torch_pred, onnx_pred = Predictor(load_pretrained(tiny_model_dir)), OnnxPredictor(out, read_config(out))
    for image, text in zip(images, texts):
        a, b = torch_pred.predict(image, text), onnx_pred.predict(image, text)
        assert a.probs.shape == b.probs.shape == (image.size[1], image.size[0])
        assert np.abs(a.probs - b.probs).max() < 1e-5
        assert a.presence == pytest.approx(b.presence, abs=1e-5) and a.found == b.found
    la, pa, _ = torch_pred.logits(images, texts)
    lb, pb, _ = onnx_pred.logits(images, texts)  # a batch of 3 through the dynamic batch axis
    assert np.abs(la.numpy() - lb).max() < 1e-4
    assert pb.shape == (3,) and np.abs(pa.numpy() - pb).max() < 1e-4


def test_predictor_eval_and_onnx_give_the_same_masks(onnx_export, tiny_model_dir, small_shapes, tmp_path):
    """One pre- and post-processing (remamber.inference.processing) for every path: the masks that
    `remamber eval` scores are the ones `remamber segment` writes, with PyTorch or onnxruntime."""
    from remamber.data.dataset import ReferringDataset
    from remamber.engine.evaluate import evaluate, mask_file_name
    from remamber.hub.folders import load_pretrained, read_config
    from remamber.inference.onnx_predictor import OnnxPredictor
    from remamber.inference.predictor import Predictor

    out, _ = onnx_export
    model = load_pretrained(tiny_model_dir)
    ds = ReferringDataset(small_shapes, "test", model.config.image_size, train=False)
    n = min(len(ds), 6)
    evaluate(model, ds, batch_size=1, progress=False, limit=n, save_masks=tmp_path / "masks")
    torch_pred, onnx_pred = Predictor(model), OnnxPredictor(out, read_config(out))
    near = 0
    for i in range(n):
        image, text = ds.load_image(i), ds.record(i)["sentence"]
        saved = np.asarray(Image.open(tmp_path / "masks" / mask_file_name(i, ds.record(i).get("sent_id")))) > 0
        a, b = torch_pred.predict(image, text), onnx_pred.predict(image, text)
        assert a.mask.shape == saved.shape == (image.size[1], image.size[0])
        assert np.array_equal(a.mask, saved)  # eval's mask is segment's, pixel for pixel
        # onnxruntime's logits differ by rounding (~1e-5): only pixels at the threshold may flip
        flipped = a.mask != b.mask
        assert (np.abs(a.probs[flipped] - 0.5) < 1e-4).all()
        near += int(flipped.sum())
    assert near <= 0.001 * n * saved.size


def test_segment_runs_an_onnx_folder(onnx_export, rgb_image, tmp_path):
    out, _ = onnx_export
    res = run_cli("segment", str(rgb_image), "the red circle", "--weights", str(out), "--out", str(tmp_path), "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["width"] == 120
    assert_one_line_error(
        run_cli("segment", str(rgb_image), "x", "--weights", str(out), "--device", "cuda"), "ONNX models run on the CPU"
    )


def test_push_without_network_is_one_line_error(checkpoint_like, tmp_path):
    nowhere = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}
    res = run_cli(
        "export", str(checkpoint_like), "--out", str(tmp_path / "x"), "--push-to-hub", "me/model", env=nowhere
    )
    assert_one_line_error(res, "push to me/model failed", code=1)
