"""Training step (forward + backward + AdamW) at 224 px, batch 32, CPU: before/after in one run.

"before" is the training step as it was: NCHW tensors, the PAT_ch statistics written as plain
autograd ops (:class:`ReferencePATChannel` below keeps that implementation reachable) and
AdamW's per-parameter loop. The other variants use the project's optimizer (fused AdamW).
"after" is the step with the current layers: the shared ``srm_statistics`` (one fused
backward), the SRM (1, 2) conv as one matrix product, PAT_ch's norm of the gated half from those
statistics (:func:`partialnet.models.layers.gated_norm.gated_batch_norm`), dense gradients into the
halves of each split (:func:`partialnet.models.layers.dense_grad.dense_grad`), the C++ kernels of
:mod:`partialnet.kernels` for the MLP's BatchNorm + GELU and PAT_sp's passes (when built), with the
model and the batch in channels_last; "after_nchw" is the same layers on NCHW tensors, to separate
the two effects (the kernels run on channels_last maps only).
``--compile`` adds an "after + torch.compile" row (inductor on CPU; its compile time is printed).

Steps of the variants are interleaved (before, after_nchw, after; after, after_nchw, before; ...)
so that load from other processes and drifts of the machine's speed hit all of them alike.
Printed per variant: median wall time and median process CPU time of a step (on a shared machine
the CPU time is the steadier of the two), images/s, the speed-up over "before" as a ratio of
medians and as the median (10th-90th percentile) of the per-round ratios, the bytes
autograd saves for backward in one forward of the whole model (the activation memory of the
step, exact), and the peak RSS of a fresh process that runs two steps of that variant (includes
the allocator's retained memory, so it is a rough figure: the two channels_last variants of
PartialNet-T0 at 224 px gave 1566-1685 MiB in four standalone children and 2.6-3.4 GiB inside
`make bench` on 2026-12-06/07;
"saved for backward" is the exact activation figure).

Then what each single change inside "after" adds, measured on one "after" model whose steps
alternate between the change switched off and on (``--pairs`` pairs; same weights, same
optimizer, same memory, so the ratio does not depend on which model instance the machine ran
faster, which moved such ratios by 10-30 % between separate-model runs of a noisy hour): the
small-map GEMM of :class:`~partialnet.models.layers.PointwiseConv2d` (off: every 1x1 conv on
PyTorch's conv kernel; at 224 px it covers only the last stage and the head, at ``--size 32
--batch 256``, the demo's shape, most of the network), the MLP's GELU on the dense view of its
channels_last map (:func:`~partialnet.models.layers.dense_activation`; off: the GELU on the map
itself, PyTorch's generic kernel; both sides with batch norm and GELU as separate operators), the
fused BatchNorm + GELU kernel (:func:`~partialnet.models.layers.batch_norm_gelu`; off: batch norm,
then the GELU on the dense view), PAT_ch's norm from the SRM statistics (off: batch norm on the
gated map itself) and PAT_sp's token form (:mod:`partialnet.models.layers.pat_spatial_tokens`; off:
:meth:`~partialnet.models.layers.PATSpatial.forward_modules`). Last, the activation memory of each block type: the bytes
autograd saves for backward in one forward of the block.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import partialnet
from models import alternating, exit_on_bad_args, round_ratios  # bench/models.py
from partialnet.models.backbone import Mlp
from partialnet.models.layers import (PartialConv, PATChannel, PATSelf, PATSpatial, PointwiseConv2d,
                                      dense_activation)
from partialnet.models.layers.dense_grad import dense_grad
from partialnet.training.optim import build_optimizer

VARIANTS = ("before", "after_nchw", "after", "after_compile")


class ReferencePATChannel(PATChannel):
    """PAT_ch with the statistics, the SRM conv and the norm of the gated half as they were written
    before (plain autograd; batch norm on the gated map itself)."""

    def channel_gate(self, x_u: torch.Tensor) -> torch.Tensor:
        flat = x_u.flatten(2)
        mean = flat.mean(dim=-1, keepdim=True)
        n = flat.shape[-1]
        if n > 1:
            d = flat - mean
            var = (d * d).sum(dim=-1) / (n - 1)
        else:
            var = torch.zeros_like(mean.squeeze(-1))
        std = (var + self.std_eps).sqrt()
        stats = torch.stack((mean.squeeze(-1), std), dim=-1).unsqueeze(2)  # (B, C_u, 1, 2)
        return self.srm_gate(self.srm_norm(self.srm_conv(stats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_p, x_u = self.split(x)
        return torch.cat((self.conv(x_p), dense_grad(self.norm(x_u * self.channel_gate(x_u)))), dim=1)


def pat_channel_with_plain_norm(pat: PATChannel, x: torch.Tensor) -> torch.Tensor:
    """PATChannel's forward with its norm as batch norm on the gated map itself (a product, batch
    norm's statistics pass and its normalising pass) instead of gated_batch_norm."""
    x_p, x_u = pat.split(x)
    return torch.cat((pat.conv(x_p), dense_grad(pat.norm(x_u * pat.channel_gate(x_u)))), dim=1)


