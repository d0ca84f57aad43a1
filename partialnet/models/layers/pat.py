"""PAT_ch (partial conv + channel attention) and PAT_sp (spatial attention after the MLP).

Split convention: ``[X_p | X_u]``, conv part first (see :mod:`.pconv`). Counting
convention of the project: "FLOPs" are multiply-adds (MACs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.models.layers.dense_grad import dense, dense_grad
from partialnet.models.layers.gated_norm import gated_batch_norm
from partialnet.models.layers.pat_spatial_tokens import pat_spatial_tokens, takes_token_form
from partialnet.models.layers.pconv import PartialSplit, conv_channels
from partialnet.models.layers.pointwise_conv import PointwiseConv2d
from partialnet.models.layers.srm_stats import srm_statistics

__all__ = ["StatsBatchNorm2d", "PATChannel", "PATSpatial"]


class StatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d for pooled statistics maps of shape (B, C, 1, 1).

    In training mode a batch of one gives a single value per channel, for which batch
    statistics are undefined (``nn.BatchNorm2d`` raises). This subclass then normalises
    with its running statistics, as in eval mode, and leaves them unchanged; gradients still
    reach the affine weight and bias. Any other input behaves exactly like ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PATChannel(PartialSplit):
    """PAT_ch: ``concat(Conv3x3(X_p), SRM(X_u))``, conv part first.

    SRM ("enhanced Gaussian channel attention") on the untouched part::

        u   = [mean_HW(X_u), std_HW(X_u)]            (B, C_u, 1, 2); std unbiased (srm_statistics)
        g   = hardsigmoid(srm_norm(srm_conv(u)))     srm_conv: full C_u->C_u conv, kernel (1, 2), no bias
        Y_u = norm(X_u * g)

    In training, ``norm``'s batch statistics of ``X_u * g`` are derived from ``u`` and g
    (:func:`~partialnet.models.layers.gated_norm.gated_batch_norm`: no pass over the gated map);
    eval mode calls ``norm`` on the product itself.
    The std is ``sqrt(max(unbiased var, 1e-10))``: torch's unbiased std wherever the variance is
    above the floor, which only keeps the gradient finite on a constant channel; with a single
    spatial position (H = W = 1) the variance is taken as 0.
    ``srm_norm`` is a :class:`StatsBatchNorm2d`, so a train-mode batch of one works.
    Submodules (for deploy fusion): ``conv``, ``srm_conv``, ``srm_norm``, ``srm_gate``, ``norm``.
    """

    std_eps = 1e-10  # a floor on the variance (see srm_statistics)

    def __init__(self, dim: int, ratio: float = 0.25):
        super().__init__(dim, ratio)
        c_p, c_u = self.dim_conv, self.dim_untouched
        self.conv = nn.Conv2d(c_p, c_p, 3, 1, 1, bias=False)
        self.srm_conv = nn.Conv2d(c_u, c_u, (1, 2), bias=False)
        self.srm_norm = StatsBatchNorm2d(c_u)
        self.srm_gate = nn.Hardsigmoid()
        self.norm = nn.BatchNorm2d(c_u)

    def channel_gate(self, x_u: torch.Tensor) -> torch.Tensor:
        """The SRM gate g of shape (B, C_u, 1, 1)."""
        return self.gate_from_statistics(*srm_statistics(x_u, self.std_eps))

    def gate_from_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The SRM gate g (B, C_u, 1, 1) from the per-channel ``mean`` and ``std`` (B, C_u) of X_u."""
        # srm_conv on the (B, C_u, 1, 2) map [mean, std] is one matrix product on concat(mean, std)
        # (its weight (C_u, C_u, 1, 2) read as (C_u, 2*C_u)): same numbers, no tiny convolution.
        w = self.srm_conv.weight
        z = F.linear(torch.cat((mean, std), dim=1), w.permute(0, 3, 1, 2).reshape(w.shape[0], -1))
        return self.srm_gate(self.srm_norm(z[:, :, None, None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_p, x_u = self.split(x)
        mean, std = srm_statistics(x_u, self.std_eps)
        # norm(X_u * g); in training its batch statistics come from mean and std (gated_batch_norm)
        y_u = gated_batch_norm(self.norm, x_u, self.gate_from_statistics(mean, std), mean, std)
        return torch.cat((self.conv(x_p), dense_grad(y_u)), dim=1)


class PATSpatial(nn.Module):
    """PAT_sp: spatial attention appended after the MLP's last 1x1 conv; fixed 50/50 split.

    The **attention half comes first** (``dim_attn = floor(dim/2 + 0.5)`` channels, the
    larger half when ``dim`` is odd)::

        Y_a = attn_norm(X_a * hardsigmoid(attn_conv(X_a)))    attn_conv: 1x1, dim_attn -> 1, no bias
        Y_c = conv(conv_norm(X_c))                            conv: 1x1, dim_conv -> dim_conv, no bias

    Output ``concat(Y_a, Y_c)``. ``conv_norm`` and ``conv`` are linear, so deploy can merge
    them into the MLP's last conv.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)
        self.dim_attn = conv_channels(self.dim, 0.5)
        self.dim_conv = self.dim - self.dim_attn
        self.attn_conv = PointwiseConv2d(self.dim_attn, 1, bias=False)
        self.attn_gate = nn.Hardsigmoid()
        self.attn_norm = nn.BatchNorm2d(self.dim_attn)
        self.conv_norm = nn.BatchNorm2d(self.dim_conv)
        self.conv = PointwiseConv2d(self.dim_conv, self.dim_conv, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_token_form(self, x):  # training on a channels_last CPU map
            return pat_spatial_tokens(self, x)
        return self.forward_modules(x)

    def forward_modules(self, x: torch.Tensor) -> torch.Tensor:
        """The forward written as the modules (what :func:`.pat_spatial_tokens` computes in training)."""
        x_a, x_c = torch.split(x, [self.dim_attn, self.dim_conv], dim=1)
        y_a = self.attn_norm(x_a * self.attn_gate(self.attn_conv(x_a)))
        if self.training:  # a dense input: batch norm's fast training kernels (see dense_grad)
            x_c = dense(x_c)
        y_c = self.conv(self.conv_norm(x_c))
        return torch.cat((dense_grad(y_a), dense_grad(y_c)), dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_attn={self.dim_attn}, dim_conv={self.dim_conv}"
