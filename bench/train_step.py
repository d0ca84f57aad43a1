"""Training throughput: images/s of forward + backward + AdamW step at 224, batch 32, CPU.

Median and min-max over >= 5 timed steps after warm-up, for PartialNet T0/T1 and FasterNet
T0/T1 (override with --models). Prints a Markdown table of what it measured.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import partialnet


def time_train_steps(model: torch.nn.Module, batch: int, size: int, warmup: int, runs: int) -> list[float]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["partialnet_t0", "partialnet_t1", "fasternet_t0", "fasternet_t1"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"Training step (forward + backward + AdamW), batch {args.batch}, {args.size}x{args.size}, fp32, "
          f"CPU, {torch.get_num_threads()} threads, {args.runs} timed steps after {args.warmup} warm-up\n")
    print("| model | images/s (median) | min-max images/s | step time median (s) |")
    print("|---|---|---|---|")
    for name in args.models:
        model = partialnet.create_model(name, num_classes=1000)
        ts = time_train_steps(model, args.batch, args.size, args.warmup, args.runs)
        med = statistics.median(ts)
        print(f"| {name} | {args.batch / med:.1f} | {args.batch / max(ts):.1f}-{args.batch / min(ts):.1f} | {med:.3f} |", flush=True)


if __name__ == "__main__":
    main()
