"""Text encoder wrapper: any Hugging Face text model + its tokenizer, padded to a fixed length.

ReMamber's official text encoder is CLIP ViT-L/14's text tower (words = last hidden state,
sentence = pooled output at the end token).  Any other Hugging Face text model works too:
its config is stored in our config (``text_config``) so a model folder rebuilds it offline.
``scratch`` builds a small randomly initialised CLIP-style text model with a word-level
tokenizer (made with the ``tokenizers`` library), for models trained from nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch.nn as nn
from torch import Tensor

from remamber.utils.errors import ConfigError

SCRATCH = "scratch"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]

# Text towers of dual encoders: load just the text part of their checkpoints.
_TEXT_TOWERS = {"clip": "CLIPTextModel", "siglip": "SiglipTextModel", "clipseg": "CLIPSegTextModel"}

# The words a scratch tokenizer knows by default: what referring expressions are made of.
BASIC_VOCAB = """
a an the this that these those one two three four five six seven eight nine ten first second
third fourth fifth last next other another only all both each left right top bottom middle
center centre upper lower up down above below under over behind front back near far close
beside between next to of in on at by with without from and or not is are it its his her
their who which that's leftmost rightmost topmost bottommost biggest smallest largest tallest
shortest big small large tiny huge little long short tall wide narrow thin thick round square
red green blue yellow orange purple pink brown black white gray grey cyan magenta dark light
bright pale colour color colored coloured striped spotted plain
circle circles square squares triangle triangles rectangle rectangles star stars diamond
diamonds ellipse ellipses hexagon hexagons cross crosses heart hearts shape shapes object
objects thing things one ones
man woman person people boy girl child kid guy lady player men women shirt jacket hat car
truck bus bike dog cat horse cow sheep bird elephant giraffe zebra bear chair table couch
bed tv laptop phone cup bowl bottle plate pizza sandwich cake banana apple orange umbrella
bag tree sky building window door sign
""".split()


def build_scratch_tokenizer(words: Iterable[str] = BASIC_VOCAB, max_len: int = 20):
    """A lower-casing word-level tokenizer ``[BOS] words [EOS]`` over ``words`` (plus specials)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_len,
    )


def scratch_text_config(vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4, max_len: int = 20) -> dict:
    """Config dict of a small CLIP-style text model for a scratch tokenizer's ids."""
    from transformers import CLIPTextConfig

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_len,
        projection_dim=hidden,
        pad_token_id=SPECIAL_TOKENS.index("[PAD]"),
        bos_token_id=SPECIAL_TOKENS.index("[BOS]"),
        eos_token_id=SPECIAL_TOKENS.index("[EOS]"),
    )
    return _config_to_dict(cfg)


def init_scratch_word_embeddings(model: nn.Module, std: float = 1.0) -> None:
    """Word embeddings drawn from N(0, std^2) instead of CLIP's N(0, 0.02^2).

    Trained from nothing, CLIP-sized embeddings move by a large fraction of their size at
    every AdamW step, and the image side cannot keep up with the changing words: on
    ``shapes``, tiny's masks then ignore the sentence. Unit-scale embeddings stay put long
    enough to be read (benchmarks/results/learning_check.json).
    """
    nn.init.normal_(model.get_input_embeddings().weight, 0.0, std)


def _config_to_dict(cfg: Any) -> dict:
    """A Hugging Face config as plain JSON data, without bookkeeping fields."""
    d = cfg.to_dict()
    for key in (
        "transformers_version",
        "architectures",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
    ):
        d.pop(key, None)
    return json.loads(json.dumps(d))


def hf_text_model_from_config(text_config: dict) -> nn.Module:
    """Instantiate (random weights) the Hugging Face text model described by ``text_config``."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(text_config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError("text_config has no model_type")
    try:
        hf_cfg = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"text_config cannot be built: {e}") from None
    return AutoModel.from_config(hf_cfg)


def load_pretrained_text_model(name: str) -> tuple[nn.Module, dict]:
    """Load a pretrained Hugging Face text model (the text tower of a CLIP-like checkpoint)."""
    import transformers
    from transformers import AutoConfig, AutoModel

    hf_cfg = AutoConfig.from_pretrained(name)
    tower = _TEXT_TOWERS.get(getattr(hf_cfg, "model_type", ""))
    model = getattr(transformers, tower).from_pretrained(name) if tower else AutoModel.from_pretrained(name)
    return model, _config_to_dict(model.config)


class TextEncoder(nn.Module):
    """Runs the text model: ``(input_ids, attention_mask) -> (words (b, l, c), sentence (b, c))``."""

    def __init__(self, model: nn.Module, pooling: str = "pooler") -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        words = out.last_hidden_state
        if self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ConfigError("text model has no pooled output: use text_pooling 'mean' or 'first'")
        elif self.pooling == "first":
            pooled = words[:, 0]
        else:
            m = attention_mask.to(words.dtype).unsqueeze(-1)
            pooled = (words * m).sum(1) / m.sum(1).clamp(min=1.0)
        return words, pooled
