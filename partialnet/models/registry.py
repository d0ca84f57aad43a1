"""Model registry: ``create_model``, ``list_models`` and timm registration.

Every model file decorates its variant constructors with :func:`register_model`; the
constructor is then reachable as ``partialnet.create_model(name)`` and, because it is
also handed to timm's own registry, as ``timm.create_model(name)`` after
``import partialnet``.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn
from timm.models import register_model as _timm_register_model
from timm.models import is_model as _timm_is_model

from partialnet.errors import UserError

_MODEL_FNS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` (named like the model) with partialnet and with timm."""
    name = fn.__name__
    if name in _MODEL_FNS:
        raise RuntimeError(f"model {name!r} registered twice")
    _MODEL_FNS[name] = fn
    if not _timm_is_model(name):
        _timm_register_model(fn)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of every registered partialnet model matching a glob ``pattern``."""
    import fnmatch

    return sorted(n for n in _MODEL_FNS if fnmatch.fnmatch(n, pattern))


def get_model_fn(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; a :class:`UserError` naming the closest names otherwise."""
    if name not in _MODEL_FNS:
        close = difflib.get_close_matches(name, list(_MODEL_FNS), n=5, cutoff=0.4)
        hint = f"closest: {', '.join(close)}" if close else "see partialnet.list_models()"
        raise UserError(f"unknown model {name!r} ({hint})")
    return _MODEL_FNS[name]


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model('partialnet_t0', num_classes=10)``.

    ``pretrained=True`` is refused: no weights are downloaded, load a checkpoint instead.
    """
    fn = get_model_fn(name)
    if pretrained:
        raise UserError(
            f"pretrained weights are not downloaded for {name!r}; load a checkpoint with eval.py ckpt=PATH instead"
        )
    return fn(**kwargs)
