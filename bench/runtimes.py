"""Inference runtimes on the CPU: the fused form on eager PyTorch, onnxruntime, OpenVINO and
torch.compile, batch-1 latency of PartialNet against FasterNet side by side, and the share of
the machine's matmul / 1x1-conv rate that the best runtime reaches.

    python bench/runtimes.py [--threads N] [--runs 9] [--no-compile]

1. Peak rate of this machine: fp32 torch.mm 2048^3 and a oneDNN channels_last 1x1 conv
   (512 -> 512 on 32x28x28), same threads, timed in the same rounds as the runtimes of 2 (so a
   drift in the machine's speed hits both); the higher of the two is "the matmul rate".
2. PartialNet-T0 fused, batch 32, per runtime: images/s, achieved MAC rate (the fused form's
   MACs x images/s) and its share of the matmul rate; each runtime also in throughput mode
   (``streams`` = the thread count: the batch as that many concurrent one-thread chunks). Then
   the ceiling of that share with PyTorch's kernels on this machine: every conv and linear layer timed alone on the input it
   gets in the forward, by kind of layer, with everything else counted as free.
3. Batch-1 latency, fused, per runtime: PartialNet-T0 vs FasterNet-T0 and PartialNet-T1 vs
   FasterNet-T1, timed round-robin in this one process; wall time and process CPU time (the
   steadier figure when other processes share the CPUs), each as the median of the per-round
   ratios (each round's two forwards ran milliseconds apart); the verdict is by wall time, the
   latency. With more than one thread, eager and onnxruntime again on one thread.
4. What the one-image token-matrix forms of the fused modules change: eager batch-1 latency of
   PartialNet-T0 and FasterNet-T0 with those forms switched off and on, forwards interleaved; and
   what runtime=compile's CPU inference options change against plain ``torch.compile``.
5. Where the time goes at batch 1 (eager, torch.profiler self CPU time by kind of op) for
   fused PartialNet-T0 and FasterNet-T0.

Every runtime's outputs are checked against the model's eval outputs (max |diff| <= 1e-4)
before it is timed (partialnet.measure.runtimes.check_runner).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import partialnet  # noqa: E402
from models import (  # noqa: E402  (bench/models.py)
    alternating, busy_warning, cpu_name, cpu_snapshot, exit_on_bad_args, load_avg, op_kind, other_cpu_share,
    reference_kernels, round_ratios)
from partialnet.deploy import fuse, fusion  # noqa: E402
from partialnet.measure import count  # noqa: E402
from partialnet.measure.runtimes import check_runner, make_runner  # noqa: E402

PAIRS = (("partialnet_t0", "fasternet_t0"), ("partialnet_t1", "fasternet_t1"))


def round_robin(runners: dict, x: torch.Tensor, warmup: int, runs: int) -> dict:
    """{key: (wall seconds list, process CPU seconds list)}, runners timed A B C, C B A, ... (:func:`alternating`)."""
    for fn in runners.values():
        for _ in range(warmup):
            fn(x)
    out = {k: ([], []) for k in runners}
    order = list(runners.items())
    for i in range(runs):
        for k, fn in alternating(order, i):
            w0, c0 = time.perf_counter(), time.process_time()
            fn(x)
            out[k][0].append(time.perf_counter() - w0)
            out[k][1].append(time.process_time() - c0)
    return out


def build_runners(names, runtimes, size: int) -> tuple[dict, dict]:
    """{(name, runtime): runner} (outputs checked) and {name: fused MACs}."""
    runners, macs = {}, {}
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for name in names:
        torch.manual_seed(0)
        model = partialnet.create_model(name).eval()
        fused = fuse(model)
        macs[name] = count(fused, size)["macs"]
        for rt in runtimes:
            runner = make_runner(rt, fused, size)
            check_runner(runner, model, x, rt)
            runners[(name, rt)] = runner
    return runners, macs


def stream_runners(name: str, runtimes, size: int, streams: int, batch: int) -> dict:
    """{'<runtime> x<streams> streams': runner} of ``name``'s fused form in throughput mode (each
    batch as ``streams`` concurrent chunks; partialnet.measure.runtimes), outputs checked, the
    graphs for ``batch`` built ahead."""
    torch.manual_seed(0)
    model = partialnet.create_model(name).eval()
    fused = fuse(model)
    x = torch.randn(max(2, streams), 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for rt in runtimes:
        runner = make_runner(rt, fused, size, streams=streams)
        runner.prepare(batch)
        check_runner(runner, model, x, f"{rt} x{streams} streams")
        out[f"{rt} x{streams} streams"] = runner
    return out


def batch1_table(title: str, runners: dict, runtimes, x: torch.Tensor, args) -> None:
    """Rows of PartialNet vs FasterNet batch-1 latency per runtime, each pair timed round-robin. Both
    ratios are medians over rounds of PartialNet's time over FasterNet's in the same round (the two
    forwards ran milliseconds apart): wall time, which is the latency and decides the verdict, and
    process CPU time, the steadier figure when other processes share the CPUs (it also counts the
    work of every thread, so a model that keeps its second thread busier pays for it there)."""
    print(f"| {title} | runtime | wall ms median (min) | process CPU ms median | "
          "wall time ratio per round, median (10th-90th percentile) | CPU time ratio per round | verdict (wall time) |")
    print("|---|---|---|---|---|---|---|")
    for rt in runtimes:
        for ours, theirs in PAIRS:
            r = round_robin({n: runners[(n, rt)] for n in (ours, theirs)}, x, max(args.warmup, 10), args.latency_runs)
            wall_ratio = round_ratios(r[ours][0], r[theirs][0])
            cpu_ratio = round_ratios(r[ours][1], r[theirs][1])
            for n in (ours, theirs):
                wall = r[n][0]
                cells = ("", "", "")
                if n == theirs:
                    cells = (f"{wall_ratio[0]:.3f} ({wall_ratio[1]:.2f}-{wall_ratio[2]:.2f})",
                             f"{cpu_ratio[0]:.3f} ({cpu_ratio[1]:.2f}-{cpu_ratio[2]:.2f})",
                             f"{ours} {'<=' if wall_ratio[0] <= 1 else '>'} {theirs}")
                print(f"| {n} | {rt} | {1e3 * statistics.median(wall):.2f} ({1e3 * min(wall):.2f}) | "
                      f"{1e3 * statistics.median(r[n][1]):.2f} | {' | '.join(cells)} |")


def _layer_kind(m: torch.nn.Module) -> str:
    if isinstance(m, torch.nn.Linear):
        return "linear (SRM, head)"
    k = tuple(m.kernel_size)
    if k == (1, 1):
        return "conv 1x1 (fc1/fc2, qkv/proj, head)"
    return f"conv {k[0]}x{k[1]} (partial conv)" if k == (3, 3) else f"conv {k[0]}x{k[1]} (stem/merging)"


def kernel_ceiling(fused: torch.nn.Module, x: torch.Tensor, rounds: int = 5, reference: dict | None = None) -> dict:
    """Each conv and linear layer of ``fused`` timed alone on the very input tensor it gets in one
    forward on ``x`` (same shape, strides and path), all layers round-robin, ``rounds`` times, after
    one warm-up round. Returns per kind of layer [MACs, median seconds summed over its layers] and
    the sum over all layers: the time the model's arithmetic takes on these kernels with everything
    else (activations, statistics, gates, softmax, copies) taken as free. ``reference``
    (:func:`reference_kernels`) is timed in the same rounds; its highest rate is returned as "peak"."""
    captured = []

    def grab(module, inputs, output):
        macs = output.numel() * (module.in_features if isinstance(module, torch.nn.Linear)
                                 else module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1])
        captured.append((module, inputs[0], macs))

    layers = [m for m in fused.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(grab) for m in layers]
    try:
        with torch.inference_mode():
            fused(x)
    finally:
        for h in handles:
            h.remove()
    times = [[] for _ in captured]
    reference = reference or {}
    ref_times: dict[str, list[float]] = {k: [] for k in reference}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for i, (m, inp, _) in enumerate(captured):
                t0 = time.perf_counter()
                m(inp)
                if r:
                    times[i].append(time.perf_counter() - t0)
            for k, (call, _) in reference.items():
                t0 = time.perf_counter()
                call()
                if r:
                    ref_times[k].append(time.perf_counter() - t0)
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (m, _, macs), ts in zip(captured, times):
        kinds[_layer_kind(m)][0] += macs
        kinds[_layer_kind(m)][1] += statistics.median(ts)
    return {"kinds": dict(kinds), "macs": sum(v[0] for v in kinds.values()),
            "seconds": sum(v[1] for v in kinds.values()), "layers": len(captured),
            "peak": max((macs / statistics.median(ref_times[k]) for k, (_, macs) in reference.items()), default=None)}


def ceiling_table(name: str, x: torch.Tensor, model_macs: float, best_share: float, reference: dict) -> None:
    """How far the batch's share of the matmul rate could go at most with PyTorch's kernels here."""
    torch.manual_seed(0)
    fused = fuse(partialnet.create_model(name).eval())
    c = kernel_ceiling(fused, x, reference=reference)
    batch, peak = x.shape[0], c["peak"]
    print(f"Ceiling of that share with this machine's kernels: every conv and linear layer of fused {name} timed "
          f"alone on its own input of one batch-{batch} forward (median of 5, layers round-robin with the rate "
          f"kernels, whose higher rate here was {peak / 1e9:.1f} GMAC/s); everything else counted as free.\n")
    print("| layers | GMACs per image | ms per batch (sum of the layers) | GMAC/s | share of the matmul rate |")
    print("|---|---|---|---|---|")
    for kind, (macs, secs) in sorted(c["kinds"].items(), key=lambda kv: -kv[1][1]):
        print(f"| {kind} | {macs / batch / 1e9:.3f} | {1e3 * secs:.1f} | {macs / secs / 1e9:.1f} | "
              f"{100 * macs / secs / peak:.0f} % |")
    ceiling = model_macs * batch / c["seconds"] / peak
    print(f"| all of them | {c['macs'] / batch / 1e9:.3f} | {1e3 * c['seconds']:.1f} | {c['macs'] / c['seconds'] / 1e9:.1f} | "
          f"{100 * c['macs'] / c['seconds'] / peak:.0f} % |")
    print(f"\nceiling: the model's {model_macs / 1e9:.3f} GMACs per image (attention products included) in the layers' "
          f"time alone = {100 * ceiling:.0f} % of the matmul rate; the best runtime above reached "
          f"{100 * best_share:.0f} %, i.e. {100 * best_share / ceiling:.0f} % of that ceiling\n")


def profile_kinds(name: str, size: int, iters: int = 10) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    net = fuse(partialnet.create_model(name).eval())
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iters):
                net(x)
    kinds: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.self_cpu_time_total > 0:
            kinds[op_kind(ev.key, ev.input_shapes)] += ev.self_cpu_time_total / 1e3 / iters
    kinds["(op calls per forward: a count, not ms)"] = sum(ev.count for ev in prof.key_averages()) / iters
    return kinds


def openvino_kinds(name: str, size: int, threads: int, iters: int = 10) -> dict[str, float]:
    """OpenVINO's own per-node counters (PERF_COUNT) for the fused model's ONNX export at batch 1:
    ms per inference by node type (exec type in brackets), summed over the graph's nodes."""
    import tempfile

    import numpy as np
    import openvino as ov

    from partialnet.deploy.onnx_export import export_onnx

    model = partialnet.create_model(name).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size=size, dynamic_batch=False, fuse=True)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    kinds: dict[str, float] = defaultdict(float)
    for i in range(iters + 3):
        request.infer({0: x})
        if i >= 3:  # after the warm-up calls
            for node in request.profiling_info:
                kinds[f"{node.node_type} ({node.exec_type})"] += node.real_time.total_seconds() * 1e3 / iters
    return {k: v for k, v in kinds.items() if v > 0}


