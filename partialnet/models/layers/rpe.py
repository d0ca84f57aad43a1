"""Image relative position encoding (iRPE "bias" mode on keys, Euclidean method).

A learnable per-head scalar is added to the attention logit of every (query, key) pair,
looked up by the bucket of their Euclidean distance on the H x W grid: the distance
rounded to the nearest integer, clamped to the last bucket (81 buckets by default, so
distances >= 80 share one bucket).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["euclidean_bucket_index", "EuclideanRPE"]


def euclidean_bucket_index(height: int, width: int, num_buckets: int = 81, device=None) -> torch.Tensor:
    """Bucket index of every (query, key) pair of an ``height x width`` grid, row-major tokens.

    Returns a long tensor of shape (H*W, H*W) with entries ``min(round(dist), num_buckets - 1)``.
    Squared distances are integers, so no distance falls exactly on .5 (no rounding ties).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    pos = torch.stack((ys.flatten(), xs.flatten()), dim=-1).float()  # (N, 2)
    dist = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1).sqrt()
    return dist.round().long().clamp_(max=num_buckets - 1)


class EuclideanRPE(nn.Module):
    """Per-head bias table ``bias_table`` [num_heads, num_buckets] (zero init).

    ``forward(H, W)`` returns the bias (num_heads, H*W, H*W) to add to the attention logits.
    The bucket index is computed for any H x W and cached per (H, W, device) in this
    instance (not in the state dict).
    """

    def __init__(self, num_heads: int, num_buckets: int = 81):
        super().__init__()
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.bias_table = nn.Parameter(torch.zeros(num_heads, num_buckets))
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def bucket_index(self, height: int, width: int) -> torch.Tensor:
        device = self.bias_table.device
        key = (int(height), int(width), str(device))
        index = self._index_cache.get(key)
        if index is None:
            with torch.no_grad():
                index = euclidean_bucket_index(height, width, self.num_buckets, device)
            self._index_cache[key] = index
        return index

    def forward(self, height: int, width: int) -> torch.Tensor:
        return self.bias_table[:, self.bucket_index(height, width)]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, num_buckets={self.num_buckets}"
