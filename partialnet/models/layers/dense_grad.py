"""``dense_grad(t)``: identity in the forward pass; makes the gradient flowing back into ``t`` dense.

Concatenating the two halves of a split (``torch.cat((y_p, y_u), dim=1)``) hands each half a
channel *slice* of the output gradient. On a channels_last batch such a slice is neither
NCHW- nor NHWC-contiguous, and CPU kernels that receive it (batch-norm backward above all) fall
back to a generic path several times slower than their dense one. Wrapping the tensor that goes
into the concatenation in :func:`dense_grad` copies that gradient slice once into a dense tensor
of the slice's own layout (channels_last when the slice came from a channels_last tensor).
The forward value and the gradient's numbers are unchanged.
"""
from __future__ import annotations

import torch

__all__ = ["dense_grad", "dense"]


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is contiguous in NCHW or NHWC order, else a dense copy in the order its strides follow."""
    if t.dim() != 4 or t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    fmt = torch.channels_last if t.stride(1) == 1 else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


class _DenseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return dense(grad)


def dense_grad(t: torch.Tensor) -> torch.Tensor:
    """``t`` (same values); in backward, its incoming gradient is made dense (see the module docstring)."""
    if t.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _DenseGrad.apply(t)
    return t
