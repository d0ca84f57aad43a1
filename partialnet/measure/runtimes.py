"""Inference runtimes for the fused deploy form: eager PyTorch, torch.compile, onnxruntime, OpenVINO.

:func:`make_runner` turns a fused model into a callable ``runner(x) -> logits`` (torch tensors in
and out) on the chosen runtime, using the same number of CPU threads as torch. :func:`check_runner`
compares a runner's outputs with the model's own eval outputs and raises a one-line
:class:`UserError` beyond the tolerance, so no runtime is timed that computes something else.

- ``eager``: the fused model as is, under ``torch.inference_mode``.
- ``compile``: ``torch.compile(fused)`` (inductor; the first call per input shape compiles). On
  the CPU with inductor's inference options: frozen weights (constants folded, convs and linears
  on prepacked oneDNN/MKL weights) and a C++ wrapper around the kernels (no Python call per
  kernel). Fused PartialNet-T0 and FasterNet-T0 at batch 1, 2 threads: 1.25x and 1.24x faster
  than plain ``torch.compile`` (per-round wall time, ``bench/runtimes.py``); compiling takes longer,
  about 25 s per model and input shape on 2 cores instead of 10.
- ``onnxruntime``: the split-cat ONNX export (:func:`partialnet.deploy.export_onnx`) in its
  ``export_form='split'`` (PAT_ch's halves split, PAT_sp in onnxruntime's blocked layout: fused
  PartialNet-T0 at batch 1 on 2 threads 1.06-1.09x faster than on the full-width graph) in an
  onnxruntime CPU session with all graph optimisations and non-spinning intra-op threads, one
  fixed-batch graph per batch size
  (built on first use or by ``runner.prepare(batch_size)``, checked against the fused model).
- ``openvino``: the same with the default ``export_form='full_width'`` (no split feeding two
  consumers, which OpenVINO copies), each ONNX file compiled by OpenVINO for its CPU plugin, fp32.

``streams=N`` (``eager``, ``onnxruntime``, ``openvino``; CPU): throughput mode. A batch of at least N
images is cut into N contiguous chunks that run at the same time, each on ``threads // N`` threads
(OpenVINO: one compiled model with N streams and one infer request per stream; onnxruntime: one
session per chunk size whose runs go on concurrently; eager: the fused model called from N Python
threads while torch runs ``threads // N`` intra-op threads), and the outputs are concatenated in
order. A smaller batch (one image) runs as with ``streams=1`` on all threads. On a 2-core CPU,
PartialNet-T0 at batch 32 as two 16-image streams of one thread each: OpenVINO 220 -> 280
images/s, onnxruntime 191 -> 231, eager 158 -> 217 (intra-op threads synchronise at every one of
the hundreds of layers; streams do not). ``torch.compile`` takes ``streams=1`` only (its kernels
keep the thread count they were compiled with).
"""
from __future__ import annotations

import queue
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.utils.signal_stack import preserved_signal_stack

__all__ = ["RUNTIMES", "make_runner", "check_runner", "onnxruntime_options", "Runner"]

RUNTIMES = ("eager", "compile", "onnxruntime", "openvino")
CPU_COMPILE_OPTIONS = {"freezing": True, "cpp_wrapper": True}  # inductor's settings for CPU inference
ONNXRUNTIME_FORM = "split"  # onnxruntime's graphs: partialnet.deploy.set_export_form (OpenVINO's: 'full_width')
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

    def __init__(self, fused: nn.Module, input_size: int, compile_graph, name: str, tol: float = 1e-4,
                 export_form: str = "full_width"):
        # compile_graph(onnx_path) -> a callable graph; it must allow concurrent calls when streams run it
        self.fused, self.input_size, self.compile_graph, self.name, self.tol = fused, input_size, compile_graph, name, tol
        self.export_form = export_form  # the graph form this runtime is fastest with (export_onnx)
        self.graphs: dict[int, Callable[[np.ndarray], np.ndarray]] = {}

    def prepare(self, batch_size: int) -> None:
        if batch_size in self.graphs:
            return
        from partialnet.deploy.onnx_export import export_onnx

        with tempfile.TemporaryDirectory(prefix="partialnet_runtime_") as tmp:  # the runtime keeps the graph
            path = export_onnx(self.fused, Path(tmp) / "model.onnx", input_size=self.input_size, dynamic_batch=False,
                               batch_size=batch_size, fuse=True, export_form=self.export_form)
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


