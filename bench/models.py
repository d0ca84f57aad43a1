"""Model benchmark: eval form vs deploy-fused form (partialnet.deploy.fuse) on this machine's CPU.

    python bench/models.py [--models partialnet_t0 patnet_t0 fasternet_t0] [--runs 7] [--batch 32]
                           [--size 224] [--threads N] [--warmup 3] [--no-profile]

Per model, three forms: eval (``model.eval()`` on NCHW input as is), "eval, channels_last"
(the same model and input in channels_last: layout only, to separate layout from fusion) and
fused (``deploy.fuse(model)``, which moves its NCHW input to channels_last itself). For each:
params, MACs ("FLOPs" in the papers are multiply-adds), CPU throughput at --batch and latency
at batch 1, each the median and min-max of --runs timed forwards after --warmup forwards
(partialnet.measure.speed.time_forward: inference_mode, fp32). The forms are timed round-robin,
so that they share whatever else the machine is doing.

The achieved MAC rate is the eval form's MACs (the papers' FLOPs) x images/s, compared with the
fp32 matmul rate measured in the same run (torch.mm 2048x2048, same threads, measured before
and after the models; the higher median is used). A oneDNN 1x1-conv rate is printed beside it
for context. Then the targets (fused PartialNet-T0 >= 1.3x its eval form at --batch; fused T0 >=
60 % of the matmul rate) and a torch.profiler breakdown of fused T0 (self CPU time by kind of
op, top ops, top op x shape with conv GMAC/s; --profile-threads, default 1).

Not a test: timings depend on the machine and on anything else running on it (the load average
is printed before and after, with a warning when the CPUs were shared).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import partialnet  # noqa: E402
from partialnet.deploy import fuse  # noqa: E402
from partialnet.measure import count  # noqa: E402
from partialnet.measure.speed import SpeedResult, time_forward  # noqa: E402

TARGET_SPEEDUP = 1.3
ELEMENTWISE_OPS = (
    "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::addcmul", "aten::sub",
    "aten::div", "aten::div_", "aten::sqrt",
)
TARGET_MM_FRACTION = 0.60


def exit_on_bad_args(args, minimums: dict[str, int], models=()) -> None:
    """Exit with code 2 and one line naming every option below its minimum (``{dest: minimum}``;
    None means "not given") and every unknown model name, with the fix; return if all are good."""
    bad = [f"--{dest.replace('_', '-')} {getattr(args, dest)} must be at least {low}"
           for dest, low in minimums.items() if getattr(args, dest) is not None and getattr(args, dest) < low]
    unknown = sorted(set(models) - set(partialnet.list_models()))
    if unknown:
        bad.append(f"unknown model(s) {', '.join(unknown)}; see partialnet.list_models()")
    if bad:
        print(f"error: {'; '.join(bad)}", file=sys.stderr)
        sys.exit(2)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, CPU s used by every process on the machine, CPU s used by this one), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = time.process_time()
    return time.perf_counter(), busy, own


def other_cpu_share(since: tuple[float, float, float] | None) -> float | None:
    """Share of the machine's CPU time that other processes used since ``since`` (0 = a quiet machine).

    Unlike the load average, this leaves out the benchmark's own threads and the load that a
    previous benchmark left in the 1-minute average."""
    now = cpu_snapshot()
    if since is None or now is None or now[0] <= since[0]:
        return None
    others = (now[1] - since[1]) - (now[2] - since[2])
    return max(0.0, others) / ((now[0] - since[0]) * (os.cpu_count() or 1))


def busy_warning(share: float | None) -> str:
    """One line for the end of a benchmark's output: the other processes' share of the CPUs."""
    if share is None:
        return "other processes' share of the CPUs during this run: unknown (no /proc/stat)"
    if share < 0.1:
        return f"other processes used {100 * share:.0f} % of the CPUs during this run (a quiet machine)"
    return (f"WARNING: other processes used {100 * share:.0f} % of the CPUs during this run: timings are inflated "
            "and noisy (multi-threaded ones by large factors). Re-run on a quiet machine; --threads 1 is the least "
            "affected.")


def _time(fn, runs: int, warmup: int) -> list[float]:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def alternating(seq: list, i: int) -> list:
    """Round ``i``'s order of ``seq`` in an interleaved timing: as given in even rounds, reversed in odd
    ones (A B C, C B A, ...), so that a drift of the machine's speed within a round favours no entry."""
    return seq if i % 2 == 0 else seq[::-1]


