"""Plug-in blocks inside torchvision hosts (no weights are ever loaded).

:func:`replace_convs` swaps matching ``nn.Conv2d`` modules for new modules; the registered
hosts use it on torchvision's ResNet-50 (v1.5: the stride sits on the bottleneck's 3x3,
whose in = out = ``width`` channels) and MobileNetV2:

======================  ==============================================  ===================  ==================
model                   replaced conv                                   ours (params, MACs)  paper
======================  ==============================================  ===================  ==================
patconv_resnet50        16 bottleneck 3x3 -> PAT_ch (r_p = 1/4)         16.37 M, 2.381 G     Tab. 5: +1.5 % top-1
patconv_mobilenetv2     17 depthwise 3x3 -> PAT_ch (r_p = 1/4)          11.08 M, 0.631 G     Tab. 5: +2.7 % top-1
scconv_resnet50         16 bottleneck 3x3 -> SCConv(1/2,r=2,g=2,k=3)    16.53 M, 2.644 G     16.78 M, 2.70 G
acmix_resnet50          16 bottleneck 3x3 -> ACmix(k_att=7, head=4)     18.34 M, 3.525 G     18.6 M, 3.6 G
======================  ==============================================  ===================  ==================

(MACs: fvcore multiply-adds at 224x224, the papers' "FLOPs". torchvision ResNet-50 is
25.56 M, 4.112 G and MobileNetV2 3.50 M, 0.314 G on the same counter. PartialNet's Tab. 5
counts are unverified/unknown.)

Stride-2 convs (ResNet-50: ``layer2/3/4.0.conv2``; MobileNetV2: the depthwise convs of
``features.2/4/7/14``): PAT_ch and SCConv are stride-1 operators, so a stride-``s`` conv
becomes ``AvgPool2d(s, ceil_mode=True)`` *followed by* the block (SCConv does this itself
through its ``stride`` argument). The output size is the strided conv's (``ceil(H/s)``),
and the block then costs what a stride-1 block at the output resolution costs, like the
strided conv it replaces. ACmix supports the stride natively (strided query grid and
strided shift conv, see :mod:`partialnet.models.layers.acmix`).

PAT_ch's conv on ``X_p`` is a dense 3x3 and its SRM conv a full ``C_u -> C_u`` (1, 2) conv
(the paper's definition): inside MobileNetV2 they replace a *depthwise* conv
(9 C params) by 9 C_p^2 + 2 C_u^2 params, so that host has 3.2x the params and 2x the MACs
of MobileNetV2 (mostly in the 576/960-wide expansions).

Every constructor takes ``num_classes`` and passes other keyword arguments to the
torchvision constructor (e.g. ``zero_init_residual`` or ``width_mult``); the block's own
options go in ``block_kwargs`` (SCConv, ACmix) or ``split_ratio`` (PAT hosts). timm's factory
arguments (``pretrained`` etc.) are accepted; ``pretrained=True`` is refused.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import models as tvm

from partialnet.errors import UserError
from partialnet.models.layers.acmix import ACmix
from partialnet.models.layers.pat import PATChannel
from partialnet.models.layers.scconv import SCConv
from partialnet.models.module_utils import replace_submodule
from partialnet.models.registry import register_model

__all__ = ["replace_convs", "is_dense_3x3", "is_depthwise_3x3"]

_TIMM_FACTORY_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def replace_convs(model: nn.Module, predicate: Callable[[nn.Conv2d], bool],
                  factory: Callable[[nn.Conv2d], nn.Module]) -> list[str]:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` for which ``predicate(conv)`` holds.

    ``factory(conv)`` builds the new module; it must keep the conv's in/out channels and
    stride. Matches are collected first, so the new modules are never searched.
    Returns the qualified names of the replaced convs.
    """
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Conv2d) and predicate(mod)]
    for name, conv in targets:
        replace_submodule(model, name, factory(conv))
    return [name for name, _ in targets]


def is_dense_3x3(conv: nn.Conv2d) -> bool:
    """A 3x3, ungrouped, undilated conv with in = out channels (ResNet's bottleneck conv2)."""
    return (conv.kernel_size == (3, 3) and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.in_channels == conv.out_channels)


