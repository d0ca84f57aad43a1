"""The job behind ``search_dpconv.py``: config in, ``ratios.yaml`` + ``ratios.png`` out.

1. Build the data and the static model exactly as ``train.py`` does (same conf groups).
2. Cost table at the search resolution, the target, and the feasibility checks -- all before
   any training (an infeasible target is a one-line error, exit 2).
3. Convert the model into the supernet, train it with :class:`SearchModule` (warm-up, then
   weights and architecture logits together), checkpoints/resume as in ``train.py``.
4. Rank 0 picks the final architecture (argmax, projected onto the +-tolerance band if it
   misses), rebuilds and counts the static model, writes ``ratios.yaml`` and ``ratios.png`` into
   the run dir, prints their paths and logs them (CSV, W&B).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from partialnet.errors import UserError
from partialnet.search.constraint import LOSSES, check_reachable, resolve_target
from partialnet.search.cost_model import build_cost_table
from partialnet.search.export import config_hash, export_ratios, final_choice, non_default_kwargs
from partialnet.search.gumbel import SCHEDULES, temperature_at
from partialnet.search.search_module import SearchModule
from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs, parse_candidates, to_supernet
from partialnet.training import builders
from partialnet.training.classifier import module_kwargs_from_config
from partialnet.training.run import RunParts, run
from partialnet.utils.distributed import is_rank_zero

log = logging.getLogger("partialnet")

_SEARCH_KEYS = {
    "candidates", "flops_target", "flops_ratio", "reference_ratio", "input_size", "lambda", "loss", "tolerance",
    "hard", "tau_start", "tau_end", "tau_schedule", "warmup_epochs", "warmup_sampling", "arch_lr", "arch_betas",
    "num_heads", "entropy_weight", "argmax_constraint", "arch_optimizer",
}


def _check_search_cfg(s: dict, max_epochs: int) -> None:
    unknown = set(s) - _SEARCH_KEYS
    if unknown:
        raise UserError(f"unknown search option(s) {sorted(unknown)}; known: {', '.join(sorted(_SEARCH_KEYS))}")
    if s.get("loss") not in LOSSES:
        raise UserError(f"search.loss={s.get('loss')!r} is unknown; choose one of {', '.join(LOSSES)}")
    if s.get("tau_schedule") not in SCHEDULES:
        raise UserError(f"search.tau_schedule={s.get('tau_schedule')!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    temperature_at(0.0, float(s["tau_start"]), float(s["tau_end"]), s["tau_schedule"])  # validates the values
    if s.get("warmup_sampling") not in ("fixed", "uniform"):
        raise UserError(f"search.warmup_sampling={s.get('warmup_sampling')!r}; use fixed or uniform")
    if not float(s.get("lambda", 0)) >= 0:
        raise UserError(f"search.lambda={s.get('lambda')} must be >= 0")
    if s.get("arch_optimizer", "adam") not in ("adam", "sgd"):
        raise UserError(f"search.arch_optimizer={s.get('arch_optimizer')!r} is unknown; choose adam or sgd")
    if not float(s.get("entropy_weight", 0)) >= 0:
        raise UserError(f"search.entropy_weight={s.get('entropy_weight')} must be >= 0 (0 = no entropy penalty)")
    if not float(s.get("arch_lr", 0)) > 0:
        raise UserError(f"search.arch_lr={s.get('arch_lr')} must be > 0 (e.g. 0.01)")
    tol = float(s.get("tolerance", 0.03))
    if not 0 < tol < 1:
        raise UserError(f"search.tolerance={tol} must be in (0, 1), e.g. 0.03 for +-3 %")
    warm = int(s.get("warmup_epochs", 0))
    if warm < 0 or warm >= max_epochs:
        raise UserError(
            f"search.warmup_epochs={warm} leaves no search epoch out of trainer.max_epochs={max_epochs}; "
            f"use search.warmup_epochs < trainer.max_epochs"
        )


def search(cfg: DictConfig) -> dict:
    """Run the DPConv search per ``cfg``; returns the final metrics plus the export summary."""
    s = OmegaConf.to_container(cfg.search, resolve=True)
    max_epochs = cfg.trainer.get("max_epochs")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise UserError(f"trainer.max_epochs={max_epochs!r}: the search needs a number of epochs >= 1 (warm-up + search)")
    _check_search_cfg(s, max_epochs)
    candidates = parse_candidates(s.get("candidates") or list(DEFAULT_CANDIDATES))
    if int(cfg.trainer.get("accumulate_grad_batches", 1) or 1) != 1:
        raise UserError("trainer.accumulate_grad_batches must be 1 for the search (it steps two optimisers per batch)")
    state: dict = {}

    def build_module(parts: RunParts) -> SearchModule:
        model_kwargs = builders.model_kwargs_from_cfg(cfg.model, parts.num_classes, parts.image_size)
        if model_kwargs.get("ratios") is not None:
            raise UserError("model.ratios is set, but the search chooses the ratios itself; remove model.ratios")
        model_name = str(cfg.model.name)
        model = builders.build_model(model_name, model_kwargs)
        if not hasattr(model, "searchable_splits"):
            raise UserError(f"model {model_name!r} has no searchable splits; search a partialnet_*, patnet_* or fasternet_* model")

        # ---- cost table, target, feasibility: before any training
        input_size = int(s.get("input_size") or parts.image_size)
        specs = layer_specs(model, candidates, num_heads=s.get("num_heads"))
        cost = build_cost_table(model, specs, input_size, float(s.get("reference_ratio", 0.25)))
        target = resolve_target(cost, s.get("flops_target"), s.get("flops_ratio"))
        tol = float(s.get("tolerance", 0.03))
        check_reachable(cost, target, tol)
        msg = (f"search: {model_name} @ {input_size}px, {len(specs)} layers, candidates {candidates}; target "
               f"{target / 1e9:.4g} GMACs (MACs = the papers' FLOPs), feasible {cost.min_macs / 1e9:.4g}-"
               f"{cost.max_macs / 1e9:.4g}, r={cost.reference_ratio:g} model {cost.reference_macs / 1e9:.4g}")
        log.info(msg)
        if is_rank_zero():
            print(msg, flush=True)

        to_supernet(model, candidates, num_heads=s.get("num_heads"))
        spec = {"name": model_name, "kwargs": {k: (bool(v) if k == "small_input" else v) for k, v in model_kwargs.items()}}
        module_kwargs = module_kwargs_from_config(parts.config, spec, parts.num_classes, parts.image_size)
        module_kwargs.pop("model")
        module_kwargs.update(compile=False,  # the supernet's per-step architecture switches do not suit torch.compile
                             model_spec=spec)
        state.update(specs=specs, cost=cost, target=target, tol=tol, model_name=model_name, model_kwargs=model_kwargs)
        return SearchModule(
            model,
            specs=specs,
            cost=cost,
            target_macs=target,
            search=s,
            gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
            gradient_clip_algorithm=cfg.trainer.get("gradient_clip_algorithm") or "norm",
            **module_kwargs,
        )

    def after_fit(trainer, module: SearchModule, parts: RunParts, loggers) -> dict:
        finished = trainer.current_epoch >= max_epochs and not trainer.interrupted
        if trainer.is_global_zero and finished:
            return _export(parts.config, parts.run_dir, module, state["specs"], state["cost"], state["target"],
                           state["tol"], state["model_name"], state["model_kwargs"], loggers)
        if trainer.is_global_zero:
            print(f"search stopped at epoch {trainer.current_epoch} of {max_epochs}: no ratios.yaml yet; "
                  f"re-launch into {parts.run_dir} (same run_name) to continue", flush=True)
        return {}

    # Lightning refuses automatic clipping with manual optimisation: the module clips itself.
    return run(cfg, build_module, after_fit=after_fit, trainer_overrides={"gradient_clip_val": None},
               mismatch_hint="this search (another model or other candidates?); use a new run_name or ckpt_path=null")


def _export(resolved, run_dir: Path, module: SearchModule, specs, cost, target, tol, model_name, model_kwargs,
            loggers) -> dict:
    final = final_choice(cost, specs, module.arch_logits, module.arch_valid, target, tol, module.reference_choice)
    if final.projection_used:
        note = (f"projection used: the argmax architecture has {final.argmax_macs / 1e9:.4g} GMACs "
                f"({(final.argmax_macs / target - 1) * 100:+.1f} % of the target), outside +-{tol * 100:g} %; "
                f"changed layers {final.changed_layers}")
        log.warning(note)
        print(note, flush=True)
    if not final.in_band:
        print(f"warning: no configuration within +-{tol * 100:g} % was found; writing the closest", flush=True)
    file_kwargs = non_default_kwargs(model_name, model_kwargs)
    probs = module.probs().detach().float().cpu().numpy()
    summary = export_ratios(
        run_dir, model_name=model_name, model_kwargs=file_kwargs, specs=specs, cost=cost, final=final,
        target=target, cfg_hash=config_hash(resolved), probs=np.where(module.arch_valid.cpu().numpy(), probs, np.nan),
    )
    metrics = {
        "search/final_gmacs": summary["macs"] / 1e9,
        "search/final_rel_error": summary["relative_error"],
        "search/target_gmacs": target / 1e9,
        "search/projection_used": float(final.projection_used),
        "search/final_params_m": summary["params"] / 1e6,
    }
    step = int(module.global_step)
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
        lg.save()
        if type(lg).__name__ == "WandbLogger":
            lg.log_image(key="search/ratios", images=[str(summary["ratios_png"])], step=step)
            lg.experiment.save(str(summary["ratios_yaml"]), base_path=str(run_dir), policy="now")
    print(f"searched ratios: {final.ratios}", flush=True)
    print(f"counted: {summary['params'] / 1e6:.3f} M params, {summary['macs'] / 1e9:.4g} GMACs (the papers' FLOPs) "
          f"at {cost.input_size[1]}px; target {target / 1e9:.4g} ({summary['relative_error'] * 100:+.2f} %)"
          + ("; projection used" if final.projection_used else ""), flush=True)
    print(f"ratios file: {summary['ratios_yaml']}", flush=True)
    print(f"ratios plot: {summary['ratios_png']}", flush=True)
    kw = ", ".join(f"{k}={v}" for k, v in file_kwargs.items())
    print(f"retrain: python train.py model={model_name} model.ratios={summary['ratios_yaml']}   "
          f"# searched at {cost.input_size[1]}px" + (f" with {kw}" if kw else ""), flush=True)
    return metrics
