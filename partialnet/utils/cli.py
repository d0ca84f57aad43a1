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


class _WithoutHydraJobLine:
    """``sys.stderr`` minus the line Hydra writes before re-raising a single run's exception
    ("Error executing job with overrides: [...]", the overrides the user just typed), so a user
    error is one line. In a multirun the line stays: it says which job failed."""

    PREFIX = "Error executing job with overrides: "

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(self.PREFIX):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run_cli(main: Callable[[], object]) -> None:
    """Call ``main`` (a @hydra.main function); turn user errors into one line + exit 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's reporter
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    stderr = sys.stderr
    if not multirun:
        sys.stderr = _WithoutHydraJobLine(stderr)
    try:
        _call(main)
    finally:
        if isinstance(sys.stderr, _WithoutHydraJobLine):
            sys.stderr = stderr


def _call(main: Callable[[], object]) -> None:
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
