"""Inference-only rewrites of a model, swapped in once by :func:`fuse` (as ultralytics' ``fuse()``).

The model classes in :mod:`remamber.modeling` are plain PyTorch: that is what training and the
ONNX export run. For CPU inference, :func:`fuse` replaces some of their modules, in place, by
faster ones that compute the same function (up to rounding):

- each ``Conv2d 3x3 -> BatchNorm2d -> ReLU`` run of an ``nn.Sequential`` (the decoder's neck)
  becomes one :class:`ConvBNReLU`: the BatchNorm's running statistics folded into a per-channel
  scale and shift, applied with the ReLU by Winograd's output kernel
  (:mod:`remamber.ops.winograd`) where it pays, else folded into the convolution's weights;
- each :class:`~remamber.modeling.ss2d.SS2D` becomes a :class:`FusedSS2D` (same parameters, same
  state-dict names), whose scan is the one-kernel cross-scan, selective scan and cross-merge of
  :mod:`remamber.ops.ss2d_cpu`.

Everything derived from the weights (the Winograd filters, the folded scale and shift, ``A``) is
made once, at fuse time: a fused model is inference-only and its weights are frozen. Changing
the original weights after fusing is not seen by the fused modules; unfuse, change, fuse again.
A fused model refuses what needs the unfused one: ``train()``, calls that want gradients, and
``state_dict()`` (so saving it): :func:`unfuse` gives the original modules back, with the same
parameters and names, so that checkpoints load into and save from the unfused model unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from remamber.modeling.ss2d import SS2D
from remamber.ops import numba_utils, ss2d_cpu, winograd
from remamber.ops.selective_scan import current_backend

__all__ = ["ConvBNReLU", "FusedSS2D", "FusedModelError", "fuse", "fused", "is_fused", "unfuse"]


class FusedModelError(RuntimeError):
    """A fused (inference-only) model was asked to train, compute gradients or be saved."""

    @classmethod
    def cannot(cls, what: str) -> FusedModelError:
        """The error for a fused model asked to do ``what``."""
        return cls(
            f"this model is fused for inference (remamber.inference.fuse) and cannot {what}; "
            "call unfuse() on it first (or fuse a copy)"
        )


class _InferenceOnly:
    """Refusals shared by the fused modules (mixed in before ``nn.Module``)."""

    def train(self, mode: bool = True):  # type: ignore[override]
        if mode:
            raise FusedModelError.cannot("train")
        return super().train(mode)  # type: ignore[misc]

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # state_dict(), so every save
        raise FusedModelError.cannot("be saved")

    # load_state_dict() would update the unfused tensors but not what fuse() derived from them
    # (folded filters, A), and strict=False would hide it: refused too.
    def _load_from_state_dict(self, *args, **kwargs):
        raise FusedModelError.cannot("load weights")


class ConvBNReLU(_InferenceOnly, nn.Module):
    """``relu(bn(conv(x)))`` of a 3x3 convolution (stride 1, zero padding 1) and an eval-mode
    BatchNorm, with the BatchNorm folded in. Calls that :func:`remamber.ops.winograd.use_winograd`
    accepts (float32 CPU maps of at least ``MIN_PIXELS``) run Winograd with the scale, shift and
    ReLU applied by its output kernel; the others (small maps, other devices, tracing, autocast)
    one convolution with the BatchNorm folded into its weights."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module) -> None:
        super().__init__()
        with torch.no_grad():  # new tensors: later changes to conv or bn do not reach them
            weight = conv.weight.detach()
            bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            self.register_buffer("scale", scale)  # Winograd's output kernel applies scale and bias
            self.register_buffer("folded_bias", bias * scale + (bn.bias.detach() - bn.running_mean * scale))
            self.register_buffer("folded_weight", weight * scale[:, None, None, None])
            channels_ok = weight.shape[0] * weight.shape[1] >= winograd.MIN_CHANNEL_PRODUCT
            cpu_float = weight.device.type == "cpu" and weight.dtype == torch.float32
            # None where Winograd can never be taken: too few channels, no numba, another device
            filters = winograd.winograd_filters(weight) if channels_ok and cpu_float and numba_utils.AVAILABLE else None
        self.register_buffer("filters", filters)
        self._unfused = (conv, bn, act)  # a plain tuple: not submodules, not in state_dict

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise FusedModelError.cannot("compute gradients")
        if self.filters is not None and winograd.use_winograd(x, self.folded_weight):
            # the filters are the unscaled weight's: the BatchNorm's scale is applied to the output
            affine = (self.scale, self.folded_bias)
            return winograd.conv3x3_winograd(x, self.folded_weight, None, self.filters, affine=affine, relu=True)
        return F.relu(F.conv2d(x, self.folded_weight, self.folded_bias, padding=1))


