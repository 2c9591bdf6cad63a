"""Tokenizers of model folders and the fixed-length tokenization the models take (no torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remamber.utils.errors import WeightsError, first_line


def tokenize(tokenizer: Any, texts: list[str], max_len: int, return_tensors: str = "pt") -> tuple[Any, Any, list[bool]]:
    """Pad/truncate ``texts`` to ``max_len`` tokens (``pt`` tensors or ``np`` arrays); also say which were truncated."""
    full = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    truncated = [len(ids) > max_len for ids in full]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors=return_tensors)
    return enc["input_ids"], enc["attention_mask"], truncated


def load_tokenizer(path_or_name: str, model_folder: bool = False) -> Any:
    """The fast tokenizer of a Hub name or folder.

    In one of our model folders ``config.json`` is ours, not a transformers config, so the
    tokenizer class is taken from ``tokenizer_config.json`` alone.
    """
    from transformers import AutoTokenizer, PretrainedConfig

    extra = {"config": PretrainedConfig()} if model_folder else {}
    return AutoTokenizer.from_pretrained(path_or_name, use_fast=True, **extra)


def folder_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in one of our model folders (a clear error when its files are unusable)."""
    try:
        return load_tokenizer(str(folder), model_folder=True)
    except (OSError, ValueError, TypeError) as e:
        raise WeightsError(f"{folder}: no usable tokenizer files ({first_line(e)})") from None
