"""Parsing of the search's candidate lists (``search.candidates``, ``search.mlp_candidates``)."""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Callable, Sequence

from partialnet.errors import UserError

__all__ = ["parse_number_list"]


def parse_number_list(values, key: str, valid: Callable[[float], bool], what: str, example: str) -> list[float]:
    """``values`` as floats in the given order: numbers or strings like ``'1/8'``; each must satisfy
    ``valid`` (``what`` says how, ``example`` is a good value) and appear once. Bad input is a
    one-line ``UserError`` naming ``key``."""
    if values is None or isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise UserError(f"{key} must be a non-empty list of {what}, e.g. {example}, got {values!r}")
    out: list[float] = []
    for v in values:
        r = v
        if isinstance(v, str):
            try:
                r = float(Fraction(v.strip()))
            except (ValueError, ZeroDivisionError):
                r = None
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or not valid(float(r)):
            raise UserError(f"{key} entry {v!r} is not {what}; use e.g. {example}")
        if float(r) in out:
            raise UserError(f"{key} lists {v!r} twice; give each ratio once")
        out.append(float(r))
    return out
