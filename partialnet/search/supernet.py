"""DPConv supernet: every searchable split (PConv / PAT_ch / PAT_sf) gets a soft split ratio.

Weight sharing by masking the first ``k`` channels
--------------------------------------------------
A layer of width ``C`` with candidate ratios ``r`` has candidate conv widths ``k_r`` (the
static model's ``conv_channels(C, r)``). For a weight vector ``w`` over the candidates (a
Gumbel-Softmax sample, or an exact one-hot), channel ``j`` is on the conv side with weight

    m_j = sum_{r : k_r > j} w_r          (1 for j < k_min, 0 for j >= k_max)

and on the other side (identity / attention) with weight ``a_j = 1 - m_j``. One forward:

- conv side: one 3x3 conv on the first ``k_max`` channels, input channels masked by ``m``;
- other side: one operator on the last ``C - k_min`` channels. Everything it does *across*
  channels sees its inputs masked by ``a`` (PAT_ch: the mean/std statistics entering the full
  C_u x C_u (1,2) conv; PAT_sf: a LayerNorm whose mean/variance are ``a``-weighted, the tokens
  entering ``qkv`` and the attention output entering ``proj``); per-channel operations run
  unmasked; BatchNorms normalise with batch statistics per channel and update their running
  statistics only in proportion to ``a`` (an inactive channel's running stats are untouched);
- output ``y_j = m_j * conv_j + a_j * other_j``.

PAT_sf's multi-head split depends on the attention width (heads = ``heads_for(C - k_r, 4)``,
head_dim, scale): the attention core (q k^T, RPE bias, softmax, @ v) runs per candidate on
the trailing ``C - k_r`` channels of the shared q/k/v -- only the sampled candidate when the
weights are exactly one-hot (hard sampling, validation), all candidates weighted by ``w``
when soft. The RPE table has ``max heads`` rows; a candidate with ``h`` heads uses the first ``h``.

Sharing: the static model with ratio ``r`` uses the *leading* ``k_r x k_r`` block of the conv
weight and the *trailing* ``C - k_r`` slice of every attention-side tensor (per q/k/v block
for ``qkv``). With exactly one-hot weights the supernet forward equals the static model built
with that ratio and those weight slices (:func:`extract_static`) up to float rounding, in
train and eval mode, running statistics included (tested).

Candidates: a ratio whose conv width leaves fewer than one channel on either side at a
layer's width is dropped for that layer, and so is one whose width repeats an earlier
candidate's (same architecture); any width works, not only powers of two.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from partialnet.errors import UserError
from partialnet.models.layers import PartialConv, PATChannel, PATSelf, StatsBatchNorm2d, conv_channels, heads_for
from partialnet.models.layers.rpe import EuclideanRPE
from partialnet.models.layers.srm_stats import srm_statistics
from partialnet.models.module_utils import init_weights_, replace_submodule
from partialnet.search.candidates import parse_number_list
from partialnet.search.masked_mlp import (
    DEFAULT_MLP_CANDIDATES, MaskedMlp, act_name, copy_masked_to_static_mlp, copy_static_to_masked_mlp, hidden_widths,
    parse_mlp_candidates, static_mlp,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "LayerSpec",
    "parse_candidates",
    "layer_channels",
    "MaskedPartialConv",
    "MaskedPATChannel",
    "MaskedPATSelf",
    "layer_specs",
    "to_supernet",
    "static_split",
    "extract_static",
    "masked_modules",
    "arch_choice",
    "onehot_weights",
    "SPACES",
    "searchable_rows",
    "SearchSpaceView",
    "split_rows",
    "mlp_rows",
]

DEFAULT_CANDIDATES = (0.5, 0.25, 0.125, 0.0625)
KINDS = ("pconv", "pat_ch", "pat_sf")
# What is searched: the mixers' split ratio, or that plus each block's MLP hidden width.
SPACES = ("split", "split+mlp")


# --------------------------------------------------------------------------- candidates
def parse_candidates(values) -> list[float]:
    """Candidate ratios as floats in (0, 1), in the given order; numbers or strings like ``'1/8'``."""
    return parse_number_list(values, "search.candidates", lambda r: 0.0 < r < 1.0, "a ratio in (0, 1)",
                             "[0.5,0.25,0.125,0.0625]")


def layer_channels(dim: int, candidates: Sequence[float]) -> list[int | None]:
    """Conv width ``k`` of every candidate at width ``dim``; None where it is dropped (fewer than
    one channel on a side, or the same width as an earlier candidate)."""
    ks: list[int | None] = []
    for r in candidates:
        try:
            k = conv_channels(dim, r)
        except UserError:
            k = None
        ks.append(None if k in ks else k)
    return ks


@dataclass
class LayerSpec:
    """One searchable layer: where it is, what it is, and its candidate conv widths."""

    index: int
    name: str  # module path inside the backbone, e.g. "stages.3.blocks.1.mixer" (or ".mlp")
    kind: str  # 'pconv' | 'pat_ch' | 'pat_sf' | 'mlp'
    dim: int
    candidates: list[float | None]  # conv ratios (mlp: expansion ratios); None = padding to the common K
    ks: list[int | None]  # conv widths (mlp: hidden widths); None = dropped or padding
    extra: dict = field(default_factory=dict)  # pat_sf: num_heads, attn_drop, proj_drop, num_buckets; mlp: act, pat_sp, own

    @property
    def valid(self) -> list[bool]:
        return [k is not None for k in self.ks]

    @property
    def k_min(self) -> int:
        return min(k for k in self.ks if k is not None)

    @property
    def k_max(self) -> int:
        return max(k for k in self.ks if k is not None)

    def heads(self, c: int) -> int:
        return heads_for(self.dim - self.ks[c], self.extra["num_heads"])

    def describe(self) -> str:
        return f"layer {self.index} ({self.name}, {self.kind}, width {self.dim})"

    def reference_index(self, ratio: float = 0.25) -> int:
        """The candidate with the conv width of ``ratio`` if there is one, else the middle one (by width).

        An MLP row's reference is the model's own expansion (``ratio`` is a split ratio)."""
        if self.kind == "mlp":
            k_ref = int(self.dim * self.extra["own"])
        else:
            try:
                k_ref = conv_channels(self.dim, ratio)
            except UserError:
                k_ref = None
        for c, k in enumerate(self.ks):
            if k is not None and k == k_ref:
                return c
        order = sorted((k, c) for c, k in enumerate(self.ks) if k is not None)
        return order[len(order) // 2][1]


# --------------------------------------------------------------------------- masked ops
def _masked_batch_norm(
    bn: nn.BatchNorm2d, x: torch.Tensor, active: torch.Tensor, lo: int = 0, hi: int | None = None
) -> torch.Tensor:
    """``bn`` applied to ``x``, which holds channels ``[lo, hi)`` of ``bn``; the running-statistics
    update of each channel is scaled by ``active`` (its weight on the BN's side of the split).

    The normalisation is the module's own (batch statistics in training, running statistics in
    eval, :class:`StatsBatchNorm2d`'s batch-of-one rule), so an active channel is computed exactly
    as in the static model and gets the static update; an inactive one (active = 0) keeps its
    running statistics. The batch statistics come from the same fused kernel (no extra pass).
    """
    hi = bn.num_features if hi is None else hi
    w, b = bn.weight[lo:hi], bn.bias[lo:hi]
    if not bn.track_running_stats:
        return F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
    rm, rv = bn.running_mean[lo:hi], bn.running_var[lo:hi]
    if not bn.training or (isinstance(bn, StatsBatchNorm2d) and x.numel() == x.shape[1]):
        return F.batch_norm(x, rm, rv, w, b, False, 0.0, bn.eps)
    if lo == 0:  # count each forward once, as nn.BatchNorm2d does
        bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    new_rm, new_rv = rm.clone(), rv.clone()
    y = F.batch_norm(x, new_rm, new_rv, w, b, True, momentum, bn.eps)
    with torch.no_grad():
        act = active.detach().to(rm.dtype)
        rm.lerp_(new_rm, act)
        rv.lerp_(new_rv, act)
    return y


def _masked_layer_norm2d(ln: LayerNorm2d, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels of an NCHW map whose mean/variance count channel j with weight a[j].

    With a in {0, 1} this is exactly ``F.layer_norm`` over the active channels (biased
    variance, the module's eps); the affine weight/bias apply per channel.
    """
    a4 = a.view(1, -1, 1, 1).to(x.dtype)
    denom = a.sum().to(x.dtype)
    mean = (x * a4).sum(dim=1, keepdim=True) / denom
    xc = x - mean
    var = (xc * xc * a4).sum(dim=1, keepdim=True) / denom
    y = xc * torch.rsqrt(var + ln.eps)
    return y * ln.weight.view(1, -1, 1, 1) + ln.bias.view(1, -1, 1, 1)


class _MaskedSplit(nn.Module):
    """Shared machinery: candidate widths, the cumulative mask, the conv side and the output mix."""

    kind = ""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.dim = spec.dim
        self.ks = list(spec.ks)
        self.k_min, self.k_max = spec.k_min, spec.k_max
        self.dim_other = self.dim - self.k_min  # width of the attention/identity operator
        band = torch.zeros(len(self.ks), self.k_max - self.k_min)
        for c, k in enumerate(self.ks):
            if k is not None:
                band[c, : k - self.k_min] = 1.0
        self.register_buffer("band", band, persistent=False)
        self.conv = nn.Conv2d(self.k_max, self.k_max, 3, 1, 1, bias=False)
        self.arch_weights: torch.Tensor | None = None  # (K,) set by arch_choice()
        self.arch_index: int | None = None  # the candidate when arch_weights is exactly one-hot

    # -- set by the controller around each forward
    def _weights(self) -> torch.Tensor:
        if self.arch_weights is None:
            raise RuntimeError(
                f"{type(self).__name__} has no architecture weights; run it inside partialnet.search.arch_choice(...)"
            )
        return self.arch_weights

    def _band_mask(self, x: torch.Tensor) -> torch.Tensor:
        """m_j for j in [k_min, k_max): the conv-side weight of the channels whose side can change."""
        return (self._weights().to(self.band.dtype) @ self.band).to(x.dtype)

    def _segments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Channels [0, k_min) (always conv), [k_min, k_max) (the band), [k_max, C) (never conv).

        One ``split`` (its backward is one ``cat``), rather than overlapping slices."""
        return torch.split(x, [self.k_min, self.k_max - self.k_min, self.dim - self.k_max], dim=1)

    def _conv_side(self, xa: torch.Tensor, xb: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The 3x3 conv on [xa | m * xb] (the first k_max channels, band masked)."""
        if xb.shape[1] == 0:
            return self.conv(xa)
        return self.conv(torch.cat((xa, xb * m.view(1, -1, 1, 1)), dim=1))

    def _mix(self, y_conv: torch.Tensor, y_band: torch.Tensor, y_tail: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``[conv | m * conv + (1 - m) * other | other]`` over [0, k_min), the band, [k_max, C)."""
        nb = self.k_max - self.k_min
        if nb == 0:
            return torch.cat((y_conv, y_tail), dim=1)
        ya, yb = torch.split(y_conv, [self.k_min, nb], dim=1)
        m4 = m.view(1, -1, 1, 1)
        return torch.cat((ya, yb * m4 + y_band * (1.0 - m4), y_tail), dim=1)

    def extra_repr(self) -> str:
        ks = [k for k in self.ks if k is not None]
        return f"dim={self.dim}, candidate conv widths={ks}"


class MaskedPartialConv(_MaskedSplit):
    """PConv supernet layer: masked 3x3 conv on the first k_max channels, identity elsewhere."""

    kind = "pconv"

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._band_mask(x)
        xa, xb, xc = self._segments(x)
        return self._mix(self._conv_side(xa, xb, m), xb, xc, m)


class MaskedPATChannel(_MaskedSplit):
    """PAT_ch supernet layer (see the module docstring for the masking)."""

    kind = "pat_ch"
    std_eps = PATChannel.std_eps

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        u = self.dim_other
        self.srm_conv = nn.Conv2d(u, u, (1, 2), bias=False)
        self.srm_norm = StatsBatchNorm2d(u)
        self.srm_gate = nn.Hardsigmoid()
        self.norm = nn.BatchNorm2d(u)
        init_weights_(self)

    def _stats(self, x_u: torch.Tensor) -> torch.Tensor:
        """[mean, std] per channel, (B, c, 1, 2), as PATChannel.channel_gate computes them."""
        mean, std = srm_statistics(x_u, self.std_eps)
        return torch.stack((mean, std), dim=-1).unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._band_mask(x)
        xa, xb, xc = self._segments(x)
        nb = xb.shape[1]
        a_band = 1.0 - m
        # The untouched side works on [xb | xc] without materialising it: only the (B, U, 1, 2)
        # statistics are concatenated; per-channel ops run per segment.
        stats = torch.cat((self._stats(xb) * a_band.view(1, -1, 1, 1), self._stats(xc)), dim=1)
        a = torch.cat((a_band, torch.ones(xc.shape[1], dtype=a_band.dtype, device=a_band.device)))
        gate = self.srm_gate(_masked_batch_norm(self.srm_norm, self.srm_conv(stats), a))
        g_b, g_c = torch.split(gate, [nb, xc.shape[1]], dim=1)
        u = self.dim_other
        y_b = _masked_batch_norm(self.norm, xb * g_b, a_band, 0, nb) if nb else xb
        y_c = _masked_batch_norm(self.norm, xc * g_c, a[nb:], nb, u)
        return self._mix(self._conv_side(xa, xb, m), y_b, y_c, m)


class MaskedPATSelf(_MaskedSplit):
    """PAT_sf supernet layer (see the module docstring for the masking and the per-candidate heads)."""

    kind = "pat_sf"

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        u = self.dim_other
        ex = spec.extra
        self.heads = [spec.heads(c) if k is not None else None for c, k in enumerate(self.ks)]
        self.norm = LayerNorm2d(u)
        self.qkv = nn.Linear(u, 3 * u, bias=False)
        self.rpe = EuclideanRPE(max(h for h in self.heads if h is not None), int(ex["num_buckets"]))
        self.attn_drop = nn.Dropout(float(ex["attn_drop"]))
        self.proj = nn.Linear(u, u)
        self.proj_drop = nn.Dropout(float(ex["proj_drop"]))
        init_weights_(self)

    def _core(self, q, k, v, c: int, height: int, width: int) -> torch.Tensor:
        """Candidate c's attention on its trailing C - k_c channels; returns (B, N, C - k_c)."""
        off = self.ks[c] - self.k_min
        b, n, _ = q.shape
        cu = self.dim - self.ks[c]
        h = self.heads[c]
        hd = cu // h

        def heads(t):
            return t[..., off:].reshape(b, n, h, hd).transpose(1, 2)

        qh, kh, vh = heads(q), heads(k), heads(v)
        attn = (qh * hd**-0.5) @ kh.transpose(-2, -1)
        attn = attn + self.rpe.bias_table[:h][:, self.rpe.bucket_index(height, width)]
        attn = self.attn_drop(attn.softmax(dim=-1))
        return (attn @ vh).transpose(1, 2).reshape(b, n, cu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._band_mask(x)
        w = self._weights()
        xa, xb, xc = self._segments(x)
        a = torch.cat((1.0 - m, torch.ones(xc.shape[1], dtype=m.dtype, device=m.device)))
        x_u = torch.cat((xb, xc), dim=1)
        b, u, height, width = x_u.shape
        n = height * width
        tokens = _masked_layer_norm2d(self.norm, x_u, a).flatten(2).transpose(1, 2) * a.to(x.dtype)
        q, k, v = self.qkv(tokens).reshape(b, n, 3, u).unbind(2)
        chosen = [self.arch_index] if self.arch_index is not None else [c for c, kc in enumerate(self.ks) if kc is not None]
        out = None
        for c in chosen:
            o = self._core(q, k, v, c, height, width) * w[c].to(x.dtype)
            off = self.ks[c] - self.k_min
            if off:
                o = F.pad(o, (off, 0))
            out = o if out is None else out + o
        y_u = self.proj_drop(self.proj(out)).transpose(1, 2).reshape(b, u, height, width)
        y_b, y_c = torch.split(y_u, [xb.shape[1], xc.shape[1]], dim=1)
        return self._mix(self._conv_side(xa, xb, m), y_b, y_c, m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={[h for h in self.heads if h is not None]}"


_MASKED = {"pconv": MaskedPartialConv, "pat_ch": MaskedPATChannel, "pat_sf": MaskedPATSelf}


# --------------------------------------------------------------------------- static <-> masked
def _kind_of(split: nn.Module) -> str:
    if isinstance(split, PATSelf):
        return "pat_sf"
    if isinstance(split, PATChannel):
        return "pat_ch"
    if isinstance(split, PartialConv):
        return "pconv"
    raise UserError(f"{type(split).__name__} is not a searchable split (PConv, PAT_ch or PAT_sf)")


def static_split(spec: LayerSpec, ratio: float) -> nn.Module:
    """A fresh static module of ``spec``'s kind and width at ``ratio`` (an MLP row: expansion ``ratio``)."""
    if spec.kind == "mlp":
        return static_mlp(spec.dim, ratio, spec.extra["act"], spec.extra["pat_sp"])
    if spec.kind == "pconv":
        return PartialConv(spec.dim, ratio)
    if spec.kind == "pat_ch":
        return PATChannel(spec.dim, ratio)
    ex = spec.extra
    return PATSelf(
        spec.dim, ratio, num_heads=ex["num_heads"], attn_drop=ex["attn_drop"], proj_drop=ex["proj_drop"],
        num_buckets=ex["num_buckets"],
    )


def _shared_view(masked: _MaskedSplit, name: str, static_shape: torch.Size, k: int) -> torch.Tensor:
    """The view of ``masked``'s tensor ``name`` that a static split with conv width ``k`` uses."""
    t = masked.get_parameter(name) if name in dict(masked.named_parameters()) else masked.get_buffer(name)
    if name.startswith("conv."):
        return t[:k, :k]
    if name.endswith("num_batches_tracked"):
        return t
    if name == "qkv.weight":
        u = masked.dim_other
        cu = static_shape[1]
        return t.view(3, u, u)[:, u - cu :, u - cu :]
    if name == "rpe.bias_table":
        return t[: static_shape[0]]
    return t[tuple(slice(full - s, full) for full, s in zip(t.shape, static_shape))]


def _static_tensors(static: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from static.named_parameters()
    yield from static.named_buffers()


@torch.no_grad()
def copy_static_to_masked(static: nn.Module, masked: _MaskedSplit) -> None:
    """Write a static split's weights into the slices of ``masked`` it corresponds to."""
    for name, t in _static_tensors(static):
        view = _shared_view(masked, name, t.shape, static.dim_conv)
        if name == "rpe.bias_table":
            rows = min(view.shape[0], t.shape[0])
            view[:rows].copy_(t[:rows])
        else:
            view.copy_(t.reshape(view.shape) if name == "qkv.weight" else t)


@torch.no_grad()
def copy_masked_to_static(masked: _MaskedSplit, static: nn.Module) -> None:
    """Fill a static split (built by :func:`static_split` for one candidate) from ``masked``'s slices."""
    for name, t in _static_tensors(static):
        view = _shared_view(masked, name, t.shape, static.dim_conv)
        t.copy_(view.reshape(t.shape))


def _num_heads_request(split: PATSelf, num_heads: int | None, where: str) -> int:
    req = getattr(split, "num_heads_requested", None) or num_heads or 4
    if heads_for(split.dim_untouched, req) != split.num_heads:
        raise UserError(
            f"{where}: PAT_sf has {split.num_heads} heads, which {req} requested heads do not give at "
            f"{split.dim_untouched} attention channels; pass num_heads to to_supernet"
        )
    return int(req)


def _check_space(space: str) -> str:
    if space not in SPACES:
        raise UserError(f"search.space={space!r} is unknown; choose one of {', '.join(SPACES)}")
    return space


def searchable_rows(model: nn.Module, space: str = "split") -> list[nn.Module]:
    """The modules a search over ``space`` varies, one per row: the splits, then (``split+mlp``) the MLPs."""
    rows = list(model.searchable_splits())
    if _check_space(space) == "split+mlp":
        if not hasattr(model, "searchable_mlps"):
            raise UserError(f"{type(model).__name__} has no searchable MLPs; use search.space=split")
        rows += list(model.searchable_mlps())
    return rows


class SearchSpaceView(nn.Module):
    """``model`` whose ``searchable_splits()`` lists every row of ``space`` (for the cost table,
    which measures each row's candidates with :func:`static_split`). Forward = the model's."""

    def __init__(self, model: nn.Module, space: str):
        super().__init__()
        self.model = model
        self._rows = searchable_rows(model, space)

    def searchable_splits(self) -> list[nn.Module]:
        return list(self._rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def split_rows(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
    return [s for s in specs if s.kind != "mlp"]


def mlp_rows(specs: Sequence[LayerSpec]) -> list[LayerSpec]:
    return [s for s in specs if s.kind == "mlp"]


def _mlp_specs(model: nn.Module, candidates: list[float], start: int) -> list[LayerSpec]:
    names = {id(m): n for n, m in model.named_modules()}
    specs = []
    for i, mlp in enumerate(model.searchable_mlps()):
        spec = LayerSpec(
            index=start + i, name=names[id(mlp)], kind="mlp", dim=mlp.dim, candidates=list(candidates),
            ks=hidden_widths(mlp.dim, candidates),
            extra=dict(act=act_name(mlp), pat_sp=not isinstance(mlp.pat_sp, nn.Identity), own=float(mlp.ratio)),
        )
        if not any(spec.valid):
            raise UserError(f"{spec.describe()}: no search.mlp_candidates value gives a hidden width >= 1; "
                            f"use ratios >= {1 / mlp.dim:.4g}")
        specs.append(spec)
    return specs


def _pad(specs: list[LayerSpec]) -> list[LayerSpec]:
    """Every row padded to the same number of candidates (None = not available)."""
    k = max(len(s.ks) for s in specs)
    for s in specs:
        s.candidates = list(s.candidates) + [None] * (k - len(s.candidates))
        s.ks = list(s.ks) + [None] * (k - len(s.ks))
    return specs


def layer_specs(
    model: nn.Module, candidates: Sequence[float] = DEFAULT_CANDIDATES, num_heads: int | None = None,
    space: str = "split", mlp_candidates: Sequence[float] = DEFAULT_MLP_CANDIDATES,
) -> list[LayerSpec]:
    """One :class:`LayerSpec` per row of ``searchable_rows(model, space)``: every
    ``model.searchable_splits()`` module in network order, then (``split+mlp``) every MLP."""
    candidates = parse_candidates(list(candidates))
    if not hasattr(model, "searchable_splits"):
        raise UserError(f"{type(model).__name__} has no searchable splits; search PartialNet, PATNet or FasterNet models")
    if _check_space(space) == "split+mlp":
        mlp_candidates = parse_mlp_candidates(None if mlp_candidates is None else list(mlp_candidates))
        searchable_rows(model, space)  # the model lists its MLPs
    names = {id(m): n for n, m in model.named_modules()}
    specs: list[LayerSpec] = []
    for index, split in enumerate(model.searchable_splits()):
        kind = _kind_of(split)
        spec = LayerSpec(
            index=index, name=names[id(split)], kind=kind, dim=split.dim, candidates=candidates,
            ks=layer_channels(split.dim, candidates),
        )
        if not any(spec.valid):
            raise UserError(
                f"{spec.describe()}: none of the candidate ratios {candidates} leaves at least one channel on "
                f"both sides; add a ratio in [{1 / split.dim:.4g}, {(split.dim - 1) / split.dim:.4g}] to search.candidates"
            )
        if kind == "pat_sf":
            spec.extra = dict(
                num_heads=_num_heads_request(split, num_heads, spec.describe()),
                attn_drop=float(split.attn_drop.p),
                proj_drop=float(split.proj_drop.p),
                num_buckets=int(split.rpe.num_buckets),
            )
        specs.append(spec)
    if space == "split+mlp":
        specs = _pad(specs + _mlp_specs(model, mlp_candidates, len(specs)))
    return specs


def to_supernet(
    model: nn.Module, candidates: Sequence[float] = DEFAULT_CANDIDATES, num_heads: int | None = None,
    space: str = "split", mlp_candidates: Sequence[float] = DEFAULT_MLP_CANDIDATES,
) -> list[LayerSpec]:
    """Turn ``model`` (any PartialNet / PATNet / FasterNet) into a supernet, **in place**.

    Every split of ``model.searchable_splits()`` is replaced by its masked counterpart; the
    static split's weights are copied into the slices they correspond to (so the one-hot
    supernet at the model's own ratios is the model), the rest is initialised like the
    backbone. Returns one :class:`LayerSpec` per row of ``space``, in that order. With
    ``split+mlp`` every MLP becomes a :class:`MaskedMlp` of the largest candidate width.
    """
    specs = layer_specs(model, candidates, num_heads, space, mlp_candidates)
    for spec, split in zip(specs, searchable_rows(model, space)):
        if spec.kind == "mlp":
            masked = MaskedMlp(spec, split)
            if split.fc1.out_channels <= spec.k_max:
                copy_static_to_masked_mlp(split, masked)
        else:
            masked = _MASKED[spec.kind](spec)
            if spec.k_min <= split.dim_conv <= spec.k_max:
                copy_static_to_masked(split, masked)
        ref = next(p for p in split.parameters())
        masked.to(device=ref.device, dtype=ref.dtype)
        masked.train(split.training)
        replace_submodule(model, spec.name, masked)
    return specs


def masked_modules(model: nn.Module, specs: Sequence[LayerSpec]) -> list[nn.Module]:
    return [model.get_submodule(s.name) for s in specs]


def extract_static(model: nn.Module, specs: Sequence[LayerSpec], choice: Sequence[int]) -> nn.Module:
    """The static model of candidate ``choice[l]`` at every layer, with the supernet's weight slices.

    A deep copy of the supernet whose masked rows are replaced by static ones; its state
    dict matches ``create_model(name, ratios=[...], mlp_ratios=[...])``.
    """
    if len(choice) != len(specs):
        raise UserError(f"{len(choice)} choices given for {len(specs)} searchable layers")
    for m in masked_modules(model, specs):
        m.arch_weights, m.arch_index = None, None
    static = copy.deepcopy(model)
    for spec, c in zip(specs, choice):
        if not (0 <= c < len(spec.ks)) or spec.ks[c] is None:
            raise UserError(f"{spec.describe()}: candidate {c} does not exist at this width")
        masked = static.get_submodule(spec.name)
        split = static_split(spec, spec.candidates[c])
        ref = next(p for p in masked.parameters())
        split.to(device=ref.device, dtype=ref.dtype)
        (copy_masked_to_static_mlp if spec.kind == "mlp" else copy_masked_to_static)(masked, split)
        split.train(masked.training)
        replace_submodule(static, spec.name, split)
    return static


# --------------------------------------------------------------------------- architecture weights
def onehot_weights(specs: Sequence[LayerSpec], choice: Sequence[int], device=None) -> torch.Tensor:
    """Exact one-hot weights (L, K) of a per-layer candidate choice."""
    w = torch.zeros(len(specs), len(specs[0].ks) if specs else 0, device=device)
    for l, c in enumerate(choice):
        w[l, c] = 1.0
    return w


@contextlib.contextmanager
def arch_choice(modules: Sequence[_MaskedSplit], weights: torch.Tensor, indices: Sequence[int] | None = None):
    """Run the supernet with per-layer candidate weights ``weights`` (L, K).

    ``indices``: the per-layer candidate when ``weights`` is exactly one-hot in value (hard
    samples, validation) -- PAT_sf then computes only that candidate's attention core.
    """
    if weights.shape[0] != len(modules):
        raise ValueError(f"weights for {weights.shape[0]} layers given, the supernet has {len(modules)}")
    try:
        for l, m in enumerate(modules):
            m.arch_weights = weights[l]
            m.arch_index = None if indices is None else int(indices[l])
        yield
    finally:
        for m in modules:
            m.arch_weights, m.arch_index = None, None
