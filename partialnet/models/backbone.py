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

timm's model API: ``forward_features``/``forward_head``, ``forward_intermediates`` (the four
stage outputs), ``prune_intermediate_layers``, ``set_grad_checkpointing``, ``group_matcher``,
``get_classifier``/``reset_classifier``, ``feature_info``; variants are built by timm's
``build_model_with_cfg`` (``features_only=True`` works).

Families differ only in widths, depths, per-stage mixers, activation and PAT_sp:
PartialNet/PATNet use ('pat_ch', 'pat_ch', 'pat_ch', 'pat_sf'), FasterNet 'pconv' throughout.
"FLOPs" in this project are multiply-adds (MACs), counted with fvcore.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from partialnet.errors import UserError
from partialnet.models.layers import (PartialConv, PATChannel, PATSelf, PATSpatial, PointwiseConv2d,
                                      batch_norm_gelu)
from partialnet.models.module_utils import init_weights_
from partialnet.models.ratios_file import check_per_block, resolve_model_ratios
from partialnet.models.registry import TIMM_BUILD_KWARGS, build_with_timm

__all__ = ["PartialBlock", "PartialStage", "PartialChannelNet", "build_variant", "variant_cfg"]


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
        self.dim, self.ratio = int(dim), float(mlp_ratio)  # ratio: the expansion (what a search varies)
        self.fc1 = PointwiseConv2d(dim, hidden, bias=False)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = act_layer()
        self.fc2 = PointwiseConv2d(hidden, dim, bias=False)
        self.pat_sp = PATSpatial(dim) if pat_sp else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pat_sp(self.fc2(batch_norm_gelu(self.norm, self.act, self.fc1(x))))


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
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class PartialChannelNet(nn.Module):
    """Four-stage partial-channel network (PartialNet, PATNet and FasterNet are configs of it).

    Args:
        embed_dim: stage-1 width; stage i has ``embed_dim * 2**i`` channels.
        depths: blocks per stage.
        mixers: per-stage split module, 'pconv' | 'pat_ch' | 'pat_sf' ('pat_sf' makes block v2).
        act_layer: 'gelu', 'relu' or an ``nn.Module`` class (MLP and head).
        split_ratio: global r (conv part = first ``floor(r*C + 0.5)`` channels).
        ratios: per-layer r, one per block in network order; overrides ``split_ratio``.
        mlp_ratios: per-block MLP expansion (hidden = ``int(C * e)``); overrides ``mlp_ratio``.
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
        mlp_ratios: Sequence[float] | None = None,
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
        check_per_block(ratios, depths, "split ratios", "the ratios list", type(self).__name__)
        if mlp_ratios is None:
            mlp_ratios = [mlp_ratio] * num_blocks
        check_per_block(mlp_ratios, depths, "MLP ratios", "the mlp_ratios list", type(self).__name__)
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
                mlp = Mlp(dim, act, mlp_ratios[idx], pat_sp)
                blocks.append(PartialBlock(mixer, mlp, dpr[idx], mixer_residual=own_residual))
                idx += 1
            stages.append(PartialStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.head_hidden_size = feature_dim
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = PointwiseConv2d(dims[-1], feature_dim, bias=False)
        self.head_act = act()
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_(self)

    def searchable_splits(self) -> list[nn.Module]:
        """The split modules (PAT_ch / PAT_sf / PConv), one per block, in network order."""
        return [block.mixer for stage in self.stages for block in stage.blocks]

    def searchable_mlps(self) -> list[nn.Module]:
        """The MLPs (:class:`Mlp`), one per block, in network order (their hidden width can be searched)."""
        return [block.mlp for stage in self.stages for block in stage.blocks]

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
        init_weights_(self.head)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay: stem, then stages (coarse) or blocks."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^conv_head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (timm's convention): ``indices`` = last n stages (int), the listed ones, or all.

        ``norm`` is accepted for API compatibility (this network has no final norm).
        Returns the list alone with ``intermediates_only``, else ``(final features, list)``.
        """
        if output_fmt != "NCHW":
            raise UserError(f"output_fmt {output_fmt!r} is not supported; use 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last index in ``indices`` (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.conv_head, self.head_act = nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.head_act(self.conv_head(self.global_pool(x))))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def variant_cfg(**kwargs) -> dict:
    """The pretrained cfg every variant registers (224 px, ImageNet mean/std, bicubic, crop 0.9).

    It describes the input of ImageNet-1k weights in this layout; the registered variants
    host none (empty ``url``): ``pretrained=True`` reads a local file given as
    ``pretrained_cfg_overlay=dict(file=PATH)``.
    """
    return dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.9,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.conv",
        classifier="head",
        **kwargs,
    )


def build_variant(name: str, defaults: dict, pretrained: bool = False, **kwargs) -> PartialChannelNet:
    """Build registered variant ``name`` from its ``defaults`` plus user overrides ``kwargs``.

    Handles what every variant shares: ``ratios`` as a list or a ratios-file path (the
    file's ``model`` must be ``name``; its ``model_kwargs`` are a record and not applied),
    the ratio count check, and timm's factory arguments (``features_only``, ``out_indices``,
    ``pretrained`` with a local ``pretrained_cfg_overlay=dict(file=PATH)``): the model is
    built by timm's ``build_model_with_cfg``. ``None`` values mean "use the default", as in timm.
    """
    import inspect

    takes = set(inspect.signature(PartialChannelNet.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - takes - set(TIMM_BUILD_KWARGS))
    if unknown:
        raise UserError(f"model {name!r} does not take {unknown[0]!r}; its arguments are {', '.join(sorted(takes))} "
                        f"(and timm's {', '.join(TIMM_BUILD_KWARGS)})")
    build_kwargs = {key: kwargs.pop(key) for key in TIMM_BUILD_KWARGS if kwargs.get(key) is not None}
    for key in TIMM_BUILD_KWARGS:
        kwargs.pop(key, None)
    kwargs = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    kwargs = resolve_model_ratios(name, kwargs)
    # small_input models take 32 px (stride 16); the cfg's channel count stays that of the
    # weights (3), so timm adapts a pretrained stem to another in_chans.
    overlay = dict(input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0) if kwargs.get("small_input") else {}
    model = build_with_timm(PartialChannelNet, name, kwargs, pretrained=pretrained, cfg_overlay=overlay,
                            **build_kwargs)
    model.build_kwargs = dict(kwargs)  # the variant's constructor arguments (ratios files compare against them)
    return model
