"""ONNX export of the (fused) deploy form, and an onnxruntime check.

The export traces the **split-cat** form (:func:`partialnet.deploy.set_forward_type`): plain
Split/Slice/Concat nodes, no in-place slice writes (FasterNet's in-place slicing produced ONNX
graphs "hundreds of times bigger", FasterNet issue #16). It uses the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``): fast and reliable on these models. The file is
written atomically (``partialnet.utils.atomic``).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from partialnet.deploy.fusion import fuse as fuse_model
from partialnet.deploy.fusion import set_export_form, set_forward_type
from partialnet.errors import UserError
from partialnet.utils.atomic import atomic_write

__all__ = ["export_onnx", "onnx_max_abs_diff", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return int(input_size), int(input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return size  # type: ignore[return-value]
    if len(size) == 3:
        return size[1], size[2]
    raise UserError(f"input_size {input_size!r} is not H (int), (H, W) or (C, H, W)")


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels * m.groups
    raise UserError(f"{type(model).__name__} has no Conv2d; cannot tell its input channels")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int | Sequence[int] = 224,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    fuse: bool = True,
    batch_size: int = 1,
    export_form: str = "full_width",
) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomic) and return the path.

    ``fuse=True`` exports :func:`partialnet.deploy.fuse` of ``model`` (``model`` is not
    modified either way); the split-cat form is traced in eval mode on CPU fp32 with one
    input ``input`` (N, C, H, W) and one output ``logits``; ``dynamic_batch`` makes N a
    dynamic axis (``batch``). The spatial size is fixed at ``input_size``. ``export_form``
    (:func:`partialnet.deploy.set_export_form`): ``'full_width'`` (the default; OpenVINO's fastest
    graph) or ``'split'`` (onnxruntime's fastest); both compute the same outputs.
    """
    h, w = _hw(input_size)
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"ONNX path {path} should end in .onnx")
    if not path.parent.is_dir():
        raise UserError(f"folder {path.parent} does not exist; create it or pick another path for the ONNX file")
    if fuse:
        net = fuse_model(model, channels_last=False, forward_type="split_cat")
    else:
        net = set_forward_type(copy.deepcopy(model), "split_cat")
    set_export_form(net, export_form)
    net = net.float().cpu().eval()
    x = torch.randn(batch_size, _in_chans(net), h, w)
    with torch.no_grad():
        net(x)  # fills per-size caches (PAT_sf's position bias), so the trace sees constants
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    def write(f) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer warnings
            torch.onnx.export(net, (x,), f, input_names=["input"], output_names=["logits"],
                              opset_version=int(opset), dynamic_axes=dynamic_axes, do_constant_folding=True,
                              dynamo=False)

    atomic_write(path, write)
    return path


def onnx_max_abs_diff(path: str | os.PathLike, model: nn.Module, x: torch.Tensor) -> float:
    """Max |onnxruntime(path)(x) - model.eval()(x)| (CPU execution provider)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x).detach().cpu().numpy()
    finally:
        model.train(was_training)
    if got.shape != ref.shape:
        raise AssertionError(f"onnxruntime output shape {got.shape} != PyTorch {ref.shape}")
    return float(np.abs(got - ref).max())
