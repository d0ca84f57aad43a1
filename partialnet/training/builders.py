"""Build the pieces of a run from the composed Hydra config: data, model, module, trainer."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from partialnet.errors import UserError
from partialnet.models.registry import create_model
from partialnet.training.checkpoint_io import AtomicCheckpointIO

# Model-config keys passed to the constructor when not null (`kwargs` is merged in as-is).
_MODEL_KEYS = ("split_ratio", "ratios", "pat_sp", "drop_path_rate", "small_input")


def world_size_of(trainer_cfg) -> int:
    """Number of processes the trainer config asks for (devices x nodes)."""
    devices = trainer_cfg.get("devices", 1)
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            n = torch.cuda.device_count() if _wants_gpu(trainer_cfg) else 1
        elif "," in devices:
            n = len([d for d in devices.split(",") if d.strip()])
        elif devices.isdigit():
            n = int(devices)
        else:
            raise UserError(f"trainer.devices={devices!r} is not a number, list or 'auto'")
    elif isinstance(devices, int):
        n = torch.cuda.device_count() if devices == -1 else devices
    else:  # list of device ids
        n = len(list(devices))
    if n < 1:
        raise UserError(f"trainer.devices={devices!r} gives no device; use trainer.devices=1")
    return max(1, n) * nodes


def _wants_gpu(trainer_cfg) -> bool:
    acc = str(trainer_cfg.get("accelerator", "auto"))
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def check_trainer_cfg(cfg: DictConfig) -> None:
    """Validate/adjust trainer settings before anything is built (mutates cfg.trainer)."""
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
    world = world_size_of(t)
    gb = int(cfg.data.batch_size)
    if gb <= 0:
        raise UserError(f"data.batch_size={gb} must be > 0 (it is the GLOBAL batch)")
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
    try:
        return instantiate(data_cfg, _convert_="all")
    except UserError:
        raise
    except Exception as e:  # Hydra wraps constructor errors in InstantiationException
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def model_kwargs_from_cfg(model_cfg, num_classes: int, image_size: int) -> dict:
    """Constructor kwargs for ``create_model(model_cfg.name, **kwargs)``."""
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


# Constructor defaults that a ratios file's `model_kwargs` leaves out (it lists only non-defaults).
_RATIOS_KWARG_DEFAULTS = {"small_input": False}


def check_ratios_file_fits(name: str, kwargs: dict) -> None:
    """A ratios.yaml must be retrained with the constructor arguments it was searched with."""
    path = kwargs.get("ratios")
    if not isinstance(path, str):
        return
    from partialnet.models.ratios_file import read_ratios_file

    spec = read_ratios_file(path)
    searched = dict(spec.get("model_kwargs") or {})
    searched.pop("num_classes", None)  # the data decides the classes
    for key, default in _RATIOS_KWARG_DEFAULTS.items():
        searched.setdefault(key, default)
    for key, want in searched.items():
        if key in kwargs:
            have = kwargs[key]
        elif key in _RATIOS_KWARG_DEFAULTS:
            have = _RATIOS_KWARG_DEFAULTS[key]
        else:
            have = "its default"
        if have != want:
            fix = str(want).lower() if isinstance(want, bool) else want
            where = f"model.{key}" if key in ("small_input", "pat_sp", "drop_path_rate", "split_ratio") else f"+model.kwargs.{key}"
            raise UserError(
                f"ratios file {path} was searched with {key}={want!r} but this run builds {name} with "
                f"{key}={have!r}; set {where}={fix} (or search again for this setting)"
            )


def build_model(name: str, kwargs: dict) -> torch.nn.Module:
    """``create_model`` with config-friendly errors."""
    try:
        return create_model(name, **kwargs)
    except UserError:
        raise
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            bad = str(e).split("argument")[-1].strip(" '\"")
            raise UserError(f"model {name!r} does not take {bad!r}; remove model.{bad} from the overrides") from None
        raise


def build_callbacks(cb_cfg, run_dir: Path) -> list:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    cb_cfg = OmegaConf.to_container(cb_cfg, resolve=True) if OmegaConf.is_config(cb_cfg) else dict(cb_cfg or {})
    callbacks = []
    ckpt_dir = str(run_dir / "checkpoints")
    last = cb_cfg.get("checkpoint")
    if last is not None:
        last = dict(last)
        if last.get("every_n_train_steps"):
            last["every_n_epochs"] = None
        # monitor=None + a fixed file name: the newest state always replaces last.ckpt.
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, save_last=False,
                            enable_version_counter=False, **last)
        )
    best = cb_cfg.get("best_checkpoint")
    if best is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="best-epoch{epoch:03d}-acc{val/acc1:.2f}",
                            auto_insert_metric_name=False, save_last=False, **dict(best))
        )
    if cb_cfg.get("lr_monitor") is not None:
        callbacks.append(LearningRateMonitor(**cb_cfg["lr_monitor"]))
    if cb_cfg.get("progress_bar") is not None:
        callbacks.append(TQDMProgressBar(**cb_cfg["progress_bar"]))
    return callbacks


def build_trainer(trainer_cfg, callbacks: list, loggers: list, run_dir: Path):
    t = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else dict(trainer_cfg)
    t = {k: v for k, v in t.items() if v is not None or k == "_target_"}
    return instantiate(
        t,
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


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


def fit(trainer, module, datamodule, ckpt_path: str | None, mismatch_hint: str) -> None:
    """``trainer.fit`` where a checkpoint that does not fit the module is a one-line UserError."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except RuntimeError as e:
        if ckpt_path and ("state_dict" in str(e) or "size mismatch" in str(e)):
            raise UserError(f"checkpoint {ckpt_path} does not fit {mismatch_hint}") from None
        raise


def scalar_metrics(trainer) -> dict[str, float]:
    """The trainer's last logged scalar metrics as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
