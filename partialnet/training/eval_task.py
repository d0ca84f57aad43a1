"""The evaluation job behind ``eval.py``: accuracy, params, MACs, throughput, latency."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
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


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _data_cfg(cfg: DictConfig, meta: dict):
    if cfg.get("data") is not None:
        return cfg.data
    saved = (meta.get("config") or {}).get("data")
    if not saved:
        raise UserError("the checkpoint does not record its data config; pass data=<name> (e.g. data=fashion_mnist)")
    return OmegaConf.create(saved)


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


def evaluate(cfg: DictConfig) -> dict:
    path = Path(str(cfg.ckpt)).expanduser()
    ckpt = load_checkpoint_file(path)
    model, meta, used = model_from_checkpoint(ckpt, path, str(cfg.weights))
    dev = str(cfg.device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={dev} but no CUDA GPU is visible; use device=cpu")
    device = torch.device(dev)

    dm = build_datamodule(_data_cfg(cfg, meta))
    if int(dm.num_classes) != int(meta["num_classes"]):
        raise UserError(
            f"data has {dm.num_classes} classes but the checkpoint's model has {meta['num_classes']}; pass the data it was trained on"
        )
    size = int(getattr(dm, "image_size", meta.get("image_size", 224)))
    model = model.to(device)
    result = {"checkpoint": str(path), "model": meta["model_spec"]["name"], "weights": used}
    result.update({f"val/{k}": v for k, v in accuracy(model, dm, device, cfg.get("limit_batches")).items()})
    counts = count(model, size)
    result.update({"params": counts["params"], "macs": counts["macs"], "input_size": size})
    s = cfg.speed
    thr = time_forward(model, int(s.batch_size), size, device, warmup=int(s.warmup), runs=int(s.runs),
                       channels_last=bool(s.channels_last))
    lat = time_forward(model, 1, size, device, warmup=int(s.warmup), runs=int(s.runs), channels_last=bool(s.channels_last))
    result["throughput"] = thr.as_dict()
    result["latency"] = lat.as_dict()

    rows = [
        ("model", f"{result['model']} ({used} weights)"),
        ("val top-1 / top-5", f"{result['val/acc1']:.2f} % / {result['val/acc5']:.2f} % on {result['val/images']} images"),
        ("params", f"{counts['params'] / 1e6:.3f} M"),
        ("MACs (the papers' FLOPs)", f"{counts['macs'] / 1e9:.4f} G at {size}x{size}"),
        (f"throughput (batch {thr.batch_size})",
         f"{thr.images_per_s:.1f} img/s (min-max {thr.batch_size / thr.seconds_max:.1f}-{thr.batch_size / thr.seconds_min:.1f}, {thr.runs} runs)"),
        ("latency (batch 1)", f"{lat.latency_ms:.2f} ms (min {1000 * lat.seconds_min:.2f}, max {1000 * lat.seconds_max:.2f})"),
        ("device / threads", f"{thr.device} / {thr.threads} threads, {thr.dtype}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("| " + "metric".ljust(width) + " | value |")
    print("|" + "-" * (width + 2) + "|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    out = path.parent / "eval.json"
    _atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result
