"""One live run per run directory: ``<run_dir>/run.lock`` names the process that holds it.

A second process started into a directory that a live run holds is refused with a one-line
``UserError`` before it writes anything there. A lock left by a process that no longer exists
(killed with ``kill -9``, a crashed node) is taken over with a warning, so a re-launch after a
crash resumes without manual cleanup. Only rank 0 takes the lock: the other ranks of the same
job share the directory by design.

Liveness can only be checked for a holder on this host; a lock held from another host is
refused (delete the file when you know that run is gone), except when it was taken by an
earlier incarnation of this same scheduler job (same ``SLURM_JOB_ID``): a requeued SLURM job
may restart on another node, and the scheduler runs one incarnation of a job at a time.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time
import warnings
from pathlib import Path

from partialnet.errors import UserError
from partialnet.utils.atomic import atomic_write_text
from partialnet.utils.distributed import is_rank_zero

__all__ = ["LOCK_NAME", "acquire_run_lock", "release_run_lock"]

LOCK_NAME = "run.lock"
_held: set[Path] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def acquire_run_lock(run_dir: str | os.PathLike) -> Path | None:
    """Take ``<run_dir>/run.lock`` for this process (rank 0 only; idempotent); returns its path."""
    if not is_rank_zero():
        return None
    run_dir = Path(run_dir)
    lock = run_dir / LOCK_NAME
    if lock in _held:
        return lock
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
          "job": os.environ.get("SLURM_JOB_ID")}
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = _read(lock)
        pid, host = int(holder.get("pid", -1)), str(holder.get("host", "?"))
        if pid == os.getpid() and host == me["host"]:
            _held.add(lock)
            return lock
        if host == me["host"] and pid > 0 and _pid_alive(pid):
            raise UserError(
                f"run dir {run_dir} is in use by a live run (pid {pid} on {host}, since {holder.get('started', '?')}); "
                f"wait for it to end or start this run elsewhere (another run_name)"
            ) from None
        same_job = me["job"] is not None and holder.get("job") == me["job"]
        if host != me["host"] and not same_job:
            raise UserError(
                f"run dir {run_dir} is locked by pid {pid} on host {host} ({lock}); if that run is gone, "
                f"delete {lock} and re-launch, else use another run_name"
            ) from None
        why = f"an earlier incarnation of SLURM job {me['job']}" if host != me["host"] else "no longer running"
        warnings.warn(f"taking over the stale lock of pid {pid} on {host} ({why}) in {run_dir}", stacklevel=2)
        atomic_write_text(lock, json.dumps(me))
    else:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
    _held.add(lock)
    return lock


def release_run_lock(run_dir: str | os.PathLike) -> None:
    """Remove the lock if this process holds it (safe to call more than once)."""
    lock = Path(run_dir) / LOCK_NAME
    if lock not in _held:
        return
    _held.discard(lock)
    holder = _read(lock)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        try:
            lock.unlink()
        except FileNotFoundError:
            pass


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        release_run_lock(lock.parent)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class RunDirLockCallback(_HydraCallback):
    """Hydra callback (``conf/hydra/default.yaml``): take the run dir's lock before Hydra writes
    its ``.hydra/`` record and log file there, so a refused second run touches nothing."""

    def on_run_start(self, config, **kwargs) -> None:
        import sys

        from omegaconf import OmegaConf

        run_dir = OmegaConf.select(config, "hydra.run.dir")
        if not run_dir:
            return
        try:
            acquire_run_lock(run_dir)
        except UserError as e:  # Hydra turns callback exceptions into warnings: stop here
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(UserError.exit_code) from None
