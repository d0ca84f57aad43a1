"""Parameter and MAC counting with fvcore.

"FLOPs" in the PartialNet/FasterNet papers (and everywhere in this project) are
multiply-adds (MACs): fvcore's ``FlopCountAnalysis`` counts one per multiply-add of convs,
linears and matmul/bmm/einsum (so attention is included), plus its norm/pool conventions.
"""
from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from partialnet.errors import UserError

__all__ = ["count", "format_counts"]


def _input_shape(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        return (3, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (3, *size)
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise UserError(f"input_size {input_size!r} is not H (int), (H, W) or (C, H, W)")


def count(model: nn.Module, input_size: int | Sequence[int] = 224, macs: bool = True) -> dict:
    """``{'params': int, 'macs': int}`` of ``model`` for one image of ``input_size``.

    ``input_size`` is H (square, 3 channels), (H, W) or (C, H, W). A copy of the model is
    traced in eval mode on CPU; ``model`` itself is not touched. fvcore's warnings about ops it
    does not count (elementwise ops, softmax, std, ...) are silenced. ``macs=False`` returns
    ``{'params': int}`` alone, without the trace (most of the time of a count).
    """
    shape = _input_shape(input_size)
    params = sum(p.numel() for p in model.parameters())
    if not macs:
        return {"params": int(params)}
    clone = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(1, *shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis  # lazy: importing fvcore warns (torch.jit.script)

        analysis = FlopCountAnalysis(clone, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        macs = int(analysis.total())
    return {"params": int(params), "macs": macs}


def format_counts(d: dict) -> str:
    """E.g. ``'3.56 M params, 0.247 G MACs (the papers' FLOPs)'``."""
    return f"{d['params'] / 1e6:.2f} M params, {d['macs'] / 1e9:.3f} G MACs (the papers' FLOPs)"
