"""Latency table (search.constraint=latency): predicted vs measured latency of fused static models.

    python bench/search_latency.py [--model partialnet_t0] [--size 224] [--batch-size 1] [--threads 1]
                                   [--device cpu] [--runs 10] [--rounds 3] [--random 4] [--seed 0]

1. Measures the per-layer latency table of ``--model`` (fused form of every split and
   candidate, at its input shape; fixed part = fused whole model minus its layers; the fastest
   of ``--runs`` calls, over ``--rounds`` rounds), as ``python -m partialnet.search.latency_table`` does.
2. Architectures: uniform r = 1/2, 1/4, 1/8, 1/16 (where a layer lacks the ratio: its nearest
   candidate) and ``--random`` random per-layer choices.
3. Each architecture's static model is built, fused and timed (the fastest of ``--runs`` calls
   per round, the fastest round over ``--rounds`` rounds that visit every architecture in turn,
   so load drifts hit all of them alike) and compared with the table's prediction.

Prints one row per architecture (predicted, measured, error) and whether every error is within
the +-10 % target; prints what it measured also when the target is missed. Not a test.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import partialnet  # noqa: E402
from partialnet.deploy.fusion import fuse  # noqa: E402
from partialnet.measure.speed import time_forward  # noqa: E402
from partialnet.search.latency_table import measure_latency_table, resolve_device  # noqa: E402
from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs  # noqa: E402

TARGET = 0.10


def _uniform(specs, ratio: float) -> list[int]:
    """Per layer: the candidate ``ratio`` if available, else the valid one nearest to it."""
    out = []
    for s in specs:
        valid = [c for c, k in enumerate(s.ks) if k is not None]
        out.append(min(valid, key=lambda c: abs(s.candidates[c] - ratio)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="partialnet_t0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=20, help="timed calls per layer/model (the fastest counts)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all architectures when measuring models")
    ap.add_argument("--random", type=int, default=4, help="random architectures (plus 4 uniform ones)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.random + 4 < 5:
        ap.error("need >= 5 architectures: --random >= 1")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t_start = time.perf_counter()

    model = partialnet.create_model(args.model)
    specs = layer_specs(model, list(DEFAULT_CANDIDATES))
    t0 = time.perf_counter()
    table = measure_latency_table(model, specs, model_name=args.model, model_kwargs={}, input_size=args.size,
                                  batch_size=args.batch_size, threads=args.threads, device=device, runs=args.runs,
                                  rounds=args.rounds)
    t_table = time.perf_counter() - t0
    cost = table.cost_table()
    print(f"table: {table.describe()}; {len(specs)} layers, fixed part {table.fixed_ms:.3f} ms, feasible "
          f"{cost.min_value:.3f}-{cost.max_value:.3f} ms, measured in {t_table:.0f} s", flush=True)

    rng = random.Random(args.seed)
    archs = {f"uniform r={r:g}": _uniform(specs, r) for r in (0.5, 0.25, 0.125, 0.0625)}
    for i in range(args.random):
        archs[f"random {i + 1}"] = [rng.choice([c for c, k in enumerate(s.ks) if k is not None]) for s in specs]
    fused = {}
    for name, choice in archs.items():
        ratios = [s.candidates[c] for s, c in zip(specs, choice)]
        fused[name] = fuse(partialnet.create_model(args.model, ratios=ratios)).to(device)
    measured = {name: float("inf") for name in archs}
    for _ in range(args.rounds):
        for name, m in fused.items():
            res = time_forward(m, args.batch_size, args.size, device, warmup=3, runs=args.runs)
            measured[name] = min(measured[name], 1000.0 * res.seconds_min)

    print()
    print(f"| architecture | predicted (ms) | measured (ms) | error | ratios |")
    print("|---|---|---|---|---|")
    errors = []
    for name, choice in archs.items():
        pred = cost.value_of(choice)
        err = pred / measured[name] - 1.0
        errors.append(err)
        ratios = " ".join(f"{specs[l].candidates[c]:g}" for l, c in enumerate(choice))
        print(f"| {name} | {pred:.3f} | {measured[name]:.3f} | {err * 100:+.1f} % | {ratios} |")
    worst = max(abs(e) for e in errors)
    ok = worst <= TARGET
    spread = max(measured.values()) / min(measured.values()) - 1
    print()
    print(f"{args.model} @ {args.size}px, batch {args.batch_size}, {args.threads} thread(s), {table.device}, "
          f"torch {torch.__version__}; fastest of {args.runs} calls x {args.rounds} rounds per model")
    print(f"largest |error| {worst * 100:.1f} % (mean |error| {sum(abs(e) for e in errors) / len(errors) * 100:.1f} %) "
          f"over {len(errors)} architectures; target +-{TARGET * 100:g} %: {'MET' if ok else 'MISSED'}; "
          f"measured latencies span {spread * 100:.1f} %; wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
