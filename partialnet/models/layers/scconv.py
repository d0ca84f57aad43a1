"""SCConv: Spatial and Channel reconstruction Convolution (Li, Wen, He, CVPR 2023).

``SCConv = CRU(SRU(x))`` is a drop-in replacement for a 3x3 conv with ``in = out = dim``
channels (the bottleneck 3x3 of ResNet). Written from the paper's equations (Sec. 2 of the
paper); there is no official code.

SRU (spatial reconstruction unit), paper Eqs. 1-5::

    GN(X) = gamma * (X - mu) / sqrt(sigma^2 + eps) + beta                  (1)
    W_gamma_i = gamma_i / sum_j gamma_j                                      (2)
    W = Gate(Sigmoid(W_gamma * GN(X)))       threshold 0.5                   (3)
    X1 = W1 (x) X,  X2 = W2 (x) X                                            (4)
    X^w1 = X11 (+) X22,  X^w2 = X21 (+) X12,  X^w = [X^w1, X^w2]             (5)

CRU (channel reconstruction unit), paper Eqs. 6-10: split the channels alpha*C / (1-alpha)*C,
squeeze each part with a 1x1 conv by ``r``; upper ``Y1 = GWC_kxk,g(X_up) + PWC1(X_up)``;
lower ``Y2 = [PWC2(X_low), X_low]`` (feature reuse); ``S_m = GAP(Y_m)``,
``beta_1, beta_2 = softmax(S_1, S_2)`` per channel, ``Y = beta_1 Y1 + beta_2 Y2``.

Choices and deviations (the paper leaves these open):

* Gate (Eq. 3): the forward pass is the paper's hard gate, ``W1 = 1[W > 0.5]`` and
  ``W2 = 1 - W1`` (exactly 0/1). The hard step has no gradient, so a straight-through
  estimator lets the gradient of ``W1`` be that of the sigmoid weights ``W`` (and ``-W``'s
  for ``W2``); without it GroupNorm's gamma/beta would never train.
* Eq. 4 gates the block *input* ``X`` (as the paper writes), not ``GN(X)``.
* ``sum_j gamma_j`` is kept away from 0 (``|sum| >= 1e-6``, sign kept) to avoid a division blow-up.
* Odd ``C``: Eq. 5 needs two equal halves, so the middle channel (index ``C // 2``) is not
  cross-reconstructed: it receives ``W1 X + W2 X = X`` unchanged.
* GroupNorm groups: ``gcd(C, gn_groups)`` (``gn_groups=16`` by default), so any width works.
* Channel counts are rounded: ``C_up = round(alpha C)``, squeezed widths ``max(1, C_part // r)``;
  the GWC uses ``gcd(groups, C_up_sq, C)`` groups. No conv has a bias (a BN follows in the host).
* Stride (not in the paper, which only replaces stride-1 3x3s in its text): ``stride > 1``
  applies ``AvgPool2d(stride, ceil_mode=True)`` *before* SRU/CRU. The output size equals a
  3x3 / pad 1 / stride ``s`` conv's (``ceil(H / s)``) and the cost is that of a stride-1
  SCConv at the output resolution, like the strided conv it replaces.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SRU", "CRU", "SCConv"]


class SRU(nn.Module):
    """Spatial reconstruction unit (paper Eqs. 1-5): GroupNorm-gamma gating + cross reconstruction."""

    def __init__(self, dim: int, gn_groups: int = 16, threshold: float = 0.5, eps: float = 1e-5):
        super().__init__()
        self.gn = nn.GroupNorm(math.gcd(dim, gn_groups), dim, eps=eps)
        self.threshold = threshold

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W1, W2): hard 0/1 masks in the forward pass, sigmoid gradient in the backward (STE)."""
        gamma = self.gn.weight
        denom = gamma.sum()
        denom = torch.where(denom >= 0, denom.clamp(min=1e-6), denom.clamp(max=-1e-6))
        w_gamma = (gamma / denom).view(1, -1, 1, 1)  # Eq. 2
        w = torch.sigmoid(w_gamma * self.gn(x))  # Eq. 3 before the gate
        hard = (w > self.threshold).to(w.dtype)
        w1 = w + (hard - w).detach()  # straight-through: value = hard, gradient = dW
        return w1, 1.0 - w1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.gates(x)
        x1, x2 = w1 * x, w2 * x  # Eq. 4
        c, h = x.shape[1], x.shape[1] // 2
        top1, bot1 = x1[:, :h], x1[:, c - h:]
        top2, bot2 = x2[:, :h], x2[:, c - h:]
        parts = [top1 + bot2]  # X^w1 = X11 (+) X22
        if c % 2:  # odd width: the middle channel is passed through (W1 + W2 = 1)
            parts.append(x1[:, h:h + 1] + x2[:, h:h + 1])
        parts.append(top2 + bot1)  # X^w2 = X21 (+) X12
        return torch.cat(parts, dim=1)  # Eq. 5


