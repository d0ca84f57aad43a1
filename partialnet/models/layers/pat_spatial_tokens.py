"""PAT_sp's training forward and backward as a few passes over the token matrix of a channels_last map.

PAT_sp (:class:`~partialnet.models.layers.pat.PATSpatial`) on a (B, C, H, W) map, with the
attention half first::

    Y_a = attn_norm(X_a * hardsigmoid(attn_conv(X_a)))        attn_conv: C_a -> 1, no bias
    Y_c = conv(conv_norm(X_c))                                 conv: C_c -> C_c, no bias

Written as modules, the two halves are channel slices of the channels_last map (neither NCHW- nor
NHWC-contiguous), so the C_a -> 1 conv and the norms copy them, the concatenation copies both
outputs and its backward hands each half a strided gradient that is copied again; the C_a -> 1
conv alone took 0.85 ms of forward + backward on a (32, 64, 14, 14) half, for 0.4 MMACs. On a
channels_last map, the ``(N, C) = (B*H*W, C)`` token matrix is the map's own memory and both
halves are column blocks of it. With the C++ kernels (``partialnet/kernels/pat_spatial.cpp``):

* forward: one pass over the rows computes each row's gate logit ``s = X_a . w`` and gate, and
  per column the sums and sums of squares of ``P = X_a * gate`` and of ``X_c`` (batch norm's
  statistics of both halves, accumulated in float64 around the first row's values, so that a
  column whose mean is far from zero keeps its variance); one pass writes the normalised attention
  half into its columns of the output; batch norm's affine map of the conv half is folded into
  the conv's weight (``conv(a * X_c + b) = X_c (W a)^T + W b``), so one matrix product writes the
  conv half's columns from ``X_c`` itself;
* backward: one pass for the gradient's column sums (batch norm's bias gradients and
  ``sum(grad_a * P)``), one matrix product for the conv weight's gradient, one pass over the rows
  for the input gradient of both halves (the attention half with the gate's gradient, the conv
  half's part through its statistics) and the gate weight's gradient, one matrix product adding
  the conv half's ``grad_c W``. Batch norm's backward through its statistics is written out in
  the per-channel algebra (float64 vectors, a few hundred values).

Values: the modules' up to float rounding (``tests/test_pat_spatial_tokens.py`` compares values,
gradients and running statistics with the modules run in float64 and in float32). The running
statistics are updated as ``nn.BatchNorm2d`` updates them.

Only where this is exactly what the modules compute: training mode, CPU, a float32 channels_last
map outside autocast, exact ``nn.BatchNorm2d`` norms with affine parameters and batch statistics,
a ``nn.Hardsigmoid`` gate, bias-free 1x1 convs, no graph capture (an export or ``torch.compile``
sees the modules), and the kernels built (:mod:`partialnet.kernels`). Anything else runs
:meth:`PATSpatial.forward_modules`. Measured on 2 CPU threads, batch 32, forward + backward of
PAT_sp alone (interleaved with the modules): 7.1 -> 5.0 ms at C = 64, 28x28; 4.6 -> 3.3 ms at
C = 128, 14x14; 3.3 -> 2.6 ms at C = 256, 7x7 (at C = 32, 56x56 the modules' time moved between 18
and 27 ms from run to run, the kernels' 9 ms). ``bench/train_step.py``'s change table prints what
it adds to PartialNet-T0's whole training step.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from partialnet.kernels import cpu_kernels
from partialnet.models.layers.gated_norm import update_running_stats
from partialnet.models.layers.token_view import batch_tokens
from partialnet.utils.graph_capture import is_capturing_graph

__all__ = ["pat_spatial_tokens", "takes_token_form"]


def _exact_bn(bn: nn.Module) -> bool:
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine
            and (bn.track_running_stats is False or bn.running_mean is not None))


def takes_token_form(pat_sp: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`pat_spatial_tokens` computes exactly what ``pat_sp``'s modules would on ``x``."""
    if not (pat_sp.training and x.is_cpu and x.dim() == 4 and x.dtype == torch.float32):
        return False
    if x.shape[0] * x.shape[2] * x.shape[3] < 2 or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if is_capturing_graph() or torch.is_autocast_enabled("cpu"):
        return False
    return (_exact_bn(pat_sp.attn_norm) and _exact_bn(pat_sp.conv_norm) and type(pat_sp.attn_gate) is nn.Hardsigmoid
            and pat_sp.attn_conv.bias is None and pat_sp.conv.bias is None and cpu_kernels() is not None)


