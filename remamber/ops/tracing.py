"""Whether the code is being traced or compiled, so that fast paths which leave torch or
specialise on shapes stand aside."""

from __future__ import annotations

import torch


def traced() -> bool:
    """True under ``torch.jit.trace``, an ONNX export or ``torch.compile``."""
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or bool(compiling and compiling())
