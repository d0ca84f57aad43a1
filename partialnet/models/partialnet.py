"""PartialNet ("Partial Channel Network: Compute Fewer, Perform Better") and PATNet
("Partial Convolution Meets Visual Attention"): the same PAT blocks, different sizes.

Stages 1-3: block v1 ``x + DropPath(PAT_sp(MLP(PAT_ch(x))))``; stage 4: block v2
``x = x + PAT_sf(x); x = x + DropPath(PAT_sp(MLP(x)))``. Split r = 1/4 by default, conv part
first; PAT_sp is on by default (the paper); ``pat_sp=False`` gives the authors' released
configs. Widths/depths: PartialNet from the authors' released configs, PATNet from FasterNet.

Every variant accepts ``num_classes``, ``in_chans``, ``split_ratio``, ``ratios`` (list, one per
block, or a ratios-file path), ``pat_sp``, ``drop_path_rate``, ``small_input``, the other
:class:`~partialnet.models.backbone.PartialChannelNet` arguments and timm's factory
arguments (``features_only``, ``out_indices``, ``pretrained`` with a local file).
"""
from __future__ import annotations

from timm.models import generate_default_cfgs

from partialnet.models.backbone import PartialChannelNet, build_variant, variant_cfg
from partialnet.models.fasternet import ARCHS as FASTERNET_ARCHS
from partialnet.models.registry import register_model

__all__ = ["PAT_MIXERS", "ARCHS"]

PAT_MIXERS = ("pat_ch", "pat_ch", "pat_ch", "pat_sf")

# name: (embed_dim, depths, act_layer, drop_path_rate). PartialNet: the authors' released
# cfgs; PATNet: the PAT blocks on FasterNet's widths/depths/act/drop-path.
ARCHS = {
    "partialnet_t0": (32, (1, 2, 8, 2), "gelu", 0.0),
    "partialnet_t1": (48, (1, 2, 8, 2), "gelu", 0.02),
    "partialnet_t2": (64, (2, 2, 6, 4), "relu", 0.05),
    "partialnet_s": (96, (2, 2, 9, 4), "relu", 0.1),
    "partialnet_m": (128, (2, 3, 16, 4), "relu", 0.2),
    "partialnet_l": (160, (2, 3, 20, 4), "relu", 0.3),
    **{name.replace("fasternet", "patnet"): arch for name, arch in FASTERNET_ARCHS.items()},
}

# No hosted weights (url/hf_hub_id empty): load a local file with pretrained_cfg_overlay=dict(file=PATH).
default_cfgs = generate_default_cfgs({name: variant_cfg() for name in ARCHS})


def _pat_model(name: str, kwargs: dict) -> PartialChannelNet:
    """Variant ``name``: its size/act/drop-path defaults, overridden by the user's ``kwargs``."""
    embed_dim, depths, act_layer, drop_path_rate = ARCHS[name]
    defaults = dict(
        embed_dim=embed_dim,
        depths=depths,
        act_layer=act_layer,
        drop_path_rate=drop_path_rate,
        mixers=PAT_MIXERS,
        pat_sp=True,
        split_ratio=0.25,
        num_heads=4,
    )
    return build_variant(name, defaults, **kwargs)


@register_model
def partialnet_t0(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_t0", kwargs)


@register_model
def partialnet_t1(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_t1", kwargs)


@register_model
def partialnet_t2(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_t2", kwargs)


@register_model
def partialnet_s(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_s", kwargs)


@register_model
def partialnet_m(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_m", kwargs)


@register_model
def partialnet_l(**kwargs) -> PartialChannelNet:
    return _pat_model("partialnet_l", kwargs)


@register_model
def patnet_t0(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_t0", kwargs)


@register_model
def patnet_t1(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_t1", kwargs)


@register_model
def patnet_t2(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_t2", kwargs)


@register_model
def patnet_s(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_s", kwargs)


@register_model
def patnet_m(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_m", kwargs)


@register_model
def patnet_l(**kwargs) -> PartialChannelNet:
    return _pat_model("patnet_l", kwargs)