class FusedSS2D(_InferenceOnly, SS2D):
    """An :class:`SS2D` (the same object, its class swapped by :func:`fuse`) whose scan without text
    runs :func:`remamber.ops.ss2d_cpu.cross_selective_scan`, ``A = -exp(A_logs)`` made once.

    Calls the kernel does not take run SS2D's own scan: with text tokens (the in-context
    fusion), off the CPU or traced, and small calls until the kernel is in the process
    (:func:`remamber.ops.ss2d_cpu.takes`: its one-time compilation would cost more than it saves).
    """

    def forward(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise FusedModelError.cannot("compute gradients (run it under torch.inference_mode() or torch.no_grad())")
        return super().forward(x, text, text_mask)

    def scan(self, x: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None) -> Tensor:
        if text is not None or not ss2d_cpu.takes(x, self.d_state):
            return super().scan(x, text, text_mask)
        weights = (self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias)
        return self.out_norm(ss2d_cpu.cross_selective_scan(x, *weights, self.fused_A, self.Ds).to(x.dtype))


def _conv_bn_relu(seq: nn.Sequential, i: int) -> bool:
    """Whether ``seq[i : i + 3]`` is a run :class:`ConvBNReLU` computes, with no hooks to keep."""
    if i + 3 > len(seq):
        return False
    conv, bn, act = seq[i], seq[i + 1], seq[i + 2]
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(bn, nn.BatchNorm2d)
        and bn.affine
        and bn.track_running_stats
        and type(act) is nn.ReLU
        and not any(m._forward_hooks or m._forward_pre_hooks for m in (conv, bn, act))
    )


def fuse(model: nn.Module) -> nn.Module:
    """Swap the inference-only modules into ``model`` (in place) and return it; see the module
    docstring. ``model`` must be in eval mode (the BatchNorms' running statistics are folded).
    Idempotent: a fused model is returned as it is. Fuse on the device the model will run on:
    the Winograd filters and the SS2D kernel are taken for a CPU model only."""
    if model.training:
        raise ValueError("fuse() needs a model in eval mode: call model.eval() first")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        i = 0
        while i < len(seq):
            if _conv_bn_relu(seq, i):
                seq[i] = ConvBNReLU(seq[i], seq[i + 1], seq[i + 2]).eval()
                seq[i + 1], seq[i + 2] = nn.Identity().eval(), nn.Identity().eval()  # indices kept
                i += 3
            else:
                i += 1
    # the kernel choice, once: numba present, the scan backend left on auto, the model on the CPU
    if numba_utils.AVAILABLE and current_backend() == "auto":
        for m in model.modules():
            if type(m) is SS2D and m.A_logs.device.type == "cpu":
                m.__class__ = FusedSS2D
                m.register_buffer("fused_A", -torch.exp(m.A_logs.detach().float()), persistent=False)
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Give the modules :func:`fuse` replaced back (in place; the same parameter objects) and
    return ``model``, which can then train and be saved again. A model that is not fused is
    returned as it is."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i, m in enumerate(list(seq)):
            if isinstance(m, ConvBNReLU):
                # onto the device the model went to since (.to() moved the fused buffers only)
                seq[i], seq[i + 1], seq[i + 2] = (u.to(m.folded_weight.device) for u in m._unfused)
    for m in model.modules():
        if type(m) is FusedSS2D:
            del m.fused_A
            m.__class__ = SS2D
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether any module of ``model`` is one :func:`fuse` swapped in."""
    return any(isinstance(m, _InferenceOnly) for m in model.modules())


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` as saved, fused or not (a fused conv holds its unfused modules
    outside ``parameters()``)."""
    held = (p for m in model.modules() for u in getattr(m, "_unfused", ()) for p in u.parameters())
    return sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in held)


@contextlib.contextmanager
def fused(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` fused inside the block, and given back unfused after it when it came unfused
    (what a caller that trains the model afterwards, such as the trainer's validation, needs)."""
    if is_fused(model):
        yield model
        return
    try:
        fuse(model)  # inside the try: a fuse that fails part-way is undone too
        yield model
    finally:
        unfuse(model)
