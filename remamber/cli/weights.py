"""Which model a command uses: ``--weights`` or the shipped default."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from remamber.errors import WeightsError

# Shipped default model folder (inside the source tree; see weights/README.md).
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "remamber-tiny-shapes"


def default_weights() -> Optional[Path]:
    """The shipped default model folder, if this installation has it."""
    return DEFAULT_WEIGHTS if (DEFAULT_WEIGHTS / "config.json").is_file() else None


def load_model(weights: Optional[str], device):
    """Load the model named by ``--weights`` (or the default) onto ``device``."""
    from remamber.hub import load_pretrained

    if weights is None:
        found = default_weights()
        if found is None:
            raise WeightsError(
                "no --weights given and no default model is installed: pass --weights with a model folder "
                "or a Hub id (owner/name); train one with `remamber train`"
            )
        weights = str(found)
    return load_pretrained(weights, device=str(device))
