"""Entry-point wrapper: bad input is one line on stderr and exit code 2, never a traceback.

``run_cli(main)`` runs a ``@hydra.main`` function. A pre-empted run (SIGTERM) prints where its
checkpoint is and exits 143. User mistakes — our ``UserError``, Hydra's
composition errors (unknown config group option, unknown key, bad override syntax) and
OmegaConf errors (missing mandatory value, wrong type) — print ``error: <one line>`` and exit 2.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable

from partialnet.errors import Preempted, UserError


def _one_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    # Hydra: "In 'train': Could not find 'model/x'", "Available options in 'model':", the
    # options, then "Config search path:" and its entries (not for the user)
    if len(lines) > 1 and "Could not find '" in lines[0] and "Available options" in lines[1]:
        head = lines[0][lines[0].index("Could not find '"):]
        options = []
        for ln in lines[2:]:
            if ln.startswith("Config search path"):
                break
            options.append(ln)
        return f"{head}; available: {', '.join(options)}"
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
    except Preempted as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(Preempted.exit_code)
    except _user_error_types() as e:  # noqa: PERF203
        if os.environ.get("PARTIALNET_TRACEBACK"):
            raise
        name = type(e).__name__
        prefix = "error" if isinstance(e, UserError) else f"config error ({name})"
        print(f"{prefix}: {_one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(UserError.exit_code)
