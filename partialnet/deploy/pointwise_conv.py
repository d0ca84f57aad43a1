"""A 1x1 convolution that runs as one GEMM on a channels_last map at inference on CPU.

For a channels_last (B, C, H, W) map, ``permute(0, 2, 3, 1)`` is the contiguous (B, H, W, C)
token matrix, so a 1x1, stride-1, ungrouped conv is exactly ``F.linear`` on that view, with no
copy. At batch 1 on CPU the BLAS GEMM behind ``F.linear`` beats PyTorch's conv kernels for
these shapes (measured at 2 threads: 1.15-1.24x per layer on PartialNet-T0's stages); from a
few images on, the conv's own kernel is as fast or faster (0.85-1.0x), so only batch-1 input
takes the GEMM (``bench/runtimes.py`` measures the fused models). Everything else (autograd,
CUDA, NCHW input, tracing for ONNX export, ``torch.compile``) takes ``nn.Conv2d``'s own forward,
so exported graphs keep a Conv node and the state dict is a Conv2d's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["PointwiseConv2d", "is_pointwise"]


def is_pointwise(conv: nn.Conv2d) -> bool:
    """True for a 1x1, stride-1, unpadded, ungrouped, undilated conv (a per-pixel matrix product)."""
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and not isinstance(conv.padding, str)
            and tuple(conv.padding) == (0, 0))


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, 1)`` whose no-grad CPU forward on one channels_last image is ``F.linear``."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.shape[0] == 1 and x.is_cpu and not torch.is_grad_enabled()
                and x.is_contiguous(memory_format=torch.channels_last)
                and not is_capturing_graph()):
            weight = self.weight.reshape(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)
