"""Throughput and latency measurement (eval mode, inference_mode, warm-up, repeated runs).

Every result records what it was measured on: device name, torch threads, dtype, batch,
channels_last. Reports the median and the min-max of the timed runs (not only the best run,
which is what FasterNet reported).
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class SpeedResult:
    batch_size: int
    input_size: int
    device: str
    threads: int
    dtype: str
    channels_last: bool
    runs: int
    seconds_median: float
    seconds_min: float
    seconds_max: float
    runtime: str = "eager"

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.seconds_median

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.seconds_median

    def as_dict(self) -> dict:
        d = asdict(self)
        d["images_per_s"] = self.images_per_s
        d["images_per_s_min"] = self.batch_size / self.seconds_max
        d["images_per_s_max"] = self.batch_size / self.seconds_min
        d["latency_ms"] = self.latency_ms
        return d


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model (from /proc/cpuinfo where available)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({cpu})"


def time_forward(
    model: torch.nn.Module,
    batch_size: int,
    input_size: int = 224,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    **timing,
) -> SpeedResult:
    """Time forward passes of ``model`` in eval mode and ``inference_mode`` on a ``batch_size``
    batch; ``timing``: ``warmup`` (3), ``runs`` (7), ``min_seconds`` (0), as in :func:`time_runner`."""
    model = model.eval().to(device=torch.device(device), dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return time_runner(run, batch_size, input_size, device, dtype, channels_last, **timing)


def time_runner(
    runner: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    input_size: int = 224,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    warmup: int = 3,
    runs: int = 7,
    min_seconds: float = 0.0,
    runtime: str = "eager",
) -> SpeedResult:
    """Time ``runs`` calls of ``runner(x)`` (any inference callable, e.g. from
    :func:`partialnet.measure.runtimes.make_runner`) after ``warmup`` calls, and at least
    ``min_seconds`` in all; ``runtime`` names what ran it in the result. A runner with a
    ``prepare(batch_size)`` method (one graph per batch size) builds that graph before any timing."""
    device = torch.device(device)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    if callable(getattr(runner, "prepare", None)):
        runner.prepare(batch_size)
    for _ in range(max(0, warmup)):
        runner(x)
    sync()
    t_start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - t_start) < min_seconds:
        t0 = time.perf_counter()
        runner(x)
        sync()
        times.append(time.perf_counter() - t0)
    return SpeedResult(
        batch_size=batch_size,
        input_size=input_size,
        device=device_name(device),
        threads=torch.get_num_threads(),
        dtype=str(dtype).replace("torch.", ""),
        channels_last=channels_last,
        runs=len(times),
        seconds_median=statistics.median(times),
        seconds_min=min(times),
        seconds_max=max(times),
        runtime=runtime,
    )
