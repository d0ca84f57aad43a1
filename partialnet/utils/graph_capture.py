"""Whether the current forward is being captured into a graph rather than run eagerly.

Several fast paths (the GEMM form of 1x1 convs, the token-matrix forms of one image: the SRM
statistics and the fused PAT_ch, MLP and PAT_sf; activations on the dense view of a channels_last
map) are eager-only rewrites of the same arithmetic; a graph
capture (TorchScript tracing, which ``torch.onnx.export(..., dynamo=False)`` uses, scripting,
``torch.compile`` and ``torch.export``) must see the plain form so that exported graphs keep
their Conv nodes and a compiler sees the ops it fuses. ``torch.onnx.is_in_onnx_export()`` is
not consulted: every exporter runs under one of these captures, and that call costs about
3 us, which a batch-1 forward pays dozens of times.

``torch.compile`` is the one capture whose graph stays in PyTorch: :func:`is_torch_compiling`
tells it apart, for forms written for inductor (a reduction it fuses with the elementwise ops
around it instead of a one-output-channel conv, the GEMM form of small 1x1 convs) that an exported
graph should not carry.
"""
from __future__ import annotations

import torch

__all__ = ["is_capturing_graph", "is_exporting_graph", "is_torch_compiling"]


def is_capturing_graph() -> bool:
    """True under TorchScript tracing/scripting, ``torch.compile`` and ``torch.export``."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def is_torch_compiling() -> bool:
    """True under ``torch.compile`` only: not under ``torch.export`` or TorchScript, not eagerly."""
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


def is_exporting_graph() -> bool:
    """True under a capture whose graph leaves PyTorch: TorchScript (the ONNX export) and ``torch.export``."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting()
