"""``ClassificationModule``: the LightningModule that trains any backbone.

- Loss: timm Mixup/CutMix + label smoothing with soft-target cross-entropy when mixing is on,
  plain (label-smoothed) cross-entropy otherwise.
- Metrics: torchmetrics top-1/top-5 (synced across ranks).
- Multi-scale: each training batch is resized to ``resolution_at(epoch)`` (a pure function of
  the epoch; no dataloader reloads).
- EMA (optional): timm ``ModelEmaV3`` kept as the ``ema`` submodule, so raw and averaged
  weights are both in every checkpoint; validation reports EMA as ``val/*`` and raw as
  ``val_raw/*``.
- Randomness: at each epoch's first batch the global RNGs are re-seeded from (seed, epoch, rank), so a
  run resumed at an epoch boundary draws exactly the same numbers as an uninterrupted one; a
  mid-epoch checkpoint also stores the RNG states of every rank, each restored on its own rank
  when training resumes inside that epoch (the DataModule's sampler skips the batches already
  consumed).
- Rebuildable: built from a model spec (``{"name": ..., "kwargs": {...}}``) and plain dicts, the
  module records them with ``save_hyperparameters``, so
  ``ClassificationModule.load_from_checkpoint(PATH)`` rebuilds it (older checkpoints without
  recorded hyper-parameters are rebuilt from the spec and config they carry).
- ``torch.compile`` wraps only the inner model and is kept out of the module tree, so
  checkpoint keys stay ``model.*``.
"""
from __future__ import annotations

import random
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torchmetrics.classification import MulticlassAccuracy

from partialnet.data.base import mix_seed
from partialnet.errors import UserError
from partialnet.training.multiscale import resolution_at
from partialnet.training.optim import build_optimizer, build_scheduler, scaled_lr


def _get_rng_state(epoch: int, step: int, rank: int) -> dict:
    np_state = np.random.get_state()
    return {
        "epoch": int(epoch),
        "step": int(step),
        "rank": int(rank),
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])