def round_ratios(before: list[float], after: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile of ``before[i] / after[i]``: the speed-up within each round of
    an interleaved timing, whose two runs were seconds apart (steadier than a ratio of medians when
    the machine's speed drifts over the run)."""
    r = sorted(b / a for b, a in zip(before, after))
    if len(r) < 2:
        return r[0], r[0], r[0]
    q = statistics.quantiles(r, n=10, method="inclusive")
    return statistics.median(r), q[0], q[-1]


def reference_kernels(n: int = 2048) -> dict[str, tuple[Callable[[], object], float]]:
    """The machine's rate kernels, ``{label: (call, MACs per call)}``: fp32 ``torch.mm`` n x n x n and,
    for context, a large channels_last 1x1 conv (oneDNN), 512 -> 512 on 32 x 28 x 28."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.randn(32, 512, 28, 28).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1)
    return {f"torch.mm {n}^3": (lambda: torch.mm(a, b), float(n) ** 3),
            "oneDNN 1x1 conv": (lambda: F.conv2d(x, w), 32 * 28 * 28 * 512 * 512.0)}


def _rate(call, macs: float, runs: int) -> dict:
    ts = _time(call, runs, 2)
    return dict(median=macs / statistics.median(ts), lo=macs / max(ts), hi=macs / min(ts))


def matmul_rate(runs: int, n: int = 2048) -> dict:
    """fp32 torch.mm n x n x n: MAC/s (median, min, max over runs)."""
    return _rate(*reference_kernels(n)[f"torch.mm {n}^3"], runs)


def conv1x1_rate(runs: int) -> dict:
    """Context: a large channels_last 1x1 conv (oneDNN), 512 -> 512 on 32 x 28 x 28: MAC/s."""
    return _rate(*reference_kernels()["oneDNN 1x1 conv"], runs)


def interleaved(forms: list[tuple], batch: int, args) -> dict[str, SpeedResult]:
    """Time every form ``args.runs`` times, round-robin (A B C A B C ...), one forward per
    time_forward call, after ``args.warmup`` warm-up forwards each. Interleaving makes the
    forms share whatever else the machine is doing; each cell is the median and min-max of its
    runs."""
    for _, net, cl in forms:
        time_forward(net, batch, args.size, warmup=args.warmup, runs=1, channels_last=cl)
    secs: dict[str, list[float]] = {form: [] for form, _, _ in forms}
    last: dict[str, SpeedResult] = {}
    for _ in range(args.runs):
        for form, net, cl in forms:
            r = time_forward(net, batch, args.size, warmup=0, runs=1, channels_last=cl)
            secs[form].append(r.seconds_median)
            last[form] = r
    return {
        form: replace(
            last[form],
            runs=len(ts),
            seconds_median=statistics.median(ts),
            seconds_min=min(ts),
            seconds_max=max(ts),
        )
        for form, ts in secs.items()
    }


def measure_model(name: str, args) -> list[dict]:
    model = partialnet.create_model(name).eval()
    fused = fuse(model)
    base = count(model, args.size)
    forms = [("eval", model, False)]
    if not args.no_channels_last_row:
        # a separate copy: time_forward converts the model it is given to channels_last
        forms.append(("eval, channels_last", copy.deepcopy(model), True))
    forms.append(("fused", fused, False))
    thr = interleaved(forms, args.batch, args)
    lat = interleaved(forms, 1, args)
    rows = []
    for form, net, _ in forms:
        c = base if form != "fused" else count(net, args.size)
        rows.append(
            dict(model=name, form=form, params=c["params"], macs=c["macs"], nominal_macs=base["macs"],
                 thr=thr[form], lat=lat[form])
        )
        print(
            f"  {name:14s} {form:19s} batch {args.batch}: {thr[form].images_per_s:8.1f} img/s   "
            f"batch 1: {lat[form].latency_ms:7.2f} ms",
            flush=True,
        )
    return rows


def op_kind(name: str, shapes) -> str:
    # (batch 1 on one thread: PyTorch runs small convs on its own im2col kernel, _slow_conv2d_forward)
    if name in ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
                "aten::_slow_conv2d_forward", "aten::thnn_conv2d"):
        try:
            w = shapes[1]
            k = (w[2], w[3])
            if k == (1, 1):
                return "conv 1x1 (fc1/fc2/head)"
            if k == (3, 3):
                return "conv 3x3 (partial conv)"
            return f"conv {k[0]}x{k[1]} (stem/merging)"
        except (IndexError, TypeError):
            return "conv"
    if name in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"):
        return "matmul (attention, SRM, head, gate)"
    if name in ("aten::gelu", "aten::gelu_", "aten::relu", "aten::relu_", "aten::hardsigmoid", "aten::_softmax"):
        return "activations / softmax"
    if name in ELEMENTWISE_OPS:
        return "elementwise (residual, gates, stats)"
    if name in ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous"):
        return "copies (layout, split/concat, slicing)"
    if name in ("aten::sum", "aten::mean", "aten::native_layer_norm"):
        return "reductions / layer norm"
    return "other (framework overhead, views, allocation)"


def conv_macs(shapes) -> float | None:
    """MACs of a conv call from its recorded input/weight shapes (this net's convs: k1/k3 stride 1,
    k2/k4 stride = kernel)."""
    try:
        (b, _, h, w), (o, i, kh, kw) = shapes[0], shapes[1]
    except (IndexError, TypeError, ValueError):
        return None
    stride = kh if kh in (2, 4) else 1
    return float(b * (h // stride) * (w // stride) * o * i * kh * kw)


def profile_breakdown(name: str, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    net = fuse(partialnet.create_model(name).eval())
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        for _ in range(2):
            net(x)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.profile_iters):
                net(x)
        cpu_ms = 1e3 * (time.process_time() - cpu0) / args.profile_iters
        wall_ms = 1e3 * (time.perf_counter() - wall0) / args.profile_iters
    kinds: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    by_shape = []
    total = 0.0
    for ev in prof.key_averages(group_by_input_shape=True):
        t = ev.self_cpu_time_total
        if t <= 0:
            continue
        total += t
        kinds[op_kind(ev.key, ev.input_shapes)] += t
        ops[ev.key] += t
        calls[ev.key] += ev.count
        by_shape.append((t, ev.key, ev.input_shapes, ev.count))
    n = args.profile_iters
    threads = torch.get_num_threads()
    print(
        f"\n### Where the time goes: fused {name}, batch {args.batch}, {args.size}px, {threads} thread(s)\n\n"
        f"torch.profiler self CPU time over {n} forwards: {total / 1e3 / n:.1f} ms of op time per forward "
        f"(wall {wall_ms:.1f} ms, process CPU {cpu_ms:.1f} ms per forward under the profiler; "
        "wall well above CPU/threads means other load interfered).\n"
    )
    print("| kind of op | share |\n|---|---|")
    for k, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {100 * t / total:.1f} % |")
    print("\n| top op | self CPU per forward | share | calls per forward |\n|---|---|---|---|")
    for k, t in sorted(ops.items(), key=lambda kv: -kv[1])[:10]:
        print(f"| {k} | {t / 1e3 / n:.2f} ms | {100 * t / total:.1f} % | {calls[k] // n} |")
    print("\n| top op x input shapes | self CPU per forward | share | conv GMAC/s |\n|---|---|---|---|")
    for t, key, shapes, count_ in sorted(by_shape, key=lambda e: -e[0])[:10]:
        rate = ""
        if key == "aten::mkldnn_convolution":
            macs = conv_macs(shapes)
            if macs:
                rate = f"{macs * count_ / (t / 1e6) / 1e9:.0f}"
        shape_txt = ", ".join(str(list(sh)) for sh in shapes[:2] if sh)
        print(f"| {key} {shape_txt} | {t / 1e3 / n:.2f} ms | {100 * t / total:.1f} % | {rate} |")


def fmt_rate(r: dict) -> str:
    return f"{r['median'] / 1e9:.1f} [{r['lo'] / 1e9:.1f}–{r['hi'] / 1e9:.1f}]"


def fmt_range(median: float, lo: float, hi: float, digits: int = 1) -> str:
    return f"{median:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["partialnet_t0", "patnet_t0", "fasternet_t0"])
    p.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 7 recommended)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiler breakdown")
    p.add_argument(
        "--no-channels-last-row",
        action="store_true",
        help="skip the 'eval, channels_last' row (the unfused model with model and input in channels_last)",
    )
    p.add_argument(
        "--profile-model", default=None, help="model to profile (default: partialnet_t0 if listed, else the first)"
    )
    p.add_argument("--profile-iters", type=int, default=3)
    p.add_argument(
        "--profile-threads",
        type=int,
        default=1,
        help="torch threads for the profiler breakdown (default 1: op shares are least distorted by other load)",
    )
    args = p.parse_args(argv)
    exit_on_bad_args(args, {"runs": 1, "warmup": 0, "batch": 1, "size": 32, "threads": 1, "profile_iters": 1},
                     args.models)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_before, since = load_avg(), cpu_snapshot()
    print(f"# Model benchmark (CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{threads} torch thread(s), fp32, {args.size}px)")
    print(f"load average before: {load_before}  (1/5/15 min; above ~{os.cpu_count()} means the CPUs are shared)\n")

    ref_runs = max(args.runs, 7)
    mm_before, conv_before = matmul_rate(ref_runs), conv1x1_rate(ref_runs)
    rows = []
    for name in args.models:
        rows.extend(measure_model(name, args))
    mm_after, conv_after = matmul_rate(ref_runs), conv1x1_rate(ref_runs)
    # the higher of the two medians: the conservative reference under changing load
    mm = max(mm_before, mm_after, key=lambda r: r["median"])
    conv_ref = max(conv_before, conv_after, key=lambda r: r["median"])
    for label, before, after in (
        (f"fp32 matmul rate (torch.mm 2048x2048, {threads} thread(s))", mm_before, mm_after),
        ("context, oneDNN 1x1 conv 512->512 on 32x28x28 channels_last", conv_before, conv_after),
    ):
        print(
            f"\n{label}: {max(before['median'], after['median']) / 1e9:.1f} GMAC/s (median before the models "
            f"{fmt_rate(before)}, after {fmt_rate(after)}; the higher is used)",
            end="",
        )
    print()

    print(
        f"\n| model | form | params (M) | MACs (G) (the papers' FLOPs) | batch {args.batch}: img/s median (min–max) "
        f"| batch 1: ms median (min–max) | MAC rate (GMAC/s) | % of matmul rate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        thr, lat = r["thr"], r["lat"]
        rate = r["nominal_macs"] * thr.images_per_s
        print(
            f"| {r['model']} | {r['form']} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.3f} | "
            f"{fmt_range(thr.images_per_s, args.batch / thr.seconds_max, args.batch / thr.seconds_min)} | "
            f"{fmt_range(lat.latency_ms, 1e3 * lat.seconds_min, 1e3 * lat.seconds_max, 2)} | "
            f"{rate / 1e9:.1f} | {100 * rate / mm['median']:.0f} % |"
        )
    print(
        f"\n{args.runs} timed runs after {args.warmup} warm-up runs per cell, forms interleaved; "
        f"{threads} torch thread(s); "
        "MAC rate = the eval form's MACs x median img/s (the fused form does slightly fewer MACs). "
        "eval = model.eval() on NCHW input as is; 'eval, channels_last' = the same model and input converted "
        "to channels_last (layout only, no fusion); fused = partialnet.deploy.fuse(model), which moves its "
        "NCHW input to channels_last itself."
    )

    print("\n### Targets")
    by = {(r["model"], r["form"]): r for r in rows}
    for name in args.models:
        if (name, "eval") not in by:
            continue
        ev, fu = by[(name, "eval")]["thr"], by[(name, "fused")]["thr"]
        speedup = fu.images_per_s / ev.images_per_s
        frac = by[(name, "fused")]["nominal_macs"] * fu.images_per_s / mm["median"]
        checks = []
        if name == "partialnet_t0":
            ok = "meets" if speedup >= TARGET_SPEEDUP else "FALLS SHORT of"
            checks.append(f"fused/eval at batch {args.batch} = {speedup:.2f}x, {ok} the {TARGET_SPEEDUP}x target")
        else:
            checks.append(f"fused/eval at batch {args.batch} = {speedup:.2f}x")
        if (name, "eval, channels_last") in by:
            ev_cl = by[(name, "eval, channels_last")]["thr"]
            checks.append(f"fused/(eval, channels_last) = {fu.images_per_s / ev_cl.images_per_s:.2f}x")
        lat_ev, lat_fu = by[(name, "eval")]["lat"], by[(name, "fused")]["lat"]
        checks.append(f"batch-1 latency {lat_ev.latency_ms:.2f} -> {lat_fu.latency_ms:.2f} ms")
        if name.endswith("_t0"):
            ok = "meets" if frac >= TARGET_MM_FRACTION else "FALLS SHORT of"
            checks.append(
                f"fused MAC rate = {100 * frac:.0f} % of the matmul rate, "
                f"{ok} the {100 * TARGET_MM_FRACTION:.0f} % target"
            )
        print(f"- {name}: " + "; ".join(checks))
    if conv_ref["median"] > mm["median"]:
        vs_conv = []
        for name in args.models:
            fu = by[(name, "fused")]
            vs_conv.append(f"{name} {100 * fu['nominal_macs'] * fu['thr'].images_per_s / conv_ref['median']:.0f} %")
        print(
            f"- note: the matmul reference is weak on this CPU: torch.mm (MKL) reaches only "
            f"{mm['median'] / 1e9:.1f} GMAC/s while a oneDNN 1x1 conv reaches {conv_ref['median'] / 1e9:.1f}; "
            f"against the conv rate the fused rates are " + ", ".join(vs_conv)
        )

    if not args.no_profile:
        target = args.profile_model or ("partialnet_t0" if "partialnet_t0" in args.models else args.models[0])
        torch.set_num_threads(args.profile_threads)
        try:
            profile_breakdown(target, args)
        finally:
            torch.set_num_threads(threads)
    print(f"\nload average after: {load_avg()} (before: {load_before})")
    print(busy_warning(other_cpu_share(since)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
