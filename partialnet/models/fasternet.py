"""FasterNet ("Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks", CVPR 2023).

Block ``x + DropPath(MLP(PConv(x)))``: PConv 3x3 on the first c_p = r*C channels (r = 1/4,
conv part first), identity on the rest, no attention and no PAT_sp. Same skeleton as
PartialNet (:mod:`partialnet.models.backbone`). Targets at 224: 3.9/7.6/15.0/31.1/53.5/93.5 M
params and 0.34/0.85/1.91/4.56/8.74/15.52 GMACs (MACs = the paper's "FLOPs").

Note: timm ships its own ``fasternet_*`` models and keeps them under these names in
``timm.create_model``; ``partialnet.create_model('fasternet_t0')`` builds this one. Weights of
timm's or the official FasterNet models convert with :mod:`partialnet.models.convert`.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs

from partialnet.errors import UserError
from partialnet.models.backbone import PartialChannelNet, build_variant, variant_cfg
from partialnet.models.registry import register_model

__all__ = ["ARCHS"]

# name: (embed_dim, depths, act_layer, drop_path_rate), FasterNet's released cfgs.
ARCHS = {
    "fasternet_t0": (40, (1, 2, 8, 2), "gelu", 0.0),
    "fasternet_t1": (64, (1, 2, 8, 2), "gelu", 0.02),
    "fasternet_t2": (96, (1, 2, 8, 2), "relu", 0.05),
    "fasternet_s": (128, (1, 2, 13, 2), "relu", 0.1),
    "fasternet_m": (144, (3, 4, 18, 3), "relu", 0.2),
    "fasternet_l": (192, (3, 4, 18, 3), "relu", 0.3),
}

default_cfgs = generate_default_cfgs({name: variant_cfg() for name in ARCHS})


def _fasternet(name: str, kwargs: dict) -> PartialChannelNet:
    """Variant ``name``: its size/act/drop-path defaults, overridden by the user's ``kwargs``."""
    if kwargs.get("pat_sp"):
        raise UserError(f"{name} has no PAT_sp; use the patnet_* models for PAT blocks on FasterNet's sizes")
    kwargs.pop("pat_sp", None)
    embed_dim, depths, act_layer, drop_path_rate = ARCHS[name]
    defaults = dict(
        embed_dim=embed_dim,
        depths=depths,
        act_layer=act_layer,
        drop_path_rate=drop_path_rate,
        mixers=("pconv", "pconv", "pconv", "pconv"),
        pat_sp=False,
        split_ratio=0.25,
    )
    return build_variant(name, defaults, **kwargs)


@register_model
def fasternet_t0(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_t0", kwargs)


@register_model
def fasternet_t1(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_t1", kwargs)


@register_model
def fasternet_t2(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_t2", kwargs)


@register_model
def fasternet_s(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_s", kwargs)


@register_model
def fasternet_m(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_m", kwargs)


@register_model
def fasternet_l(**kwargs) -> PartialChannelNet:
    return _fasternet("fasternet_l", kwargs)
