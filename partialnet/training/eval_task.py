"""The evaluation job behind ``eval.py``: accuracy, params, MACs, throughput, latency.

One or several checkpoints (accuracy on their validation data + speed), and/or registered
model names (random init: speed and MACs only). Speed is measured for the eval form (eager
PyTorch) and for the fused deploy form (``partialnet.deploy.fuse``) on each runtime of
``runtime=`` (:mod:`partialnet.measure.runtimes`), its outputs checked against the model first.
A model that cannot be fused is an error, not a blank cell; ``fused=false`` skips the fused form.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from partialnet.errors import UserError
from partialnet.measure import count
from partialnet.measure.runtimes import RUNTIMES, check_runner, make_runner
from partialnet.measure.speed import time_forward, time_runner
from partialnet.models.registry import create_model
from partialnet.training.builders import build_datamodule
from partialnet.training.checkpoint_file import load_checkpoint_file
from partialnet.training.checkpoint_model import model_from_checkpoint
from partialnet.utils.atomic import atomic_write_text


def accuracy(model, dm, device, limit_batches=None) -> dict:
    dm.setup("validate")
    loader = dm.val_dataloader()
    n_cls = int(dm.num_classes)
    acc1 = MulticlassAccuracy(n_cls, top_k=1, average="micro").to(device)
    acc5 = MulticlassAccuracy(n_cls, top_k=min(5, n_cls), average="micro").to(device)
    n = 0
    with torch.inference_mode():
        for i, (x, y) in enumerate(tqdm(loader, desc="eval", leave=False, mininterval=5)):
            if limit_batches is not None and i >= int(limit_batches):
                break
            x, y = x.to(device), y.to(device)
            logits = model(x)
            acc1.update(logits, y)
            acc5.update(logits, y)
            n += y.numel()
    if n == 0:
        raise UserError("the validation split is empty; check data.root")
    return {"acc1": float(acc1.compute()) * 100, "acc5": float(acc5.compute()) * 100, "images": n}


def _speed(model, size: int, device, s) -> dict:
    thr = time_forward(model, int(s.batch_size), size, device, warmup=int(s.warmup), runs=int(s.runs),
                       channels_last=bool(s.channels_last))
    lat = time_forward(model, 1, size, device, warmup=int(s.warmup), runs=int(s.runs), channels_last=bool(s.channels_last))
    return {"throughput": thr.as_dict(), "latency": lat.as_dict()}


def runtimes_of(cfg) -> list[str]:
    """The runtimes asked for: ``runtime=onnxruntime`` or ``runtime=[eager,onnxruntime]``."""
    raw = cfg.get("runtime", "eager")
    names = [str(raw)] if isinstance(raw, str) else [str(r) for r in raw]
    for name in names:
        if name not in RUNTIMES:
            raise UserError(f"runtime={name!r} is unknown; use one of {'|'.join(RUNTIMES)} (or a list of them)")
    if not names:
        raise UserError("runtime=[] names no runtime; use e.g. runtime=eager")
    if not cfg.get("fused", True) and names != ["eager"]:
        raise UserError(f"runtime={','.join(names)} runs the fused deploy form; drop fused=false (or use runtime=eager)")
    return names


def fused_forms(model, name: str, size: int, device, cfg) -> dict[str, dict]:
    """Speed of the fused deploy form on every runtime of ``cfg.runtime``, outputs checked first.

    A model that cannot be fused, or whose fused form (or a runtime) computes something else
    than the model, is a :class:`UserError`: the row would otherwise report a speed of nothing.
    ``fused=false`` skips the fused form.
    """
    from partialnet.deploy import fuse
    from partialnet.models.backbone import PartialChannelNet

    if not isinstance(model, PartialChannelNet):
        raise UserError(f"{name} ({type(model).__name__}) has no fused deploy form; pass fused=false to time the eval form only")
    try:
        fused = fuse(model)
    except UserError as e:
        raise UserError(f"fusing {name} failed: {e}; pass fused=false to skip the fused form") from None
    except Exception as e:  # a bug in fusion must not pass as a missing figure
        raise UserError(f"fusing {name} failed ({type(e).__name__}: {e}); pass fused=false to skip the fused form") from e
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    s = cfg.speed
    streams = cfg.get("streams", 1)
    out = {}
    for runtime in runtimes_of(cfg):
        runner = make_runner(runtime, fused, size, device, streams=streams)
        label = runtime if streams == 1 else f"{runtime} x{streams} streams"
        diff = check_runner(runner, model, x, f"{label} (fused {name})")
        timing = dict(warmup=int(s.warmup), runs=int(s.runs), runtime=label)
        thr = time_runner(runner, int(s.batch_size), size, device, **timing)
        lat = time_runner(runner, 1, size, device, **timing)
        out[label] = {"throughput": thr.as_dict(), "latency": lat.as_dict(), "runtime": runtime,
                      "streams": streams, "max_abs_diff": diff}
    return out


def measure_model(model, name: str, size: int, device, cfg) -> dict:
    c = count(model, size)
    row = {"model": name, "params": c["params"], "macs": c["macs"], "input_size": size}
    row["eval_form"] = _speed(model, size, device, cfg.speed)
    if cfg.get("fused", True):
        forms = fused_forms(model, name, size, device, cfg)
        row["fused_runtimes"] = forms
        row["fused_form"] = next(iter(forms.values()))  # the first runtime asked for
    return row


def evaluate_checkpoint(path: Path, cfg: DictConfig, device) -> dict:
    ckpt = load_checkpoint_file(path)
    model, meta, used = model_from_checkpoint(ckpt, path, str(cfg.weights))
    data_cfg = cfg.get("data")
    if data_cfg is None:
        saved = (meta.get("config") or {}).get("data")
        if not saved:
            raise UserError(f"{path} does not record its data config; pass data=<name> (e.g. data=fashion_mnist)")
        data_cfg = OmegaConf.create(saved)
    dm = build_datamodule(data_cfg)
    if int(dm.num_classes) != int(meta["num_classes"]):
        raise UserError(
            f"data has {dm.num_classes} classes but {path}'s model has {meta['num_classes']}; pass the data it was trained on"
        )
    size = int(getattr(dm, "image_size", meta.get("image_size", 224)))
    model = model.to(device)
    row = {"checkpoint": str(path), "weights": used}
    acc = accuracy(model, dm, device, cfg.get("limit_batches"))
    row.update({"val/acc1": acc["acc1"], "val/acc5": acc["acc5"], "val/images": acc["images"]})
    row.update(measure_model(model, meta["model_spec"]["name"], size, device, cfg))
    return row


def _ips(form) -> str:
    return f"{form['throughput']['images_per_s']:.1f}" if isinstance(form, dict) else "-"


def _lat(form) -> str:
    return f"{form['latency']['latency_ms']:.2f}" if isinstance(form, dict) else "-"


def _fused_by_runtime(row: dict) -> list[tuple[str, dict | None]]:
    """``[(runtime, fused figures)]`` of a row; ``[('-', None)]`` when the fused form was skipped."""
    forms = row.get("fused_runtimes") or {}
    return list(forms.items()) or [("-", None)]


def table(rows: list[dict]) -> tuple[str, str]:
    """(Markdown, CSV) of the rows: one line per model and fused-form runtime.

    The eval form always runs in eager PyTorch; "runtime" names what ran the fused form."""
    head = ["model", "source", "top-1 %", "top-5 %", "params (M)", "MACs (G, the papers' FLOPs)", "input",
            "img/s eval (eager)", "runtime (fused)", "img/s fused", "latency ms eval (eager)", "latency ms fused",
            "device", "threads", "dtype", "batch"]
    lines = []
    for r in rows:
        thr = r["eval_form"]["throughput"]
        for runtime, fused in _fused_by_runtime(r):
            lines.append([
                r["model"], Path(r["checkpoint"]).name if r.get("checkpoint") else "random init",
                f"{r['val/acc1']:.2f}" if "val/acc1" in r else "-", f"{r['val/acc5']:.2f}" if "val/acc5" in r else "-",
                f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.4f}", str(r["input_size"]),
                _ips(r["eval_form"]), runtime, _ips(fused), _lat(r["eval_form"]), _lat(fused),
                thr["device"], str(thr["threads"]), thr["dtype"], str(thr["batch_size"]),
            ])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in lines]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(lines)
    return "\n".join(md), buf.getvalue()


def plot(rows: list[dict], out: Path) -> Path:
    """Accuracy (or MACs) vs throughput; one series per model family and runtime, named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_acc = all("val/acc1" in r for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    families = {"partialnet": ("tab:red", "*"), "patnet": ("tab:orange", "P"), "fasternet": ("tab:blue", "o")}
    styles = ["-", "--", ":", "-."]
    runtimes = list(dict.fromkeys(rt for r in rows for rt, _ in _fused_by_runtime(r)))
    for fam, (color, marker) in {**families, "other": ("tab:gray", "s")}.items():
        pts = [r for r in rows if (r["model"].split("_")[0] == fam) or (fam == "other" and r["model"].split("_")[0] not in families)]
        if not pts:
            continue
        for k, runtime in enumerate(runtimes):
            series = []
            for r in pts:
                fused = dict(_fused_by_runtime(r)).get(runtime)
                form, label = (fused, f"fused, {runtime}") if fused else (r["eval_form"], "eval form, eager")
                y = r["val/acc1"] if have_acc else r["macs"] / 1e9
                series.append((form["throughput"]["images_per_s"], y, r, label))
            series.sort(key=lambda e: e[0])
            ax.plot([e[0] for e in series], [e[1] for e in series], marker=marker, color=color,
                    linestyle=styles[k % len(styles)], label=f"{fam} ({series[0][3]})", markersize=10 if marker == "*" else 7)
            for x, y, r, _ in series:
                ax.annotate(r["model"].split("_", 1)[-1].upper(), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    thr = rows[0]["eval_form"]["throughput"]
    ax.set_xlabel(f"throughput (images/s, batch {thr['batch_size']}, {thr['threads']} threads; runtime in the legend)")
    fig.text(0.01, 0.01, thr["device"], fontsize=7, color="gray")
    ax.set_ylabel("top-1 accuracy (%)" if have_acc else "MACs (G, the papers' FLOPs)")
    ax.set_title("accuracy vs throughput" if have_acc else "MACs vs throughput (random init, speed only)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def evaluate(cfg: DictConfig, out_dir: Path | None = None) -> list[dict]:
    dev = str(cfg.device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={dev} but no CUDA GPU is visible; use device=cpu")
    device = torch.device(dev)
    runtimes_of(cfg)  # a bad runtime is an error before anything is loaded or timed
    ckpts = ([cfg.ckpt] if cfg.get("ckpt") else []) + list(cfg.get("ckpts") or [])
    names = list(cfg.get("models") or [])
    if not ckpts and not names:
        raise UserError("nothing to evaluate: pass ckpt=PATH, ckpts=[a.ckpt,b.ckpt] or models=[partialnet_t0,...]")
    rows = []
    for c in ckpts:
        path = Path(str(c)).expanduser()
        row = evaluate_checkpoint(path, cfg, device)
        rows.append(row)
        if len(ckpts) == 1:
            atomic_write_text(path.parent / "eval.json", json.dumps(row, indent=2))
            print(f"wrote {path.parent / 'eval.json'}")
    for name in names:
        model = create_model(str(name), num_classes=1000).eval().to(device)
        rows.append(measure_model(model, str(name), int(cfg.input_size), device, cfg))
    md, csv_text = table(rows)
    print(md, flush=True)
    if out_dir is not None:
        atomic_write_text(out_dir / "eval.md", md + "\n")
        atomic_write_text(out_dir / "eval.csv", csv_text)
        atomic_write_text(out_dir / "eval.json", json.dumps(rows, indent=2))
        print(f"wrote {out_dir / 'eval.md'}, eval.csv, eval.json")
        if cfg.get("plot"):
            print(f"wrote {plot(rows, out_dir / 'eval.png')}")
    return rows
