"""Any Hugging Face text model as the text encoder, loaded the way the Hub path loads it
(from_pretrained on a folder), then saved and rebuilt offline from our model folder."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import assert_one_line_error, run_cli

from remamber.hub.folders import load_pretrained, save_pretrained
from remamber.modeling.presets import build_model, preset_config
from remamber.modeling.text import build_scratch_tokenizer

WORDS = "the a red blue green circle square left right of big small".split()


def _tiny_clip_folder(path):
    """A full CLIP checkpoint (text + vision towers), like openai/clip-vit-large-patch14."""
    from transformers import CLIPConfig, CLIPModel

    tok = build_scratch_tokenizer(WORDS)
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=20,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _tiny_bert_folder(path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").parent.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    ).save_pretrained(path)
    return path


def _model_with_text(folder):
    cfg = preset_config("tiny").replace(text_encoder=str(folder), image_size=64)
    torch.manual_seed(0)
    return build_model(cfg, pretrained_text=True).eval()


@pytest.mark.parametrize("make", [_tiny_clip_folder, _tiny_bert_folder], ids=["clip", "bert"])
def test_pretrained_text_encoder_round_trip(make, tmp_path):
    folder = make(tmp_path / "text")
    model = _model_with_text(folder)
    assert model.config.text_dim == 32
    ids, mask, _ = model.tokenize(["the red circle left of the blue square"])
    assert ids.shape == (1, 20)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out = model(x, ids, mask)
    saved = save_pretrained(model, tmp_path / "model")
    loaded = load_pretrained(saved)
    back, saved_state = loaded.state_dict(), model.state_dict()
    assert back.keys() == saved_state.keys() and all(torch.equal(back[k], saved_state[k]) for k in back)
    with torch.inference_mode():  # the scan path may differ between two calls in a process (rounding)
        assert torch.allclose(loaded(x, ids, mask), out, rtol=1e-5, atol=1e-5 * float(out.abs().max()))
    assert type(loaded.text_encoder.model).__name__ == type(model.text_encoder.model).__name__


def test_clip_loads_only_the_text_tower(tmp_path):
    model = _model_with_text(_tiny_clip_folder(tmp_path / "clip"))
    assert type(model.text_encoder.model).__name__ == "CLIPTextModel"
    assert model.config.text_config["model_type"] == "clip_text_model"


def test_mismatched_folder_through_the_cli(tiny_model_dir, rgb_image, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["decoder_dim"] = 32
    (bad / "config.json").write_text(json.dumps(cfg))
    res = run_cli("segment", str(rgb_image), "red circle", "--weights", str(bad), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "do not match its config", "wrong shape")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_scratch_word_embeddings_start_at_unit_scale():
    # CLIP's own init (std 0.02) left the tiny model blind to the sentence (BENCHMARKS.md, learning check).
    text = build_model("tiny").text_encoder.model
    assert 0.9 < float(text.get_input_embeddings().weight.detach().std()) < 1.1
    positions = next(p for n, p in text.named_parameters() if "position_embedding" in n)
    assert float(positions.detach().std()) < 0.1  # only the word embeddings are redrawn
