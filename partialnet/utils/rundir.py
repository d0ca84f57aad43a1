"""Run directories: decided once per job, collision-free, stable across re-launches.

Registered as OmegaConf resolvers used by ``conf/hydra/default.yaml``:

- ``${pn_run_name:${run_name}}``: the run's directory name, in this order: an explicit
  ``run_name``; ``SLURM_JOB_ID`` (stable across requeues, so the job finds its ``last.ckpt``);
  torchrun's ``TORCHELASTIC_RUN_ID`` (shared by all ranks); otherwise a microsecond timestamp
  plus a random suffix, so two jobs started in the same second never share a directory. The
  fallback is stored in ``PARTIALNET_RUN_NAME`` so the value is the same every time it is
  resolved in this process and in the processes it spawns.
- ``${pn_rank_zero_only:VALUE}``: VALUE on rank 0, null on other ranks (no duplicate .hydra/).
- ``${pn_log_file:NAME}``: ``NAME.log`` on rank 0, ``NAME_rank<r>.log`` elsewhere.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import uuid

from omegaconf import OmegaConf

from partialnet.utils.distributed import global_rank

RUN_NAME_ENV = "PARTIALNET_RUN_NAME"
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def run_name(explicit: str | None = None) -> str:
    """Directory name of this run (see module docstring)."""
    if explicit not in (None, "", "None", "null"):
        return _SAFE.sub("_", str(explicit))
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return f"slurm-{slurm}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"torchrun-{_SAFE.sub('_', elastic)}"
    cached = os.environ.get(RUN_NAME_ENV)
    if cached:
        return cached
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
    name = f"{stamp}_{uuid.uuid4().hex[:6]}"
    os.environ[RUN_NAME_ENV] = name
    return name


def rank_zero_only(value):
    return value if global_rank() == 0 else None


def log_file(job_name: str) -> str:
    rank = global_rank()
    return f"{job_name}.log" if rank == 0 else f"{job_name}_rank{rank}.log"


def register_resolvers() -> None:
    """Register the ``pn_*`` resolvers (idempotent)."""
    for name, fn in (("pn_run_name", run_name), ("pn_rank_zero_only", rank_zero_only), ("pn_log_file", log_file)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