class CRU(nn.Module):
    """Channel reconstruction unit (paper Eqs. 6-10): split, squeeze, transform, fuse."""

    def __init__(self, dim: int, alpha: float = 0.5, squeeze_radio: int = 2, groups: int = 2,
                 kernel_size: int = 3):
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"CRU alpha must be in (0, 1), got {alpha}")
        if dim < 2:
            raise ValueError(f"CRU needs at least 2 channels, got {dim}")
        self.up = min(max(1, round(alpha * dim)), dim - 1)
        self.low = dim - self.up
        up_sq, low_sq = max(1, self.up // squeeze_radio), max(1, self.low // squeeze_radio)
        self.squeeze_up = nn.Conv2d(self.up, up_sq, 1, bias=False)
        self.squeeze_low = nn.Conv2d(self.low, low_sq, 1, bias=False)
        g = math.gcd(groups, math.gcd(up_sq, dim))
        self.gwc = nn.Conv2d(up_sq, dim, kernel_size, padding=kernel_size // 2, groups=g, bias=False)
        self.pwc1 = nn.Conv2d(up_sq, dim, 1, bias=False)
        self.pwc2 = nn.Conv2d(low_sq, dim - low_sq, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_up, x_low = torch.split(x, [self.up, self.low], dim=1)
        x_up, x_low = self.squeeze_up(x_up), self.squeeze_low(x_low)
        y1 = self.gwc(x_up) + self.pwc1(x_up)  # upper transform
        y2 = torch.cat([self.pwc2(x_low), x_low], dim=1)  # lower transform, feature reuse
        s = torch.stack([F.adaptive_avg_pool2d(y1, 1), F.adaptive_avg_pool2d(y2, 1)], dim=0)
        beta = torch.softmax(s, dim=0)  # per channel, over the pair (S1, S2)
        return beta[0] * y1 + beta[1] * y2


class SCConv(nn.Module):
    """SRU then CRU; ``dim -> dim`` channels; see the module docstring for every choice.

    Args:
        dim: channels in and out.
        alpha: CRU split ratio (paper default 1/2).
        squeeze_radio: CRU squeeze ratio r (paper default 2; the name follows the paper's usage).
        groups: GWC groups g (paper default 2).
        kernel_size: GWC kernel k (paper default 3).
        gn_groups: SRU GroupNorm groups (``gcd(dim, gn_groups)`` is used).
        stride: 1, or s > 1 for an ``AvgPool2d(s, ceil_mode=True)`` before SRU.
    """

    def __init__(self, dim: int, alpha: float = 0.5, squeeze_radio: int = 2, groups: int = 2,
                 kernel_size: int = 3, gn_groups: int = 16, stride: int = 1):
        super().__init__()
        self.stride = int(stride)
        if self.stride < 1:
            raise ValueError(f"SCConv stride must be >= 1, got {stride}")
        self.pool = nn.AvgPool2d(self.stride, ceil_mode=True) if self.stride > 1 else nn.Identity()
        self.sru = SRU(dim, gn_groups)
        self.cru = CRU(dim, alpha, squeeze_radio, groups, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cru(self.sru(self.pool(x)))
