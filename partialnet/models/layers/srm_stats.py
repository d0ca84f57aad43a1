"""Per-channel spatial mean and standard deviation: the statistics PAT_ch's SRM gate reads.

``srm_statistics(x, eps)`` returns ``(mean, std)`` over the spatial positions of a
(B, C, H, W) map, each of shape (B, C), with ``std = sqrt(max(unbiased var, eps))`` and the
variance taken as 0 when there is a single position (H = W = 1). ``eps`` is a floor, not an
addend: for every channel whose variance is above it (all but constant ones at the default
1e-10) the std is exactly torch's unbiased ``std``, the statistic of the original PartialNet
code, so converted weights give its outputs; the floor keeps the gradient finite on a constant
channel (where it is zero). It is the one definition used
by the model layer, its deploy form and the search supernet.

The variance is computed in two passes (mean first, then the mean of squared deviations),
which is several times faster than ``Tensor.var`` on CPU and numerically safe. When a gradient
is needed the statistics run as one autograd function whose backward is a single fused
multiply-add over the input::

    dL/dx = dL/dmean / n + dL/dstd * (x - mean) / ((n - 1) * std)

instead of the chain of saved intermediates (``x - mean``, its square, the sum, the sqrt) that
autograd would otherwise record; it saves only the input and the two (B, C) results. Under
``torch.compile`` the plain form is traced instead: the compiler fuses it by itself.

At inference on one image whose channels are the innermost dimension (a channels_last map or
a channel slice of one, as in the fused model), the map is read as its (H*W, C) token matrix
(:mod:`.token_view`) and both spatial sums are products with a constant row (``1/n`` for the
mean, ``1/(n-1)`` for the variance): the same two passes in fewer operator calls, which is what
a batch-1 forward on the CPU pays for (``bench/runtimes.py``). :func:`token_mean_std` is that form,
for callers that already hold the token matrix.
"""
from __future__ import annotations

import torch

from partialnet.models.layers.token_view import token_matrix

__all__ = ["srm_statistics", "token_mean_std", "averaging_rows"]


def _mean_var(x: torch.Tensor, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, unbiased var)`` over dims (2, 3), each (B, C), or (B, C, 1, 1) with ``keepdim``; var
    is 0 for a single position."""
    n = x.shape[-2] * x.shape[-1]
    mean = x.mean(dim=(2, 3), keepdim=keepdim)
    if n > 1:
        d = x - (mean if keepdim else mean[:, :, None, None])
        var = (d * d).sum(dim=(2, 3), keepdim=keepdim) / (n - 1)
    else:
        var = torch.zeros_like(mean)
    return mean, var


class _MeanStd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = _mean_var(x)
        std = var.clamp_min(eps).sqrt()
        ctx.save_for_backward(x, mean, std)
        ctx.floor = eps ** 0.5
        return mean, std

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mean: torch.Tensor | None, g_std: torch.Tensor | None):
        x, mean, std = ctx.saved_tensors
        n = x.shape[-2] * x.shape[-1]
        if g_mean is None:
            g_mean = torch.zeros_like(mean)
        if g_std is None or n == 1:  # a single position: the std does not depend on x
            g_std = torch.zeros_like(std)
        coef = g_std / (std * max(n - 1, 1))  # dstd/dx = (x - mean) / ((n - 1) std)
        coef = coef.masked_fill(std <= ctx.floor, 0.0)  # at the floor the std is a constant
        shift = g_mean / n - mean * coef
        return torch.addcmul(shift[:, :, None, None], x, coef[:, :, None, None]), None


def averaging_rows(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two constant (1, n) rows of :func:`token_mean_std`: ``1/n`` and ``1/(n-1)``."""
    return like.new_full((1, n), 1.0 / n), like.new_full((1, n), 1.0 / (n - 1))


def token_mean_std(tokens: torch.Tensor, eps: float,
                   rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-pass ``(mean, std)`` per column of an (n, C) token matrix (n >= 2), as (1, C) each: each
    pass is one (1, n) x (n, C) matrix product with a constant row (``1/n``, then ``1/(n-1)``);
    ``rows`` are those two rows when the caller keeps them (:func:`averaging_rows`)."""
    mean_row, var_row = averaging_rows(tokens.shape[0], tokens) if rows is None else rows
    mean = torch.mm(mean_row, tokens)
    d = tokens - mean
    d.mul_(d)
    return mean, torch.mm(var_row, d).clamp_min_(eps).sqrt_()


def srm_statistics(x: torch.Tensor, eps: float, keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` per channel of a (B, C, H, W) map, each (B, C); see the module docstring.
    ``keepdim``: each (B, C, 1, 1), in the plain two-pass operators (what an exported graph wants:
    maps that broadcast over the input, no unsqueeze)."""
    if x.dim() != 4:
        raise ValueError(f"srm_statistics expects a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if keepdim:
        mean, var = _mean_var(x, keepdim=True)
        return mean, var.clamp_min(eps).sqrt()
    if torch.is_grad_enabled() and x.requires_grad:
        if not torch.compiler.is_compiling():  # (a compiler fuses the plain form itself)
            return _MeanStd.apply(x, float(eps))
    elif x.shape[-2] * x.shape[-1] > 1 and (tokens := token_matrix(x)) is not None:
        return token_mean_std(tokens, float(eps))
    mean, var = _mean_var(x)
    return mean, var.clamp_min(eps).sqrt()
