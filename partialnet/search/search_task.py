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

import dataclasses
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from partialnet.errors import UserError
from partialnet.search.bilevel import attach_arch_split
from partialnet.search.constraint import BUDGET_KEYS, LOSSES, check_reachable, resolve_target
from partialnet.search.cost_model import METRICS, CostTable
from partialnet.search.latency_table import LatencyTable, measure_latency_table, measure_model_ms
from partialnet.search.export import config_hash, export_ratios, final_choice, non_default_kwargs, replace_choice
from partialnet.search.selection import (SELECTIONS, pick_best, score_choice, selection_candidates, standard_error,
                                        write_selection)
from partialnet.search.gumbel import SCHEDULES, temperature_at
from partialnet.search.search_module import SearchModule
from partialnet.search.masked_mlp import DEFAULT_MLP_CANDIDATES, parse_mlp_candidates
from partialnet.search.space_cost import build_space_cost_table
from partialnet.search.supernet import SPACES, DEFAULT_CANDIDATES, layer_specs, parse_candidates, to_supernet
from partialnet.training import builders
from partialnet.training.classifier import module_kwargs_from_config
from partialnet.training.run import RunParts, run
from partialnet.utils.distributed import is_rank_zero, world_size

log = logging.getLogger("partialnet")

_SEARCH_KEYS = {
    "candidates", "flops_target", "flops_ratio", "reference_ratio", "input_size", "lambda", "loss", "tolerance",
    "hard", "tau_start", "tau_end", "tau_schedule", "warmup_epochs", "warmup_sampling", "arch_lr", "arch_betas",
    "num_heads", "entropy_weight", "argmax_constraint", "arch_optimizer", "space", "mlp_candidates",
    "constraint", "params_target", "params_ratio", "latency_target_ms", "latency_ratio", "latency_table",
    "latency_batch_size", "latency_threads", "latency_device", "arch_split", "argmax_ramp", "weight_sampling",
    "final_selection", "selection_samples", "selection_calib_batches", "selection_batches",
}


