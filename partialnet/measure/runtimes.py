"""Inference runtimes for the fused deploy form: eager PyTorch, torch.compile, onnxruntime, OpenVINO.

:func:`make_runner` turns a fused model into a callable ``runner(x) -> logits`` (torch tensors in
and out) on the chosen runtime, using the same number of CPU threads as torch. :func:`check_runner`
compares a runner's outputs with the model's own eval outputs and raises a one-line
:class:`UserError` beyond the tolerance, so no runtime is timed that computes something else.

- ``eager``: the fused model as is, under ``torch.inference_mode``.
- ``compile``: ``torch.compile(fused)`` (inductor; the first call per input shape compiles).
- ``onnxruntime``: the split-cat ONNX export (:func:`partialnet.deploy.export_onnx`) in an
  onnxruntime CPU session with all graph optimisations and non-spinning intra-op threads, one
  fixed-batch graph per batch size
  (built on first use or by ``runner.prepare(batch_size)``, checked against the fused model).
- ``openvino``: the same, each ONNX file compiled by OpenVINO for its CPU plugin, fp32 precision.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.utils.signal_stack import preserved_signal_stack

__all__ = ["RUNTIMES", "make_runner", "check_runner", "Runner"]

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
Runner = Callable[[torch.Tensor], torch.Tensor]


def _threads() -> int:
    return max(1, torch.get_num_threads())


class _StaticBatchRunner:
    """An ONNX runtime's runner with one graph per batch size, exported and compiled on first use of
    that batch size (or by :meth:`prepare`, so timing never includes it).

    Each graph has a fixed batch: a dynamic batch axis leaves the shape arithmetic of every reshape,
    gate and split in the graph (about a quarter of PartialNet-T0's ONNX nodes), which the runtimes
    then execute per call and which makes OpenVINO run its dynamic-shape path. Every new graph is
    checked against the fused model itself on its first batch (max |difference| <= ``tol``), so no
    graph is timed that computes something else."""

    def __init__(self, fused: nn.Module, input_size: int, compile_graph, name: str, tol: float = 1e-4):
        self.fused, self.input_size, self.compile_graph, self.name, self.tol = fused, input_size, compile_graph, name, tol
        self.graphs: dict[int, Callable[[np.ndarray], np.ndarray]] = {}

    def prepare(self, batch_size: int) -> None:
        if batch_size in self.graphs:
            return
        from partialnet.deploy.onnx_export import export_onnx

        with tempfile.TemporaryDirectory(prefix="partialnet_runtime_") as tmp:  # the runtime keeps the graph
            path = export_onnx(self.fused, Path(tmp) / "model.onnx", input_size=self.input_size, dynamic_batch=False,
                               batch_size=batch_size, fuse=True)
            graph = self.compile_graph(path)
        self.graphs[batch_size] = graph
        x = torch.randn(batch_size, 3, self.input_size, self.input_size, generator=torch.Generator().manual_seed(0))
        try:
            check_runner(self, self.fused, x, f"{self.name} (batch-{batch_size} graph)", self.tol)
        except UserError:
            del self.graphs[batch_size]
            raise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        self.prepare(n)
        return torch.from_numpy(self.graphs[n](x.detach().cpu().numpy().astype(np.float32)))


def _onnxruntime_graph(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle intra-op threads sleep instead of spinning: on a small CPU a spinning thread takes the
    # core the next node needs (bench/runtimes.py, batch 1, 2 threads on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _openvino_graph(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    # the CPU plugin swaps this thread's signal stack and, released out of order, leaves a freed one
    with preserved_signal_stack():
        compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {"INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": "f32"},
        )
        request = compiled.create_infer_request()
    return lambda x: np.array(next(iter(request.infer({0: x}).values())))


def make_runner(runtime: str, fused: nn.Module, input_size: int, device: torch.device | str = "cpu") -> Runner:
    """``runner(x) -> logits`` of the fused model ``fused`` on ``runtime`` (one of :data:`RUNTIMES`).

    ``onnxruntime`` and ``openvino`` run on the CPU at a fixed ``input_size`` (any batch size: one
    static graph each, see :class:`_StaticBatchRunner`; ``runner.prepare(n)`` builds it ahead).
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
    if runtime == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise UserError(
                "runtime=openvino needs the openvino package (pip install openvino, pinned in pyproject.toml); "
                "or pick runtime=eager|compile|onnxruntime"
            ) from None
        return _StaticBatchRunner(fused, int(input_size), _openvino_graph, runtime)
    return _StaticBatchRunner(fused, int(input_size), _onnxruntime_graph, runtime)


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