def onnxruntime_options(threads: int | None = None):
    """The onnxruntime session options of ``runtime=onnxruntime``: ``threads`` intra-op threads
    (torch's count by default), all graph optimisations, idle threads that sleep."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or _threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle intra-op threads sleep instead of spinning: on a small CPU a spinning thread takes the
    # core the next node needs (bench/runtimes.py, batch 1, 2 threads on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _onnxruntime_graph(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An onnxruntime session on ``threads`` intra-op threads (torch's count by default); its runs
    may go on concurrently (onnxruntime's sessions allow that)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), onnxruntime_options(threads), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def _openvino_graph(path: Path, streams: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """The graph compiled by OpenVINO's CPU plugin on torch's thread count: one stream on all of
    them, or ``streams`` streams sharing them, with one infer request per stream (concurrent calls
    each take a free request)."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": _threads(), "INFERENCE_PRECISION_HINT": "f32"}
    if streams > 1:
        config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams})
    # the CPU plugin swaps this thread's signal stack and, released out of order, leaves a freed one
    with preserved_signal_stack():
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        free = queue.SimpleQueue()
        for _ in range(streams):
            free.put(compiled.create_infer_request())

    def run(x: np.ndarray) -> np.ndarray:
        request = free.get()
        try:
            return np.array(next(iter(request.infer({0: x}).values())))
        finally:
            free.put(request)

    return run


class _Streams:
    """Throughput mode (see the module docstring): a batch of at least ``streams`` images as that many
    contiguous chunks run at the same time by ``chunked``, each on ``threads // streams`` threads; a
    smaller batch goes to ``whole`` (all threads). ``torch_threads``: set torch's intra-op thread
    count to the per-stream count while the chunks run (eager), and back afterwards."""

    def __init__(self, whole: Runner, chunked: Runner, streams: int, torch_threads: bool):
        self.whole, self.chunked, self.streams, self.torch_threads = whole, chunked, int(streams), torch_threads
        self.pool = ThreadPoolExecutor(self.streams, thread_name_prefix="partialnet-stream")

    def chunk_sizes(self, batch_size: int) -> list[int]:
        base, extra = divmod(batch_size, self.streams)
        return [base + (i < extra) for i in range(self.streams)]

    def prepare(self, batch_size: int) -> None:
        if batch_size < self.streams:
            if callable(getattr(self.whole, "prepare", None)):
                self.whole.prepare(batch_size)
        elif callable(getattr(self.chunked, "prepare", None)):
            for size in sorted(set(self.chunk_sizes(batch_size))):
                self.chunked.prepare(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        if n < self.streams:
            return self.whole(x)
        self.prepare(n)
        chunks = torch.split(x, self.chunk_sizes(n))
        threads = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(max(1, threads // self.streams))
        try:
            return torch.cat(list(self.pool.map(self.chunked, chunks)))
        finally:
            if self.torch_threads:
                torch.set_num_threads(threads)


def make_runner(runtime: str, fused: nn.Module, input_size: int, device: torch.device | str = "cpu",
                streams: int = 1) -> Runner:
    """``runner(x) -> logits`` of the fused model ``fused`` on ``runtime`` (one of :data:`RUNTIMES`).

    ``onnxruntime`` and ``openvino`` run on the CPU at a fixed ``input_size`` (any batch size: one
    static graph each, see :class:`_StaticBatchRunner`; ``runner.prepare(n)`` builds it ahead).
    ``streams`` > 1: throughput mode on the CPU (module docstring).
    """
    if runtime not in RUNTIMES:
        raise UserError(f"runtime={runtime!r} is unknown; use one of {', '.join(RUNTIMES)}")
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise UserError(f"streams={streams!r} must be a whole number >= 1 (1: one stream on all threads)")
    device = torch.device(device)
    fused = fused.eval()
    if streams > 1:
        return _stream_runner(runtime, fused, int(input_size), device, streams)
    if runtime == "eager":
        return _inference(fused)
    if runtime == "compile":
        return _inference(torch.compile(fused, options=CPU_COMPILE_OPTIONS if device.type == "cpu" else None))
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
    return _StaticBatchRunner(fused, int(input_size), _onnxruntime_graph, runtime, export_form=ONNXRUNTIME_FORM)


def _stream_runner(runtime: str, fused: nn.Module, input_size: int, device: torch.device, streams: int) -> Runner:
    if runtime == "compile":
        raise UserError(f"streams={streams} is not available for runtime=compile (its kernels keep the thread count "
                        "they were compiled with); use streams=1, or runtime=eager|onnxruntime|openvino")
    if device.type != "cpu":
        raise UserError(f"streams={streams} splits batches across CPU threads; use device=cpu or streams=1")
    if streams > _threads():
        raise UserError(f"streams={streams} is more than the {_threads()} thread(s) torch uses; "
                        f"use at most streams={_threads()} (or raise the thread count)")
    whole = make_runner(runtime, fused, input_size, device)
    if runtime == "eager":
        return _Streams(whole, whole, streams, torch_threads=True)
    if runtime == "openvino":
        chunked = _StaticBatchRunner(fused, input_size, lambda p: _openvino_graph(p, streams), f"{runtime} streams")
    else:
        per_stream = max(1, _threads() // streams)
        chunked = _StaticBatchRunner(fused, input_size, lambda p: _onnxruntime_graph(p, per_stream),
                                     f"{runtime} streams", export_form=ONNXRUNTIME_FORM)
    return _Streams(whole, chunked, streams, torch_threads=False)


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
