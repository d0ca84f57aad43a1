"""The ratios file (``ratios.yaml``) and its contract with the model constructor -- in one place.

File keys: ``model`` (registered variant name), ``model_kwargs`` (the constructor arguments the
search built it with that differ from the variant's defaults), ``input_size``, ``ratios`` (one
float in (0, 1) per searchable split, in network order: stage by stage, block by block),
``mlp_ratios`` (one MLP expansion ratio per block; absent or null = the variant's width),
``params``, ``macs`` (multiply-adds, the papers' "FLOPs"), ``target_macs`` and ``config_hash``.
Other keys are kept as they are; files written before ``mlp_ratios`` existed still load.

The contract, owned here:

- :func:`read_ratios_file` / :func:`write_ratios_file`: keys and validation;
- :func:`resolve_model_ratios`: what a constructor does with ``ratios=`` / ``mlp_ratios=`` (a list
  or a file path; one value per block, checked against the depths);
- :func:`check_ratios_file_fits`: a file is retrained with the constructor arguments it was
  searched with (``small_input`` ...);
- :func:`non_default_kwargs`: which constructor arguments a file must record (compared by value
  with the variant's defaults, from one build);
- :func:`rebuild`: the static model a file describes.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from partialnet.errors import UserError
from partialnet.utils.atomic import atomic_write_text

__all__ = [
    "RATIOS_FILE_KEYS", "MODEL_CFG_KEYS", "read_ratios_file", "write_ratios_file", "check_ratios", "check_mlp_ratios",
    "check_per_block", "resolve_model_ratios", "check_ratios_file_fits", "non_default_kwargs", "rebuild",
]

RATIOS_FILE_KEYS = ("model", "model_kwargs", "input_size", "ratios", "mlp_ratios", "params", "macs", "target_macs",
                    "config_hash")
# Keys of the ``model`` config group passed to the constructor when not null.
MODEL_CFG_KEYS = ("split_ratio", "ratios", "mlp_ratios", "pat_sp", "drop_path_rate", "small_input")
# Where each constructor argument is set on the command line (for the messages).
_CFG_PLACE = {k: f"model.{k}" for k in MODEL_CFG_KEYS}
# Arguments whose value the file is checked against even when the run does not set them.
_FIT_DEFAULTS = {"small_input": False}


def check_ratios(ratios: Any, where: str) -> list[float]:
    """``ratios`` as a list of floats in (0, 1); :class:`UserError` naming ``where`` otherwise."""
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or len(ratios) == 0:
        raise UserError(f"{where}: 'ratios' must be a non-empty list of floats in (0, 1), got {ratios!r}")
    out = []
    for i, r in enumerate(ratios):
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or not 0.0 < r < 1.0:
            raise UserError(f"{where}: ratios[{i}] = {r!r} is not a float in (0, 1); fix or regenerate the ratios")
        out.append(float(r))
    return out


def check_mlp_ratios(values: Any, where: str) -> list[float]:
    """``values`` as a list of positive finite floats (MLP expansion ratios)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise UserError(f"{where}: 'mlp_ratios' must be a non-empty list of positive floats, got {values!r}")
    out = []
    for i, r in enumerate(values):
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or not r > 0:
            raise UserError(f"{where}: mlp_ratios[{i}] = {r!r} is not a positive float (e.g. 2.0)")
        out.append(float(r))
    return out


def check_per_block(values: Sequence, depths: Sequence[int], what: str, source: str, name: str) -> None:
    """One value per block (``sum(depths)``), else a :class:`UserError` naming ``source``."""
    n = sum(int(d) for d in depths)
    if len(values) != n:
        raise UserError(
            f"{source} has {len(values)} {what} but {name} has {n} searchable layers (depths {tuple(int(d) for d in depths)}); "
            f"give one per block"
        )


def resolve_model_ratios(name: str, kwargs: dict) -> dict:
    """``kwargs`` with ``ratios`` / ``mlp_ratios`` resolved for variant ``name``.

    ``ratios`` may be a list or a ratios-file path: a file must have been searched for
    ``name``; it supplies ``ratios`` and, when it records them, ``mlp_ratios`` (an explicit
    ``mlp_ratios`` argument wins). Both lists are validated and counted against ``depths``.
    """
    kwargs = dict(kwargs)
    ratios = kwargs.get("ratios")
    source = "the ratios list"
    if isinstance(ratios, (str, os.PathLike)):
        info = read_ratios_file(ratios)
        if info["model"] != name:
            raise UserError(
                f"ratios file {ratios} was searched for {info['model']!r}, not {name!r}; "
                f"use model={info['model']} or a ratios file searched for {name}"
            )
        source = f"ratios file {ratios}"
        kwargs["ratios"] = info["ratios"]
        if info.get("mlp_ratios") is not None and kwargs.get("mlp_ratios") is None:
            kwargs["mlp_ratios"] = info["mlp_ratios"]
    elif ratios is not None:
        kwargs["ratios"] = check_ratios(ratios, f"{name} ratios")
    depths = kwargs.get("depths")
    if kwargs.get("ratios") is not None and depths is not None:
        check_per_block(kwargs["ratios"], depths, "ratios", source, name)
    if kwargs.get("mlp_ratios") is not None:
        kwargs["mlp_ratios"] = check_mlp_ratios(kwargs["mlp_ratios"], f"{name} mlp_ratios")
        if depths is not None:
            where = source if source.startswith("ratios file") else "the mlp_ratios list"
            check_per_block(kwargs["mlp_ratios"], depths, "mlp_ratios", where, name)
    return kwargs