def onnxruntime_kinds(name: str, size: int, threads: int, iters: int = 30,
                      save_optimised: Path | None = None) -> dict[str, list[float]]:
    """onnxruntime's own profile of the fused model's ONNX export at batch 1, in the graph form and session
    options of ``runtime=onnxruntime`` on ``threads`` threads: ``{op type: [ms per inference, nodes per inference,
    of which nodes that handed work to the thread pool]}`` (ms include the profiler's own cost per node).
    ``save_optimised``: where to write the graph onnxruntime ran (after its optimisations)."""
    import json
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from partialnet.deploy.onnx_export import export_onnx
    from partialnet.measure.runtimes import ONNXRUNTIME_FORM, onnxruntime_options

    model = partialnet.create_model(name).eval()
    kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size=size, dynamic_batch=False, fuse=True,
                           export_form=ONNXRUNTIME_FORM)
        opts = onnxruntime_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        if save_optimised is not None:
            opts.optimized_model_filepath = str(save_optimised)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, size, size),
                                                                                 dtype=np.float32)}
        for _ in range(iters + 5):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first = runs[5]["ts"]  # the first 5 runs are a warm-up
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first:
            continue
        row = kinds[e["args"]["op_name"]]
        stats = e["args"].get("thread_scheduling_stats")  # a dict with a thread pool, else a string
        pooled = isinstance(stats, dict) and bool(stats.get("main_thread", {}).get("block_size"))
        row[0] += e["dur"] / 1e3 / iters
        row[1] += 1 / iters
        row[2] += pooled / iters  # the node handed blocks of its work to the pool
    return dict(kinds)


