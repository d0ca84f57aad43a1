"""A 1x1 convolution that runs as one GEMM on a channels_last map on the CPU where that is faster.

For a channels_last (B, C, H, W) map, ``permute(0, 2, 3, 1)`` is the contiguous (B, H, W, C)
token matrix, so a 1x1, stride-1, ungrouped conv is exactly ``F.linear`` on that view, with no
copy (and its backward is the two matrix products of a Linear). PyTorch's CPU conv kernels lose
to that GEMM in two cases, measured on 2 threads:

* **small maps** (H*W <= 49: the last stages, the head after pooling, any stage of a 32-px
  input), at any batch, with or without autograd: forward + backward 1.6-2x faster on 2x2 maps,
  4x on 1x1 maps (batch 256), forward 1.0-1.65x on 7x7 maps and 2.8x on the 1x1 head (batch 32);
* **one image at inference** (no autograd): 1.15-1.24x per layer on PartialNet-T0's stages.

Larger maps with several images keep the conv kernel: there the GEMM measured 0.9-1.25x per layer
alone and nothing for whole models (PartialNet-T0's training step at 224 px with the GEMM on 14x14
maps too, or on 14x14 and 28x28: 0.99-1.01x, steps alternating). NCHW input, CUDA and the
exporting captures (TorchScript tracing for the ONNX export, ``torch.export``) take
``nn.Conv2d``'s own forward, so exported graphs keep a Conv node; the state dict is a Conv2d's.
``torch.compile`` traces the same choice as eager mode: with frozen weights inductor runs the
GEMM as a prepacked MKL product (fused PartialNet-T0 at batch 1 measured 3-4 % faster than with
the conv; fused FasterNet-T0 unchanged).
``bench/runtimes.py`` and ``bench/train_step.py`` measure the models that use it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.utils.graph_capture import is_exporting_graph

__all__ = ["PointwiseConv2d", "is_pointwise"]

SMALL_MAP = 49  # maps of at most this many positions (7x7) take the GEMM at any batch size


def is_pointwise(conv: nn.Conv2d) -> bool:
    """True for a 1x1, stride-1, unpadded, ungrouped, undilated conv (a per-pixel matrix product)."""
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0))


def _takes_gemm(x: torch.Tensor) -> bool:
    if x.dim() != 4 or not x.is_cpu or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if x.shape[2] * x.shape[3] > SMALL_MAP and (x.shape[0] != 1 or torch.is_grad_enabled()):
        return False
    return not is_exporting_graph()  # eager mode and torch.compile, not an exported graph


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 1)`` whose CPU forward on a small or single channels_last map is ``F.linear``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def linear(self, tokens: torch.Tensor) -> torch.Tensor:
        """This conv on a token matrix whose last dimension is the input channels: ``F.linear``."""
        return F.linear(tokens, self.weight.flatten(1), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _takes_gemm(x):
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)
