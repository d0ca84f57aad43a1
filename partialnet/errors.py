"""User-facing errors.

Anything a user can get wrong (a config value, a path, a file) raises :class:`UserError`
with a one-line message that names the bad value and the fix. The entry points
(`train.py`, `eval.py`, `search_dpconv.py`) catch it, print ``error: <message>`` on
stderr and exit with code 2: never a bare traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user. The message is one line: what is wrong, and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line


class Preempted(Exception):
    """The run received SIGTERM (a scheduler's pre-emption); its state is in ``last.ckpt``. The
    entry points print ``error: <message>`` (how to resume) and exit with ``exit_code``."""

    exit_code = 143  # 128 + SIGTERM, what a scheduler expects of a terminated job
