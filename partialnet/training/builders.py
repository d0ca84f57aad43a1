"""Build the pieces of a run from the composed Hydra config: data, model, module, trainer."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from partialnet.errors import UserError
from partialnet.models import ratios_file
from partialnet.models.registry import create_model
from partialnet.training.checkpoint_io import AtomicCheckpointIO
from partialnet.utils.instantiate import instantiate_config

# Model-config keys passed to the constructor when not null (`kwargs` is merged in as-is).
_MODEL_KEYS = ratios_file.MODEL_CFG_KEYS


def _wants_gpu(trainer_cfg) -> bool:
    acc = str(trainer_cfg.get("accelerator", "auto"))
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def check_trainer_cfg(cfg: DictConfig) -> None:
    """Validate/adjust run settings before anything is built (mutates cfg.trainer).

    The CUDA-only switches (precision 16/bf16, sync-BN, compile) fall back on CPU with a one-line
    warning each; ``channels_last`` works on both (on CPU it makes the training step faster)."""
    t = cfg.trainer
    acc = str(t.get("accelerator", "auto"))
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={acc} but no CUDA GPU is visible; use trainer.accelerator=cpu")
    on_gpu = _wants_gpu(t)
    prec = str(t.get("precision", "32-true"))
    if not on_gpu and ("16" in prec):
        warnings.warn(f"trainer.precision={prec} needs a CUDA GPU; running on CPU in 32-true", stacklevel=2)
        t.precision = "32-true"
    if not on_gpu and t.get("sync_batchnorm"):
        warnings.warn("trainer.sync_batchnorm needs CUDA (torch's SyncBatchNorm); off on CPU", stacklevel=2)
        t.sync_batchnorm = False
    if not on_gpu and cfg.get("compile"):
        warnings.warn("compile=true needs a CUDA GPU; ignored on CPU", stacklevel=2)
    gb = int(cfg.data.batch_size)
    if gb <= 0:
        raise UserError(f"data.batch_size={gb} must be > 0 (it is the GLOBAL batch)")


def check_global_batch(cfg: DictConfig, world: int) -> None:
    """The global batch against the trainer's world size (asked from the built Trainer)."""
    gb = int(cfg.data.batch_size)
    if gb % world:
        raise UserError(
            f"data.batch_size={gb} (global) is not divisible by {world} processes "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world}, e.g. data.batch_size={gb - gb % world or world}"
        )
    aug = cfg.get("aug") or {}
    mixing = float(aug.get("mixup", 0) or 0) > 0 or float(aug.get("cutmix", 0) or 0) > 0
    if mixing and (gb // world) % 2:
        raise UserError(f"Mixup/CutMix need an even per-device batch; data.batch_size={gb} gives {gb // world} per device")


def build_datamodule(data_cfg):
    return instantiate_config(data_cfg, "data", _convert_="all")


def model_kwargs_from_cfg(model_cfg, num_classes: int, image_size: int) -> dict:
    """Constructor kwargs for ``create_model(model_cfg.name, **kwargs)``."""
    known = {"name", "kwargs", "init_from", *_MODEL_KEYS}
    unknown = sorted(k for k in model_cfg.keys() if k not in known)
    if unknown:
        raise UserError(f"model.{unknown[0]} is not a model option (those are {', '.join(sorted(known))}); "
                        f"pass another constructor argument as model.kwargs.{unknown[0]}=...")
    kwargs = {"num_classes": int(num_classes)}
    for key in _MODEL_KEYS:
        val = model_cfg.get(key)
        if val is not None:
            kwargs[key] = OmegaConf.to_object(val) if OmegaConf.is_config(val) else val
    extra = model_cfg.get("kwargs") or {}
    kwargs.update(OmegaConf.to_container(extra, resolve=True) if OmegaConf.is_config(extra) else dict(extra))
    if isinstance(kwargs.get("ratios"), str):
        kwargs["ratios"] = str(Path(kwargs["ratios"]).expanduser())
    return kwargs


def check_ratios_file_fits(name: str, kwargs: dict) -> None:
    """A ratios.yaml must be retrained with the constructor arguments it was searched with."""
    ratios_file.check_ratios_file_fits(name, kwargs)


def build_model(name: str, kwargs: dict) -> torch.nn.Module:
    """``create_model``; an argument the model does not take is a :class:`UserError` raised by the
    model's builder (checked against its constructor's signature)."""
    return create_model(name, **kwargs)


def build_trainer(trainer_cfg, callbacks: list, loggers: list, run_dir: Path):
    t = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else dict(trainer_cfg)
    t = {k: v for k, v in t.items() if v is not None or k == "_target_"}
    return instantiate_config(
        t,
        "trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the datamodules shard with their own seeded sampler
        default_root_dir=str(run_dir),
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
    )


def resolve_ckpt_path(ckpt_path, run_dir: Path) -> str | None:
    """``auto`` → the run's own last.ckpt when present; a path must exist."""
    if ckpt_path in (None, "", "null", "none", "None"):
        return None
    if ckpt_path == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    p = Path(str(ckpt_path)).expanduser()
    if not p.is_file():
        raise UserError(f"ckpt_path={ckpt_path} does not exist; pass an existing .ckpt, ckpt_path=auto or ckpt_path=null")
    import zipfile

    if not zipfile.is_zipfile(p):
        raise UserError(f"ckpt_path={ckpt_path} is not a checkpoint (not a torch zip file): it may be truncated")
    return str(p)


def scalar_metrics(trainer) -> dict[str, float]:
    """The trainer's last logged scalar metrics as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
