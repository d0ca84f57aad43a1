"""The per-layer split-ratio file (``ratios.yaml``) written by the DPConv search.

Keys: ``model`` (registered variant name), ``model_kwargs`` (the kwargs the search built it
with, for the record), ``input_size``, ``ratios`` (one float in (0, 1) per searchable split,
in network order: stage by stage, block by block), ``params``, ``macs`` (multiply-adds, the
papers' "FLOPs"), ``target_macs`` and ``config_hash``. Other keys are kept as they are.
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import yaml

from partialnet.errors import UserError

__all__ = ["RATIOS_FILE_KEYS", "read_ratios_file", "write_ratios_file", "check_ratios"]

RATIOS_FILE_KEYS = ("model", "model_kwargs", "input_size", "ratios", "params", "macs", "target_macs", "config_hash")


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
) -> Path:
    """Write a ratios file atomically (temporary file in the same folder, then ``os.replace``)."""
    p = Path(path)
    data = {
        "model": str(model),
        "model_kwargs": _plain(model_kwargs or {}),
        "input_size": _plain(input_size),
        "ratios": check_ratios(list(ratios), f"ratios for {p}"),
        "params": None if params is None else int(params),
        "macs": None if macs is None else int(macs),
        "target_macs": None if target_macs is None else float(target_macs),
        "config_hash": config_hash,
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p