def onnxruntime_kinds_table(size: int, threads: int) -> None:
    """Where onnxruntime's time goes for PartialNet-T0 and FasterNet-T0 at batch 1 (its profiler, by op type)."""
    kinds = {n: onnxruntime_kinds(n, size, threads) for n in PAIRS[0]}
    print(f"\nWhere the time goes at batch 1 on onnxruntime ({threads} thread(s)): ms per inference by op type "
          "(its profiler, whose own cost per node is included), nodes per inference and, in brackets, how many of "
          "them handed work to the thread pool (the others ran on the calling thread alone)\n")
    print(f"| op type | {' | '.join(PAIRS[0])} |")
    print("|---|---|---|")
    keys = sorted({k for d in kinds.values() for k in d}, key=lambda k: -kinds[PAIRS[0][0]].get(k, [0.0])[0])
    for k in keys:
        cells = [f"{kinds[n][k][0]:.3f} ms, {kinds[n][k][1]:.0f} ({kinds[n][k][2]:.0f})" if k in kinds[n] else ""
                 for n in PAIRS[0]]
        print(f"| {k} | " + " | ".join(cells) + " |")
    totals = []
    for n in PAIRS[0]:
        ms, nodes, par = (sum(v[i] for v in kinds[n].values()) for i in range(3))
        alone = sum(v[0] * (1 - v[2] / v[1]) for v in kinds[n].values())
        totals.append(f"{ms:.2f} ms, {nodes:.0f} ({par:.0f}); {100 * alone / ms:.0f} % of the time in nodes "
                      "that ran on the calling thread alone")
    print("| all nodes | " + " | ".join(totals) + " |")