def _gather_objects(obj: Any) -> list:
    """``obj`` from every rank (a one-element list without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def module_kwargs_from_config(config: Mapping, model_spec: dict, num_classes: int, image_size: int) -> dict:
    """Constructor arguments of :class:`ClassificationModule` from a resolved run config (plain dict)."""
    multiscale = config.get("multiscale")
    return dict(
        model=dict(model_spec),
        num_classes=int(num_classes),
        optim=dict(config["optim"]),
        sched=dict(config["sched"]),
        aug=dict(config.get("aug") or {}),
        ema=dict(config.get("ema") or {}),
        global_batch_size=int(config["data"]["batch_size"]),
        image_size=int(image_size),
        multiscale=[list(e) for e in multiscale] if multiscale else None,
        channels_last=bool(config.get("channels_last", False)),
        compile=bool(config.get("compile", False)),
        seed=int(config.get("seed", 0)),
        nonfinite=str(config.get("nonfinite", "stop")),
        config=dict(config),
    )


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module | Mapping,
        num_classes: int,
        optim: dict,
        sched: dict,
        aug: dict | None = None,
        ema: dict | None = None,
        global_batch_size: int = 256,
        image_size: int = 224,
        multiscale: list | None = None,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        model_spec: dict | None = None,
        nonfinite: str = "stop",
        config: dict | None = None,
    ):
        """``model``: a model spec ``{"name": ..., "kwargs": {...}}`` (built here, recorded in the
        checkpoint's hyper-parameters) or a ready ``nn.Module`` (then ``model_spec`` says how to
        rebuild it, if it can be). ``config``: the run's resolved config, kept in checkpoints."""
        super().__init__()
        if isinstance(model, Mapping):
            from partialnet.training.builders import build_model

            model_spec = {"name": str(model["name"]), "kwargs": dict(model.get("kwargs") or {})}
            self.save_hyperparameters(dict(
                model=model_spec, num_classes=int(num_classes), optim=dict(optim), sched=dict(sched),
                aug=dict(aug or {}), ema=dict(ema or {}), global_batch_size=int(global_batch_size),
                image_size=int(image_size), multiscale=multiscale, channels_last=bool(channels_last),
                compile=bool(compile), seed=int(seed), nonfinite=str(nonfinite), config=config,
            ))
            model = build_model(model_spec["name"], model_spec["kwargs"])
        elif config is not None:
            self.save_hyperparameters({"config": config})  # for the loggers; not enough to rebuild
        self.model = model
        self.config = config
        self.num_classes = int(num_classes)
        self.optim_cfg = dict(optim)
        self.sched_cfg = dict(sched)
        self.aug_cfg = dict(aug or {})
        self.global_batch_size = int(global_batch_size)
        self.image_size = int(image_size)
        self.multiscale = multiscale
        self.use_channels_last = bool(channels_last)
        self.use_compile = bool(compile)
        self.seed = int(seed)
        # Everything needed to rebuild the bare model (eval.py, export): name + kwargs.
        self.model_spec = dict(model_spec or {})
        if nonfinite not in ("stop", "skip"):
            raise UserError(f"nonfinite={nonfinite!r}; use stop (default) or skip")
        self.nonfinite = nonfinite
        if nonfinite == "skip":  # we warn ourselves, with the count
            warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
        self.skipped_batches = 0
        self.lr = scaled_lr(
            float(self.optim_cfg["base_lr"]), self.global_batch_size, int(self.optim_cfg["ref_batch_size"])
        )

        a = self.aug_cfg
        self.mixup_fn = None
        if float(a.get("mixup", 0)) > 0 or float(a.get("cutmix", 0)) > 0:
            self.mixup_fn = Mixup(
                mixup_alpha=float(a.get("mixup", 0)),
                cutmix_alpha=float(a.get("cutmix", 0)),
                prob=float(a.get("mixup_prob", 1.0)),
                switch_prob=float(a.get("switch_prob", 0.5)),
                label_smoothing=float(a.get("label_smoothing", 0.0)),
                num_classes=self.num_classes,
            )
            self.train_loss_fn: nn.Module = SoftTargetCrossEntropy()
        else:
            self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=float(a.get("label_smoothing", 0.0)))

        ema = dict(ema or {})
        self.ema = None
        if ema.get("decay") is not None:
            self.ema = ModelEmaV3(model, decay=float(ema["decay"]), use_warmup=bool(ema.get("warmup", False)))
            self.ema.requires_grad_(False)
            # Follow the parent's train/eval mode like any submodule: it only ever runs in
            # validation, where Lightning switches everything to eval.
            self.ema.train()

        top5 = min(5, self.num_classes)
        self.val_acc1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        self.raw_acc1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.raw_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        self._compiled: Any = None
        self._resume_rng: dict | None = None
        self._seeded_epoch: int | None = None
        self._step_t0: float | None = None
        self._epoch_t0: float | None = None

    # ------------------------------------------------------------------ setup
    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def setup(self, stage: str) -> None:
        if self.use_channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self._on_cuda() and self.use_compile and self._compiled is None:
            # Not an attribute nn.Module tracks: state_dict keys stay `model.*`.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._compiled or self.model)(x)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------ train
    def on_train_epoch_start(self) -> None:
        self._epoch_t0 = time.perf_counter()
        self._step_t0 = None

    def current_resolution(self) -> int:
        return resolution_at(self.current_epoch, self.multiscale, self.image_size)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Seed once per epoch, at its first batch (Lightning skips on_train_epoch_start when it
        # restarts inside an epoch). After a resume, continue the checkpoint's random stream.
        if self._seeded_epoch == self.current_epoch:
            return
        self._seeded_epoch = self.current_epoch
        resume, self._resume_rng = self._resume_rng, None
        if resume is not None and resume["epoch"] == self.current_epoch and resume["step"] == self.global_step:
            _set_rng_state(resume)
        else:
            s = mix_seed(self.seed, self.current_epoch, self.global_rank)
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)
        if self._epoch_t0 is None:
            self._epoch_t0 = time.perf_counter()

    def prepare_train_batch(self, batch, mix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Resize to this epoch's resolution, set the memory format, mix (unless ``mix=False``): ``(x, target)``."""
        x, y = batch
        res = self.current_resolution()
        if x.shape[-1] != res or x.shape[-2] != res:
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        x = self._prepare(x)
        if mix and self.mixup_fn is not None:
            return self.mixup_fn(x, y)
        return x, y

    def training_step(self, batch, batch_idx):
        x, target = self.prepare_train_batch(batch)
        res = x.shape[-1]
        logits = self._train_forward(x)
        loss = self.train_loss_fn(logits, target)
        if not torch.isfinite(loss):
            if self.nonfinite == "skip":  # no backward, no optimizer step for this batch
                self.skipped_batches += 1
                self.log("train/skipped_nonfinite", float(self.skipped_batches), on_step=True, batch_size=x.shape[0])
                warnings.warn(f"non-finite loss at step {self.global_step}: batch skipped ({self.skipped_batches} so far)",
                              stacklevel=2)
                return None
            raise UserError(
                f"loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); the last good "
                "checkpoint is kept: lower optim.base_lr, set trainer.gradient_clip_val=1.0, use "
                "trainer.precision=32-true, check the data for NaN/Inf, or skip such batches with nonfinite=skip"
            )
        now = time.perf_counter()
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=False)
        if self._step_t0 is not None:
            ips = bs * self.trainer.world_size / max(now - self._step_t0, 1e-9)
            self.log("train/images_per_s", ips, on_step=True, on_epoch=False, batch_size=bs)
        self._step_t0 = now
        self.log("train/resolution", float(res), on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after the weights change, before any callback (a step checkpoint) sees them
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def on_train_epoch_end(self) -> None:
        if self._epoch_t0 is not None:
            self.log("train/epoch_time_s", time.perf_counter() - self._epoch_t0, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ val
    def validation_step(self, batch, batch_idx):
        x, y = batch
        x = self._prepare(x)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        bs = x.shape[0]
        if self.ema is not None:
            self.raw_acc1.update(logits, y)
            self.raw_acc5.update(logits, y)
            self.log("val_raw/loss", loss, on_epoch=True, sync_dist=True, batch_size=bs)
            logits = self.ema.module(x)
            loss = F.cross_entropy(logits, y)
        self.val_acc1.update(logits, y)
        self.val_acc5.update(logits, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=False, sync_dist=True, batch_size=bs)

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc1", self.val_acc1.compute() * 100.0, prog_bar=True, sync_dist=False)
        self.log("val/acc5", self.val_acc5.compute() * 100.0, sync_dist=False)
        self.val_acc1.reset()
        self.val_acc5.reset()
        if self.ema is not None:
            self.log("val_raw/acc1", self.raw_acc1.compute() * 100.0)
            self.log("val_raw/acc5", self.raw_acc5.compute() * 100.0)
            self.raw_acc1.reset()
            self.raw_acc5.reset()

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg, self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        steps_per_epoch = max(1, total // epochs)
        scheduler = build_scheduler(optimizer, self.sched_cfg, self.lr, total, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ ckpt
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("partialnet") or {}
        self.skipped_batches = int(meta.get("skipped_batches", 0))
        per_rank = meta.get("rng_per_rank")
        world = self.trainer.world_size if self._trainer is not None else 1
        if per_rank and len(per_rank) == world:
            rng = per_rank[self.global_rank]
        else:  # a checkpoint of another world size, or of an older version (rank 0's state only)
            rng = meta.get("rng")
        if rng is not None and rng.get("rank") == self.global_rank:
            self._resume_rng = rng

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rng = _get_rng_state(self.current_epoch, self.global_step, self.global_rank)
        checkpoint["partialnet"] = {
            "rng": rng,
            "rng_per_rank": _gather_objects(rng),  # collective: Lightning calls this hook on every rank
            "model_spec": self.model_spec,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "has_ema": self.ema is not None,
            "skipped_batches": self.skipped_batches,
            "config": self.config,
        }

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's ``load_from_checkpoint``; a checkpoint written before the module recorded
        its hyper-parameters is rebuilt from the model spec and config it carries."""
        from partialnet.training.checkpoint_file import load_checkpoint_file

        ckpt = load_checkpoint_file(checkpoint_path)
        if "model" not in (ckpt.get("hyper_parameters") or {}) and "model" not in kwargs:
            meta = ckpt.get("partialnet") or {}
            if meta.get("search") is not None:
                raise UserError(f"{checkpoint_path} is a DPConv search (supernet) checkpoint: retrain the searched "
                                "model with train.py model.ratios=<its run dir>/ratios.yaml and load that checkpoint")
            if not meta.get("model_spec") or not meta.get("config"):
                raise UserError(f"{checkpoint_path} records neither hyper-parameters nor a model spec and config: "
                                "it was not written by partialnet's train.py")
            rebuilt = module_kwargs_from_config(meta["config"], meta["model_spec"], meta["num_classes"],
                                                meta.get("image_size", 224))
            kwargs = {**rebuilt, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, **kwargs)
