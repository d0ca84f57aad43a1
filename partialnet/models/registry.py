"""Model registry: ``create_model``, ``list_models``, timm registration and timm's builder.

Every model file decorates its variant constructors with :func:`register_model`; the
constructor is then reachable as ``partialnet.create_model(name)`` and, because it is
also handed to timm's own registry, as ``timm.create_model(name)`` after
``import partialnet``. A name timm already ships (``fasternet_*``) stays timm's in timm's
registry; ``partialnet.create_model`` builds ours.

:func:`build_with_timm` builds a variant through timm's ``build_model_with_cfg``, so
``features_only``/``out_indices``, ``pretrained_cfg`` and local weights through
``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` behave as for timm's models.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Callable

import torch.nn as nn
from timm.models import build_model_with_cfg
from timm.models import is_model as _timm_is_model
from timm.models import register_model as _timm_register_model
from timm.models._pretrained import PretrainedCfg

from partialnet.errors import UserError

_MODEL_FNS: dict[str, Callable[..., nn.Module]] = {}
_PRETRAINED_CFGS: dict[str, PretrainedCfg] = {}

# Keyword arguments of timm's factory and builder (not of the model's constructor).
TIMM_BUILD_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only", "out_indices",
                     "feature_cls")
# Where ``pretrained=True`` may take weights from: local sources only, nothing is downloaded.
_LOCAL_WEIGHT_KEYS = ("file", "state_dict")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` (named like the model) with partialnet and with timm."""
    name = fn.__name__
    if name in _MODEL_FNS:
        raise RuntimeError(f"model {name!r} registered twice")
    _MODEL_FNS[name] = fn
    cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    if name in cfgs:
        _PRETRAINED_CFGS[name] = dataclasses.replace(cfgs[name].default, architecture=name)
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

    Takes timm's factory arguments too (``features_only=True``, ``out_indices``, ...).
    ``pretrained=True`` needs a local file: ``pretrained_cfg_overlay=dict(file=PATH)``
    (any layout :mod:`partialnet.models.convert` reads); nothing is downloaded.
    """
    fn = get_model_fn(name)
    if pretrained:
        kwargs["pretrained"] = True
    return fn(**kwargs)


def build_with_timm(model_cls: Callable[..., nn.Module], name: str, model_kwargs: dict, pretrained: bool = False,
                    cfg_overlay: dict | None = None, **build_kwargs) -> nn.Module:
    """``model_cls(**model_kwargs)`` built by timm's ``build_model_with_cfg`` as variant ``name``.

    ``build_kwargs`` are timm's (:data:`TIMM_BUILD_KWARGS`); ``cfg_overlay`` adjusts the
    registered pretrained cfg to the model (e.g. its input size), the user's
    ``pretrained_cfg_overlay`` goes on top. Weights load through
    :func:`partialnet.models.convert.checkpoint_filter_fn`, from a local file or state dict only.
    Feature extraction (``features_only=True``) taps the four stages (``out_indices`` 0..3).
    """
    from partialnet.models.convert import checkpoint_filter_fn  # convert builds models: import late

    unknown = set(build_kwargs) - set(TIMM_BUILD_KWARGS)
    if unknown:
        raise TypeError(f"unexpected timm build arguments {sorted(unknown)}")
    overlay = {**(cfg_overlay or {}), **(build_kwargs.pop("pretrained_cfg_overlay", None) or {})}
    if pretrained and not any(overlay.get(k) is not None for k in _LOCAL_WEIGHT_KEYS):
        raise UserError(
            f"no weights are downloaded for {name!r}; pass a local file: "
            f"pretrained_cfg_overlay=dict(file=PATH) (see python -m partialnet.models.convert --help)"
        )
    pretrained_cfg = build_kwargs.pop("pretrained_cfg", None) or _PRETRAINED_CFGS.get(name)
    return build_model_with_cfg(
        model_cls, name, pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **build_kwargs,
        **model_kwargs,
    )
