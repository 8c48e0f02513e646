"""Numerical building blocks shared by the model and the losses: the activation modules by name, the action mask,
and a fast ``log_softmax``.

``log_softmax`` exists for speed on CPU. PyTorch's CPU softmax kernels vectorise along the softmax dimension; with
AVX-512 (16 floats a register) a dimension shorter than 16 takes a slow path, several times slower than the same
computation written out for SMAX's 9 actions (docs/BENCHMARKS.md, "Figures behind code choices"). PPO's loss takes three
log-softmaxes per gradient step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["activation", "log_softmax", "mask_logits"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    """A new activation module by its ``model.activation`` name (``gelu``, ``relu`` or ``silu``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is unknown; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mask_logits(logits: Tensor, action_mask: Tensor | None) -> Tensor:
    """``logits`` (..., A) with the unavailable actions (``action_mask == 0``, same shape) at the dtype's finfo.min.

    finfo.min, not -inf: a row with every action masked stays finite (uniform) instead of NaN.
    """
    if action_mask is None:
        return logits
    return logits.masked_fill(action_mask == 0, torch.finfo(logits.dtype).min)


_NATIVE_FROM = 16
"""Last-dimension size from which PyTorch's own CPU kernel is the faster one (AVX-512 float32 lanes)."""


def log_softmax(x: Tensor) -> Tensor:
    """``log_softmax`` over the last dimension, the same values (up to rounding) and gradient.

    Rows whose entries are all ``finfo.min`` (every action masked) give the uniform ``-log(A)``, as PyTorch's.
    """
    if x.device.type != "cpu" or x.shape[-1] >= _NATIVE_FROM:
        return F.log_softmax(x, dim=-1)
    # The shift only guards exp() from overflow: the result does not depend on it, so it needs no gradient.
    shifted = x - x.detach().amax(dim=-1, keepdim=True)
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
