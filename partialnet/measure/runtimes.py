"""Inference runtimes for the fused deploy form: eager PyTorch, torch.compile, onnxruntime, OpenVINO.

:func:`make_runner` turns a fused model into a callable ``runner(x) -> logits`` (torch tensors in
and out) on the chosen runtime, using the same number of CPU threads as torch. :func:`check_runner`
compares a runner's outputs with the model's own eval outputs and raises a one-line
:class:`UserError` beyond the tolerance, so no runtime is timed that computes something else.

- ``eager``: the fused model as is, under ``torch.inference_mode``.
- ``compile``: ``torch.compile(fused)`` (inductor; the first call per input shape compiles).
- ``onnxruntime``: the split-cat ONNX export (:func:`partialnet.deploy.export_onnx`, dynamic batch)
  in an onnxruntime CPU session with all graph optimisations.
- ``openvino``: the same ONNX file compiled by OpenVINO for its CPU plugin, fp32 precision.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from partialnet.errors import UserError

__all__ = ["RUNTIMES", "make_runner", "check_runner", "Runner"]

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
Runner = Callable[[torch.Tensor], torch.Tensor]


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _export(fused: nn.Module, input_size: int, folder: Path) -> Path:
    from partialnet.deploy.onnx_export import export_onnx

    return export_onnx(fused, folder / "model.onnx", input_size=input_size, dynamic_batch=True, fuse=True)


def _onnxruntime(fused: nn.Module, input_size: int, folder: Path) -> Runner:
    import onnxruntime as ort

    path = _export(fused, input_size, folder)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])

    return run


def _openvino(fused: nn.Module, input_size: int, folder: Path) -> Runner:
    try:
        import openvino as ov
    except ImportError:
        raise UserError(
            "runtime=openvino needs the openvino package (pip install openvino, pinned in pyproject.toml); "
            "or pick runtime=eager|compile|onnxruntime"
        ) from None
    path = _export(fused, input_size, folder)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)),
        "CPU",
        {"INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        out = request.infer({0: x.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(np.array(next(iter(out.values()))))

    return run


def make_runner(runtime: str, fused: nn.Module, input_size: int, device: torch.device | str = "cpu") -> Runner:
    """``runner(x) -> logits`` of the fused model ``fused`` on ``runtime`` (one of :data:`RUNTIMES`).

    ``onnxruntime`` and ``openvino`` run on the CPU at a fixed ``input_size`` (any batch size).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"runtime={runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    device = torch.device(device)
    fused = fused.eval()
    if runtime == "eager":
        return _inference(fused)
    if runtime == "compile":
        return _inference(torch.compile(fused))
    if device.type != "cpu":
        raise UserError(f"runtime={runtime} runs on the CPU here; use device=cpu or runtime=eager|compile")
    with tempfile.TemporaryDirectory(prefix="partialnet_runtime_") as tmp:  # the session keeps the graph
        if runtime == "onnxruntime":
            return _onnxruntime(fused, int(input_size), Path(tmp))
        return _openvino(fused, int(input_size), Path(tmp))


def _inference(module: Callable[[torch.Tensor], torch.Tensor]) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def check_runner(runner: Runner, reference: nn.Module, x: torch.Tensor, runtime: str, tol: float = 1e-4) -> float:
    """Max |runner(x) - reference.eval()(x)|; a :class:`UserError` when above ``tol``."""
    was_training = reference.training
    reference.eval()
    try:
        with torch.inference_mode():
            ref = reference(x).float().cpu()
    finally:
        reference.train(was_training)
    got = runner(x).float().cpu()
    if got.shape != ref.shape:
        raise UserError(f"runtime={runtime} returns shape {tuple(got.shape)}, the model {tuple(ref.shape)}")
    diff = float((got - ref).abs().max())
    if not diff <= tol:
        raise UserError(
            f"runtime={runtime} does not reproduce the model: max |difference| {diff:.3g} > {tol:g} on a test "
            "batch; its timings would be of another computation (use runtime=eager)"
        )
    return diff
