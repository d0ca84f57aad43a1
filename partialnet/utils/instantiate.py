"""Hydra ``instantiate`` with one-line errors: the only place that reads Hydra's exception chain.

A ``UserError`` raised by the constructor comes out as itself; any other failure to build a
``_target_`` config (a misspelt argument, an unknown class, a wrong type) becomes a one-line
``UserError`` naming the config key (``callbacks.early_stopping``) and the cause.
"""
from __future__ import annotations

from typing import Any, Callable

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from partialnet.errors import UserError

__all__ = ["instantiate_config", "instantiate_group"]


def _user_error_in_chain(exc: BaseException) -> UserError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def instantiate_config(cfg: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg, **kwargs)``; ``key`` names the config entry in errors."""
    try:
        return instantiate(cfg, **kwargs)
    except UserError:
        raise
    except Exception as e:
        found = _user_error_in_chain(e)
        if found is not None:
            raise found from None
        if not isinstance(e, InstantiationException):
            raise
        cause = e.__cause__ or e
        detail = " ".join(str(cause).split()) or type(cause).__name__
        if cause is not e:
            detail = f"{type(cause).__name__}: {detail}"
        else:
            detail = detail.split(" full_key:")[0]
        target = cfg.get("_target_") if hasattr(cfg, "get") else None
        raise UserError(f"cannot build {key} ({target}): {detail}; check the keys under {key}") from None


def instantiate_group(group_cfg: Any, group: str, expected: type, hint: str,
                      prepare: Callable[[dict], None] | None = None) -> list:
    """Instantiate every non-null entry of a config group of ``_target_`` configs (``callbacks``,
    ``logger``), in order. ``hint`` (with ``{name}``) says how to fix an entry without
    ``_target_``; ``prepare`` may fill an entry's defaults before it is built; each object must be
    an ``expected``."""
    from omegaconf import OmegaConf

    entries = OmegaConf.to_container(group_cfg, resolve=True) if OmegaConf.is_config(group_cfg) else dict(group_cfg or {})
    built = []
    for name, entry in entries.items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise UserError(f"{group}.{name} has no _target_; {hint.format(name=name)}")
        if prepare is not None:
            prepare(entry)
        obj = instantiate_config(entry, f"{group}.{name}")
        if not isinstance(obj, expected):
            raise UserError(f"{group}.{name}: {entry['_target_']} is not a {expected.__module__}.{expected.__name__}")
        built.append(obj)
    return built