def pat_spatial_tokens(pat_sp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """PAT_sp's training forward on a channels_last CPU map (see the module docstring); returns a
    channels_last map and updates both norms' running statistics as batch norm does."""
    an, cn = pat_sp.attn_norm, pat_sp.conv_norm
    y, mean_a, var_a, mean_c, var_c = _TokenForm.apply(
        x, pat_sp.attn_conv.weight, an.weight, an.bias, cn.weight, cn.bias, pat_sp.conv.weight,
        an.eps, cn.eps, pat_sp.dim_attn)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    for bn, mean, var in ((an, mean_a, var_a), (cn, mean_c, var_c)):
        if bn.track_running_stats:
            update_running_stats(bn, mean, var * (n / (n - 1)))
    return y


def _f32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel float64 values as the contiguous float32 vectors the kernels take."""
    return [t.float().contiguous() for t in tensors]


class _TokenForm(torch.autograd.Function):
    """Per-channel algebra in float64 (from the kernels' float64 column sums), passes over the map
    in the C++ kernels, the conv half's matrix products on its column block."""

    @staticmethod
    def forward(ctx, x, w_gate, gamma_a, beta_a, gamma_c, beta_c, w_conv, eps_a: float, eps_c: float, ca: int):
        kernels = cpu_kernels()
        t = batch_tokens(x)
        n = t.shape[0]
        wg = w_gate.reshape(ca).contiguous()
        s, gate, sums = kernels.pat_sp_forward_sums(t, wg)
        offset = sums[0] / n  # sums of v - v0 and (v - v0)^2, v0 the shift (row 0)
        mean = sums[2] + offset
        var = (sums[1] / n - offset * offset).clamp_min(0.0)  # biased, as batch norm normalises
        invstd = torch.rsqrt(var + torch.cat((var.new_full((ca,), eps_a), var.new_full((var.numel() - ca,), eps_c))))
        mean_a, mean_c, invstd_a, invstd_c = mean[:ca], mean[ca:], invstd[:ca], invstd[ca:]
        k_a = gamma_a.double() * invstd_a
        out = torch.empty_like(t)
        kernels.pat_sp_attention_out(t, gate, *_f32(k_a, beta_a.double() - mean_a * k_a), out)
        a_c = gamma_c.double() * invstd_c
        b_c = beta_c.double() - mean_c * a_c
        wc = w_conv.reshape(w_conv.shape[0], w_conv.shape[1])
        wc_scaled = (wc.double() * a_c[None, :]).to(wc.dtype)
        torch.addmm(torch.mv(wc.double(), b_c).to(wc.dtype), t[:, ca:], wc_scaled.t(), out=out[:, ca:])
        ctx.save_for_backward(x, wg, s, gate, mean, invstd, gamma_a, gamma_c, wc, wc_scaled, b_c)
        ctx.ca = ca
        stats = [v.to(x.dtype) for v in (mean_a, var[:ca], mean_c, var[ca:])]
        ctx.mark_non_differentiable(*stats)
        b, c, h, w = x.shape
        return (out.view(b, h, w, c).permute(0, 3, 1, 2), *stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, *_):
        x, wg, s, gate, mean, invstd, gamma_a, gamma_c, wc, wc_scaled, b_c = ctx.saved_tensors
        kernels, ca = cpu_kernels(), ctx.ca
        t = batch_tokens(x)
        n = t.shape[0]
        grad = batch_tokens(gy.contiguous(memory_format=torch.channels_last))
        sums = kernels.pat_sp_backward_sums(grad, t, gate, ca)
        mean_a, mean_c, invstd_a, invstd_c = mean[:ca], mean[ca:], invstd[:ca], invstd[ca:]

        # conv half: Y_c = X_c (W a)^T + W b, a = gamma / sqrt(var + eps), b = beta - mean a
        dbias = sums[0, ca:]
        dw_scaled = (grad[:, ca:].t() @ t[:, ca:]).double()
        a_c = gamma_c.double() * invstd_c
        dwc = torch.addr(dw_scaled * a_c[None, :], dbias, b_c)
        db = torch.mv(wc.double().t(), dbias)
        da = (dw_scaled * wc.double()).sum(0) - db * mean_c
        dgamma_c = da * invstd_c
        slope = da * gamma_c.double() * (-0.5) * invstd_c.pow(3) * (2.0 / n)
        offset = -db * a_c / n - slope * mean_c

        # attention half: Y_a = bn(P), P = X_a * gate, gate = hardsigmoid(X_a wg)
        dbeta_a = sums[0, :ca]
        dgamma_a = (sums[1, :ca] - mean_a * dbeta_a) * invstd_a
        k = gamma_a.double() * invstd_a
        c2 = -k * invstd_a * dgamma_a / n
        c3 = -k * dbeta_a / n - c2 * mean_a

        dt = torch.empty_like(t)
        dwg = kernels.pat_sp_backward_rows(grad, t, s, gate, wg, *_f32(k, c2, c3, slope, offset), dt)
        dt[:, ca:].addmm_(grad[:, ca:], wc_scaled)
        b, c, h, w = x.shape
        like = gamma_a.dtype
        return (dt.view(b, h, w, c).permute(0, 3, 1, 2), dwg.view(1, ca, 1, 1), dgamma_a.to(like),
                dbeta_a.to(like), dgamma_c.to(like), db.to(like), dwc.to(like)[:, :, None, None], None, None, None)
