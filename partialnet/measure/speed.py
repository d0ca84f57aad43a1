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
    warmup: int = 3,
    runs: int = 7,
    min_seconds: float = 0.0,
) -> SpeedResult:
    """Time ``runs`` forward passes of a ``batch_size`` batch after ``warmup`` passes."""
    device = torch.device(device)
    model = model.eval().to(device=device, dtype=dtype)
    x = torch.randn(batch_size, 3, input_size, input_size, device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(max(0, warmup)):
            model(x)
        sync()
        t_start = time.perf_counter()
        while len(times) < runs or (time.perf_counter() - t_start) < min_seconds:
            t0 = time.perf_counter()
            model(x)
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
    )
