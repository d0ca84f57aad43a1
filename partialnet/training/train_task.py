"""The training job behind ``train.py``: config in, trained checkpoint and metrics out."""
from __future__ import annotations

from omegaconf import DictConfig

from partialnet.training import builders
from partialnet.training.classifier import ClassificationModule, module_kwargs_from_config
from partialnet.training.init_from import init_model_from
from partialnet.training.run import RunParts, run, run_dir_of

__all__ = ["train", "run_dir_of"]


def build_classification_module(parts: RunParts) -> ClassificationModule:
    """The module of ``train.py``: the model from ``cfg.model`` (or its ``init_from`` weights)."""
    cfg = parts.cfg
    name = str(cfg.model.name)
    model_kwargs = builders.model_kwargs_from_cfg(cfg.model, parts.num_classes, parts.image_size)
    spec = {"name": name, "kwargs": dict(model_kwargs)}
    # the constructor checks a ratios file's model and layers ...
    module = ClassificationModule(**module_kwargs_from_config(parts.config, spec, parts.num_classes, parts.image_size))
    builders.check_ratios_file_fits(name, model_kwargs)  # ... and this its constructor arguments
    init_from = cfg.model.get("init_from")
    if init_from:
        print(init_model_from(module.model, str(init_from)), flush=True)
        if module.ema is not None:  # the average starts from the initial weights
            module.ema.module.load_state_dict(module.model.state_dict())
    return module


def train(cfg: DictConfig) -> dict:
    """Train per ``cfg``; returns the final metrics (``val/acc1`` etc.)."""
    return run(cfg, build_classification_module,
               mismatch_hint=f"model {cfg.model.name!r} (another architecture?); use a checkpoint of this model "
                             "or ckpt_path=null")
