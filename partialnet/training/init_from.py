"""Fine-tuning start: initialise a model from a weights file (``model.init_from=PATH``).

Not a resume: only the weights are taken (the optimiser, schedule and epoch start fresh). The
file is a ``train.py`` checkpoint (its EMA weights when it has them, else the raw ones) or a
plain state dict (a converted file; ``{"state_dict": ...}`` and ``{"model": ...}`` wrappers are
unwrapped). When the number of classes differs, the classifier keeps its fresh initialisation
and the returned message says so; any other difference is a one-line error.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.training.checkpoint_model import select_weights

__all__ = ["init_model_from", "read_weights_file"]


def read_weights_file(path: str) -> tuple[dict, str]:
    """``(state dict of the bare model, description)`` from a checkpoint or a state-dict file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"model.init_from={path} does not exist; pass a train.py checkpoint or a converted weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"model.init_from={path} is not a readable weights file ({type(e).__name__}); "
                        "it may be truncated: pass another file") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and any(
            k.startswith("model.") for k in obj["state_dict"]):
        sd, used = select_weights(obj["state_dict"], "auto", path)
        return sd, f"the {used} weights of checkpoint {p}"
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"model.init_from={path} holds no state dict (name -> tensor)")
    return dict(obj), f"weights file {p}"


def _classifier_keys(model: nn.Module) -> set[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return set()
    for name, mod in model.named_modules():
        if mod is head:
            return {f"{name}.{k}" if name else k for k in head.state_dict()}
    return set()


def init_model_from(model: nn.Module, path: str) -> str:
    """Load ``path``'s weights into ``model``; returns the line to print."""
    sd, what = read_weights_file(path)
    own = model.state_dict()
    head = _classifier_keys(model)
    reinit = sorted(k for k in head if k in sd and sd[k].shape != own[k].shape)
    wrong = [k for k in own if k in sd and k not in reinit and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if wrong or missing or unexpected:
        first = (f"{wrong[0]} has shape {tuple(sd[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here" if wrong
                 else f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing
                 else f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise UserError(f"model.init_from={path} does not fit this model ({first}); pass weights of the same "
                        "model and variant (convert upstream files first)")
    model.load_state_dict({k: v for k, v in sd.items() if k not in reinit}, strict=False)
    msg = f"initialised from {what}"
    if reinit:
        weight = next((k for k in reinit if k.endswith("weight")), reinit[0])
        msg += (f"; classifier re-initialised: {sd[weight].shape[0]} classes there, {own[weight].shape[0]} here "
                "(fine-tuning)")
    return msg
