"""``act(norm(h))`` for the MLP's BatchNorm + exact GELU in training, as one fused CPU pass.

In training, ``nn.BatchNorm2d`` followed by ``nn.GELU`` reads and writes the MLP's widest map
(2C channels) five times in the forward pass (statistics; normalise: read + write; GELU: read +
write) and eight times in the backward pass, and keeps both h and the normalised map for
backward. On a channels_last CPU map, with the C++ kernels built (:mod:`partialnet.kernels`):

* forward: the batch statistics (PyTorch's own ``batch_norm_update_stats``), then one pass
  ``a = gelu(h * s + t)`` with ``s = weight / sqrt(var + eps)``, ``t = bias - mean * s``: three
  reads and writes of the map instead of five;
* backward: one pass computing ``d = ga * gelu'(h * s + t)`` and its column sums ``sum(d)`` and
  ``sum(d * (h - mean))``, one pass turning d into batch norm's input gradient in place: six
  instead of eight; the weight and bias gradients come from those sums. Only h is kept for backward (the normalised map
  is recomputed), and the running statistics are updated as ``nn.BatchNorm2d`` updates them.

The kernel's GELU evaluates erf as a rational function (FMAs and a division, no exp): the
forward values are within 1.5e-6 of the exact GELU (PyTorch's own kernel: 5e-7), gradients agree
with autograd through the modules to float rounding (``tests/test_bn_gelu.py``). Measured on 2
threads, batch 32, forward + backward alone: the stage-1 size of PartialNet-T0 (64 hidden
channels, 56x56) 23 -> 12 ms, the stage-3 size (256, 14x14) 3.9 -> 3.1 ms;
``bench/train_step.py`` prints what it adds to the whole training step.

Only where that is exactly the modules' computation: training mode, a CPU float32 channels_last
map outside autocast, an exact ``nn.BatchNorm2d`` with affine parameters and batch statistics, an
exact ``nn.GELU`` (approximate='none'), no graph capture, and the kernels built. Anything else
returns ``dense_activation(act, norm(h))``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from partialnet.kernels import cpu_kernels
from partialnet.models.layers.dense_activation import dense_activation
from partialnet.models.layers.gated_norm import update_running_stats
from partialnet.models.layers.token_view import batch_tokens
from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["batch_norm_gelu", "takes_fused_kernel"]


def takes_fused_kernel(norm: nn.Module, act: nn.Module, h: torch.Tensor) -> bool:
    """Whether :func:`batch_norm_gelu` runs the fused kernel on ``h``."""
    if not (norm.training and h.is_cpu and h.dtype == torch.float32 and h.dim() == 4):
        return False
    if type(norm) is not nn.BatchNorm2d or not norm.affine or (norm.track_running_stats and norm.running_mean is None):
        return False
    if type(act) is not nn.GELU or act.approximate != "none":
        return False
    if h.shape[0] * h.shape[2] * h.shape[3] < 2 or not h.is_contiguous(memory_format=torch.channels_last):
        return False
    if is_capturing_graph() or torch.is_autocast_enabled("cpu"):
        return False
    return cpu_kernels() is not None


def batch_norm_gelu(norm: nn.Module, act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``act(norm(h))``: the fused kernel where :func:`takes_fused_kernel` allows, else the modules."""
    if not takes_fused_kernel(norm, act, h):
        return dense_activation(act, norm(h))
    a, mean, var = _FusedBatchNormGelu.apply(h, norm.weight, norm.bias, norm.eps)
    if norm.track_running_stats:
        n = h.shape[0] * h.shape[2] * h.shape[3]
        update_running_stats(norm, mean, var * (n / (n - 1)))
    return a


class _FusedBatchNormGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, eps: float):
        t = batch_tokens(h)
        mean, var = torch.batch_norm_update_stats(t, None, None, 0.0)  # biased variance
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        shift = bias - mean * scale
        a = cpu_kernels().affine_gelu(t, scale.contiguous(), shift.contiguous())
        ctx.save_for_backward(h, scale, shift, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        b, c, height, width = h.shape
        return a.view(b, height, width, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ga, *_):
        h, scale, shift, mean, invstd = ctx.saved_tensors
        ga = batch_tokens(ga.contiguous(memory_format=torch.channels_last))
        gh, sums = cpu_kernels().affine_gelu_backward(ga, batch_tokens(h), scale, shift, mean, invstd)
        sum_d, sum_dc = sums.to(h.dtype).unbind(0)  # sum(d), sum(d * (h - mean)) per channel
        b, c, height, width = h.shape
        return gh.view(b, height, width, c).permute(0, 3, 1, 2), sum_dc * invstd, sum_d, None
