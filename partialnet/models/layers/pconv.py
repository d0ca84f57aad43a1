"""Channel split shared by every partial block, and FasterNet's partial convolution (PConv).

Split convention used everywhere in partialnet: the input X (C channels) is split along
channels as ``[X_p | X_u]``, the **conv part first**. ``X_p`` has
``c_p = floor(ratio * C + 0.5)`` channels (``dim_conv``) and gets the 3x3 conv; ``X_u``
has ``C - c_p`` channels (``dim_untouched``) and gets identity (PConv) or attention
(PAT_ch / PAT_sf). Both sides must keep at least one channel.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["conv_channels", "writes_in_place", "PartialSplit", "PartialConv"]


def conv_channels(dim: int, ratio: float) -> int:
    """Number of conv channels ``c_p = floor(ratio * dim + 0.5)`` of a ``dim``-wide split.

    Raises :class:`UserError` (a ``ValueError``) when ``ratio`` is not a number or leaves
    fewer than one channel on either side of the split.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not math.isfinite(ratio):
        raise UserError(f"split ratio {ratio!r} is not a number; pick a ratio in (0, 1), e.g. 0.25")
    if int(dim) < 2:
        raise UserError(f"width {dim} cannot be split into a conv part and an untouched part; use at least 2 channels")
    dim = int(dim)
    c_p = math.floor(ratio * dim + 0.5)
    if not 0.0 < ratio < 1.0 or not 1 <= c_p <= dim - 1:
        got = f"{c_p} conv channels" if c_p < 1 else f"{dim - c_p} untouched channels"
        raise UserError(
            f"split ratio {ratio:g} is not realisable at width {dim}: it gives {got}; "
            f"pick a ratio in [{1 / dim:.4g}, {(dim - 1) / dim:.4g}]"
        )
    return c_p


def writes_in_place(forward_type: str) -> bool:
    """Whether a module in the ``'slicing'`` form may write into its tensors in place: only eagerly
    and without autograd (the in-place write would break the backward). Under a graph capture the
    out-of-place form is traced: a compiler plans its own buffers, and inductor's weight freezing
    for ``torch.compile`` fails on a slice write that feeds a conv."""
    return forward_type == "slicing" and not torch.is_grad_enabled() and not is_capturing_graph()


class PartialSplit(nn.Module):
    """Base of the searchable split modules (PConv, PAT_ch, PAT_sf).

    Exposes ``dim``, ``ratio``, ``dim_conv`` (c_p, the first channels) and
    ``dim_untouched`` (the rest).
    """

    def __init__(self, dim: int, ratio: float = 0.25):
        super().__init__()
        self.dim_conv = conv_channels(dim, ratio)
        self.dim = int(dim)
        self.ratio = float(ratio)
        self.dim_untouched = self.dim - self.dim_conv

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_p, X_u)``: the first ``dim_conv`` channels and the rest."""
        return torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ratio={self.ratio:g}, dim_conv={self.dim_conv}, dim_untouched={self.dim_untouched}"


class PartialConv(PartialSplit):
    """PConv (FasterNet): 3x3 conv (no bias, stride 1) on the first c_p channels, identity on the rest.

    ``forward_type='split_cat'`` (training, export) splits, convolves and concatenates;
    ``'slicing'`` (inference) clones the input and overwrites its first c_p channels, so
    the caller's tensor (the block's shortcut) is never modified. Both give equal outputs.
    The slicing form runs only where :func:`writes_in_place` allows it (eager, no autograd), else
    as split_cat.
    """

    def __init__(self, dim: int, ratio: float = 0.25, forward_type: str = "split_cat"):
        super().__init__(dim, ratio)
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, 1, bias=False)
        self.forward_type = forward_type

    @property
    def forward_type(self) -> str:
        return self._forward_type

    @forward_type.setter
    def forward_type(self, value: str) -> None:
        if value not in ("split_cat", "slicing"):
            raise UserError(f"PConv forward_type {value!r} is unknown; use 'split_cat' or 'slicing'")
        self._forward_type = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if writes_in_place(self._forward_type):
            x = x.clone()  # keep the caller's tensor (the residual shortcut) intact
            x[:, : self.dim_conv] = self.conv(x[:, : self.dim_conv])
            return x
        x_p, x_u = self.split(x)
        return torch.cat((self.conv(x_p), x_u), dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, forward_type={self._forward_type!r}"