def is_depthwise_3x3(conv: nn.Conv2d) -> bool:
    """A 3x3 depthwise conv (groups = in = out channels), as in MobileNetV2's blocks."""
    return (conv.kernel_size == (3, 3) and conv.dilation == (1, 1) and conv.in_channels > 1
            and conv.groups == conv.in_channels == conv.out_channels)


def _stride(conv: nn.Conv2d) -> int:
    sh, sw = conv.stride
    if sh != sw:
        raise ValueError(f"unequal strides {conv.stride} are not supported")
    return sh


def _pooled(block: nn.Module, stride: int) -> nn.Module:
    """``block`` alone at stride 1, else ``AvgPool2d(stride, ceil_mode=True)`` then ``block``."""
    return block if stride == 1 else nn.Sequential(nn.AvgPool2d(stride, ceil_mode=True), block)


def _build(name: str, ctor: Callable[..., nn.Module], num_classes: int, kwargs: dict) -> nn.Module:
    """A torchvision model without weights, after removing timm's factory arguments."""
    if kwargs.pop("pretrained", False):
        raise UserError(f"pretrained weights are not available for {name!r}; load a checkpoint instead")
    for key in _TIMM_FACTORY_ARGS:
        kwargs.pop(key, None)
    try:
        return ctor(weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise UserError(f"{name}: unsupported argument(s) {sorted(kwargs)} ({e})") from None


def _finish(model: nn.Module, name: str, num_classes: int, first_conv: str, classifier: str) -> nn.Module:
    """Attach a timm-style ``pretrained_cfg`` (and its ``default_cfg`` alias)."""
    model.pretrained_cfg = dict(
        architecture=name, num_classes=num_classes, input_size=(3, 224, 224), pool_size=(7, 7),
        crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=first_conv, classifier=classifier,
    )
    model.default_cfg = model.pretrained_cfg
    return model


def _resnet50_with(name: str, factory: Callable[[nn.Conv2d], nn.Module], num_classes: int, kwargs: dict):
    model = _build(name, tvm.resnet50, num_classes, kwargs)
    replaced = replace_convs(model, is_dense_3x3, factory)
    if len(replaced) != 16:  # one per bottleneck (the stem is 7x7); dilation options break this
        raise UserError(f"{name}: expected 16 bottleneck 3x3 convs to replace, found {len(replaced)}")
    return _finish(model, name, num_classes, "conv1", "fc")


@register_model
def patconv_resnet50(num_classes: int = 1000, split_ratio: float = 0.25, **kwargs) -> nn.Module:
    """ResNet-50 (torchvision v1.5) whose bottleneck 3x3 convs are PAT_ch (AvgPool first at stride 2)."""
    return _resnet50_with(
        "patconv_resnet50",
        lambda conv: _pooled(PATChannel(conv.in_channels, split_ratio), _stride(conv)), num_classes, kwargs)


@register_model
def patconv_mobilenetv2(num_classes: int = 1000, split_ratio: float = 0.25, **kwargs) -> nn.Module:
    """MobileNetV2 whose depthwise 3x3 convs are PAT_ch (AvgPool first at stride 2)."""
    name = "patconv_mobilenetv2"
    model = _build(name, tvm.mobilenet_v2, num_classes, kwargs)
    replace_convs(model, is_depthwise_3x3,
                  lambda conv: _pooled(PATChannel(conv.in_channels, split_ratio), _stride(conv)))
    return _finish(model, name, num_classes, "features.0.0", "classifier.1")


@register_model
def scconv_resnet50(num_classes: int = 1000, block_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """SCConv-ResNet-50 (SCConv paper Tab. 3, alpha = 1/2): bottleneck 3x3 -> SCConv."""
    bkw = dict(block_kwargs or {})
    return _resnet50_with(
        "scconv_resnet50", lambda conv: SCConv(conv.in_channels, stride=_stride(conv), **bkw), num_classes, kwargs)


@register_model
def acmix_resnet50(num_classes: int = 1000, block_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """ACmix-ResNet-50 (ACmix README): bottleneck 3x3 -> ACmix(kernel_att=7, head=4, kernel_conv=3)."""
    bkw = dict(block_kwargs or {})
    return _resnet50_with(
        "acmix_resnet50",
        lambda conv: ACmix(conv.in_channels, conv.out_channels, stride=_stride(conv), **bkw), num_classes, kwargs)
