"""The training job behind ``train.py``: config in, trained checkpoint and metrics out."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from partialnet.errors import UserError
from partialnet.training import builders
from partialnet.training.callbacks import ExitAfterStep, FailOnRank, StopAfterEpoch
from partialnet.training.classifier import ClassificationModule
from partialnet.training.loggers import build_loggers
from partialnet.training.multiscale import max_resolution, validate_schedule

log = logging.getLogger("partialnet")


def run_dir_of(cfg: DictConfig) -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under Hydra (library use)
        return Path(cfg.paths.output_dir)


def _finish_wandb(loggers) -> None:
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            import wandb

            wandb.finish()


def train(cfg: DictConfig) -> dict:
    """Train per ``cfg``; returns the final metrics (``val/acc1`` etc.)."""
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    builders.check_trainer_cfg(cfg)
    schedule = validate_schedule(OmegaConf.to_container(cfg.multiscale) if cfg.multiscale else None)
    pl.seed_everything(int(cfg.seed), workers=False, verbose=False)

    dm = builders.build_datamodule(cfg.data)
    image_size = int(cfg.data.get("image_size", 224))
    if schedule and max_resolution(schedule, image_size) > image_size:
        raise UserError(
            f"multiscale {schedule} asks for more than data.image_size={image_size}; "
            f"set data.image_size={max_resolution(schedule, image_size)}"
        )
    num_classes = int(dm.num_classes)
    model_kwargs = builders.model_kwargs_from_cfg(cfg.model, num_classes, image_size)
    model = builders.build_model(str(cfg.model.name), model_kwargs)  # checks the file's model and layers
    builders.check_ratios_file_fits(str(cfg.model.name), model_kwargs)  # ... and its constructor arguments
    spec = {"name": str(cfg.model.name), "kwargs": dict(model_kwargs)}

    resolved = OmegaConf.to_container(cfg, resolve=True)
    module = ClassificationModule(
        model,
        num_classes=num_classes,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        sched=OmegaConf.to_container(cfg.sched, resolve=True),
        aug=OmegaConf.to_container(cfg.aug, resolve=True),
        ema=OmegaConf.to_container(cfg.ema, resolve=True),
        global_batch_size=int(cfg.data.batch_size),
        image_size=image_size,
        multiscale=[list(e) for e in schedule] or None,
        channels_last=bool(cfg.channels_last),
        compile=bool(cfg.compile),
        seed=int(cfg.seed),
        model_spec=spec,
        nonfinite=str(cfg.get("nonfinite", "stop")),
    )
    module.run_config = resolved

    if builders.is_rank_zero():
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    loggers = build_loggers(cfg.get("logger"), run_dir, resolved)
    callbacks = builders.build_callbacks(cfg.callbacks, run_dir)
    if cfg.get("stop_after_epoch"):
        callbacks.append(StopAfterEpoch(int(cfg.stop_after_epoch)))
    if os.environ.get(ExitAfterStep.ENV):  # fault injection (tests)
        callbacks.append(ExitAfterStep(int(os.environ[ExitAfterStep.ENV])))
    if os.environ.get(FailOnRank.ENV_RANK):  # fault injection (tests)
        callbacks.append(FailOnRank(int(os.environ[FailOnRank.ENV_RANK]), int(os.environ.get(FailOnRank.ENV_STEP, "0"))))
    trainer = builders.build_trainer(cfg.trainer, callbacks, loggers, run_dir)
    ckpt_path = builders.resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
        print(f"resuming from {ckpt_path}", flush=True)
    log.info("run dir: %s | model %s (%d classes) | global batch %d, %d per device, lr %.3g",
             run_dir, cfg.model.name, num_classes, int(cfg.data.batch_size),
             int(cfg.data.batch_size) // trainer.world_size, module.lr)
    try:
        builders.fit(trainer, module, dm, ckpt_path,
                     f"model {cfg.model.name!r} (another architecture?); use a checkpoint of this model or ckpt_path=null")
    finally:
        _finish_wandb(loggers)

    metrics = builders.scalar_metrics(trainer)
    best = next((c for c in callbacks if type(c).__name__ == "ModelCheckpoint" and c.monitor), None)
    if trainer.is_global_zero:
        if "val/acc1" in metrics:
            print(f"final val/acc1: {metrics['val/acc1']:.2f}", flush=True)
        if best is not None and best.best_model_path:
            print(f"best checkpoint: {best.best_model_path}", flush=True)
        print(f"run dir: {run_dir}", flush=True)
    return metrics
