"""``bn(x * gate)`` for a per-(sample, channel) gate, in training, from per-sample statistics of x.

PAT_ch normalises its gated untouched half, ``norm(X_u * g)``, with g of shape (B, C, 1, 1) and
``norm`` a BatchNorm2d. In training, batch norm needs the mean and variance of ``X_u * g`` per
channel over (B, H, W): one pass over the product for the statistics and one more to normalise,
after the pass that forms the product. PAT_ch already has the mean m and the std of X_u over the
n = H*W positions of every sample and channel (its SRM statistics), and the gate only scales a
sample's channel, so the batch statistics follow from those (B, C) numbers by the law of total
variance, without reading the map::

    mean_c = mean_b(g m)        var_c = mean_b(g^2 v) + mean_b((g m - mean_c)^2)

(v = std^2 (n - 1) / n, the biased variance over the n positions). The output is then one pass
over the map, ``x * (g s) + t`` with ``s = weight / sqrt(var_c + eps)`` and ``t = bias - mean_c s``,
and autograd's backward runs through the same small tensors and that one product. The values are
batch norm's up to float rounding (about 1e-6 on unit-scale maps); the running statistics are
updated as ``nn.BatchNorm2d`` updates them (momentum, or the cumulative average when momentum is
None; the unbiased variance). A channel whose variance is below the statistics' floor (1e-10)
contributes that floor instead of its smaller variance, far below batch norm's eps.

Measured on 2 CPU threads, batch 32, channels_last: forward + backward of the stage-1 PAT_ch of
PartialNet-T0 (C = 32, 56x56) alone 35-40 -> 21-24 ms, at C = 64, 28x28 12 -> 11.6 ms, at C = 128,
14x14 unchanged; PartialNet-T0's whole training step at 224 px only 1.01x (0.98-1.09x per pair,
``bench/train_step.py``'s change table; about 10 ms of 600 by the profiler). What it saves for
sure is memory: PAT_ch keeps 12.3 instead of 21.5 MiB for backward at that stage-1 size (the
gated map and batch norm's input are no longer kept), the whole T0 step 647 instead of 683 MiB.

Only where that is batch norm's own computation: an exact ``nn.BatchNorm2d`` (not SyncBatchNorm,
whose statistics span processes) using batch statistics, with more than one value per channel.
Anything else (eval mode with running statistics above all) calls ``bn(x * gate)`` itself, so
inference runs, exports and is counted (fvcore) exactly as before.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["gated_batch_norm", "update_running_stats"]


def gated_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, gate: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor) -> torch.Tensor:
    """``bn(x * gate)`` for x (B, C, H, W) and gate (B, C, 1, 1), given ``mean`` and ``std`` (B, C):
    x's mean and unbiased std over its H*W positions (as :func:`.srm_stats.srm_statistics` gives
    them). See the module docstring for when the statistics are used."""
    b, c = x.shape[0], x.shape[1]
    n = x.shape[-2] * x.shape[-1]
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if type(bn) is not nn.BatchNorm2d or not batch_stats or b * n < 2:
        return bn(x * gate)
    acc = torch.promote_types(x.dtype, torch.float32)  # float32 at least (half precision under autocast)
    g = gate.reshape(b, c).to(acc)
    gm = g * mean.to(acc)
    mean_c = gm.mean(0)
    var_within = std.to(acc).square() * ((n - 1) / n)
    var_c = (g * g * var_within).mean(0) + (gm - mean_c).square().mean(0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        update_running_stats(bn, mean_c.detach(), var_c.detach() * (b * n / (b * n - 1)))
    scale = torch.rsqrt(var_c + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(acc)
    shift = -mean_c * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(acc)
    return torch.addcmul(shift.to(x.dtype).view(1, c, 1, 1), x, (g * scale).to(x.dtype).view(b, c, 1, 1))


@torch.no_grad()
def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
    """What ``nn.BatchNorm2d.forward`` does to its buffers in one training step."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_(unbiased_var.to(bn.running_var.dtype), alpha=factor)
