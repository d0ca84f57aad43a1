"""partialnet: partial-channel networks (PartialNet, PATNet, FasterNet), DPConv search, training.

``import partialnet`` registers every model with timm, so ``timm.create_model('partialnet_t0')``
works afterwards. ``partialnet.deploy`` (fusion, ONNX), ``partialnet.measure`` (params, MACs,
speed) and ``partialnet.load_checkpoint`` (a train.py checkpoint back to a model) are imported on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from partialnet.errors import UserError
from partialnet.models import create_model, list_models

__all__ = ["create_model", "list_models", "load_checkpoint", "UserError", "deploy", "measure"]
__version__ = "0.1.0"

_LAZY_SUBMODULES = ("deploy", "measure", "search", "training", "data")


def load_checkpoint(path, weights: str = "auto"):
    """The model of a ``train.py`` checkpoint (eval mode) with its ``ema``, ``raw`` or, by
    default, EMA-when-present (``auto``) weights."""
    from partialnet.training.checkpoint_model import load_checkpoint as _load

    return _load(path, weights=weights)


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"partialnet.{name}")
    raise AttributeError(f"module 'partialnet' has no attribute {name!r}")