def export_forms_table(name: str, size: int, threads: int, runs: int) -> None:
    """onnxruntime's batch-1 latency of ``name``'s fused graph in each export form
    (:func:`partialnet.deploy.set_export_form`), one session each in ``runtime=onnxruntime``'s options,
    outputs checked, runs interleaved; the speed-up of each form over ``'full_width'`` per round."""
    import tempfile

    import onnxruntime as ort

    from partialnet.deploy.fusion import EXPORT_FORMS
    from partialnet.deploy.onnx_export import export_onnx
    from partialnet.measure.runtimes import ONNXRUNTIME_FORM, onnxruntime_options

    torch.manual_seed(0)
    model = partialnet.create_model(name).eval()
    x = torch.randn(1, 3, size, size)
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in EXPORT_FORMS:
            path = export_onnx(model, Path(tmp) / f"{form}.onnx", input_size=size, dynamic_batch=False,
                               export_form=form)
            sess = ort.InferenceSession(str(path), onnxruntime_options(threads), providers=["CPUExecutionProvider"])

            def run(t, sess=sess):
                return torch.from_numpy(sess.run(None, {"input": t.numpy()})[0])

            check_runner(run, model, x, f"onnxruntime ({form} graph)")
            runners[form] = run
    r = round_robin(runners, x, 10, runs)
    base = EXPORT_FORMS[0]
    print(f"| {name}, batch 1, onnxruntime | export form | wall ms median | speed-up over {base!r} per round, "
          "wall (10th-90th percentile) |")
    print("|---|---|---|---|")
    for form in EXPORT_FORMS:
        wall = round_ratios(r[base][0], r[form][0])
        print(f"| | {form}{' (runtime=onnxruntime)' if form == ONNXRUNTIME_FORM else ''} | "
              f"{1e3 * statistics.median(r[form][0]):.2f} | {wall[0]:.3f}x ({wall[1]:.2f}-{wall[2]:.2f}) |")