def _check_search_cfg(s: dict, max_epochs: int) -> None:
    unknown = set(s) - _SEARCH_KEYS
    if unknown:
        raise UserError(f"unknown search option(s) {sorted(unknown)}; known: {', '.join(sorted(_SEARCH_KEYS))}")
    if s.get("space", "split") not in SPACES:
        raise UserError(f"search.space={s.get('space')!r} is unknown; choose one of {', '.join(SPACES)}")
    if s.get("space") == "split+mlp":
        parse_mlp_candidates(s.get("mlp_candidates"))
    if s.get("constraint", "macs") not in METRICS:
        raise UserError(f"search.constraint={s.get('constraint')!r} is unknown; choose one of {', '.join(METRICS)}")
    for metric, (key, _, _, ratio_key, _) in BUDGET_KEYS.items():  # a budget for another constraint: say so
        stray = [k for k in (key, ratio_key) if k != "flops_ratio" and s.get(k) is not None]
        if metric != s.get("constraint", "macs") and stray:
            raise UserError(f"search.{stray[0]} is a {metric} budget but search.constraint={s.get('constraint', 'macs')}; "
                            f"set search.constraint={metric} or remove search.{stray[0]}")
    if s.get("loss") not in LOSSES:
        raise UserError(f"search.loss={s.get('loss')!r} is unknown; choose one of {', '.join(LOSSES)}")
    if s.get("tau_schedule") not in SCHEDULES:
        raise UserError(f"search.tau_schedule={s.get('tau_schedule')!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    temperature_at(0.0, float(s["tau_start"]), float(s["tau_end"]), s["tau_schedule"])  # validates the values
    if s.get("warmup_sampling") not in ("fixed", "uniform"):
        raise UserError(f"search.warmup_sampling={s.get('warmup_sampling')!r}; use fixed or uniform")
    if s.get("weight_sampling", "gumbel") not in ("gumbel", "uniform"):
        raise UserError(f"search.weight_sampling={s.get('weight_sampling')!r}; use gumbel or uniform")
    if s.get("weight_sampling", "gumbel") == "uniform" and not (s.get("arch_split") or 0):
        raise UserError("search.weight_sampling=uniform needs a bilevel search (the logits' own batches): "
                        "set search.arch_split, e.g. 0.2, or use search.weight_sampling=gumbel")
    if not float(s.get("lambda", 0)) >= 0:
        raise UserError(f"search.lambda={s.get('lambda')} must be >= 0")
    if s.get("arch_optimizer", "adam") not in ("adam", "sgd"):
        raise UserError(f"search.arch_optimizer={s.get('arch_optimizer')!r} is unknown; choose adam or sgd")
    if not float(s.get("entropy_weight", 0)) >= 0:
        raise UserError(f"search.entropy_weight={s.get('entropy_weight')} must be >= 0 (0 = no entropy penalty)")
    for key in ("argmax_constraint", "argmax_ramp", "hard"):
        if key in s and not isinstance(s[key], bool):
            raise UserError(f"search.{key}={s[key]!r} must be true or false")
    split = s.get("arch_split") or 0
    if not isinstance(split, (int, float)) or isinstance(split, bool) or not 0 <= split < 1:
        raise UserError(f"search.arch_split={split!r} must be in [0, 1): e.g. 0.2 keeps 20 % of the training set "
                        f"for the logits, 0 trains both on one batch")
    if not float(s.get("arch_lr", 0)) > 0:
        raise UserError(f"search.arch_lr={s.get('arch_lr')} must be > 0 (e.g. 0.01)")
    tol = float(s.get("tolerance", 0.03))
    if not 0 < tol < 1:
        raise UserError(f"search.tolerance={tol} must be in (0, 1), e.g. 0.03 for +-3 %")
    if s.get("final_selection", "argmax") not in SELECTIONS:
        raise UserError(f"search.final_selection={s.get('final_selection')!r} is unknown; choose one of "
                        f"{', '.join(SELECTIONS)}")
    for key, low in (("selection_samples", 0), ("selection_calib_batches", 0), ("selection_batches", 1)):
        v = s.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            also = " or null (all)" if key == "selection_batches" else ""
            raise UserError(f"search.{key}={v!r} must be an integer >= {low}{also}")
    warm = int(s.get("warmup_epochs", 0))
    if warm < 0 or warm >= max_epochs:
        raise UserError(
            f"search.warmup_epochs={warm} leaves no search epoch out of trainer.max_epochs={max_epochs}; "
            f"use search.warmup_epochs < trainer.max_epochs"
        )


def _latency_device(s: dict, cfg: DictConfig) -> str:
    """Where a latency table is measured when no file is given: search.latency_device, else the
    device the search trains on."""
    if s.get("latency_device"):
        return str(s["latency_device"])
    acc = str(cfg.trainer.get("accelerator") or "auto").lower()
    return {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}.get(acc, "auto")


def _constraint_table(s: dict, cfg: DictConfig, model, specs, input_size: int, model_name: str, model_kwargs: dict,
                      space: str, run_dir: Path) -> tuple[CostTable, CostTable, LatencyTable | None]:
    """(the table the constraint uses, the MAC table, the latency table or None) for search.constraint.
    A latency table measured here is kept in the run dir, so a resumed search uses the same one."""
    metric = str(s.get("constraint") or "macs")
    ref = float(s.get("reference_ratio", 0.25))
    cache: dict = {}  # one count per split serves both exact tables
    macs = build_space_cost_table(model, specs, input_size, ref, space, cache=cache)
    if metric == "macs":
        return macs, macs, None
    if metric == "params":
        return build_space_cost_table(model, specs, input_size, ref, space, metric="params", cache=cache), macs, None
    from partialnet.search.supernet import SearchSpaceView, mlp_rows

    candidates = list(specs[0].candidates)
    file_kwargs = non_default_kwargs(model_name, model_kwargs)
    path = s.get("latency_table")
    kept = Path(run_dir) / "latency_table.json"
    if not path and kept.is_file():
        path = kept
    if path:
        table = LatencyTable.load(path)
        table.check_fits(str(path), model=model_name, model_kwargs=file_kwargs, input_size=[3, input_size, input_size],
                         candidates=candidates, specs=specs, device=s.get("latency_device"))
    else:
        if world_size() > 1:
            raise UserError("search.constraint=latency with several processes needs one table for all: measure it "
                            "with python -m partialnet.search.latency_table and set search.latency_table=FILE")
        table = measure_latency_table(
            model, specs, model_name=model_name, model_kwargs=file_kwargs, input_size=input_size,
            batch_size=int(s.get("latency_batch_size") or 1), threads=s.get("latency_threads"),
            device=_latency_device(s, cfg), reference_ratio=ref,
            rows=SearchSpaceView(model, space) if mlp_rows(specs) else None,
        )
        table.save(kept)
    if is_rank_zero():
        print(f"latency table: {table.describe()}" + (f" (from {path})" if path else " (measured now)"), flush=True)
    return table.cost_table(), macs, table


def _predicted_vs_measured(table: LatencyTable, predicted: float, model_name: str, model_kwargs: dict, final) -> dict:
    """Measure the exported (fused, static) model like the table was measured; print and return both."""
    import torch

    from partialnet.measure.speed import device_name
    from partialnet.models.registry import create_model

    here = torch.device(table.device_type)
    out = {"search/latency_predicted_ms": float(predicted)}
    if (here.type == "cuda" and not torch.cuda.is_available()) or device_name(here) != table.device:
        print(f"latency: predicted {predicted:.3f} ms on {table.device}; not measured (that device is not this one)",
              flush=True)
        return out
    static = create_model(model_name, ratios=final.ratios, mlp_ratios=getattr(final, "mlp_ratios", None), **model_kwargs)
    measured = measure_model_ms(static, table.input_size[1], table.batch_size, here, table.threads, runs=table.runs,
                                rounds=table.rounds)
    out["search/latency_measured_ms"] = measured
    print(f"latency of the exported model (fused, batch {table.batch_size}, {table.threads} threads, {table.device}): "
          f"predicted {predicted:.3f} ms, measured {measured:.3f} ms ({(predicted / measured - 1) * 100:+.1f} %)",
          flush=True)
    return out


def _record_constraint(path: Path, cost: CostTable, target: float, value: float, latency: LatencyTable | None,
                       budget: dict) -> None:
    """Rewrite ``ratios.yaml`` with the constraint that chose it (and no MAC target: there was none)."""
    from partialnet.models.ratios_file import RATIOS_FILE_KEYS, read_ratios_file, write_ratios_file

    info = read_ratios_file(path)
    extra = {k: v for k, v in info.items() if k not in RATIOS_FILE_KEYS}
    extra.update(constraint=cost.metric, constraint_target=float(target), constraint_value=float(value),
                 constraint_unit={"params": "parameters", "latency": "ms"}[cost.metric])
    if latency is not None:
        extra.update(latency_device=latency.device, latency_batch_size=latency.batch_size,
                     latency_threads=latency.threads,
                     latency_measured_ms=budget.get("search/latency_measured_ms"))
    fields = {k: info.get(k) for k in RATIOS_FILE_KEYS if k not in ("target_macs",)}
    write_ratios_file(path, target_macs=None, extra=extra, **fields)


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
        space = str(s.get("space") or "split")
        space_kw = dict(space=space, mlp_candidates=s.get("mlp_candidates") or list(DEFAULT_MLP_CANDIDATES))
        specs = layer_specs(model, candidates, num_heads=s.get("num_heads"), **space_kw)
        cost, macs_cost, latency = _constraint_table(s, cfg, model, specs, input_size, model_name, model_kwargs, space,
                                                     parts.run_dir)
        key, _, _, ratio_key, _ = BUDGET_KEYS[cost.metric]
        target = resolve_target(cost, s.get(key), s.get(ratio_key))
        tol = float(s.get("tolerance", 0.03))
        check_reachable(cost, target, tol)
        rows = f"{len(specs)} layers" if space == "split" else f"{len(specs)} rows (splits + MLP widths {space_kw['mlp_candidates']})"
        if cost.metric == "macs":
            msg = (f"search: {model_name} @ {input_size}px, {rows}, candidates {candidates}; target "
                   f"{target / 1e9:.4g} GMACs (MACs = the papers' FLOPs), feasible {cost.min_macs / 1e9:.4g}-"
                   f"{cost.max_macs / 1e9:.4g}, r={cost.reference_ratio:g} model {cost.reference_macs / 1e9:.4g}")
        else:
            msg = (f"search: {model_name} @ {input_size}px, {rows}, candidates {candidates}; constraint "
                   f"{cost.metric}: target {cost.format(target)}, feasible {cost.format(cost.min_value)} to "
                   f"{cost.format(cost.max_value)}, r={cost.reference_ratio:g} model {cost.format(cost.reference)}")
        log.info(msg)
        if is_rank_zero():
            print(msg, flush=True)

        if float(s.get("arch_split") or 0) > 0:
            attach_arch_split(parts.datamodule, float(s["arch_split"]), int(getattr(parts.datamodule, "seed", 0)))
        to_supernet(model, candidates, num_heads=s.get("num_heads"), **space_kw)
        spec = {"name": model_name, "kwargs": {k: (bool(v) if k == "small_input" else v) for k, v in model_kwargs.items()}}
        module_kwargs = module_kwargs_from_config(parts.config, spec, parts.num_classes, parts.image_size)
        module_kwargs.pop("model")
        module_kwargs.update(compile=False,  # the supernet's per-step architecture switches do not suit torch.compile
                             model_spec=spec)
        state.update(specs=specs, cost=cost, target=target, tol=tol, model_name=model_name, model_kwargs=model_kwargs,
                     macs_cost=macs_cost, latency=latency)
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
                           state["tol"], state["model_name"], state["model_kwargs"], loggers,
                           macs_cost=state["macs_cost"], latency=state["latency"],
                           selection=s if s.get("final_selection", "argmax") == "supernet" else None,
                           datamodule=parts.datamodule)
        if trainer.is_global_zero:
            print(f"search stopped at epoch {trainer.current_epoch} of {max_epochs}: no ratios.yaml yet; "
                  f"re-launch into {parts.run_dir} (same run_name) to continue", flush=True)
        return {}

    # Lightning refuses automatic clipping with manual optimisation: the module clips itself.
    return run(cfg, build_module, after_fit=after_fit, trainer_overrides={"gradient_clip_val": None},
               mismatch_hint="this search (another model or other candidates?); use a new run_name or ckpt_path=null")


