"""Cost of one DPConv search step vs one plain training step (CPU).

    python bench/search_step.py [--model partialnet_t0] [--size 224] [--batch-size 32] [--steps 9] [--warmup 2]
                                [--threads N] [--soft]

- plain: the static model (r = 1/4): forward, cross-entropy, backward, AdamW step (the
  framework's optimiser factory, ``conf/optim/adamw.yaml`` settings).
- search: the supernet of the same model (candidates 1/2, 1/4, 1/8, 1/16): a hard
  Gumbel-Softmax architecture sample (straight-through), forward, cross-entropy + the FLOPs
  constraint on E[F], backward, the weights' AdamW step and the logits' Adam step.

Same data, same threads; the two kinds of step alternate (so machine load drifts hit both), and
the median of ``--steps`` timed steps after ``--warmup`` untimed ones is reported for each.
Prints a Markdown table, the ratio, and whether it meets the <= 1.5x budget. Not a test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import partialnet  # noqa: E402
from partialnet.search import build_cost_table, flops_loss, gumbel_softmax, layer_specs, masked_modules, to_supernet  # noqa: E402
from partialnet.search.gumbel import masked_logits  # noqa: E402
from partialnet.search.supernet import arch_choice  # noqa: E402
from partialnet.training.optim import build_optimizer  # noqa: E402

OPTIM = {"name": "adamw", "weight_decay": 0.05, "betas": (0.9, 0.999)}
BUDGET = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="partialnet_t0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--soft", action="store_true", help="soft Gumbel-Softmax instead of hard straight-through")
    args = ap.parse_args()
    if args.steps < 5:
        ap.error("--steps must be >= 5")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch_size,))

    plain = partialnet.create_model(args.model).train()
    opt_plain = build_optimizer(plain, OPTIM, 1e-3)

    sup = partialnet.create_model(args.model).train()
    specs = layer_specs(sup)
    cost = build_cost_table(sup, specs, args.size)
    to_supernet(sup)
    mods = masked_modules(sup, specs)
    table = cost.tensor()
    valid = torch.tensor([s.valid for s in specs])
    logits = torch.nn.Parameter(torch.zeros(len(specs), len(specs[0].ks)))
    opt_w = build_optimizer(sup, OPTIM, 1e-3)
    opt_a = torch.optim.Adam([logits], lr=0.01, weight_decay=0.0)
    target = float(cost.reference_macs)

    def plain_step() -> None:
        loss = F.cross_entropy(plain(x), y)
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()

    def search_step() -> None:
        masked = masked_logits(logits, valid)
        w = gumbel_softmax(masked, 1.0, hard=not args.soft)
        idx = None if args.soft else w.detach().argmax(-1).tolist()
        with arch_choice(mods, w, idx):
            out = sup(x)
        expected = cost.expected(F.softmax(masked, dim=-1), table)
        loss = F.cross_entropy(out, y) + flops_loss(expected, target, "squared", 20.0).float()
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        opt_a.step()

    times: dict[str, list[float]] = {"plain": [], "search": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("plain", plain_step), ("search", search_step)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["search"] / med["plain"]
    mode = "soft" if args.soft else "hard straight-through"
    print(f"### Search step vs plain train step: {args.model} @ {args.size}px, batch {args.batch_size}, CPU, "
          f"{torch.get_num_threads()} threads, {mode} Gumbel-Softmax\n")
    print("| step | median s | min s | max s | timed steps |")
    print("|---|---|---|---|---|")
    for k in ("plain", "search"):
        print(f"| {k} | {med[k]:.3f} | {min(times[k]):.3f} | {max(times[k]):.3f} | {len(times[k])} |")
    ratio_min = min(times["search"]) / min(times["plain"])
    verdict = "meets" if ratio <= BUDGET else "DOES NOT meet"
    print(f"\nsearch / plain = **{ratio:.2f}x** by medians ({verdict} the <= {BUDGET}x budget); "
          f"{ratio_min:.2f}x by fastest steps. Static r=1/4 model: {cost.reference_macs / 1e9:.3f} GMACs; "
          "the supernet's convs span up to r=1/2 and its attention down to r=1/16.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