def compile_options_table(names, size: int, runs: int) -> None:
    """What runtime=compile's CPU inference options (``CPU_COMPILE_OPTIONS``: frozen weights, C++
    wrapper) change against plain ``torch.compile``: batch-1 latency of each fused model compiled
    both ways (separate copies), outputs checked, forwards interleaved."""
    from partialnet.measure.runtimes import CPU_COMPILE_OPTIONS

    print(f"| one image, fused | plain torch.compile: wall ms median | with {CPU_COMPILE_OPTIONS}: wall ms median | "
          "speed-up per round, wall (10th-90th percentile) | speed-up per round, CPU time |")
    print("|---|---|---|---|---|")
    x = torch.randn(1, 3, size, size)
    for name in names:
        torch.manual_seed(0)
        model = partialnet.create_model(name).eval()
        plain = torch.compile(fuse(model))

        def plain_run(t, plain=plain):
            with torch.inference_mode():
                return plain(t)

        runners = {"plain": plain_run, "options": make_runner("compile", fuse(model), size)}
        for label, runner in runners.items():
            check_runner(runner, model, x, f"compile ({label})")
        r = round_robin(runners, x, 10, runs)
        wall, cpu = round_ratios(r["plain"][0], r["options"][0]), round_ratios(r["plain"][1], r["options"][1])
        print(f"| {name} | {1e3 * statistics.median(r['plain'][0]):.2f} | {1e3 * statistics.median(r['options'][0]):.2f} | "
              f"{wall[0]:.3f}x ({wall[1]:.2f}-{wall[2]:.2f}) | {cpu[0]:.3f}x ({cpu[1]:.2f}-{cpu[2]:.2f}) |")
    torch._dynamo.reset()


@contextlib.contextmanager
def token_forms_off():
    """The fused modules' one-image token-matrix forms switched off (as if no input had a token
    matrix): the blocks (mixer halves straight into fc1), PAT_ch, the MLP and PAT_sf then run their
    map forms, as before those forms existed."""
    real = fusion.token_matrix
    fusion.token_matrix = lambda x: None
    try:
        yield
    finally:
        fusion.token_matrix = real


