"""Model folders shipped inside the package, by name: ``load_pretrained("remamber-tiny-gshapes")`` or
``--weights remamber-tiny-shapes`` work from any folder, in a source checkout and in an installed wheel.

The folders are package data (``[tool.setuptools.package-data]`` in pyproject.toml), so they are
found beside this module rather than relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"

# Shipped model name -> its folder. Names have no "/", so they never shadow a Hub id (owner/name).
SHIPPED_MODELS: dict[str, Path] = {
    # The default: remamber-tiny-shapes with a presence head, fine-tuned on generalized scenes
    # (phrases that name no object, one, or several).
    "remamber-tiny-gshapes": PRETRAINED_DIR / "remamber-tiny-gshapes",
    # The default before it (single-target scenes only, no presence head); kept so that scripts
    # naming it keep their outputs.
    "remamber-tiny-shapes": PRETRAINED_DIR / "remamber-tiny-shapes",
}
DEFAULT_MODEL = "remamber-tiny-gshapes"  # what `load_pretrained()` and the CLI without --weights load


def shipped_folder(name: str) -> Path | None:
    """The folder of the shipped model ``name``, or None when no such model is shipped or its
    folder is missing (an installation without package data)."""
    folder = SHIPPED_MODELS.get(name)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def is_shipped_model(folder: str | Path) -> bool:
    """Whether ``folder`` is one of the shipped models' folders (by path or through a link): the
    synthetic-shapes demo models."""
    return any(Path(folder).resolve() == shipped.resolve() for shipped in SHIPPED_MODELS.values())
