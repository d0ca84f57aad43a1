"""The evaluation job behind ``eval.py``: accuracy, params, MACs, throughput, latency.

One or several checkpoints (accuracy on their validation data + speed), and/or registered
model names (random init: speed and MACs only). Speed is measured for the eval form and for
the fused deploy form (``partialnet.deploy.fuse``) where the model supports it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from partialnet.errors import UserError
from partialnet.measure import count
from partialnet.measure.speed import time_forward
from partialnet.models.registry import create_model
from partialnet.training.builders import build_datamodule
from partialnet.training.checkpoint_io import load_checkpoint_file


def model_from_checkpoint(ckpt: dict, path, weights: str = "auto") -> tuple[torch.nn.Module, dict, str]:
    """Rebuild the bare model saved by train.py and load its (EMA or raw) weights."""
    meta = ckpt.get("partialnet")
    if meta and meta.get("search") is not None:
        raise UserError(
            f"{path} is a DPConv search (supernet) checkpoint: retrain the searched model with "
            "train.py model.ratios=<its run dir>/ratios.yaml, then evaluate that checkpoint"
        )
    if not meta or "model_spec" not in meta:
        raise UserError(f"{path} was not written by partialnet's train.py (no model spec inside)")
    spec = meta["model_spec"]
    model = create_model(spec["name"], **spec["kwargs"])
    sd = ckpt["state_dict"]
    has_ema = any(k.startswith("ema.module.") for k in sd)
    if weights not in ("auto", "ema", "raw"):
        raise UserError(f"weights={weights!r}; use auto, ema or raw")
    if weights == "ema" and not has_ema:
        raise UserError(f"{path} has no EMA weights; use weights=raw")
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    prefix = "ema.module." if use == "ema" else "model."
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not match model {spec['name']!r}: {str(e).splitlines()[0][:160]}") from None
    return model.eval(), meta, use


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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


def _fused_speed(model, size: int, device, s) -> dict | str:
    try:
        from partialnet.deploy import fuse

        fused = fuse(model)
    except Exception as e:  # a model without a deploy form (e.g. torchvision hosts)
        return f"n/a ({type(e).__name__})"
    return _speed(fused, size, device, s)


def measure_model(model, name: str, size: int, device, cfg) -> dict:
    c = count(model, size)
    row = {"model": name, "params": c["params"], "macs": c["macs"], "input_size": size}
    row["eval_form"] = _speed(model, size, device, cfg.speed)
    if cfg.get("fused", True):
        row["fused_form"] = _fused_speed(model, size, device, cfg.speed)
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
    return f"{form['throughput']['images_per_s']:.1f}" if isinstance(form, dict) else "n/a"


def _lat(form) -> str:
    return f"{form['latency']['latency_ms']:.2f}" if isinstance(form, dict) else "n/a"


def table(rows: list[dict]) -> tuple[str, str]:
    """(Markdown, CSV) of the rows."""
    head = ["model", "source", "top-1 %", "top-5 %", "params (M)", "MACs (G, the papers' FLOPs)", "input",
            "img/s eval", "img/s fused", "latency ms eval", "latency ms fused", "device", "threads", "dtype", "batch"]
    lines = []
    for r in rows:
        thr = r["eval_form"]["throughput"]
        lines.append([
            r["model"], Path(r["checkpoint"]).name if r.get("checkpoint") else "random init",
            f"{r['val/acc1']:.2f}" if "val/acc1" in r else "-", f"{r['val/acc5']:.2f}" if "val/acc5" in r else "-",
            f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.4f}", str(r["input_size"]),
            _ips(r["eval_form"]), _ips(r.get("fused_form")), _lat(r["eval_form"]), _lat(r.get("fused_form")),
            thr["device"], str(thr["threads"]), thr["dtype"], str(thr["batch_size"]),
        ])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in lines]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(lines)
    return "\n".join(md), buf.getvalue()


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_acc = all("val/acc1" in r for r in rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    families = {"partialnet": ("tab:red", "*"), "patnet": ("tab:orange", "P"), "fasternet": ("tab:blue", "o")}
    for fam, (color, marker) in {**families, "other": ("tab:gray", "s")}.items():
        pts = [r for r in rows if (r["model"].split("_")[0] == fam) or (fam == "other" and r["model"].split("_")[0] not in families)]
        if not pts:
            continue
        xs = [float(_ips(r.get("fused_form")) if isinstance(r.get("fused_form"), dict) else _ips(r["eval_form"])) for r in pts]
        ys = [r["val/acc1"] for r in pts] if have_acc else [r["macs"] / 1e9 for r in pts]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker=marker, color=color, label=fam,
                markersize=10 if marker == "*" else 7)
        for x, y, r in zip(xs, ys, pts):
            ax.annotate(r["model"].split("_", 1)[-1].upper(), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    thr = rows[0]["eval_form"]["throughput"]
    ax.set_xlabel(f"throughput, fused form where available (images/s, batch {thr['batch_size']}, {thr['threads']} threads)")
    fig.text(0.01, 0.01, thr["device"], fontsize=7, color="gray")
    ax.set_ylabel("top-1 accuracy (%)" if have_acc else "MACs (G, the papers' FLOPs)")
    ax.set_title("accuracy vs throughput" if have_acc else "MACs vs throughput (random init, speed only)")
    ax.grid(alpha=0.3)
    ax.legend()
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
