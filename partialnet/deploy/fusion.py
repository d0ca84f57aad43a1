"""Deploy fusion of PartialNet / PATNet / FasterNet (:class:`PartialChannelNet`).

:func:`fuse` returns a new inference model whose eval outputs equal the trained model's
eval outputs (fp32, max abs diff well under 1e-4). The fusion follows the network's
structure, never a generic "fold a BN into whatever conv came before" walk (that pairing is
wrong in PAT_ch and PAT_sp, where the BN sits on one half of a split and the preceding conv is
on the other half, so such a walk folds a BN into a conv whose outputs it never sees).

What is folded or merged, with BN in eval form ``bn(z) = s*z + t``
(``s = gamma / sqrt(running_var + eps)``, ``t = beta - running_mean * s``):

* ``stem.conv + stem.norm`` and every ``downsample.conv + .norm``: ``W' = s*W``, ``b' = t``.
* ``mlp.fc1 + mlp.norm``: the same, on fc1's output rows.
* PAT_ch's trailing BN on the attention half (``Y_u = s_n*(X_u*g) + t_n``): in block v1 the
  mixer output only feeds ``mlp.fc1``, which is linear, so ``s_n`` scales fc1's input columns of
  the attention half and ``W1[:, C_p:] @ t_n`` joins fc1's bias. The mixer then emits
  ``concat(Conv3x3(X_p), X_u*g)``.
* PAT_ch's SRM: ``hardsigmoid(srm_norm(srm_conv([mu, sigma])))``; the BN on the (B, C_u, 1, 1) map
  folds into the (1, 2) conv, which is one Linear on ``concat(mu, sigma)`` with a bias.
* PAT_sp (after ``mlp.fc2``, attention half first, ``X = [X_a | X_c] = W2 h``):

  - conv half ``Y_c = Wc (s_c*X_c + t_c)`` is linear in ``h``: fc2's rows for it become
    ``Wc diag(s_c) W2_c`` with bias ``Wc t_c`` (PAT_sp's 1x1 conv and BN disappear);
  - attention half ``Y_a = s_a*(X_a*hardsigmoid(w_g.X_a)) + t_a``: fc2's rows become
    ``diag(s_a) W2_a`` (so ``X_a' = s_a*X_a``) and the gate weight ``w_g / s_a``, so only
    ``Y_a = X_a'*hardsigmoid((w_g/s_a).X_a') + t_a`` is left: one matrix-vector product and one
    fused multiply-add over X_a'. When some ``|s_a|`` is below ``_MIN_FOLD_SCALE`` (a BN weight
    near 0) the scale is kept as a separate factor instead of being divided out.

* PAT_sf: LayerNorm2d's affine and the attention scale fold into ``qkv`` (weight and bias);
  ``qkv`` and ``proj`` run as 1x1 convs; the relative-position bias ``table[:, bucket(H, W)]``
  is cached per input size.
* Not foldable, kept: the GELU/ReLU between fc1 and fc2, the SRM statistics and gate, the
  PAT_sp spatial gate, PAT_sf's LayerNorm normalisation and softmax, the head.
* PConv: the layer's in-place ``'slicing'`` form (clone first, so the shortcut is intact).

The fused model runs channels_last on CPU (``channels_last`` argument; its 1x1 convs are
:class:`~partialnet.models.layers.PointwiseConv2d`, one GEMM on the channels_last token view
for one image or a small map) and, with ``forward_type='slicing'`` (default), writes into its own
intermediate tensors in place. For one image in eager mode, PAT_ch, the MLP (with its PAT_sp half)
and PAT_sf work directly on the map's (H*W, C) token matrix
(:mod:`partialnet.models.layers.token_view`): the same arithmetic in fewer operator calls (a
PartialNet-T0 stage-3 block: 89 instead of 127 profiler events, PAT_ch 16 top-level calls instead
of 26), which is what a batch-1 CPU forward pays for. A block whose MLP reads its mixer's output
(PAT_ch, PConv) then never assembles that output: the conv half and the untouched half go into
fc1 as two matrix products, PAT_ch's gate scaling fc1's weight rows instead of the tokens (no
concatenation, no product over the map; 2-4 % of the batch-1 forward for PartialNet and 1-4 % for
FasterNet on 2 threads). :func:`set_forward_type` switches every
fused module to the out-of-place ``'split_cat'`` form, which is what ONNX export uses (in-place slice writes blew up
FasterNet's ONNX graphs, FasterNet issue #16). Both forms give the same outputs and run on any
input size the original model accepts.

The out-of-place forms of PAT_ch and PAT_sp come in two :data:`EXPORT_FORMS` with the same
outputs (:func:`set_export_form`; ``export_onnx(..., export_form=...)``): ``'full_width'`` (the
default), whose statistics and PAT_sp gate read all channels so that no channel split feeds two
consumers (OpenVINO copies both halves of such a split), and ``'split'``, which splits PAT_ch into
its halves with the statistics in kept dimensions and runs PAT_sp in convs, one product and a
BatchNorm, so that onnxruntime keeps the map in its blocked channel layout. ``runtime=onnxruntime``
exports the ``'split'`` form, ``runtime=openvino`` the ``'full_width'`` one (``bench/runtimes.py``
times both forms on onnxruntime).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from partialnet.errors import UserError
from partialnet.kernels import cpu_kernels
from partialnet.models.backbone import Mlp, PartialBlock, PartialChannelNet
from partialnet.models.layers import (PartialConv, PATChannel, PATSelf, PATSpatial, PointwiseConv2d,
                                      dense_activation, euclidean_bucket_index, is_pointwise, writes_in_place)
from partialnet.models.layers.srm_stats import averaging_rows, srm_statistics, token_mean_std
from partialnet.models.layers.token_view import token_map, token_matrix
from partialnet.utils.graph_capture import is_capturing_graph, is_exporting_graph, is_torch_compiling

__all__ = [
    "fuse",
    "set_forward_type",
    "set_export_form",
    "check_export_form",
    "EXPORT_FORMS",
    "is_fused",
    "FusedStem",
    "FusedPATChannel",
    "FusedPATSelf",
    "FusedMlp",
    "FusedBlock",
]

FORWARD_TYPES = ("slicing", "split_cat")
# The out-of-place forms of PAT_ch and PAT_sp that an exported graph gets (set_export_form):
# 'full_width' is OpenVINO's fastest, 'split' onnxruntime's (see FusedPATChannel and FusedMlp).
EXPORT_FORMS = ("full_width", "split")
# PAT_sp attention-BN scales at least this large are folded into fc2 (see FusedMlp).
_MIN_FOLD_SCALE = 1e-4


# --------------------------------------------------------------------------- algebra helpers
def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``bn(z) == s*z + t`` in eval mode (per channel)."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise UserError(f"expected a BatchNorm layer to fold, found {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise UserError(
            f"{type(bn).__name__}({bn.num_features}) has no running statistics (track_running_stats=False); "
            "it cannot be folded for inference"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def _weight64(conv: nn.Conv2d | nn.Linear) -> torch.Tensor:
    return conv.weight.detach().double()


def _bias64(module: nn.Conv2d | nn.Linear, out: int) -> torch.Tensor:
    if module.bias is None:
        return torch.zeros(out, dtype=torch.float64, device=module.weight.device)
    return module.bias.detach().double()


def _new_conv(like: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A Conv2d with ``like``'s geometry and the given (float64) weight / bias."""
    out_chs, in_per_group = weight.shape[:2]
    if is_pointwise(like):
        conv = torch.nn.utils.skip_init(PointwiseConv2d, in_per_group, out_chs, bias=bias is not None,
                                        device=like.weight.device, dtype=like.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return conv
    conv = torch.nn.utils.skip_init(  # no random init: every value is overwritten below
        nn.Conv2d,
        in_per_group * like.groups,
        out_chs,
        like.kernel_size,
        like.stride,
        like.padding,
        like.dilation,
        like.groups,
        bias=bias is not None,
        padding_mode=like.padding_mode,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _copy_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` (a PointwiseConv2d when it is 1x1, whatever class it was saved as)."""
    w = _weight64(conv)
    return _new_conv(conv, w, None if conv.bias is None else _bias64(conv, w.shape[0]))


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv with bias."""
    s, t = _bn_scale_shift(bn)
    w = _weight64(conv)
    b = _bias64(conv, w.shape[0])
    return _new_conv(conv, w * s.view(-1, 1, 1, 1), b * s + t)


def _derived(module: nn.Module, cache: str, key: tuple, source: torch.Tensor, compute: Callable[[], Any]) -> Any:
    """``compute()`` (run without autograd), a value derived from ``source`` (a weight), kept in
    ``module.<cache>`` for one ``key`` and one version of ``source``: new weights, or weights changed
    in place, recompute it. Not part of the state dict. An inference tensor (a model fused inside
    ``torch.inference_mode()``) has no version counter, so its values are recomputed at every call."""
    if source.is_inference():
        with torch.no_grad():
            return compute()
    full_key = (*key, source.dtype, source.device, source.data_ptr(), source._version)
    value = getattr(module, cache).get(full_key)
    if value is None:
        with torch.no_grad():
            value = compute()
        setattr(module, cache, {full_key: value})  # one entry: the latest size and weights
    return value


# --------------------------------------------------------------------------- fused modules
def _one_image_kernels(t: torch.Tensor):
    """The C++ kernels for one image's token matrix ``t`` (float32 CPU, no autograd: they have no
    backward), or None."""
    if t.dtype != torch.float32 or not t.is_cpu or torch.is_grad_enabled():
        return None
    return cpu_kernels()


class FusedStem(nn.Module):
    """Stem conv with its BN folded; optionally moves the input to channels_last first."""

    def __init__(self, conv: nn.Conv2d, channels_last: bool = True):
        super().__init__()
        self.conv = conv
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"


class FusedPATChannel(nn.Module):
    """PAT_ch without BNs: ``concat(Conv3x3(X_p), X_u * hardsigmoid(srm(concat(mu, sigma))))``.

    ``srm`` is the (1, 2) conv with the SRM BN folded, written as one Linear on
    ``concat(mean, std)`` (2*C_u -> C_u). The trailing BN of the original lives in the next
    ``mlp.fc1``. ``std = sqrt(max(unbiased var, std_eps))``, var 0 for a single position, as in
    :class:`~partialnet.models.layers.PATChannel`.
    """

    def __init__(self, dim_conv: int, dim_untouched: int, std_eps: float, forward_type: str = "slicing"):
        super().__init__()
        self.dim_conv = int(dim_conv)
        self.dim_untouched = int(dim_untouched)
        self.dim = self.dim_conv + self.dim_untouched
        self.std_eps = float(std_eps)
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, 1, bias=False)
        self.srm = nn.Linear(2 * self.dim_untouched, self.dim_untouched)
        self.forward_type = forward_type
        self.export_form = "full_width"  # the out-of-place form: EXPORT_FORMS, set by set_export_form
        self._token_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_layer(cls, layer: PATChannel, forward_type: str = "slicing") -> "FusedPATChannel":
        m = cls(layer.dim_conv, layer.dim_untouched, layer.std_eps, forward_type)
        m.to(device=layer.conv.weight.device, dtype=layer.conv.weight.dtype)
        s, t = _bn_scale_shift(layer.srm_norm)
        w = _weight64(layer.srm_conv)  # (C_u, C_u, 1, 2): [..., 0] weighs the mean, [..., 1] the std
        w_lin = torch.cat((w[:, :, 0, 0], w[:, :, 0, 1]), dim=1) * s[:, None]
        with torch.no_grad():
            m.conv.weight.copy_(layer.conv.weight)
            m.srm.weight.copy_(w_lin)
            m.srm.bias.copy_(t)
        return m

    def gate(self, x_u: torch.Tensor) -> torch.Tensor:
        """The SRM gate, shape (B, C_u)."""
        mean, std = srm_statistics(x_u, self.std_eps)
        return F.hardsigmoid(self.srm(torch.cat((mean, std), dim=1)), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if writes_in_place(self.forward_type):
            if x.shape[-2] * x.shape[-1] > 1 and (tokens := token_matrix(x)) is not None:
                return self._forward_tokens(x, tokens)
            x_p, x_u = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
            g = self.gate(x_u)[:, :, None, None]
            out = torch.empty_like(x)
            out[:, : self.dim_conv] = self.conv(x_p)
            torch.mul(x_u, g, out=out[:, self.dim_conv :])
            return out
        if is_torch_compiling():
            return self._forward_split(x)
        if self.export_form == "split":
            return self._forward_split_kept_dims(x)
        return self._forward_full_width(x)

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        """The out-of-place form for ``torch.compile``: inductor fuses the untouched half's statistics,
        gate and product into its own kernels (fused PartialNet-T0 at batch 1: 2-4 % faster compiled
        than :meth:`_forward_full_width`, whose full-width statistics suit the exported graphs)."""
        x_u = x[:, self.dim_conv :]
        return torch.cat((self.conv(x[:, : self.dim_conv]), x_u * self.gate(x_u)[:, :, None, None]), dim=1)

    def _forward_split_kept_dims(self, x: torch.Tensor) -> torch.Tensor:
        """The out-of-place form of ``export_form='split'`` (onnxruntime's): one split into both halves,
        the statistics as (B, C_u, 1, 1) maps and the SRM as a 1x1 conv on them, so the graph has no
        unsqueeze and no ones-padded gate (fused PartialNet-T0 at batch 1 on onnxruntime, 2 threads,
        with :class:`FusedMlp`'s split form: 1.06-1.09x faster than the full-width forms, ``bench/runtimes.py``)."""
        x_p, x_u = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        mean, std = srm_statistics(x_u, self.std_eps, keepdim=True)
        g = F.hardsigmoid(F.conv2d(torch.cat((mean, std), dim=1), self.srm.weight[:, :, None, None], self.srm.bias))
        return torch.cat((self.conv(x_p), x_u * g), dim=1)

    def _token_constants(self, n: int) -> tuple[torch.Tensor, ...]:
        """For the token form at n positions: the two averaging rows and the SRM weight's mean and
        std halves, transposed; kept per size by :func:`_derived`."""
        w, cu = self.srm.weight, self.dim_untouched
        return _derived(self, "_token_cache", (n,), w, lambda: (
            *averaging_rows(n, w), w[:, :cu].t().contiguous(), w[:, cu:].t().contiguous()))

    def token_halves(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image (``tokens`` its (H*W, C) matrix, H*W >= 2): this module's output is
        ``[conv | untouched * gate]``, returned unassembled as the conv half's map, the untouched
        half (a view of ``tokens``) and the (1, C_u) gate (:meth:`token_gate`)."""
        t_u = tokens[:, self.dim_conv :]
        return self.conv(x[:, : self.dim_conv]), t_u, self.token_gate(t_u)

    def token_gate(self, t_u: torch.Tensor) -> torch.Tensor:
        """The (1, C_u) gate of one image from its untouched half's (H*W, C_u) token block: with the
        C++ kernels built, one call (``partialnet/kernels/one_image.cpp``), else operators on the token
        matrix (no permutes, no unsqueezes, the SRM Linear as two products with its cached halves)."""
        mean_row, var_row, w_mean, w_std = self._token_constants(t_u.shape[0])
        if (kernels := _one_image_kernels(t_u)) is not None:
            return kernels.srm_gate(t_u, w_mean, w_std, self.srm.bias, self.std_eps)
        mean, std = token_mean_std(t_u, self.std_eps, (mean_row, var_row))
        return F.hardsigmoid(torch.addmm(self.srm.bias, mean, w_mean).addmm_(std, w_std), inplace=True)

    def gated_rows(self, t_u: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``rows * gate^T`` for the gate of :meth:`token_gate` (rows: C_u x anything, e.g. the block
        of fc1's weight that reads the untouched half); one kernel call when built."""
        if (kernels := _one_image_kernels(t_u)) is not None:
            _, _, w_mean, w_std = self._token_constants(t_u.shape[0])
            return kernels.srm_gated_rows(t_u, w_mean, w_std, self.srm.bias, self.std_eps, rows)
        return rows * self.token_gate(t_u).t()

    def _forward_tokens(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One image: :meth:`token_halves`, the product, one concatenation; the output is channels_last."""
        conv, t_u, g = self.token_halves(x, tokens)
        return torch.cat((conv, token_map(t_u * g, x.shape[2], x.shape[3])), dim=1)

    def _forward_full_width(self, x: torch.Tensor) -> torch.Tensor:
        """The out-of-place (export) form, with no split of ``x`` into both halves: the statistics
        and the gate run over all C channels (the SRM weight is zero on the conv half's columns,
        the gate is 1 there), and only the conv half is sliced out. Graph runtimes copy both halves
        of a split that feeds two consumers (OpenVINO: 13 splits of PartialNet-T0 cost about 1.5 ms
        at batch 1); this form lets them keep one full-width elementwise pass instead."""
        cp, cu = self.dim_conv, self.dim_untouched
        mean, std = srm_statistics(x, self.std_eps)
        w = self.srm.weight
        zeros = w.new_zeros(cu, cp)
        w_full = torch.cat((zeros, w[:, :cu], zeros, w[:, cu:]), dim=1)  # (C_u, 2C): reads the C_u half only
        g = F.hardsigmoid(F.linear(torch.cat((mean, std), dim=1), w_full, self.srm.bias))
        gate = torch.cat((g.new_ones(g.shape[0], cp), g), dim=1)[:, :, None, None]
        return torch.cat((self.conv(x[:, :cp]), (x * gate)[:, cp:]), dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, dim_conv={self.dim_conv}, dim_untouched={self.dim_untouched}, "
            f"forward_type={self.forward_type!r}, export_form={self.export_form!r}"
        )


class FusedPATSelf(nn.Module):
    """PAT_sf with LayerNorm affine and attention scale folded into ``qkv``.

    ``concat(Conv3x3(X_p), proj(softmax(q k^T + rpe) v))`` with ``q, k, v = qkv(LN(X_u))``
    (LN without affine; ``qkv`` and ``proj`` are 1x1 convs; the eval-mode dropouts are gone).
    The relative-position bias ``rpe_table[:, bucket(H, W)]`` is cached per (H, W, device,
    dtype) in the instance (not in the state dict).
    """

    def __init__(self, dim_conv: int, dim_untouched: int, num_heads: int, num_buckets: int, ln_eps: float):
        super().__init__()
        self.dim_conv = int(dim_conv)
        self.dim_untouched = int(dim_untouched)
        self.dim = self.dim_conv + self.dim_untouched
        self.num_heads = int(num_heads)
        self.head_dim = self.dim_untouched // self.num_heads
        self.num_buckets = int(num_buckets)
        self.ln_eps = float(ln_eps)
        c_u = self.dim_untouched
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, 1, bias=False)
        # 1x1 convs on (B, C, H, W) maps (exported as Conv nodes); on CPU at inference they run as
        # one GEMM on the channels_last token view (PointwiseConv2d).
        self.qkv = PointwiseConv2d(c_u, 3 * c_u)
        self.proj = PointwiseConv2d(c_u, c_u)
        self.rpe_table = nn.Parameter(torch.zeros(self.num_heads, self.num_buckets))
        self.forward_type = "slicing"  # no in-place form here; kept for a uniform interface
        self._bias_cache: dict[tuple, torch.Tensor] = {}
        self._index_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_layer(cls, layer: PATSelf) -> "FusedPATSelf":
        norm = layer.norm
        m = cls(layer.dim_conv, layer.dim_untouched, layer.num_heads, layer.rpe.num_buckets, norm.eps)
        m.to(device=layer.conv.weight.device, dtype=layer.conv.weight.dtype)
        c_u = layer.dim_untouched
        w = _weight64(layer.qkv)  # (3C_u, C_u)
        b = _bias64(layer.qkv, w.shape[0])
        if norm.weight is not None:
            b = b + w @ norm.bias.detach().double()
            w = w * norm.weight.detach().double()[None, :]
        row_scale = torch.ones(3 * c_u, dtype=torch.float64, device=w.device)
        row_scale[:c_u] = layer.scale
        with torch.no_grad():
            m.conv.weight.copy_(layer.conv.weight)
            m.qkv.weight.copy_((w * row_scale[:, None])[:, :, None, None])
            m.qkv.bias.copy_(b * row_scale)
            m.proj.weight.copy_(layer.proj.weight[:, :, None, None])
            m.proj.bias.copy_(_bias64(layer.proj, c_u))
            m.rpe_table.copy_(layer.rpe.bias_table)
        return m

    def bucket_index(self, height: int, width: int) -> torch.Tensor:
        """(H*W, H*W) bucket of every (query, key) pair, cached for one size at a time."""
        key = (int(height), int(width), str(self.rpe_table.device))
        index = self._index_cache.get(key)
        if index is None:
            index = euclidean_bucket_index(height, width, self.num_buckets, self.rpe_table.device)
            self._index_cache = {key: index}
        return index

    def rpe_bias(self, height: int, width: int) -> torch.Tensor:
        """(heads, H*W, H*W) logit bias for an H x W map.

        Eager: the gathered bias itself is cached, keyed by the table's version so that new weights
        recompute it. Under a graph capture the gather is part of the graph (a compiler cannot key a
        cache on a tensor's version counter; an exporter folds the gather into a constant)."""
        table = self.rpe_table
        if is_capturing_graph():
            return table[:, self.bucket_index(height, width)]
        return _derived(self, "_bias_cache", (int(height), int(width)), table,
                        lambda: table[:, self.bucket_index(height, width)].contiguous())

    def attention(self, x_u: torch.Tensor) -> torch.Tensor:
        """MHSA on the (B, C_u, H, W) half; ``qkv`` and ``proj`` are PointwiseConv2d (one GEMM each on
        the channels_last token view of a map up to 7x7, a Conv node in an exported graph)."""
        b, _, h, w = x_u.shape
        c, n = self.dim_untouched, h * w
        tokens = F.layer_norm(x_u.permute(0, 2, 3, 1), (c,), eps=self.ln_eps)  # (B, H, W, C); affine in qkv
        qkv = self.qkv(tokens.permute(0, 3, 1, 2))  # (B, 3C, H, W), channels_last memory
        qkv = qkv.permute(0, 2, 3, 1).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) + self.rpe_bias(h, w)).softmax(dim=-1)
        if is_exporting_graph():  # heads merged straight into an NCHW map: see layers.pat_self.merge_heads
            return self.proj((attn @ v).transpose(2, 3).reshape(b, c, h, w))
        out = (attn @ v).transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out.permute(0, 3, 1, 2))

    def attention_tokens(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The same MHSA for one image, on its (H*W, C_u) token matrix; returns (H*W, C_u). The
        projections are plain matrix products (``PointwiseConv2d.linear``) and the position bias
        enters the first batched product (``baddbmm``): about half the operator calls of :meth:`attention`."""
        n, c = tokens.shape
        t = F.layer_norm(tokens, (c,), eps=self.ln_eps)
        qkv = self.qkv.linear(t)
        q, k, v = qkv.view(n, 3, self.num_heads, self.head_dim).permute(1, 2, 0, 3).unbind(0)  # (heads, n, d)
        attn = torch.baddbmm(self.rpe_bias(height, width), q, k.transpose(1, 2)).softmax(dim=-1)
        out = (attn @ v).transpose(0, 1).reshape(n, c)
        return self.proj.linear(out)

    def token_halves(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """One image: this module's output ``[conv | attention]`` unassembled, as the conv half's map
        and the (H*W, C_u) attention output (no gate: None)."""
        y_u = self.attention_tokens(tokens[:, self.dim_conv :], x.shape[2], x.shape[3])
        return self.conv(x[:, : self.dim_conv]), y_u, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (tokens := token_matrix(x)) is not None:  # one image (eager)
            conv, y_u, _ = self.token_halves(x, tokens)
            return torch.cat((conv, token_map(y_u, x.shape[2], x.shape[3])), dim=1)
        x_p, x_u = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.conv(x_p), self.attention(x_u)), dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, dim_conv={self.dim_conv}, dim_untouched={self.dim_untouched}, "
            f"num_heads={self.num_heads}"
        )


class FusedMlp(nn.Module):
    """``fc2(act(fc1(x)))`` with BNs folded and, with PAT_sp, its conv half merged into ``fc2``.

    With PAT_sp, ``fc2`` emits ``[X_a' | Y_c]`` and the attention half is finished here::

        g   = hardsigmoid(gate_weight . X_a')        (one map, shared by the channels)
        Y_a = X_a' * g [* attn_scale] + attn_shift

    where ``X_a' = s_a * X_a`` and ``gate_weight = w_g / s_a`` when PAT_sp's BN scale is safely
    away from zero (``attn_scale`` is then None: one pass over X_a'), else ``X_a' = X_a``,
    ``gate_weight = w_g`` and ``attn_scale = s_a``.
    In the ``'slicing'`` form the activation and the attention half are computed in place in
    the MLP's own intermediate tensors.
    """

    def __init__(
        self, fc1: nn.Conv2d, act: nn.Module, fc2: nn.Conv2d, dim_attn: int = 0, forward_type: str = "slicing"
    ):
        super().__init__()
        self.fc1 = fc1
        self.act = act
        self.fc2 = fc2
        self.dim = fc2.out_channels
        self.dim_attn = int(dim_attn)
        self.pat_sp = self.dim_attn > 0
        self.pointwise = isinstance(fc1, PointwiseConv2d) and isinstance(fc2, PointwiseConv2d)  # (the token form)
        like = dict(dtype=fc2.weight.dtype, device=fc2.weight.device)
        if self.pat_sp:
            self.register_buffer("gate_weight", torch.zeros(1, self.dim_attn, **like))
            self.register_buffer("attn_shift", torch.zeros(1, self.dim_attn, 1, 1, **like))
        else:
            self.gate_weight = self.attn_shift = None
        self.register_buffer("attn_scale", None)  # set by fuse() when s_a is not folded into fc2
        self.forward_type = forward_type
        self.export_form = "full_width"  # the out-of-place form: EXPORT_FORMS, set by set_export_form
        self._fc1_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _gate(self, y_a: torch.Tensor) -> torch.Tensor:
        """hardsigmoid(gate_weight . X_a'): (B, 1, H, W) for a map, (H*W, 1) for a token matrix."""
        if y_a.dim() == 2:
            logit = F.linear(y_a, self.gate_weight)
        elif y_a.stride(1) == 1:
            # channels_last slice: a matrix-vector product on the (B, H, W, C_a) view, no copy
            logit = F.linear(y_a.permute(0, 2, 3, 1), self.gate_weight).permute(0, 3, 1, 2)
        else:
            logit = F.conv2d(y_a, self.gate_weight[:, :, None, None])
        return F.hardsigmoid(logit, inplace=True)

    def _finish_attention_half(self, y_a: torch.Tensor) -> None:
        """In place, no autograd: ``y_a = y_a * gate(y_a) [* attn_scale] + attn_shift``, for y_a the
        attention half of a map or of a token matrix."""
        g = self._gate(y_a)
        per_channel = (1, -1) if y_a.dim() == 2 else self.attn_shift.shape
        shift = self.attn_shift.view(per_channel)
        if self.attn_scale is None:
            torch.addcmul(shift, y_a, g, out=y_a)
        else:
            y_a.mul_(g)
            torch.addcmul(shift, y_a, self.attn_scale.view(per_channel), out=y_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = writes_in_place(self.forward_type)
        if inplace and self.pointwise and (tokens := token_matrix(x)) is not None:
            return self._forward_tokens(x, tokens)
        y = self.fc2(dense_activation(self.act, self.fc1(x), inplace))
        if not self.pat_sp:
            return y
        c_a = self.dim_attn
        if inplace:
            self._finish_attention_half(y[:, :c_a])
            return y
        if is_torch_compiling():
            # for inductor: the gate as a channel reduction, fused with the hardsigmoid and the
            # elementwise pass (as a one-output-channel conv it took oneDNN 60-110 us per block)
            y_a = y[:, :c_a]
            g = F.hardsigmoid((y_a * self.gate_weight.view(1, -1, 1, 1)).sum(1, keepdim=True))
            if self.attn_scale is not None:
                g = g * self.attn_scale
            return torch.cat((y_a * g + self.attn_shift, y[:, c_a:]), dim=1)
        if self.export_form == "split":
            return self._finish_in_blocks(y)
        # Out-of-place (export) form without a split: the gate's 1x1 conv reads all channels (zero
        # weight on the conv half) and one elementwise pass finishes the attention half and leaves
        # the conv half as it is: y * (g * on + off) + shift, on/off/shift zero-padded per channel.
        rest = self.dim - c_a
        g = F.hardsigmoid(F.conv2d(y, self._full_width_gate_weight()))  # (B, 1, H, W)
        scale = torch.ones_like(self.attn_shift) if self.attn_scale is None else self.attn_scale
        pad = y.new_zeros(1, rest, 1, 1)
        on = torch.cat((scale, pad), dim=1)
        off = torch.cat((torch.zeros_like(scale), pad + 1), dim=1)
        return y * (g * on + off) + torch.cat((self.attn_shift, pad), dim=1)

    def _full_width_gate_weight(self) -> torch.Tensor:
        """PAT_sp's gate as a (1, C, 1, 1) conv weight over all channels: zero on the conv half."""
        pad = self.gate_weight.new_zeros(1, self.dim - self.dim_attn)
        return torch.cat((self.gate_weight, pad), dim=1)[:, :, None, None]

    def _finish_in_blocks(self, y: torch.Tensor) -> torch.Tensor:
        """The PAT_sp half of ``export_form='split'`` (onnxruntime's), in ops that onnxruntime runs in
        its blocked channel layout, so ``y`` never goes back to NCHW: the gate's logit by a C -> 1 conv
        (zero weight on the conv half), spread over the C channels by a 1 -> C conv whose bias 3 on the
        conv half saturates the hardsigmoid at exactly 1 there, one product, and the shift (and a kept
        ``attn_scale``) as an eval-mode BatchNorm, which onnxruntime runs as a per-channel conv."""
        c, c_a = self.dim, self.dim_attn
        rest = c - c_a
        spread_w = torch.cat((y.new_ones(c_a), y.new_zeros(rest))).view(c, 1, 1, 1)
        spread_b = torch.cat((y.new_zeros(c_a), y.new_full((rest,), 3.0)))
        g = F.hardsigmoid(F.conv2d(F.conv2d(y, self._full_width_gate_weight()), spread_w, spread_b))
        ones = y.new_ones(c)
        scale = ones if self.attn_scale is None else torch.cat((self.attn_scale.view(-1), y.new_ones(rest)))
        shift = torch.cat((self.attn_shift.view(-1), y.new_zeros(rest)))
        return F.batch_norm(y * g, torch.zeros_like(ones), ones, scale, shift, False, 0.0, 0.0)

    def fc1_halves(self, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        """fc1's weight as two (in, hidden) matrices, for its first ``split`` input channels and the
        rest, so that ``fc1([a | b]) = bias + a @ first + b @ rest``; kept by :func:`_derived`."""
        w = self.fc1.weight
        return _derived(self, "_fc1_cache", (split,), w, lambda: (
            w.flatten(1)[:, :split].t().contiguous(), w.flatten(1)[:, split:].t().contiguous()))

    def _forward_tokens(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One image, in place: both 1x1 convs as matrix products on the (H*W, C) token matrix, the
        activation and the PAT_sp half in the hidden/output matrices themselves; the result is
        returned as a channels_last map view of the output matrix."""
        return self.after_fc1_tokens(self.fc1.linear(tokens), x.shape[2], x.shape[3])

    def after_fc1_tokens(self, h: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The rest of :meth:`_forward_tokens` from fc1's (H*W, hidden) output ``h`` (overwritten)."""
        # the activation on the hidden map view: one image keeps PyTorch's generic CPU kernel, which
        # measured faster here than oneDNN's on the matrix itself (see dense_activation)
        h_map = token_map(h, height, width)
        a_map = dense_activation(self.act, h_map, inplace=True)
        if a_map is not h_map:  # an activation without an in-place form
            h = a_map.permute(0, 2, 3, 1).reshape(h.shape)
        y = self.fc2.linear(h)
        if self.pat_sp:
            if (kernels := _one_image_kernels(y)) is not None and y.is_contiguous():  # one_image.cpp
                scale = self.attn_scale.view(-1) if self.attn_scale is not None else y.new_empty(0)
                kernels.pat_sp_finish_(y, self.gate_weight.view(-1), self.attn_shift.view(-1), scale)
            else:
                self._finish_attention_half(y[:, : self.dim_attn])
        return token_map(y, height, width)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, pat_sp={self.pat_sp}, forward_type={self.forward_type!r}, "
                f"export_form={self.export_form!r}")


class FusedBlock(nn.Module):
    """v1 ``x + mlp(mixer(x))`` or v2 ``x = x + mixer(x); x + mlp(x)`` (drop-path is identity).

    In the ``'slicing'`` form (eager, no autograd) the residual is added in place into the branch's
    own freshly computed output; a graph capture traces the out-of-place sum (inductor's weight
    freezing for ``torch.compile`` cannot take in-place writes that feed a conv).
    """

    def __init__(self, mixer: nn.Module, mlp: FusedMlp, mixer_residual: bool, forward_type: str = "slicing"):
        super().__init__()
        self.mixer = mixer
        self.mlp = mlp
        self.mixer_residual = bool(mixer_residual)
        self.forward_type = forward_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if writes_in_place(self.forward_type):
            if self.mixer_residual:
                x = self.mixer(x).add_(x)
                return self.mlp(x).add_(x)
            if (self.mlp.pointwise and x.shape[-2] * x.shape[-1] > 1
                    and (tokens := token_matrix(x)) is not None):
                return self._forward_tokens(x, tokens)
            return self.mlp(self.mixer(x)).add_(x)
        if self.mixer_residual:
            x = x + self.mixer(x)
            return x + self.mlp(x)
        return x + self.mlp(self.mixer(x))

    def _forward_tokens(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One image, in place, on its (H*W, C) token matrix: the mixer's two halves go straight
        into fc1 without being assembled, ``fc1([conv | rest * gate]) = bias + conv @ W_a +
        rest @ (gate * W_b)`` (the gate scales W_b's rows, C_u x hidden, instead of the H*W x C_u
        half; PConv's untouched half is a view of x), then the rest of the MLP and the residual."""
        mixer, cp = self.mixer, self.mixer.dim_conv
        w_conv, w_rest = self.mlp.fc1_halves(cp)
        if isinstance(mixer, FusedPATSelf):
            conv, rest, _ = mixer.token_halves(x, tokens)
        else:  # PAT_ch (the gate scales fc1's rows) or PConv
            conv, rest = mixer.conv(x[:, :cp]), tokens[:, cp:]
            if isinstance(mixer, FusedPATChannel):
                w_rest = mixer.gated_rows(rest, w_rest)
        # (fused fc1 always has a bias: the folded BN's shift; a channels_last conv map's tokens are a view)
        h = torch.addmm(self.mlp.fc1.bias, conv.permute(0, 2, 3, 1).reshape(-1, cp), w_conv).addmm_(rest, w_rest)
        return self.mlp.after_fc1_tokens(h, x.shape[2], x.shape[3]).add_(x)

    def extra_repr(self) -> str:
        return f"mixer_residual={self.mixer_residual}, forward_type={self.forward_type!r}"


# --------------------------------------------------------------------------- structure-aware fusion
def _fuse_mlp(mlp: Mlp, in_scale: torch.Tensor | None, in_shift: torch.Tensor | None, forward_type: str) -> FusedMlp:
    """Fold ``mlp.norm`` (and an optional per-input-channel affine ``in_scale*z + in_shift``
    feeding fc1) into fc1; merge PAT_sp into fc2."""
    w1 = _weight64(mlp.fc1)  # (hidden, C, 1, 1)
    b1 = _bias64(mlp.fc1, w1.shape[0])
    if in_shift is not None:
        b1 = b1 + w1[:, :, 0, 0] @ in_shift
    if in_scale is not None:
        w1 = w1 * in_scale.view(1, -1, 1, 1)
    s_m, t_m = _bn_scale_shift(mlp.norm)
    fc1 = _new_conv(mlp.fc1, w1 * s_m.view(-1, 1, 1, 1), b1 * s_m + t_m)
    act = copy.deepcopy(mlp.act)

    sp = mlp.pat_sp
    if isinstance(sp, nn.Identity):
        return FusedMlp(fc1, act, _copy_conv(mlp.fc2), 0, forward_type)
    if not isinstance(sp, PATSpatial):
        raise UserError(f"mlp.pat_sp is a {type(sp).__name__}; fuse knows PATSpatial or Identity")
    w2 = _weight64(mlp.fc2)[:, :, 0, 0]  # (C, hidden)
    b2 = _bias64(mlp.fc2, w2.shape[0])
    c_a = sp.dim_attn
    s_a, t_a = _bn_scale_shift(sp.attn_norm)
    s_c, t_c = _bn_scale_shift(sp.conv_norm)
    w_c = _weight64(sp.conv)[:, :, 0, 0]  # (C_c, C_c)
    w_g = _weight64(sp.attn_conv)[0, :, 0, 0]  # (C_a,)
    # Fold s_a into fc2's attention rows when dividing the gate weight by it is harmless.
    fold_scale = bool(torch.all(s_a.abs() >= _MIN_FOLD_SCALE))
    a_scale = s_a if fold_scale else torch.ones_like(s_a)
    rows = torch.cat((a_scale[:, None] * w2[:c_a], w_c @ (s_c[:, None] * w2[c_a:])))
    bias = torch.cat((a_scale * b2[:c_a], w_c @ (s_c * b2[c_a:] + t_c)))
    fc2 = _new_conv(mlp.fc2, rows[:, :, None, None], bias)
    fused = FusedMlp(fc1, act, fc2, c_a, forward_type)
    with torch.no_grad():
        fused.gate_weight.copy_((w_g / a_scale)[None, :])
        fused.attn_shift.copy_(t_a.view(1, -1, 1, 1))
    if not fold_scale:
        fused.attn_scale = s_a.view(1, -1, 1, 1).to(fc2.weight)
    return fused


def _fuse_block(block: PartialBlock, forward_type: str) -> FusedBlock:
    mixer = block.mixer
    in_scale = in_shift = None
    if isinstance(mixer, PATChannel):
        if block.mixer_residual:
            raise UserError("a PAT_ch block with its own residual is not a PartialNet block; fuse cannot fold it")
        s_n, t_n = _bn_scale_shift(mixer.norm)
        ones = torch.ones(mixer.dim_conv, dtype=torch.float64, device=s_n.device)
        in_scale = torch.cat((ones, s_n))
        in_shift = torch.cat((torch.zeros_like(ones), t_n))
        new_mixer: nn.Module = FusedPATChannel.from_layer(mixer, forward_type)
    elif isinstance(mixer, PATSelf):
        new_mixer = FusedPATSelf.from_layer(mixer)
    elif isinstance(mixer, PartialConv):
        new_mixer = copy.deepcopy(mixer)
        new_mixer.forward_type = forward_type
    else:
        raise UserError(f"block mixer {type(mixer).__name__} is unknown to fuse (PATChannel, PATSelf, PartialConv)")
    mlp = _fuse_mlp(block.mlp, in_scale, in_shift, forward_type)
    return FusedBlock(new_mixer, mlp, block.mixer_residual, forward_type)


def is_fused(model: nn.Module) -> bool:
    return isinstance(getattr(model, "stem", None), FusedStem)


@torch.no_grad()
def fuse(model: nn.Module, channels_last: bool = True, forward_type: str = "slicing") -> nn.Module:
    """A new, fused inference copy of ``model`` (``model`` itself is not modified).

    ``model`` is a :class:`PartialChannelNet` (every ``partialnet_*``, ``patnet_*`` and
    ``fasternet_*`` variant) in train or eval mode; BNs are folded with their running
    statistics, so the result equals ``model.eval()``'s outputs. The copy is returned in eval
    mode on ``model``'s device/dtype. ``channels_last`` makes it move its input to channels_last
    (fast 1x1 convs on CPU); ``forward_type`` is ``'slicing'`` (in-place writes into its own
    intermediates, PConv slicing form) or ``'split_cat'`` (out-of-place, for export).
    """
    if forward_type not in FORWARD_TYPES:
        raise UserError(f"forward_type {forward_type!r} is unknown; use 'slicing' or 'split_cat'")
    if not isinstance(model, PartialChannelNet):
        raise UserError(
            f"fuse supports PartialChannelNet models (partialnet_*, patnet_*, fasternet_*), not {type(model).__name__}"
        )
    if is_fused(model):
        out = copy.deepcopy(model).eval()
        out.stem.channels_last = channels_last
        set_forward_type(out, forward_type)
        return _set_spatial_weight_layout(out, channels_last)
    # Build the fused parts from the original (read only), then deep-copy the model with the
    # memo pre-seeded so that each replaced module is swapped for its fused form.
    stem = FusedStem(_fold_conv_bn(model.stem.conv, model.stem.norm), channels_last)
    memo: dict[int, object] = {id(model.stem): stem}
    for stage in model.stages:
        ds = stage.downsample
        if not isinstance(ds, nn.Identity):
            memo[id(ds)] = _fold_conv_bn(ds.conv, ds.norm)
        for block in stage.blocks:
            memo[id(block)] = _fuse_block(block, forward_type)
    head = getattr(model, "conv_head", None)
    if isinstance(head, nn.Conv2d) and is_pointwise(head):
        memo[id(head)] = _copy_conv(head)
    fused = copy.deepcopy(model, memo)
    return _set_spatial_weight_layout(fused.eval(), channels_last)


def _set_spatial_weight_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """Store every spatial (non-1x1) conv weight channels_last when the model runs channels_last,
    NCHW-contiguous otherwise. PyTorch's CPU conv kernels want the weight in the input's layout and
    otherwise copy it on every call (the partial 3x3 convs at batch 1: about 0.3 ms of PartialNet-T0's
    and FasterNet-T0's 2-thread latency, ``bench/runtimes.py``). Values are unchanged."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and not is_pointwise(m) and not m.weight.is_contiguous(memory_format=fmt):
            m.weight = nn.Parameter(m.weight.detach().contiguous(memory_format=fmt), m.weight.requires_grad)
    return model


def _fused_modules(model: nn.Module) -> Iterable[nn.Module]:
    for m in model.modules():
        if isinstance(m, (FusedPATChannel, FusedMlp, FusedPATSelf, FusedBlock, PartialConv)):
            yield m


def check_export_form(export_form: str) -> str:
    """``export_form`` itself when it is one of :data:`EXPORT_FORMS`, else a one-line :class:`UserError`."""
    if export_form not in EXPORT_FORMS:
        raise UserError(f"export_form={export_form!r} is unknown; use one of {', '.join(EXPORT_FORMS)}")
    return export_form


def set_export_form(model: nn.Module, export_form: str) -> nn.Module:
    """Set the out-of-place form of every fused PAT_ch and MLP of ``model`` (in place): ``'full_width'``
    (statistics and PAT_sp's gate over all channels, no split feeding two consumers: OpenVINO's fastest)
    or ``'split'`` (onnxruntime's fastest: see :class:`FusedPATChannel` and :class:`FusedMlp`). Both
    compute the same outputs; exported graphs and ``'split_cat'`` eager calls use it."""
    check_export_form(export_form)
    for m in model.modules():
        if isinstance(m, (FusedPATChannel, FusedMlp)):
            m.export_form = export_form
    return model


def set_forward_type(model: nn.Module, forward_type: str) -> nn.Module:
    """Switch every fused module (and PConv) of ``model`` to ``'slicing'`` or ``'split_cat'``, in place."""
    if forward_type not in FORWARD_TYPES:
        raise UserError(f"forward_type {forward_type!r} is unknown; use 'slicing' or 'split_cat'")
    for m in _fused_modules(model):
        m.forward_type = forward_type
    return model
