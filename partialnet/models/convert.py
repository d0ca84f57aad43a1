"""Weights of other code bases in this project's module layout.

Sources (``source=``):

``authors``
    The PartialNet authors' code (``models/partialnet.py``): ``patch_embed``, ``stages`` with
    merging layers between the stages (indices 1, 3, 5), blocks ``spatial_mixing``
    (``Partial_conv3``: ``partial_conv3``; PAT_ch ``attn.cfc1``/``attn.bn`` + ``norm``; PAT_sf
    ``norm`` + ``attn.qkv``/``attn.proj``/``attn.rpe_k.lookup_table_bias``) and ``mlp.0/1/3``
    (+ ``mlp.4``, PAT_sp: ``conv_attn``/``norm``/``norm2``/``conv``), ``avgpool_pre_head.1``, ``head``.
    Their iRPE table has ``2 * 2a + 1`` columns at offset ``2a``; the columns of negative
    buckets are never read and are dropped (see :mod:`partialnet.models.layers.rpe`).
``fasternet``
    The official FasterNet code: the same names without the attention parts.
``timm``
    timm's ``fasternet_*``: ``stages.i.downsample.reduction``, ``conv_head``, ``classifier``.
``partialnet``
    This project's own layout (returned as is).

Either PConv forward type (``split_cat``/``slicing``) has the same weights. Detection-only
norms of the upstream code (``norm0/2/4/6``) are dropped. Every function takes a plain
state dict; files are read with timm's loader (``state_dict``/``model``/EMA entries and
``module.``/``model.`` prefixes are unwrapped).

CLI::

    python -m partialnet.models.convert --from authors --model partialnet_t0 IN.pth OUT.pth

writes ``{"state_dict", "model", "model_kwargs", "converted_from"}`` after checking that
the converted weights load into ``partialnet.create_model(model, **model_kwargs)``. The
output loads with ``timm.create_model(model, pretrained=True,
pretrained_cfg_overlay=dict(file=OUT))`` (upstream files load that way directly, too),
``load_pretrained(model, OUT)`` or ``train.py model.init_from=OUT``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.models.layers.rpe import upgrade_legacy_table

__all__ = [
    "SOURCES",
    "detect_source",
    "convert_state_dict",
    "read_state_dict",
    "load_pretrained",
    "checkpoint_filter_fn",
    "main",
]

SOURCES = ("authors", "fasternet", "timm", "partialnet")

# (pattern, replacement) applied in order to every key of a block ("...blocks.J." prefix kept).
_BLOCK_RULES = [
    (r"\.spatial_mixing\.partial_conv3\.", ".mixer.conv."),
    (r"\.spatial_mixing\.attn\.cfc1\.", ".mixer.srm_conv."),
    (r"\.spatial_mixing\.attn\.bn\.", ".mixer.srm_norm."),
    (r"\.spatial_mixing\.attn\.qkv\.", ".mixer.qkv."),
    (r"\.spatial_mixing\.attn\.proj\.", ".mixer.proj."),
    (r"\.spatial_mixing\.attn\.rpe_k\.lookup_table_bias$", ".mixer.rpe.bias_table"),
    (r"\.spatial_mixing\.norm\.", ".mixer.norm."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.1\.", ".mlp.norm."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"\.mlp\.4\.conv_attn\.", ".mlp.pat_sp.attn_conv."),
    (r"\.mlp\.4\.norm2\.", ".mlp.pat_sp.conv_norm."),
    (r"\.mlp\.4\.norm\.", ".mlp.pat_sp.attn_norm."),
    (r"\.mlp\.4\.conv\.", ".mlp.pat_sp.conv."),
]
_COMMON_RULES = [
    (r"^patch_embed\.proj\.", "stem.conv."),
    (r"^patch_embed\.norm\.", "stem.norm."),
]
_TIMM_RULES = [
    (r"^stages\.(\d+)\.downsample\.reduction\.", r"stages.\1.downsample.conv."),
    (r"^classifier\.", "head."),
]


def _upstream_stage(match: re.Match) -> str:
    """Upstream ``stages`` interleave blocks (even) and merging layers (odd)."""
    idx, rest = int(match.group(1)), match.group(2)
    if idx % 2 == 0:
        return f"stages.{idx // 2}.{rest}"
    sub = {"reduction": "conv", "norm": "norm"}.get(rest.split(".")[0])
    if sub is None:
        raise UserError(f"upstream key stages.{idx}.{rest} is not a merging layer's reduction/norm")
    return f"stages.{(idx + 1) // 2}.downsample.{sub}.{rest.split('.', 1)[1]}"


_UPSTREAM_RULES = [
    (r"^stages\.(\d+)\.(.*)$", _upstream_stage),
    (r"^avgpool_pre_head\.1\.", "conv_head."),
]
_DROPPED = re.compile(r"^norm\d+\.")  # upstream detection-only norms (fork_feat)


def _rename(key: str, rules: list[tuple[str, str | Callable]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def detect_source(state_dict: dict) -> str:
    """Which layout a state dict is in (one of :data:`SOURCES`); a :class:`UserError` if none."""
    keys = list(state_dict)
    if "stem.conv.weight" in state_dict:
        return "partialnet"
    if "patch_embed.proj.weight" in state_dict:
        if any(".downsample.reduction." in k for k in keys) or "classifier.weight" in state_dict:
            return "timm"
        upstream_attn = (".spatial_mixing.attn.", ".mlp.4.")
        return "authors" if any(a in k for k in keys for a in upstream_attn) else "fasternet"
    raise UserError(
        f"the state dict has neither 'stem.conv.weight' nor 'patch_embed.proj.weight' (first keys: "
        f"{keys[:3]}); it is not a PartialNet/FasterNet checkpoint"
    )


def convert_state_dict(state_dict: dict, source: str | None = None) -> dict[str, torch.Tensor]:
    """``state_dict`` of ``source`` (detected when None) renamed to this project's modules."""
    state_dict = _strip_wrapper_prefix(state_dict)
    detected = detect_source(state_dict)
    source = detected if source is None else source
    if source not in SOURCES:
        raise UserError(f"source {source!r} is unknown; use one of {', '.join(SOURCES)}")
    upstream = {"authors", "fasternet"}  # one naming scheme (the authors' code extends FasterNet's)
    if source != detected and not {source, detected} <= upstream:
        raise UserError(f"the state dict is in the {detected!r} layout, not {source!r}; use --from {detected}")
    if source == "partialnet":  # tables of the earlier 81-bucket layout are upgraded
        return {k: upgrade_legacy_table(k, v) if k.endswith("rpe.bias_table") else v for k, v in state_dict.items()}
    rules = _COMMON_RULES + (_TIMM_RULES if source == "timm" else _UPSTREAM_RULES) + _BLOCK_RULES
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _DROPPED.match(key):
            continue
        new = _rename(key, rules)
        if new.endswith("rpe.bias_table"):
            value = value[:, (value.shape[1] - 1) // 2:]  # iRPE's signed index: keep buckets 0..2a
        out[new] = value
    return out


def _strip_wrapper_prefix(state_dict: dict) -> dict:
    """The network's keys without a wrapper prefix (``model.``, ``module.``, ...); the shortest
    prefix wins when several copies are present (e.g. ``model.`` and ``ema.module.``)."""
    for stem in ("stem.conv.weight", "patch_embed.proj.weight"):
        prefixes = [k[: -len(stem)] for k in state_dict if k.endswith(stem)]
        if prefixes:
            prefix = min(prefixes, key=len)
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (a plain state dict or one wrapped by a trainer)."""
    from timm.models import load_state_dict

    if not os.path.isfile(path):
        raise UserError(f"weights file {path} does not exist; pass the path of a downloaded checkpoint")
    try:
        state_dict = load_state_dict(str(path), weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"weights file {path} cannot be read ({type(e).__name__}: {e})") from None
    return {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def _architecture(state_dict: dict) -> dict:
    """What a converted state dict says about its network (embed_dim, depths, blocks, heads)."""
    depths: dict[int, set[int]] = {}
    for key in state_dict:
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            depths.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    tables = [v for k, v in state_dict.items() if k.endswith("rpe.bias_table")]
    stem = state_dict.get("stem.conv.weight")
    return dict(
        embed_dim=int(stem.shape[0]) if stem is not None else None,
        depths=tuple(len(depths[i]) for i in sorted(depths)),
        pat=any(".mixer.srm_conv." in k for k in state_dict),
        pat_sp=any(".mlp.pat_sp." in k for k in state_dict),
        num_heads=int(tables[0].shape[0]) if tables else None,
    )


def _variant_of(arch: dict) -> str | None:
    """The registered variant with the architecture's family, width and depths."""
    from partialnet.models import fasternet, partialnet

    for name, (embed_dim, depths, _, _) in {**partialnet.ARCHS, **fasternet.ARCHS}.items():
        is_pat = not name.startswith("fasternet")
        if (embed_dim, tuple(depths), is_pat) == (arch["embed_dim"], arch["depths"], arch["pat"]):
            return name
    return None


def _check_fits(model: nn.Module, state_dict: dict, origin: str, skip_head: bool = False) -> None:
    """A one-line :class:`UserError` naming the file's variant when ``state_dict`` does not fit ``model``."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    own = {k: v.shape for k, v in model.state_dict().items()}
    ignore = ("head.weight", "head.bias") if skip_head else ()
    theirs = {k: v.shape for k, v in state_dict.items() if k not in ignore}
    own = {k: v for k, v in own.items() if k not in ignore}
    if own == theirs:
        return
    file_arch, model_arch = _architecture(state_dict), _architecture(model.state_dict())
    file_variant = _variant_of(file_arch)
    if file_variant and file_variant != name:
        raise UserError(f"{origin} holds {file_variant} weights, not {name}; use model {file_variant}")
    if file_variant is None and (file_arch["embed_dim"], file_arch["depths"], file_arch["pat"]) != (
            model_arch["embed_dim"], model_arch["depths"], model_arch["pat"]):
        raise UserError(
            f"{origin} holds a network of width {file_arch['embed_dim']} and depths {file_arch['depths']} "
            f"({'PAT' if file_arch['pat'] else 'PConv'} blocks), which is no registered variant, not {name}"
        )
    hints = []
    if file_arch["pat_sp"] != model_arch["pat_sp"]:
        hints.append(f"pat_sp={file_arch['pat_sp']}")
    if file_arch["num_heads"] != model_arch["num_heads"]:
        hints.append(f"num_heads={file_arch['num_heads']}")
    if hints:
        raise UserError(f"{origin} holds {name} weights built with {', '.join(hints)}; "
                        f"create {name} with {', '.join(hints)}")
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    detail = "; ".join(
        f"{what} {keys[:3]}{' ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if keys
    )
    raise UserError(f"{origin} does not fit {name}: {detail}")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's hook for ``pretrained=True``: any supported layout, converted and checked against ``model``.

    The classifier is left to timm (it drops it when ``num_classes`` differs).
    """
    state_dict = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    converted = convert_state_dict(state_dict)
    file = (getattr(model, "pretrained_cfg", None) or {}).get("file")
    _check_fits(model, converted, f"weights file {file}" if file else "the pretrained state dict", skip_head=True)
    return converted


def load_pretrained(model: nn.Module, path: str | os.PathLike, source: str | None = None) -> nn.Module:
    """Load the checkpoint file ``path`` (layout ``source``, detected when None) into ``model``, strictly."""
    converted = convert_state_dict(read_state_dict(path), source)
    _check_fits(model, converted, f"weights file {path}")
    model.load_state_dict(converted)
    return model


def _model_kwargs_for(arch: dict, name: str) -> dict:
    """Constructor kwargs of ``name`` that the file's PAT_sp / head count require."""
    if name.startswith("fasternet"):
        return {}
    kwargs = {"pat_sp": arch["pat_sp"]}
    if arch["num_heads"] is not None and arch["num_heads"] != 4:
        kwargs["num_heads"] = arch["num_heads"]
    return kwargs


def main(argv: list[str] | None = None) -> int:
    from partialnet.models.registry import create_model
    from partialnet.utils.atomic import atomic_write

    parser = argparse.ArgumentParser(
        prog="python -m partialnet.models.convert",
        description="Convert PartialNet/FasterNet weights (authors' code, official FasterNet, timm) to this "
                    "project's layout. Reads a local file; nothing is downloaded.",
    )
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES[:3], help="layout of IN")
    parser.add_argument("--model", required=True, help="target variant, e.g. partialnet_t0")
    parser.add_argument("input", metavar="IN", help="checkpoint file to convert")
    parser.add_argument("output", metavar="OUT", help="file to write")
    args = parser.parse_args(argv)
    try:
        converted = convert_state_dict(read_state_dict(args.input), args.source)
        kwargs = _model_kwargs_for(_architecture(converted), args.model)
        model = create_model(args.model, **kwargs)
        _check_fits(model, converted, f"weights file {args.input}")
        model.load_state_dict(converted)
        payload = dict(state_dict=converted, model=args.model, model_kwargs=kwargs, converted_from=args.source)
        atomic_write(args.output, lambda f: torch.save(payload, f))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shown = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    print(f"wrote {args.output}: {args.model} weights from the {args.source} layout; "
          f"load with partialnet.create_model({args.model!r}{shown}, pretrained=True, "
          f"pretrained_cfg_overlay=dict(file={str(args.output)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
