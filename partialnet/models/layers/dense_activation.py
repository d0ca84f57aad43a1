"""Elementwise activations on a channels_last map, run over its dense (B, H, W, C) view.

PyTorch's CPU GELU (the exact, erf form) takes oneDNN's kernel only for a float32/bfloat16 tensor
that is contiguous in the default (NCHW) sense; a channels_last map, dense in memory but with
other strides, falls back to a slower generic kernel (measured on 2 threads: forward + backward
of a (32, 256, 14, 14) map 5.3 -> 3.1 ms, a batch-1 (1, 64, 56, 56) map 270-360 -> 186 us). For a channels_last map,
``x.permute(0, 2, 3, 1)`` is that same memory with default-contiguous strides, so the activation
runs on it and the result is permuted back: the values are the activation's (oneDNN's GELU
differs from the generic kernel by float rounding, under 1e-6), the output stays channels_last
and autograd's backward runs on the dense view as well. Whole models, 2 threads, A/B in one
process: the training step of PartialNet-T0 (batch 32, 224 px) 1.02-1.06x faster over four runs
(``bench/train_step.py``; neutral at the demo's 32 px), fused inference at batch 32 1.11x
(FasterNet-T0 1.16x).

One image at inference keeps the generic kernel: with the dense view, fused PartialNet-T0 at
batch 1 was 0.3-0.6 ms slower per forward in A/B runs in one process, although its GELU calls
themselves were faster (1.16 vs 1.35 ms per forward, profiler, 1 thread); the other ops slowed
down, for a reason not pinned down. The fused MLP's one-image form, which works on the (H*W, C)
token matrix, runs its activation on the channels_last map view of that matrix for the same
reason (fused PartialNet-T0, batch 1: 13.88 ms median with the generic kernel, 14.30 ms with
oneDNN's on the matrix, 480 interleaved forwards each).

Only on the CPU in eager mode: a graph capture (ONNX export, ``torch.compile``) sees the plain
call, so exported graphs gain no transposes and a compiler fuses the activation itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["dense_activation"]


def _dense_view(x: torch.Tensor) -> torch.Tensor | None:
    """``x.permute(0, 2, 3, 1)`` when that is x's memory in default-contiguous order and x is not
    already default-contiguous (a CPU channels_last map larger than 1x1), and x is not one image
    at inference; else None."""
    if x.dim() != 4 or not x.is_cpu or x.is_contiguous():
        return None
    if x.shape[0] == 1 and not torch.is_grad_enabled():
        return None
    if not x.is_contiguous(memory_format=torch.channels_last) or is_capturing_graph():
        return None
    return x.permute(0, 2, 3, 1)


def dense_activation(act: nn.Module, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``act(x)`` for an elementwise ``act`` (GELU, ReLU, ...), run on the dense view of a
    channels_last CPU map. With ``inplace=True`` a GELU or ReLU overwrites x and x is returned
    (no autograd through it); any other activation returns a new tensor."""
    view = _dense_view(x)
    target = x if view is None else view
    if inplace and type(act) is nn.GELU:
        torch.ops.aten.gelu_(target, approximate=act.approximate)
        return x
    if inplace and type(act) is nn.ReLU:
        torch.relu_(target)
        return x
    out = act(target)
    return out if view is None else out.permute(0, 3, 1, 2)
