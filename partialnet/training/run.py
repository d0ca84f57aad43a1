"""One run, the same for ``train.py`` and ``search_dpconv.py``: config in, checkpoints and metrics out.

:func:`run` does, in this order: take the run directory (its lock refuses a second live run),
check the trainer settings (CUDA-only switches fall back on CPU with a warning), seed, build the
DataModule, check the multi-scale schedule, build the LightningModule (the task's
``build_module``), the callbacks and loggers (``_target_`` configs) and the Trainer, check the
global batch against the Trainer's world size, write ``config_resolved.yaml``, pick the
checkpoint to resume from, fit (a checkpoint that does not fit, or a pre-emption, is a one-line
error), close W&B, and print the final lines. A run-level option is added here, once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from partialnet.errors import Preempted, UserError
from partialnet.training import builders
from partialnet.training.callbacks import (
    PreemptionCheckpoint,
    StopAfterEpoch,
    build_callbacks,
    fault_injection_callbacks,
)
from partialnet.training.loggers import build_loggers, finish_wandb
from partialnet.training.multiscale import max_resolution, validate_schedule
from partialnet.utils.atomic import atomic_write_text
from partialnet.utils.distributed import is_rank_zero
from partialnet.utils.run_lock import acquire_run_lock, release_run_lock

log = logging.getLogger("partialnet")

__all__ = ["RunParts", "Preempted", "run", "run_dir_of"]


@dataclass
class RunParts:
    """What a task's ``build_module`` gets: the config and what :func:`run` built before it."""

    cfg: DictConfig
    config: dict  # the resolved config as plain containers (recorded in checkpoints)
    run_dir: Path
    datamodule: pl.LightningDataModule
    num_classes: int
    image_size: int


def run_dir_of(cfg: DictConfig) -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (library use)
        return Path(cfg.paths.output_dir)


def run(
    cfg: DictConfig,
    build_module: Callable[[RunParts], pl.LightningModule],
    *,
    mismatch_hint: str,
    trainer_overrides: dict | None = None,
    after_fit: Callable[[pl.Trainer, pl.LightningModule, RunParts, list], dict] | None = None,
) -> dict:
    """Run one training job; returns the final scalar metrics (plus what ``after_fit`` adds).

    ``mismatch_hint`` ends the error for a checkpoint that does not fit the module;
    ``trainer_overrides`` replace trainer config values; ``after_fit`` runs on every rank after a
    completed or stopped fit, before W&B is closed."""
    run_dir = run_dir_of(cfg)
    acquire_run_lock(run_dir)
    try:
        return _run(cfg, run_dir, build_module, mismatch_hint, trainer_overrides or {}, after_fit)
    finally:
        release_run_lock(run_dir)


def _run(cfg, run_dir: Path, build_module, mismatch_hint: str, trainer_overrides: dict, after_fit) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    builders.check_trainer_cfg(cfg)
    schedule = validate_schedule(OmegaConf.to_container(cfg.multiscale) if cfg.get("multiscale") else None)
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    dm = builders.build_datamodule(cfg.data)
    image_size = int(cfg.data.get("image_size", 224))
    if schedule and max_resolution(schedule, image_size) > image_size:
        raise UserError(
            f"multiscale {schedule} asks for more than data.image_size={image_size}; "
            f"set data.image_size={max_resolution(schedule, image_size)}"
        )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    parts = RunParts(cfg=cfg, config=resolved, run_dir=run_dir, datamodule=dm, num_classes=int(dm.num_classes),
                     image_size=image_size)
    module = build_module(parts)

    callbacks = build_callbacks(cfg.get("callbacks"), run_dir)
    if cfg.get("stop_after_epoch"):
        callbacks.append(StopAfterEpoch(int(cfg.stop_after_epoch)))
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    preemption = PreemptionCheckpoint(last_ckpt)
    callbacks += [preemption, *fault_injection_callbacks()]
    loggers = build_loggers(cfg.get("logger"), run_dir)
    trainer_cfg = {**OmegaConf.to_container(cfg.trainer, resolve=True), **trainer_overrides}
    trainer = builders.build_trainer(trainer_cfg, callbacks, loggers, run_dir)
    builders.check_global_batch(cfg, trainer.world_size)

    if is_rank_zero():
        atomic_write_text(run_dir / "config_resolved.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    ckpt_path = builders.resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path and trainer.is_global_zero:
        log.info("resuming from %s", ckpt_path)
        print(f"resuming from {ckpt_path}", flush=True)
    gb = int(cfg.data.batch_size)
    log.info("run dir: %s | model %s (%d classes) | global batch %d, %d per device",
             run_dir, cfg.model.name, parts.num_classes, gb, gb // trainer.world_size)

    metrics: dict = {}
    try:
        _fit(trainer, module, dm, ckpt_path, mismatch_hint)
        metrics = builders.scalar_metrics(trainer)
        if after_fit is not None:
            metrics.update(after_fit(trainer, module, parts, loggers) or {})
    except SIGTERMException:
        relaunch = f"re-launch the same command into {run_dir} (same run_name) to resume"
        where = (f"checkpoint at step {preemption.saved_step} written to {last_ckpt}"
                 if preemption.saved_step is not None else "no checkpoint written (it came outside training)")
        raise Preempted(f"pre-empted (SIGTERM): {where}; {relaunch}") from None
    finally:
        finish_wandb(loggers)

    if trainer.is_global_zero:
        if "val/acc1" in metrics:
            print(f"final val/acc1: {metrics['val/acc1']:.2f}", flush=True)
        best = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)
        if best is not None and best.best_model_path:
            print(f"best checkpoint: {best.best_model_path}", flush=True)
        print(f"run dir: {run_dir}", flush=True)
    return metrics


def _fit(trainer: pl.Trainer, module, datamodule, ckpt_path: str | None, mismatch_hint: str) -> None:
    """``trainer.fit`` where a checkpoint that does not fit the module is a one-line UserError."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except RuntimeError as e:
        if ckpt_path and ("state_dict" in str(e) or "size mismatch" in str(e)):
            raise UserError(f"checkpoint {ckpt_path} does not fit {mismatch_hint}") from None
        raise
