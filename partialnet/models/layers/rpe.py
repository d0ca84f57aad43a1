"""Image relative position encoding (iRPE "bias" mode on keys, Euclidean method).

A learnable per-head scalar is added to the attention logit of every (query, key) pair,
looked up by the bucket of their Euclidean distance on the H x W grid. The buckets are
iRPE's piecewise index (Wu et al., "Rethinking and Improving Relative Position Encoding
for Vision Transformer", ICCV 2021) with ratio ``a``: the distance ``d`` is rounded, and

    bucket(d) = d                                                    if d <= a
    bucket(d) = min(round(a + ln(d / a) / ln(8) * a), 2 a)           otherwise

so distances are exact up to ``a`` and log-compressed up to ``8 a``. With the default
``a = 20`` there are 41 buckets (0..40). iRPE itself stores these in a table of
``2 * 2a + 1 = 81`` columns at offset ``2a`` (its index is signed); distances are never
negative, so its first 40 columns are never read and this table keeps only the 41 used
ones (:mod:`partialnet.models.convert` slices iRPE tables accordingly).

State dicts written before this bucket function (a table of 81 columns indexed by
``min(round(d), 80)``) still load: :class:`EuclideanRPE` converts them on load, exactly for
every distance up to ``a`` (all pairs of stage-4 maps up to 15 x 15) and with the mean of
the old entries a bucket covers beyond that.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from partialnet.errors import UserError

__all__ = ["DEFAULT_NUM_BUCKETS", "euclidean_bucket_index", "distance_bucket", "legacy_table_to_buckets",
           "upgrade_legacy_table", "EuclideanRPE"]

DEFAULT_NUM_BUCKETS = 41
_LEGACY_NUM_BUCKETS = 81  # the earlier ``min(round(d), 80)`` table


def _ratio(num_buckets: int) -> int:
    """iRPE's ratio ``a`` for a table of ``num_buckets = 2a + 1`` columns."""
    if int(num_buckets) != num_buckets or num_buckets < 3 or num_buckets % 2 == 0:
        raise UserError(f"num_buckets {num_buckets!r} is not 2a + 1 for an integer ratio a >= 1; use 41 (a = 20)")
    return (int(num_buckets) - 1) // 2


def distance_bucket(rounded: torch.Tensor, num_buckets: int = DEFAULT_NUM_BUCKETS) -> torch.Tensor:
    """Bucket of each rounded (integer-valued, non-negative) distance; long tensor of the same shape."""
    alpha = float(_ratio(num_buckets))
    d = rounded.float()
    far = alpha + torch.log(d.clamp(min=alpha) / alpha) / math.log(8.0) * alpha
    far = far.round().clamp(max=2 * alpha)
    return torch.where(d <= alpha, d, far).long()


def euclidean_bucket_index(
    height: int, width: int, num_buckets: int = DEFAULT_NUM_BUCKETS, device=None
) -> torch.Tensor:
    """Bucket index of every (query, key) pair of an ``height x width`` grid, row-major tokens.

    Returns a long tensor of shape (H*W, H*W) with entries in ``[0, num_buckets)``.
    Squared distances are integers, so no distance falls exactly on .5 (no rounding ties).
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    pos = torch.stack((ys.flatten(), xs.flatten()), dim=-1).float()  # (N, 2)
    dist = (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1).sqrt()
    return distance_bucket(dist.round(), num_buckets)


def legacy_table_to_buckets(old: torch.Tensor, num_buckets: int = DEFAULT_NUM_BUCKETS) -> torch.Tensor:
    """Convert an ``[heads, 81]`` table indexed by ``min(round(d), 80)`` to this bucket layout.

    Bucket ``b <= a`` takes the old entry of distance ``b`` (exact for every distance up to
    ``a``); a log-compressed bucket takes the mean of the old entries of the distances above
    ``a`` that it covers (up to ``8a``; bucket ``a`` itself also covers ``a + 1``).
    """
    alpha = _ratio(num_buckets)
    new = old.new_zeros(old.shape[0], num_buckets)
    new[:, : alpha + 1] = old[:, : alpha + 1]
    far = torch.arange(alpha + 1, 8 * alpha + 1, device=old.device)
    far_buckets = distance_bucket(far, num_buckets)
    for b in range(alpha + 1, num_buckets):
        new[:, b] = old[:, far[far_buckets == b].clamp(max=old.shape[1] - 1)].mean(dim=1)
    return new


def upgrade_legacy_table(key: str, table: torch.Tensor) -> torch.Tensor:
    """``table`` itself, or, when it has the earlier 81-bucket layout, its conversion (with a warning)."""
    if table.ndim != 2 or table.shape[1] != _LEGACY_NUM_BUCKETS:
        return table
    warnings.warn(
        f"{key}: converted a table of the earlier 81-bucket layout (min(round(d), 80)) to the iRPE "
        f"buckets; outputs are unchanged for distances up to 20 (stage-4 maps up to 15x15)",
        stacklevel=3,
    )
    return legacy_table_to_buckets(table)


class EuclideanRPE(nn.Module):
    """Per-head bias table ``bias_table`` [num_heads, num_buckets] (zero init).

    ``forward(H, W)`` returns the bias (num_heads, H*W, H*W) to add to the attention logits.
    The bucket index is computed for any H x W and cached per (H, W, device) in this
    instance (not in the state dict).
    """

    def __init__(self, num_heads: int, num_buckets: int = DEFAULT_NUM_BUCKETS):
        super().__init__()
        _ratio(num_buckets)
        self.num_heads = num_heads
        self.num_buckets = int(num_buckets)
        self.bias_table = nn.Parameter(torch.zeros(num_heads, self.num_buckets))
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "bias_table"
        if key in state_dict and self.num_buckets == DEFAULT_NUM_BUCKETS:
            state_dict[key] = upgrade_legacy_table(key, state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

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
