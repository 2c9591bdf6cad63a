"""remamber: referring image segmentation with ReMamber (VMamba + Mamba Twister).

The public API::

    from PIL import Image
    from remamber import Predictor, load_pretrained

    predictor = Predictor(load_pretrained())  # the shipped default model; or a folder, name or Hub id
    mask = predictor.predict(Image.open("examples/shapes-3.png"), "the big yellow object").mask

Its names are imported on first use (PEP 562), so that ``import remamber`` and ``remamber --help``
do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY = {
    "Predictor": "remamber.inference.predictor",
    "load_pretrained": "remamber.hub.folders",
    "build_model": "remamber.modeling.presets",
    "ReMamber": "remamber.modeling.remamber",
    "ModelConfig": "remamber.modeling.config",
}
# Written out (not built from _LAZY) so that static tools read it; tests/test_wheel.py checks they agree.
__all__ = ["Predictor", "load_pretrained", "build_model", "ReMamber", "ModelConfig", "__version__"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from remamber.hub.folders import load_pretrained
    from remamber.inference.predictor import Predictor
    from remamber.modeling.config import ModelConfig
    from remamber.modeling.presets import build_model
    from remamber.modeling.remamber import ReMamber


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it in the module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
