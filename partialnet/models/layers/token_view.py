"""The (H*W, C) token matrix of one channels_last image, and the map view of such a matrix.

A (1, C, H, W) map whose channels are the innermost dimension (a channels_last map, or a channel
slice of one) is, in memory, an (H*W, C) matrix: one row per position. On the CPU at batch 1 an
eager forward pays a fixed cost per operator call (on a 2-core AMD EPYC VM, 1.6 us for the
smallest add, 3-10 us for the small statistic and gate products), which for a small network is
as much as its arithmetic; working on that matrix, a 1x1 conv is one ``F.linear``
and a per-channel statistic one matrix-vector product, without the permute/reshape calls that
go back and forth between the two views. The fused inference modules of :mod:`partialnet.deploy`
and the SRM statistics use it for one image (``bench/runtimes.py`` measures the effect).

Both functions return views (no copy). :func:`token_matrix` returns None where the view does not
exist, and under a graph capture (ONNX export, ``torch.compile``), which must see the plain ops.
"""
from __future__ import annotations

import torch

from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["token_matrix", "token_map", "batch_tokens"]


def token_matrix(x: torch.Tensor) -> torch.Tensor | None:
    """The (H*W, C) view of a (1, C, H, W) map whose channels are innermost and whose positions
    follow each other row by row at a fixed stride; None for any other tensor."""
    if x.dim() != 4 or x.shape[0] != 1 or (x.stride(1) != 1 and x.shape[1] > 1):
        return None
    c, h, w = x.shape[1:]
    if w > 1:  # the stride from one position to the next; a size-1 dimension's stride is arbitrary
        row = x.stride(3)
        if h > 1 and x.stride(2) != row * w:
            return None
    else:
        row = x.stride(2) if h > 1 else c
    if row < c or is_capturing_graph():
        return None
    return x.as_strided((h * w, c), (row, 1), x.storage_offset())


def token_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (1, C, H, W) channels_last view of an (H*W, C) token matrix with unit column stride."""
    n, c = tokens.shape
    row = tokens.stride(0)
    if n != height * width or tokens.stride(1) != 1 or row < c:
        raise ValueError(f"token_map: a ({n}, {c}) matrix with strides {tokens.stride()} is not an {height}x{width} map")
    return tokens.as_strided((1, c, height, width), (n * row, 1, width * row, row), tokens.storage_offset())


def batch_tokens(x: torch.Tensor) -> torch.Tensor:
    """The (B*H*W, C) matrix that is a channels_last (B, C, H, W) map's memory: one row per position
    of every image (a view; the training kernels of :mod:`partialnet.kernels` work on it)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"batch_tokens: the map with strides {x.stride()} is not channels_last")
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
