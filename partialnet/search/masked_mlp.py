"""The searchable MLP hidden width (``search.space=split+mlp``): one max-width MLP, masked.

A block's MLP ``Conv1x1 (C -> H) -> BN -> act -> Conv1x1 (H -> C) [-> PAT_sp]`` with candidate
expansion ratios ``e`` has candidate hidden widths ``H_e = int(C * e)`` (the static
:class:`~partialnet.models.backbone.Mlp`'s rule). The supernet keeps ONE MLP of the largest
width and, for weights ``w`` over the candidates, scales hidden channel ``j`` by

    m_j = sum_{e : H_e > j} w_e          (channel masking of the leading hidden channels)

before ``fc2``. With an exactly one-hot ``w`` the first ``H_e`` channels pass and the others
are zero, so the output equals the static MLP of width ``H_e`` built from the leading slices
(``fc1.weight[:H]``, the BN's first ``H`` channels, ``fc2.weight[:, :H]``). The hidden BN
normalises per channel with its own statistics and updates the running statistics of channel
``j`` in proportion to ``m_j`` (a switched-off channel keeps its statistics).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.search.candidates import parse_number_list
from partialnet.models.backbone import Mlp
from partialnet.models.layers import dense_activation
from partialnet.models.module_utils import init_weights_

__all__ = ["DEFAULT_MLP_CANDIDATES", "parse_mlp_candidates", "hidden_widths", "act_name", "static_mlp", "MaskedMlp",
           "copy_static_to_masked_mlp", "copy_masked_to_static_mlp"]

DEFAULT_MLP_CANDIDATES = (1.0, 1.5, 2.0, 2.5)
_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU}


def parse_mlp_candidates(values) -> list[float]:
    """Candidate MLP expansion ratios as positive floats, in the given order."""
    return parse_number_list(values, "search.mlp_candidates", lambda e: e > 0, "an expansion ratio > 0",
                             "[1,1.5,2,2.5]")


def hidden_widths(dim: int, candidates: Sequence[float]) -> list[int | None]:
    """Hidden width ``int(dim * e)`` per candidate; None where it is < 1 or repeats an earlier one."""
    ks: list[int | None] = []
    for e in candidates:
        h = int(dim * e)
        ks.append(None if h < 1 or h in ks else h)
    return ks


def act_name(mlp: Mlp) -> str:
    for name, cls in _ACTS.items():
        if isinstance(mlp.act, cls):
            return name
    raise UserError(f"the MLP activation {type(mlp.act).__name__} cannot be searched; use act_layer='gelu' or 'relu'")


def static_mlp(dim: int, ratio: float, act: str, pat_sp: bool) -> Mlp:
    """A fresh static MLP (as the backbone builds it) of expansion ``ratio``."""
    factory = nn.GELU if act == "gelu" else (lambda: nn.ReLU(inplace=True))
    return Mlp(dim, factory, ratio, pat_sp)


class MaskedMlp(nn.Module):
    """Max-width MLP whose leading hidden channels are kept per the candidate weights."""

    kind = "mlp"

    def __init__(self, spec, source: Mlp):
        super().__init__()
        self.spec = spec
        self.dim = spec.dim
        self.ks = list(spec.ks)
        self.k_max = spec.k_max
        band = torch.zeros(len(self.ks), self.k_max)
        for c, k in enumerate(self.ks):
            if k is not None:
                band[c, :k] = 1.0
        self.register_buffer("band", band, persistent=False)
        self.fc1 = nn.Conv2d(self.dim, self.k_max, 1, bias=False)
        self.norm = nn.BatchNorm2d(self.k_max)
        self.act = _ACTS[spec.extra["act"]]()
        self.fc2 = nn.Conv2d(self.k_max, self.dim, 1, bias=False)
        init_weights_(self)
        self.pat_sp = source.pat_sp  # shared, not searched
        self.arch_weights: torch.Tensor | None = None  # (K,) set by arch_choice()
        self.arch_index: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from partialnet.search.supernet import _masked_batch_norm

        if self.arch_weights is None:
            raise RuntimeError("MaskedMlp has no architecture weights; run it inside partialnet.search.arch_choice(...)")
        m = (self.arch_weights.to(self.band.dtype) @ self.band).to(x.dtype)
        h = dense_activation(self.act, _masked_batch_norm(self.norm, self.fc1(x), m))
        return self.pat_sp(self.fc2(h * m.view(1, -1, 1, 1)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, candidate hidden widths={[k for k in self.ks if k is not None]}"


def _pairs(static: Mlp, masked: MaskedMlp):
    """(static tensor, the masked tensor's view it corresponds to) for every searched tensor."""
    h = static.fc1.out_channels
    yield static.fc1.weight, masked.fc1.weight[:h]
    yield static.fc2.weight, masked.fc2.weight[:, :h]
    for name in ("weight", "bias", "running_mean", "running_var"):
        yield getattr(static.norm, name), getattr(masked.norm, name)[:h]
    yield static.norm.num_batches_tracked, masked.norm.num_batches_tracked


@torch.no_grad()
def copy_static_to_masked_mlp(static: Mlp, masked: MaskedMlp) -> None:
    for s, view in _pairs(static, masked):
        view.copy_(s)


@torch.no_grad()
def copy_masked_to_static_mlp(masked: MaskedMlp, static: Mlp) -> None:
    """Fill a static MLP of one candidate width from ``masked``'s leading slices (PAT_sp included)."""
    for s, view in _pairs(static, masked):
        s.copy_(view)
    static.pat_sp.load_state_dict(masked.pat_sp.state_dict())
