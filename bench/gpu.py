"""GPU benchmark (one CUDA device, about 8 minutes): training and inference speed at 224 px.

    bash bench/gpu.sh            # or: python bench/gpu.py [--budget-s 420] [--out bench/GPU_RESULTS.md]

Measures, on the first CUDA device:

- training images/s (forward + backward + the project's AdamW, fused, --train-batch) of PartialNet-T0/T1 and
  FasterNet-T0 in fp32 and bf16-mixed (autocast), NCHW and channels_last, eager and
  ``torch.compile`` (compiled cells: channels_last only; their compile time is printed), with
  the peak memory of the step (``torch.cuda.max_memory_allocated``);
- the FFCV GPU pipeline's images/s (JPEG decode on the CPU, uint8 to the GPU, normalised there in
  bf16), when ffcv is importable;
- inference throughput at batch 256 and batch-1 latency of the fused deploy form
  (``partialnet.deploy.fuse``), fp32 and pure bf16 (weights and input), channels_last.

Every timing synchronises the device; cells are the median of --runs timed iterations after
--warmup. Cells that do not fit in --budget-s are printed as "skipped (time budget)", so the
script ends in time on any GPU. Writes one Markdown table (stdout and --out). On a machine
without CUDA it prints "no CUDA device" and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAIN_MODELS = ("partialnet_t0", "partialnet_t1", "fasternet_t0")


class Budget:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _median_time(fn, warmup: int, runs: int, dev: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def train_cell(name: str, precision: str, channels_last: bool, compiled: bool, args, dev: torch.device) -> dict:
    import partialnet
    from partialnet.training.optim import build_optimizer

    torch.manual_seed(0)
    model = partialnet.create_model(name, num_classes=1000).to(dev).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = build_optimizer(model, {"name": "adamw", "weight_decay": 0.05}, 1e-3)  # the project's (fused AdamW)
    x = torch.randn(args.train_batch, 3, 224, 224, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.train_batch,), device=dev)
    net = torch.compile(model) if compiled else model
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16-mixed"
                else contextlib.nullcontext())

    def step():
        with autocast:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    compile_s = None
    if compiled:
        t0 = time.perf_counter()
        step()
        _sync(dev)
        compile_s = time.perf_counter() - t0
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = _median_time(step, args.warmup, args.runs, dev)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
    out = dict(ips=args.train_batch / statistics.median(times), peak_gib=peak, compile_s=compile_s)
    del net, model, opt, x, y
    if cuda:
        torch.cuda.empty_cache()
    return out


def inference_cells(name: str, args, dev: torch.device) -> list[tuple[str, str]]:
    import partialnet
    from partialnet.deploy import fuse

    model = partialnet.create_model(name, num_classes=1000).eval()
    fused = fuse(model).to(dev)  # moves its input to channels_last itself
    ref = model.to(dev)
    nets = {"fp32": fused, "bf16": copy.deepcopy(fused).to(torch.bfloat16)}  # pure bf16 weights and input
    rows = []
    with torch.inference_mode():
        x = torch.randn(2, 3, 224, 224, device=dev)
        diff = float((fused(x) - ref(x)).abs().max())
        for precision, net in nets.items():
            dtype = next(net.parameters()).dtype
            xb = torch.randn(args.infer_batch, 3, 224, 224, device=dev, dtype=dtype)
            t = _median_time(lambda: net(xb), args.warmup, args.runs, dev)
            x1 = torch.randn(1, 3, 224, 224, device=dev, dtype=dtype)
            t1 = _median_time(lambda: net(x1), args.warmup, max(args.runs, 20), dev)
            rows.append((f"inference, fused, {precision}, channels_last",
                         f"batch {args.infer_batch}: {args.infer_batch / statistics.median(t):.0f} img/s; batch 1: "
                         f"{1e3 * statistics.median(t1):.2f} ms (fp32 fused vs eval max diff {diff:.1e})"))
    return rows


def ffcv_cell(args) -> str:
    try:
        import ffcv  # noqa: F401
    except Exception as e:  # not installed, or its native parts do not load
        return f"skipped (ffcv not importable: {type(e).__name__})"
    from types import SimpleNamespace

    from loaders import make_photos  # bench/loaders.py: photo folder of JPEGs

    from partialnet.data.ffcv import FFCVDataModule, write_beton

    with tempfile.TemporaryDirectory(prefix="partialnet-gpu-ffcv-") as tmp:
        tmp = Path(tmp)
        with contextlib.redirect_stderr(io.StringIO()):
            make_photos(tmp / "photos", args.ffcv_images)
            write_beton(str(tmp / "photos"), tmp / "photos.beton", workers=4, progress=False)
        dm = FFCVDataModule(str(tmp / "photos.beton"), None, batch_size=args.train_batch,
                            num_workers=min(8, torch.get_num_threads()), image_size=224, seed=0)
        # what Lightning gives the DataModule on one GPU with bf16-mixed: pipelines end on the GPU
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
                                     precision="bf16-mixed", world_size=1, global_rank=0, current_epoch=0)
        rates = []
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            for x, _ in dm.train_dataloader():
                n += x.shape[0]
            _sync(torch.device("cuda"))
            rates.append(n / (time.perf_counter() - t0))
        where = f"{x.device}, {x.dtype}"
    return (f"{statistics.median(rates[1:]):.0f} img/s (epochs 2-3 of {args.ffcv_images} photos, batch "
            f"{args.train_batch}; first epoch {rates[0]:.0f} img/s; batches on {where})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cells after this")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ffcv-images", type=int, default=2048)
    ap.add_argument("--models", nargs="+", default=list(TRAIN_MODELS))
    ap.add_argument("--infer-batch", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "GPU_RESULTS.md"))
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every cell's code on the CPU with tiny settings (checks the script, measures nothing)")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        dev = torch.device("cpu")
        args.train_batch, args.infer_batch, args.warmup, args.runs = 2, 2, 0, 1
        args.models = args.models[:1]
        name = "CPU dry run (not a measurement)"
    elif not torch.cuda.is_available():
        print("no CUDA device: bench/gpu.sh measures nothing on this machine")
        return 0
    else:
        dev = torch.device("cuda", 0)
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0)
    budget = Budget(args.budget_s)
    lines = [f"### GPU benchmark: {name}, torch {torch.__version__}, 224 px",
             "",
             f"Training: forward + backward + AdamW, batch {args.train_batch}, median of {args.runs} steps after "
             f"{args.warmup}; peak = torch.cuda.max_memory_allocated of the step. Inference: fused deploy form.",
             "",
             "| what | model | precision | layout | mode | result | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]

    def emit(row: str) -> None:
        lines.append(row)
        print(row, flush=True)

    print("\n".join(lines), flush=True)
    configs = [(p, cl, comp) for comp in (False, True) for p in ("fp32", "bf16-mixed") for cl in (False, True)
               if not (comp and not cl)]
    for model in args.models:
        for precision, cl, comp in configs:
            layout, mode = ("channels_last" if cl else "NCHW"), ("compile" if comp else "eager")
            head = f"| training | {model} | {precision} | {layout} | {mode} |"
            if budget.left() < (90 if comp else 20):
                emit(f"{head} skipped (time budget) | - |")
                continue
            try:
                if comp and args.cpu_dry_run:
                    emit(f"{head} skipped (dry run) | - |")
                    continue
                r = train_cell(model, precision, cl, comp, args, dev)
            except Exception as e:  # one failing cell must not hide the others
                emit(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | - |")
                continue
            extra = f" (compile {r['compile_s']:.0f} s)" if r["compile_s"] is not None else ""
            peak = "-" if r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.2f}"  # NaN on the CPU
            emit(f"{head} {r['ips']:.0f} img/s{extra} | {peak} |")
    if args.cpu_dry_run:
        emit("| data | FFCV GPU pipeline | bf16 | channels_last | - | skipped (dry run) | - |")
    elif budget.left() > 60:
        try:
            emit(f"| data | FFCV GPU pipeline | bf16 | channels_last | - | {ffcv_cell(args)} | - |")
        except Exception as e:
            emit(f"| data | FFCV GPU pipeline | bf16 | channels_last | - | failed: {type(e).__name__}: "
                 f"{str(e).splitlines()[0][:120]} | - |")
    else:
        emit("| data | FFCV GPU pipeline | bf16 | channels_last | - | skipped (time budget) | - |")
    for model in args.models:
        if budget.left() < 20:
            emit(f"| inference | {model} | - | - | eager | skipped (time budget) | - |")
            continue
        try:
            for what, result in inference_cells(model, args, dev):
                emit(f"| {what.split(',')[0]} | {model} | {what.split(', ')[2]} | channels_last | eager, fused | {result} | - |")
        except Exception as e:
            emit(f"| inference | {model} | - | - | eager | failed: {type(e).__name__}: {str(e)[:120]} | - |")
    if args.cpu_dry_run:
        return 0
    out = Path(args.out)
    from partialnet.utils.atomic import atomic_write_text

    atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
