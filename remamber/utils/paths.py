"""Where remamber keeps data by default: the data home and the shipped weights."""

from __future__ import annotations

import os
from pathlib import Path

DATA_HOME_ENV = "REMAMBER_HOME"


def data_home() -> Path:
    """The data home: ``$REMAMBER_HOME``, else ``$XDG_CACHE_HOME/remamber``, else ``~/.cache/remamber``.

    It holds ``refer/`` (the REFER annotation folders), ``coco/train2014/`` (COCO images)
    and ``datasets/<name>/`` (prepared datasets).
    """
    env = os.environ.get(DATA_HOME_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "remamber"


def refer_root() -> Path:
    """Default folder holding ``refcoco/``, ``refcoco+/``, ``refcocog/`` in the REFER layout."""
    return data_home() / "refer"


def coco_images() -> Path:
    """Default folder of COCO train2014 images."""
    return data_home() / "coco" / "train2014"


def prepared_dataset(name: str) -> Path:
    """Default folder of the prepared dataset ``name``."""
    return data_home() / "datasets" / name
