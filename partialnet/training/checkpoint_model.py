"""A checkpoint back to a model: ``partialnet.load_checkpoint(PATH, weights="ema"|"raw"|"auto")``.

A ``train.py`` checkpoint carries the model spec (name + constructor arguments) and both weight
sets when EMA was on (``model.*`` raw, ``ema.module.*`` averaged). The bare model is rebuilt
from the spec and gets the chosen weights; no LightningModule, optimiser or data is needed.
"""
from __future__ import annotations

import os

import torch

from partialnet.errors import UserError
from partialnet.models.registry import create_model
from partialnet.training.checkpoint_file import load_checkpoint_file

__all__ = ["WEIGHTS", "load_checkpoint", "model_from_checkpoint", "select_weights"]

WEIGHTS = ("auto", "ema", "raw")


def select_weights(state_dict: dict, weights: str, path) -> tuple[dict, str]:
    """The bare model's state dict out of a Lightning one: ``(state_dict, "ema" | "raw")``.

    ``auto`` takes the EMA weights when the checkpoint has them, else the raw ones."""
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r}; use auto, ema or raw")
    has_ema = any(k.startswith("ema.module.") for k in state_dict)
    if weights == "ema" and not has_ema:
        raise UserError(f"{path} has no EMA weights; use weights=raw")
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    prefix = "ema.module." if use == "ema" else "model."
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, use


def model_from_checkpoint(ckpt: dict, path, weights: str = "auto") -> tuple[torch.nn.Module, dict, str]:
    """Rebuild the bare model saved by train.py and load its (EMA or raw) weights:
    ``(model in eval mode, the checkpoint's partialnet metadata, "ema" | "raw")``."""
    meta = ckpt.get("partialnet")
    if meta and meta.get("search") is not None:
        raise UserError(
            f"{path} is a DPConv search (supernet) checkpoint: retrain the searched model with "
            "train.py model.ratios=<its run dir>/ratios.yaml, then use that checkpoint"
        )
    if not meta or "model_spec" not in meta:
        raise UserError(f"{path} was not written by partialnet's train.py (no model spec inside)")
    spec = meta["model_spec"]
    sub, use = select_weights(ckpt["state_dict"], weights, path)
    model = create_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise UserError(f"{path} does not match model {spec['name']!r}: {str(e).splitlines()[0][:160]}") from None
    return model.eval(), meta, use


def load_checkpoint(path: str | os.PathLike, weights: str = "auto") -> torch.nn.Module:
    """The model of a ``train.py`` checkpoint, in eval mode, with its EMA (``ema``), raw (``raw``)
    or, by default, EMA-when-present (``auto``) weights."""
    model, _, _ = model_from_checkpoint(load_checkpoint_file(path), path, weights)
    return model