def _select_by_supernet(s: dict, run_dir: Path, module: SearchModule, specs, cost, target, tol, final, datamodule):
    """``search.final_selection=supernet``: score the argmax, the uniform architectures and samples of
    the learned distribution in the band on the supernet (partialnet.search.selection); the best."""
    cands = selection_candidates(cost, specs, module.arch_logits, module.arch_valid, final.choice, target, tol,
                                 samples=int(s.get("selection_samples", 8)), seed=int(getattr(datamodule, "seed", 0)))
    calib, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    calib_n, score_n = int(s.get("selection_calib_batches", 20)), s.get("selection_batches")
    was_training, images = module.model.training, []

    def scorer(c):
        top1, n = score_choice(module.model, specs, c.choice, calib, val, calib_n, score_n, device=module.device)
        images.append(n)
        return top1

    try:
        best = pick_best(cands, scorer)
    finally:
        module.model.train(was_training)
    csv_path = write_selection(run_dir / "selection.csv", cands, specs, best, cost.metric)
    for c in cands:
        print(f"selection: {c.source:<24} {cost.format(c.value):>14}  val top-1 {c.score:6.2f} %"
              + ("  <- exported" if c is best else ""), flush=True)
    spread = max(c.score for c in cands) - min(c.score for c in cands)
    print(f"selection: {len(cands)} candidates in the band scored on the supernet ({csv_path.name}); "
          f"exported: {best.source}. Scores span {spread:.2f} pp; one score's standard error on these "
          f"{images[0]} validation images is +-{standard_error(best.score, images[0]):.2f} pp", flush=True)
    log.info("final selection by the supernet: %s of %d candidates", best.source, len(cands))
    return final if best.choice == final.choice else replace_choice(final, cost, specs, best.choice), best


