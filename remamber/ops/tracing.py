"""Whether the code is being traced or compiled, so that fast paths which leave torch or
specialise on shapes stand aside."""

from __future__ import annotations

import sys

import torch


def traced() -> bool:
    """True under ``torch.jit.trace``, an ONNX export or ``torch.compile``."""
    onnx = sys.modules.get("torch.onnx")  # not imported yet: no export running (and importing it is slow)
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return torch.jit.is_tracing() or (onnx is not None and onnx.is_in_onnx_export()) or bool(compiling and compiling())