def mlp_with_generic_activation(mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    """Mlp's forward with batch norm, then the activation called on the channels_last map itself
    (PyTorch's generic CPU GELU kernel)."""
    return mlp.pat_sp(mlp.fc2(mlp.act(mlp.norm(mlp.fc1(x)))))


def mlp_with_separate_norm_and_activation(mlp: Mlp, x: torch.Tensor) -> torch.Tensor:
    """Mlp's forward with batch norm, then the activation on the dense view of its output
    (dense_activation): PyTorch's operators instead of the fused kernel."""
    return mlp.pat_sp(mlp.fc2(dense_activation(mlp.act, mlp.norm(mlp.fc1(x)))))


# what "after" adds -> (the modules that carry it, the forward that runs them without it, the
# forward with it, None: the module's own)
CHANGES = {
    "small-map GEMM of the 1x1 convs (PointwiseConv2d)": (PointwiseConv2d, torch.nn.Conv2d.forward, None),
    "MLP GELU on the dense view (dense_activation; both sides without the fused kernel)":
        (Mlp, mlp_with_generic_activation, mlp_with_separate_norm_and_activation),
    "MLP BatchNorm + GELU as one fused kernel (batch_norm_gelu)": (Mlp, mlp_with_separate_norm_and_activation, None),
    "PAT_ch norm from the SRM statistics (gated_batch_norm)": (PATChannel, pat_channel_with_plain_norm, None),
    "PAT_sp on the token matrix (pat_spatial_tokens)": (PATSpatial, PATSpatial.forward_modules, None),
}


@contextlib.contextmanager
def forward_replaced(model: torch.nn.Module, cls: type, forward):
    """Every ``cls`` module of ``model`` runs ``forward(module, x)`` inside the block, its own after."""
    mods = [m for m in model.modules() if isinstance(m, cls)]
    for m in mods:
        m.forward = functools.partial(forward, m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward


def change_gains(step: "Step", pairs: int) -> list[str]:
    """Table rows: for each change, median step wall time with it off and on and the speed-up per
    pair (median, 10th-90th percentile), steps alternating off, on, on, off, ... on the one model of
    ``step`` (after one warm-up pair)."""
    rows = []
    for what, (cls, forward_without, forward_with) in CHANGES.items():
        times: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(pairs + 1):
            for side in alternating(["off", "on"], i):
                forward = forward_without if side == "off" else forward_with
                with forward_replaced(step.model, cls, forward) if forward else contextlib.nullcontext():
                    w = step()[0]
                if i:
                    times[side].append(w)
        off, on = times["off"], times["on"]
        gain = round_ratios(off, on)
        rows.append(f"| {what} | {statistics.median(off):.3f} ({min(off):.3f}-{max(off):.3f}) | "
                    f"{statistics.median(on):.3f} ({min(on):.3f}-{max(on):.3f}) | "
                    f"{gain[0]:.2f}x ({gain[1]:.2f}-{gain[2]:.2f}) |")
    return rows


def build(name: str, variant: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = partialnet.create_model(name, num_classes=1000).train()
    if variant == "before":
        for m in model.modules():
            if type(m) is PATChannel:
                m.__class__ = ReferencePATChannel
        return model
    if variant == "after_nchw":
        return model
    model = model.to(memory_format=torch.channels_last)
    if variant == "after_compile":
        model = torch.compile(model)
    return model


def batch(size: int, bs: int, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(bs, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (bs,), generator=g)
    if variant not in ("before", "after_nchw"):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


class Step:
    def __init__(self, name: str, variant: str, bs: int, size: int):
        self.model = build(name, variant)
        if variant == "before":  # the per-parameter AdamW loop the project used to build
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05, fused=False)
        else:  # the project's optimizer (fused AdamW, no decay on norms and biases)
            self.opt = build_optimizer(self.model, {"name": "adamw", "weight_decay": 0.05}, 1e-3)
        self.x, self.y = batch(size, bs, variant)

    def __call__(self) -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - w0, time.process_time() - c0


def peak_rss_child(name: str, variant: str, bs: int, size: int) -> None:
    """Run in a fresh process: two steps, print the peak RSS in MiB as JSON."""
    step = Step(name, variant, bs, size)
    step()
    step()
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(name: str, variant: str, bs: int, size: int) -> float | None:
    cmd = [sys.executable, __file__, "--_peak-rss", variant, "--models", name, "--batch", str(bs), "--size", str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mib"])
    except (IndexError, ValueError, KeyError):
        return None


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn()`` runs."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def activation_table(bs: int, channels_last: bool) -> list[str]:
    """Saved-for-backward MiB per block type at stage-1 geometry of PartialNet-T0 (C=32, 56x56)
    and stage-4 geometry (C=256, 7x7), and that size relative to the block's input."""
    from partialnet.models.backbone import Mlp

    rows = []
    mk = {"PConv (FasterNet mixer)": lambda c: PartialConv(c),
          "PAT_ch (before: plain autograd stats)": lambda c: ReferencePATChannel(c),
          "PAT_ch (after: srm_statistics, gated_batch_norm)": lambda c: PATChannel(c),
          "PAT_sf": lambda c: PATSelf(c),
          "MLP (fc1, BN, GELU, fc2)": lambda c: Mlp(c, torch.nn.GELU),
          "MLP + PAT_sp": lambda c: Mlp(c, torch.nn.GELU, pat_sp=True)}
    for label, make in mk.items():
        cells = []
        for c, hw in ((32, 56), (256, 7)):
            if label == "PAT_sf" and hw > 7:  # global attention: a stage-4 block only
                cells.append("- (stage 4 only)")
                continue
            torch.manual_seed(0)
            m = make(c).train()
            x = torch.randn(bs, c, hw, hw, requires_grad=True)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
                x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            b = saved_bytes(lambda: m(x))
            cells.append(f"{b / 2**20:.1f} MiB ({b / (x.numel() * 4):.1f}x input)")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["partialnet_t0"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--pairs", type=int, default=10, help="off/on step pairs per change in the change table")
    ap.add_argument("--compile", action="store_true", help="add an 'after + torch.compile' variant")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    ap.add_argument("--_peak-rss", dest="peak_variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    exit_on_bad_args(args, {"runs": 1, "pairs": 1, "batch": 1, "size": 32, "warmup": 0}, args.models)
    if args.peak_variant:
        peak_rss_child(args.models[0], args.peak_variant, args.batch, args.size)
        return
    variants = [v for v in VARIANTS if args.compile or v != "after_compile"]
    print(f"### Training step (forward + backward + AdamW), batch {args.batch}, {args.size}x{args.size}, fp32, "
          f"CPU, {torch.get_num_threads()} threads\n")
    print(f"{args.runs} timed steps per variant after {args.warmup} warm-up, variants interleaved (every other "
          "round in reverse order). "
          "before = NCHW, PAT_ch statistics as plain autograd ops (ReferencePATChannel), AdamW's "
          "per-parameter loop; after = the current layers (shared srm_statistics with its one-pass "
          "backward, SRM conv as a matrix product, PAT_ch's norm from the SRM statistics, dense gradients into the split halves) with model and "
          "batch in channels_last and the project's optimizer (fused AdamW); after_nchw = the same on NCHW "
          "tensors (what the layout alone adds).\n")
    print("| model | variant | step wall s (median, min-max) | step CPU s (median) | images/s (wall) | "
          "speed-up vs before (wall / CPU) | per-round speed-up, median (10th-90th percentile) | "
          "saved for backward MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        steps, notes = {}, []
        for v in variants:
            steps[v] = Step(name, v, args.batch, args.size)
            if v == "after_compile":
                t0 = time.perf_counter()
                steps[v]()
                notes.append(f"torch.compile: first step (compilation) took {time.perf_counter() - t0:.1f} s")
        wall = {v: [] for v in variants}
        cpu = {v: [] for v in variants}
        for i in range(args.warmup + args.runs):
            for v in alternating(variants, i):
                w, c = steps[v]()
                if i >= args.warmup:
                    wall[v].append(w)
                    cpu[v].append(c)
        for v in variants:
            mw, mc = statistics.median(wall[v]), statistics.median(cpu[v])
            sw = statistics.median(wall["before"]) / mw
            sc = statistics.median(cpu["before"]) / mc
            pr = round_ratios(wall["before"], wall[v])
            rss = None if args.no_memory else peak_rss(name, v, args.batch, args.size)
            act = saved_bytes(lambda: steps[v].model(steps[v].x)) / 2**20 if v != "after_compile" else None
            print(f"| {name} | {v} | {mw:.3f} ({min(wall[v]):.3f}-{max(wall[v]):.3f}) | {mc:.3f} | "
                  f"{args.batch / mw:.1f} | {sw:.2f}x / {sc:.2f}x | {pr[0]:.2f}x ({pr[1]:.2f}-{pr[2]:.2f}) | "
                  f"{'-' if act is None else f'{act:.0f}'} | {'-' if rss is None else f'{rss:.0f}'} |", flush=True)
        for note in notes:
            print(f"\n{note}")
        print(f"\nWhat each change inside 'after' adds to {name}'s step: one 'after' model, steps alternating "
              f"with the change off and on (off, on; on, off; ...), {args.pairs} pairs after one warm-up pair.\n")
        print("| change | step wall s without (median, min-max) | with | speed-up per pair, median "
              "(10th-90th percentile) |")
        print("|---|---|---|---|")
        for row in change_gains(steps["after"], args.pairs):
            print(row, flush=True)
    print("\nActivation memory per block type (bytes autograd saves for backward in one train-mode "
          f"forward of the block, batch {args.batch}, channels_last):\n")
    print("| block | stage-1 size (C=32, 56x56) | stage-4 size (C=256, 7x7) |")
    print("|---|---|---|")
    for row in activation_table(args.batch, channels_last=True):
        print(row)
    if torch.cuda.is_available():
        print("\n(CUDA peak memory of the step is measured by bench/gpu.sh: torch.cuda.max_memory_allocated.)")


if __name__ == "__main__":
    main()