def _export(resolved, run_dir: Path, module: SearchModule, specs, cost, target, tol, model_name, model_kwargs,
            loggers, macs_cost: CostTable | None = None, latency: LatencyTable | None = None,
            selection: dict | None = None, datamodule=None) -> dict:
    final = final_choice(cost, specs, module.arch_logits, module.arch_valid, target, tol, module.reference_choice)
    selected = None
    if selection is not None:
        final, selected = _select_by_supernet(selection, run_dir, module, specs, cost, target, tol, final, datamodule)
    if final.projection_used:
        note = (f"projection used: the argmax architecture has {cost.format(final.argmax_macs)} "
                f"({(final.argmax_macs / target - 1) * 100:+.1f} % of the target), outside +-{tol * 100:g} %; "
                f"changed layers {final.changed_layers}")
        log.warning(note)
        print(note, flush=True)
    if not final.in_band:
        print(f"warning: no configuration within +-{tol * 100:g} % was found; writing the closest", flush=True)
    file_kwargs = non_default_kwargs(model_name, model_kwargs)
    probs = module.probs().detach().float().cpu().numpy()
    value, macs_target = final.macs, target  # the constraint's metric
    if cost.metric != "macs":  # the file and the plot speak MACs: no MAC target to report
        final = dataclasses.replace(final, macs=macs_cost.macs_of(final.choice))
        macs_target = final.macs
    summary = export_ratios(
        run_dir, model_name=model_name, model_kwargs=file_kwargs, specs=specs, cost=macs_cost or cost, final=final,
        target=macs_target, cfg_hash=config_hash(resolved),
        probs=np.where(module.arch_valid.cpu().numpy(), probs, np.nan),
        budget_note=None if cost.metric == "macs" else (
            f"{cost.metric} {cost.format(value)}, {(value / target - 1) * 100:+.1f} % of target {cost.format(target)}"),
    )
    budget = {}
    if latency is not None:
        predicted = latency.cost_table().value_of(final.choice)
        budget = _predicted_vs_measured(latency, predicted, model_name, file_kwargs, final)
    if cost.metric != "macs":
        _record_constraint(summary["ratios_yaml"], cost, target, value, latency, budget)
    metrics = {
        "search/final_gmacs": summary["macs"] / 1e9,
        "search/final_rel_error": summary["relative_error"] if cost.metric == "macs" else value / target - 1.0,
        "search/target_gmacs": target / 1e9,
        "search/projection_used": float(final.projection_used),
        **({"search/selection_argmax_kept": float(selected.source == "argmax"),
            "search/selection_val_acc1": selected.score} if selected is not None else {}),
        "search/final_params_m": summary["params"] / 1e6,
        **budget,
    }
    if cost.metric != "macs":
        metrics.pop("search/target_gmacs")
        metrics["search/target_params_m" if cost.metric == "params" else "search/target_latency_ms"] = (
            target / 1e6 if cost.metric == "params" else target)
    step = int(module.global_step)
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
        lg.save()
        if type(lg).__name__ == "WandbLogger":
            lg.log_image(key="search/ratios", images=[str(summary["ratios_png"])], step=step)
            lg.experiment.save(str(summary["ratios_yaml"]), base_path=str(run_dir), policy="now")
    print(f"searched ratios: {final.ratios}", flush=True)
    if final.mlp_ratios is not None:
        print(f"searched MLP expansion ratios: {final.mlp_ratios}", flush=True)
    if cost.metric == "macs":
        print(f"counted: {summary['params'] / 1e6:.3f} M params, {summary['macs'] / 1e9:.4g} GMACs (the papers' FLOPs) "
              f"at {cost.input_size[1]}px; target {target / 1e9:.4g} ({summary['relative_error'] * 100:+.2f} %)"
              + ("; projection used" if final.projection_used else ""), flush=True)
    else:
        print(f"counted: {summary['params'] / 1e6:.3f} M params, {summary['macs'] / 1e9:.4g} GMACs at "
              f"{cost.input_size[1]}px; {cost.metric} {cost.format(value)}, target {cost.format(target)} "
              f"({(value / target - 1) * 100:+.2f} %)" + ("; projection used" if final.projection_used else ""),
              flush=True)
    print(f"ratios file: {summary['ratios_yaml']}", flush=True)
    print(f"ratios plot: {summary['ratios_png']}", flush=True)
    kw = ", ".join(f"{k}={v}" for k, v in file_kwargs.items())
    print(f"retrain: python train.py model={model_name} model.ratios={summary['ratios_yaml']}   "
          f"# searched at {cost.input_size[1]}px" + (f" with {kw}" if kw else ""), flush=True)
    return metrics
