"""Entry-point wrapper: bad input is one line on stderr and exit code 2, never a traceback.

``run_cli(main)`` runs a ``@hydra.main`` function. User mistakes — our ``UserError``, Hydra's
composition errors (unknown config group option, unknown key, bad override syntax) and
OmegaConf errors (missing mandatory value, wrong type) — print ``error: <one line>`` and exit 2.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

from partialnet.errors import UserError


def _one_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Could not find '") and len(lines) > 1 and "Available options" in lines[1]:
        options = ", ".join(ln for ln in lines[2:])
        return f"{lines[0]}; available: {options}"
    text = "; ".join(lines)
    return re.sub(r"\s+", " ", text).replace("\t", " ")


def _user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return (UserError, HydraException, OmegaConfBaseException)


def run_cli(main: Callable[[], object]) -> None:
    """Call ``main`` (a @hydra.main function); turn user errors into one line + exit 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's reporter
    try:
        main()
    except _user_error_types() as e:  # noqa: PERF203
        if os.environ.get("PARTIALNET_TRACEBACK"):
            raise
        name = type(e).__name__
        prefix = "error" if isinstance(e, UserError) else f"config error ({name})"
        print(f"{prefix}: {_one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(UserError.exit_code)