def token_forms_table(names, size: int, runs: int) -> None:
    """Fused eager batch-1 latency with the token-matrix forms off and on, one model instance each,
    forwards interleaved (off, on, on, off, ...); median and 10th percentile of the wall times, and
    the speed-up as the median (10th-90th percentile) of the per-round ratios."""
    x = torch.randn(1, 3, size, size)
    print("| one image, fused, eager | token forms off: ms median (p10) | on: ms median (p10) | "
          "speed-up per round, median (10th-90th percentile) |")
    print("|---|---|---|---|")
    for name in names:
        fused = fuse(partialnet.create_model(name).eval())

        def off(t, fused=fused):
            with token_forms_off():
                return fused(t)

        with torch.inference_mode():
            torch.testing.assert_close(off(x), fused(x), rtol=0, atol=1e-4)
            times = round_robin({"off": off, "on": fused}, x, warmup=10, runs=runs)
        med = {k: statistics.median(v[0]) for k, v in times.items()}
        p10 = {k: statistics.quantiles(v[0], n=10)[0] if len(v[0]) > 1 else v[0][0] for k, v in times.items()}
        gain = round_ratios(times["off"][0], times["on"][0])
        print(f"| {name} | {1e3 * med['off']:.2f} ({1e3 * p10['off']:.2f}) | {1e3 * med['on']:.2f} "
              f"({1e3 * p10['on']:.2f}) | {gain[0]:.2f}x ({gain[1]:.2f}-{gain[2]:.2f}) |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="include torch.compile (default; --no-compile skips its few minutes of compiling)")
    ap.add_argument("--token-runs", type=int, default=300,
                    help="interleaved forwards per side in the one-image token-form off/on table")
    ap.add_argument("--latency-runs", type=int, default=100,
                    help="rounds (one forward of each model of a pair) per runtime in the batch-1 tables")
    args = ap.parse_args(argv)
    exit_on_bad_args(args, {"threads": 1, "runs": 1, "warmup": 0, "batch": 1, "size": 32, "token_runs": 1,
                            "latency_runs": 1})
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    since = cpu_snapshot()
    runtimes = ["eager", "onnxruntime", "openvino"] + (["compile"] if args.compile else [])
    print(f"### Inference runtimes (CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, {threads} thread(s), fp32, "
          f"{args.size}px)\n\nload average before: {load_avg()}; OMP_WAIT_POLICY: "
          f"{os.environ.get('OMP_WAIT_POLICY', 'not set (the default)')} (eager batch-1 latency depends on it, "
          f"see the README)\n")

    names = sorted({n for pair in PAIRS for n in pair})
    runners, macs = build_runners(names, runtimes, args.size)

    # The machine's rate is timed in the same rounds as the runtimes (mm, conv, eager, onnxruntime,
    # ... mm, conv, ...): on a shared machine whose speed drifts by 10-30 % within minutes, a rate
    # measured before the models could come from a faster or slower minute than the models' runs.
    kernels = reference_kernels()
    t0_name = PAIRS[0][0]
    xb = torch.randn(args.batch, 3, args.size, args.size)
    timed = {k: (lambda _x, call=call: call()) for k, (call, _) in kernels.items()}
    timed.update({rt: runners[(t0_name, rt)] for rt in runtimes})
    # throughput mode: the batch as one chunk per thread, the chunks at the same time
    streamed = stream_runners(t0_name, [rt for rt in runtimes if rt != "compile"], args.size, threads,
                              args.batch) if threads > 1 and args.batch >= threads else {}
    timed.update(streamed)
    res = round_robin(timed, xb, args.warmup, args.runs)
    rates = {k: macs_k / statistics.median(res[k][0]) for k, (_, macs_k) in kernels.items()}
    peak = max(rates.values())
    print("machine rate, timed in the same rounds as the runtimes below (median of "
          f"{args.runs}): " + ", ".join(f"{k} {r / 1e9:.1f} GMAC/s" for k, r in rates.items())
          + f"; reference = the higher, {peak / 1e9:.1f} GMAC/s\n")
    print(f"| {t0_name} fused, batch {args.batch} | images/s median (min-max) | GMAC/s | share of the matmul rate |")
    print("|---|---|---|---|")
    best = None
    for rt in [*runtimes, *streamed]:
        wall = res[rt][0]
        ips = args.batch / statistics.median(wall)
        rate = macs[t0_name] * ips
        best = max(best or (0, ""), (rate, rt))
        print(f"| {rt} | {ips:.1f} ({args.batch / max(wall):.1f}-{args.batch / min(wall):.1f}) | {rate / 1e9:.1f} | "
              f"{100 * rate / peak:.0f} % |")
    if streamed:
        print(f"\n'x{threads} streams': throughput mode (make_runner(..., streams={threads}), eval.py "
              f"streams={threads}): the batch of {args.batch} as {threads} chunks run at the same time, one thread "
              "each; the other rows run the whole batch on all threads.")
    print(f"\nbest runtime for {t0_name} at batch {args.batch}: {best[1]}, {100 * best[0] / peak:.0f} % of the "
          f"machine's matmul/1x1-conv rate (target >= 85 %: {'met' if best[0] >= 0.85 * peak else 'not met'})\n")
    ceiling_table(t0_name, xb, macs[t0_name], best[0] / peak, kernels)

    x1 = torch.randn(1, 3, args.size, args.size)
    batch1_table(f"batch-1 latency, fused, {threads} thread(s)", runners, runtimes, x1, args)
    if threads > 1:  # the same comparison with one thread: how much each model gains from a second one
        torch.set_num_threads(1)
        try:
            print()
            # onnxruntime's sessions keep the thread count they were made with: new ones, on one thread
            one_thread = [rt for rt in ("onnxruntime",) if rt in runtimes]
            rebuilt = build_runners([n for pair in PAIRS for n in pair], one_thread, args.size)[0]
            batch1_table("batch-1 latency, fused, 1 thread", {**runners, **rebuilt}, ["eager", *one_thread], x1, args)
        finally:
            torch.set_num_threads(threads)
    print(f"\nWhat the one-image token-matrix forms of the fused modules "
          f"(partialnet/models/layers/token_view.py) change, {threads} thread(s), {args.token_runs} interleaved "
          f"forwards per side:\n")
    token_forms_table(PAIRS[0], args.size, args.token_runs)
    print()
    if "compile" in runtimes:
        print(f"What runtime=compile's CPU inference options change, {threads} thread(s), {args.latency_runs} rounds:\n")
        compile_options_table(PAIRS[0], args.size, args.latency_runs)
        print()
    kinds = {n: profile_kinds(n, args.size) for n in PAIRS[0]}
    print(f"Where the time goes at batch 1, fused, eager, {threads} thread(s): self CPU ms per forward by kind of op\n")
    print(f"| kind of op | {' | '.join(PAIRS[0])} |")
    print("|---|---|---|")
    keys = sorted({k for d in kinds.values() for k in d}, key=lambda k: -kinds[PAIRS[0][0]].get(k, 0.0))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{kinds[n].get(k, 0.0):.2f}" for n in PAIRS[0]) + " |")
    if "openvino" in runtimes:
        ov_kinds = {n: openvino_kinds(n, args.size, threads) for n in PAIRS[0]}
        print(f"\nWhere the time goes at batch 1 on OpenVINO ({threads} thread(s)): ms per inference by node type "
              f"(OpenVINO's counters; the export form has no channel split feeding two consumers)\n")
        print(f"| node type (implementation) | {' | '.join(PAIRS[0])} |")
        print("|---|---|---|")
        keys = sorted({k for d in ov_kinds.values() for k in d}, key=lambda k: -ov_kinds[PAIRS[0][0]].get(k, 0.0))
        for k in keys:
            print(f"| {k} | " + " | ".join(f"{ov_kinds[n].get(k, 0.0):.3f}" for n in PAIRS[0]) + " |")
        print("| total of the nodes | " + " | ".join(f"{sum(ov_kinds[n].values()):.2f}" for n in PAIRS[0]) + " |")
    if "onnxruntime" in runtimes:
        print(f"\nWhat the export form changes on onnxruntime ({threads} thread(s), {args.latency_runs} rounds; "
              "OpenVINO runs the 'full_width' form):\n")
        export_forms_table(PAIRS[0][0], args.size, threads, args.latency_runs)
        onnxruntime_kinds_table(args.size, threads)
    print(f"\nload average after: {load_avg()}")
    print(busy_warning(other_cpu_share(since)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