def check_ratios_file_fits(name: str, kwargs: dict) -> None:
    """A ratios file is retrained with the constructor arguments it was searched with.

    ``kwargs`` are the run's constructor arguments; ``kwargs['ratios']`` a file path (else
    nothing to check). ``num_classes`` is the data's business and is not compared.
    """
    path = kwargs.get("ratios")
    if not isinstance(path, (str, os.PathLike)):
        return
    searched = dict(read_ratios_file(path).get("model_kwargs") or {})
    searched.pop("num_classes", None)
    for key, default in _FIT_DEFAULTS.items():
        searched.setdefault(key, default)
    for key, want in searched.items():
        have = kwargs[key] if key in kwargs else _FIT_DEFAULTS.get(key, "its default")
        if have != want:
            fix = str(want).lower() if isinstance(want, bool) else want
            where = _CFG_PLACE.get(key, f"+model.kwargs.{key}")
            raise UserError(
                f"ratios file {path} was searched with {key}={want!r} but this run builds {name} with "
                f"{key}={have!r}; set {where}={fix} (or search again for this setting)"
            )


def non_default_kwargs(name: str, kwargs: dict) -> dict:
    """The subset of ``kwargs`` whose value differs from variant ``name``'s default (one build).

    ``ratios``/``split_ratio``/``mlp_ratios`` are the file's own keys and never listed here.
    """
    from partialnet.models.registry import create_model

    kwargs = {k: v for k, v in kwargs.items() if k not in ("ratios", "split_ratio", "mlp_ratios") and v is not None}
    if not kwargs:
        return {}
    import torch

    state = torch.random.get_rng_state()
    try:
        model = create_model(name)
    finally:
        torch.random.set_rng_state(state)
    params = inspect.signature(type(model).__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    defaults.update(getattr(model, "build_kwargs", {}))
    out = {}
    for key, value in kwargs.items():
        if key not in defaults or _plain(defaults[key]) != _plain(value):
            out[key] = bool(value) if isinstance(value, bool) else value
    return out


def rebuild(path_or_info: str | os.PathLike | dict, **overrides):
    """The static model a ratios file (path or :func:`read_ratios_file` dict) describes."""
    from partialnet.models.registry import create_model

    info = path_or_info if isinstance(path_or_info, dict) else read_ratios_file(path_or_info)
    kwargs = dict(info.get("model_kwargs") or {})
    kwargs.update(ratios=info["ratios"], mlp_ratios=info.get("mlp_ratios"))
    kwargs.update(overrides)
    return create_model(info["model"], **kwargs)


def read_ratios_file(path: str | os.PathLike) -> dict:
    """Read and validate a ratios file; every key of :data:`RATIOS_FILE_KEYS` is present (None if absent)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"ratios file {p} does not exist; pass the ratios.yaml written by search_dpconv.py")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"ratios file {p} is not valid YAML ({first}); regenerate it with search_dpconv.py") from None
    if not isinstance(data, dict):
        raise UserError(f"ratios file {p} must hold a mapping with keys {', '.join(RATIOS_FILE_KEYS)}")
    if "ratios" not in data:
        raise UserError(f"ratios file {p} has no 'ratios' key; it must list one split ratio per layer")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise UserError(f"ratios file {p}: 'model' must name the model it was searched for, got {model!r}")
    out = {key: data.get(key) for key in RATIOS_FILE_KEYS}
    out.update({k: v for k, v in data.items() if k not in out})
    out["ratios"] = check_ratios(data["ratios"], f"ratios file {p}")
    if out.get("mlp_ratios") is not None:
        out["mlp_ratios"] = check_mlp_ratios(out["mlp_ratios"], f"ratios file {p}")
        if len(out["mlp_ratios"]) != len(out["ratios"]):
            raise UserError(f"ratios file {p} has {len(out['ratios'])} ratios but {len(out['mlp_ratios'])} mlp_ratios; "
                            f"regenerate it with search_dpconv.py")
    return out


def _plain(value: Any) -> Any:
    """Tuples/other sequences -> lists and mappings -> dicts, recursively, for ``yaml.safe_dump``."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_ratios_file(
    path: str | os.PathLike,
    *,
    model: str,
    ratios: Sequence[float],
    model_kwargs: dict | None = None,
    input_size: Any = None,
    params: int | None = None,
    macs: int | None = None,
    target_macs: float | None = None,
    config_hash: str | None = None,
    mlp_ratios: Sequence[float] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a ratios file atomically; ``extra`` keys (e.g. the search constraint) are appended."""
    p = Path(path)
    data = {
        "model": str(model),
        "model_kwargs": _plain(model_kwargs or {}),
        "input_size": _plain(input_size),
        "ratios": check_ratios(list(ratios), f"ratios for {p}"),
        "mlp_ratios": None if mlp_ratios is None else check_mlp_ratios(list(mlp_ratios), f"mlp_ratios for {p}"),
        "params": None if params is None else int(params),
        "macs": None if macs is None else int(macs),
        "target_macs": None if target_macs is None else float(target_macs),
        "config_hash": config_hash,
    }
    data.update(_plain(extra or {}))
    return atomic_write_text(p, yaml.safe_dump(data, sort_keys=False))
