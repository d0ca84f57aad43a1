"""PAT_sf: partial conv + global multi-head self-attention with Euclidean RPE (stage 4).

Split convention: ``[X_p | X_u]``, conv part first (see :mod:`.pconv`). The caller adds
the residual (block v2: ``x = x + PAT_sf(x)``). "FLOPs" in this project are MACs; the
attention matmuls are written as plain ``@`` so that fvcore counts them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from partialnet.models.layers.pconv import PartialSplit
from partialnet.models.layers.rpe import DEFAULT_NUM_BUCKETS, EuclideanRPE
from partialnet.utils.graph_capture import is_exporting_graph

__all__ = ["heads_for", "merge_heads", "PATSelf"]


def heads_for(channels: int, num_heads: int) -> int:
    """The largest divisor of ``channels`` that is <= ``num_heads`` (so heads tile the channels).

    E.g. 4 heads requested on C_u = 30 gives 3 heads of 10 channels; a prime C_u gives 1 head.
    """
    for heads in range(min(int(num_heads), int(channels)), 0, -1):
        if channels % heads == 0:
            return heads
    return 1


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) attention outputs as one (B, N, heads*head_dim) token matrix.

    In an exported graph (ONNX) the heads are merged through (B, heads*head_dim, N): OpenVINO's
    CPU plugin (2026.4) miscomputes the direct (B, heads, N, d) -> (B, N, heads, d) -> (B, N, C) form when
    heads == N, e.g. 4 heads on the 2x2 last stage of a 64-px input (relative error 6 %); both forms are
    the same values."""
    b, heads, n, d = out.shape
    if is_exporting_graph():
        return out.transpose(2, 3).reshape(b, heads * d, n).transpose(1, 2)
    return out.transpose(1, 2).reshape(b, n, heads * d)


class PATSelf(PartialSplit):
    """PAT_sf: ``concat(Conv3x3(X_p), MHSA(LayerNorm2d(X_u)))``, conv part first.

    The MHSA is global over all H*W tokens: ``qkv`` Linear (no bias), scale
    ``head_dim ** -0.5``, a learnable per-head bias on the logits indexed by the rounded
    Euclidean query-key distance (``rpe``: iRPE buckets, table [heads, 41]), softmax, attention dropout,
    output projection ``proj`` (with bias) and projection dropout.

    ``num_heads`` is a request: the module uses :func:`heads_for` (the largest divisor of
    ``dim_untouched`` not above it), stored as ``self.num_heads``. For every registered
    variant at r = 1/4 the request of 4 is met exactly.
    """

    def __init__(
        self,
        dim: int,
        ratio: float = 0.25,
        num_heads: int = 4,
        attn_drop: float = 0.1,
        proj_drop: float = 0.1,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
    ):
        super().__init__(dim, ratio)
        c_p, c_u = self.dim_conv, self.dim_untouched
        self.num_heads_requested = num_heads
        self.num_heads = heads_for(c_u, num_heads)
        self.head_dim = c_u // self.num_heads
        self.scale = self.head_dim**-0.5
        self.conv = nn.Conv2d(c_p, c_p, 3, 1, 1, bias=False)
        self.norm = LayerNorm2d(c_u)
        self.qkv = nn.Linear(c_u, 3 * c_u, bias=False)
        self.rpe = EuclideanRPE(self.num_heads, num_buckets)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(c_u, c_u)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention(self, x_u: torch.Tensor) -> torch.Tensor:
        """MHSA(LayerNorm2d(X_u)) on a (B, C_u, H, W) map, returned in the same shape."""
        b, c, h, w = x_u.shape
        n = h * w
        tokens = self.norm(x_u).flatten(2).transpose(1, 2)  # (B, N, C_u)
        qkv = self.qkv(tokens).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim) each
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.rpe(h, w)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = merge_heads(attn @ v)  # (B, N, C_u)
        out = self.proj_drop(self.proj(out))
        return out.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_p, x_u = self.split(x)
        return torch.cat((self.conv(x_p), self.attention(x_u)), dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}"
