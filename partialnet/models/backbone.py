"""The one skeleton shared by PartialNet, PATNet and FasterNet.

Structure (module names are stable: deploy fusion and checkpoints rely on them)::

    stem.conv, stem.norm            Conv k4/s4 (k2/s2 with small_input), no bias + BN
    stages[i].downsample            Identity in stage 0; else .conv (2x2/s2, C -> 2C, no bias) + .norm (BN)
    stages[i].blocks[j]             PartialBlock
        .mixer                      the searchable split: PATChannel | PATSelf | PartialConv
                                    (channels [X_p | X_u], conv part first)
        .mlp.fc1 .mlp.norm .mlp.act .mlp.fc2    Conv1x1 C->2C, BN, act, Conv1x1 2C->C (no biases)
        .mlp.pat_sp                 PATSpatial (.attn_conv .attn_norm .conv_norm .conv) or Identity
        .drop_path                  timm DropPath (MLP branch only)
        v1 (mixer_residual=False):  x + drop_path(mlp(mixer(x)))
        v2 (mixer_residual=True):   x = x + mixer(x); x + drop_path(mlp(x))       (PAT_sf)
    global_pool, conv_head (C4 -> 1280, no bias), head_act, flatten, head (Linear)

Families differ only in widths, depths, per-stage mixers, activation and PAT_sp:
PartialNet/PATNet use ('pat_ch', 'pat_ch', 'pat_ch', 'pat_sf'), FasterNet 'pconv' throughout.
"FLOPs" in this project are multiply-adds (MACs), counted with fvcore.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_

from partialnet.errors import UserError
from partialnet.models.layers import PartialConv, PATChannel, PATSelf, PATSpatial
from partialnet.models.ratios_file import check_ratios, read_ratios_file

__all__ = ["PartialBlock", "PartialStage", "PartialChannelNet", "build_variant"]


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chs, out_chs, kernel_size, stride, bias=False),
            norm=nn.BatchNorm2d(out_chs),
        )
    )


def _act_layer(act_layer: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if not isinstance(act_layer, str):
        return act_layer
    if act_layer.lower() == "gelu":
        return nn.GELU
    if act_layer.lower() == "relu":
        return partial(nn.ReLU, inplace=True)
    raise UserError(f"activation {act_layer!r} is unknown; use 'gelu' or 'relu'")


def _make_mixer(kind: str, dim: int, ratio: float, num_heads: int) -> tuple[nn.Module, bool]:
    """The split module of one block and whether it carries its own residual (block v2)."""
    if kind == "pconv":
        return PartialConv(dim, ratio), False
    if kind == "pat_ch":
        return PATChannel(dim, ratio), False
    if kind == "pat_sf":
        return PATSelf(dim, ratio, num_heads=num_heads), True
    raise UserError(f"mixer {kind!r} is unknown; use 'pconv', 'pat_ch' or 'pat_sf'")


class Mlp(nn.Module):
    """Conv1x1 (C -> hidden) -> BN -> act -> Conv1x1 (hidden -> C) [-> PAT_sp]."""

    def __init__(self, dim: int, act_layer: Callable[[], nn.Module], mlp_ratio: float = 2.0, pat_sp: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.pat_sp = PATSpatial(dim) if pat_sp else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pat_sp(self.fc2(self.act(self.norm(self.fc1(x)))))


class PartialBlock(nn.Module):
    """Block v1 ``x + DropPath(MLP(mixer(x)))`` or, with ``mixer_residual``, block v2
    ``x = x + mixer(x); x + DropPath(MLP(x))`` (the mixer's residual gets no drop-path)."""

    def __init__(self, mixer: nn.Module, mlp: Mlp, drop_path: float = 0.0, mixer_residual: bool = False):
        super().__init__()
        self.mixer = mixer
        self.mlp = mlp
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mixer_residual = mixer_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer_residual:
            x = x + self.mixer(x)
            return x + self.drop_path(self.mlp(x))
        return x + self.drop_path(self.mlp(self.mixer(x)))


class PartialStage(nn.Module):
    """Optional merging (Conv 2x2/s2 + BN) followed by the stage's blocks."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class PartialChannelNet(nn.Module):
    """Four-stage partial-channel network (PartialNet, PATNet and FasterNet are configs of it).

    Args:
        embed_dim: stage-1 width; stage i has ``embed_dim * 2**i`` channels.
        depths: blocks per stage.
        mixers: per-stage split module, 'pconv' | 'pat_ch' | 'pat_sf' ('pat_sf' makes block v2).
        act_layer: 'gelu', 'relu' or an ``nn.Module`` class (MLP and head).
        split_ratio: global r (conv part = first ``floor(r*C + 0.5)`` channels).
        ratios: per-layer r, one per block in network order; overrides ``split_ratio``.
        pat_sp: append PAT_sp to every MLP.
        num_heads: requested PAT_sf heads (see :func:`partialnet.models.layers.heads_for`).
        drop_path_rate: stochastic depth, linear 0 -> rate over all blocks, MLP branch only.
        feature_dim: width of the head's 1x1 conv (1280).
        small_input: stem Conv k2/s2 for 32x32 data (32 -> 16 -> 8 -> 4 -> 2).
    """

    def __init__(
        self,
        embed_dim: int = 40,
        depths: Sequence[int] = (1, 2, 8, 2),
        mixers: Sequence[str] = ("pconv", "pconv", "pconv", "pconv"),
        act_layer: str | Callable[[], nn.Module] = "gelu",
        mlp_ratio: float = 2.0,
        split_ratio: float = 0.25,
        ratios: Sequence[float] | None = None,
        pat_sp: bool = False,
        num_heads: int = 4,
        drop_path_rate: float = 0.0,
        feature_dim: int = 1280,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
    ):
        super().__init__()
        depths = [int(d) for d in depths]
        if len(mixers) != len(depths):
            raise UserError(f"{len(mixers)} mixers given for {len(depths)} stages; give one mixer per stage")
        num_blocks = sum(depths)
        if ratios is None:
            ratios = [split_ratio] * num_blocks
        elif len(ratios) != num_blocks:
            raise UserError(
                f"{len(ratios)} split ratios given but the model has {num_blocks} searchable layers "
                f"(depths {tuple(depths)}); give one ratio per block"
            )
        act = _act_layer(act_layer)
        dims = [int(embed_dim) * 2**i for i in range(len(depths))]
        dpr = torch.linspace(0, drop_path_rate, num_blocks).tolist() if num_blocks else []

        patch = 2 if small_input else 4
        self.stem = _conv_bn(in_chans, dims[0], patch, patch)
        stages, self.feature_info, idx, reduction = [], [], 0, patch
        for i, (dim, depth, kind) in enumerate(zip(dims, depths, mixers)):
            downsample = nn.Identity() if i == 0 else _conv_bn(dims[i - 1], dim, 2, 2)
            reduction *= 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                try:
                    mixer, own_residual = _make_mixer(kind, dim, ratios[idx], num_heads)
                except UserError as e:
                    raise UserError(f"layer {idx} (stage {i + 1}, block {j + 1}): {e}") from None
                mlp = Mlp(dim, act, mlp_ratio, pat_sp)
                blocks.append(PartialBlock(mixer, mlp, dpr[idx], mixer_residual=own_residual))
                idx += 1
            stages.append(PartialStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.head_hidden_size = feature_dim
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(dims[-1], feature_dim, 1, bias=False)
        self.head_act = act()
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Truncated at +-2 std. (With the common default bounds of +-2.0, absolute, the
        # inverse-CDF sampler can return the bound itself, i.e. a stray weight of +-2.)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def searchable_splits(self) -> list[nn.Module]:
        """The split modules (PAT_ch / PAT_sf / PConv), one per block, in network order."""
        return [block.mixer for stage in self.stages for block in stage.blocks]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative-position bias tables (timm's optimiser factory skips weight decay on these)."""
        return {name for name, _ in self.named_parameters() if name.endswith("rpe.bias_table")}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise UserError(f"global_pool {global_pool!r} is not supported; this head uses 'avg'")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.head_act(self.conv_head(self.global_pool(x))))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def build_variant(name: str, defaults: dict, pretrained: bool = False, **kwargs) -> PartialChannelNet:
    """Build registered variant ``name`` from its ``defaults`` plus user overrides ``kwargs``.

    Handles what every variant shares: ``ratios`` as a list or a ratios-file path (the
    file's ``model`` must be ``name``; its ``model_kwargs`` are a record and not applied),
    the ratio count check, refusal of ``pretrained=True``, the kwargs timm's factory adds
    and a timm-style ``pretrained_cfg``. ``None`` values mean "use the default", as in timm.
    """
    for key in _TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)
    if pretrained:
        raise UserError(
            f"pretrained weights are not downloaded for {name!r}; load a checkpoint with eval.py ckpt=PATH instead"
        )
    kwargs = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    ratios = kwargs.get("ratios")
    if isinstance(ratios, (str, os.PathLike)):
        info = read_ratios_file(ratios)
        if info["model"] != name:
            raise UserError(
                f"ratios file {ratios} was searched for {info['model']!r}, not {name!r}; "
                f"use model={info['model']} or a ratios file searched for {name}"
            )
        kwargs["ratios"], source = info["ratios"], f"ratios file {ratios}"
    elif ratios is not None:
        kwargs["ratios"], source = check_ratios(ratios, f"{name} ratios"), "the ratios list"
    if "ratios" in kwargs:
        n = sum(int(d) for d in kwargs["depths"])
        if len(kwargs["ratios"]) != n:
            raise UserError(
                f"{source} has {len(kwargs['ratios'])} ratios but {name} has {n} searchable layers "
                f"(depths {tuple(kwargs['depths'])}); give one ratio per block"
            )
    model = PartialChannelNet(**kwargs)
    size = 32 if kwargs.get("small_input") else 224
    stride = 16 if kwargs.get("small_input") else 32
    model.pretrained_cfg = model.default_cfg = dict(
        architecture=name,
        url="",
        num_classes=model.num_classes,
        input_size=(kwargs.get("in_chans", 3), size, size),
        pool_size=(size // stride, size // stride),
        crop_pct=0.9 if size == 224 else 1.0,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv",
        classifier="head",
    )
    return model
