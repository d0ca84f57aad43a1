"""The search's result: the final per-layer choice, ``ratios.yaml`` and ``ratios.png``.

Final choice: the argmax of the learned distribution per layer. If its exact MACs miss the
target by more than the tolerance, a deterministic projection picks the most probable
configuration inside the band (:func:`partialnet.search.constraint.project_to_band`); the
result says whether it was used.

``ratios.yaml`` (see :mod:`partialnet.models.ratios_file`): ``model``, ``model_kwargs`` (every
constructor argument that changes the built model from the registry default, e.g.
``num_classes`` and ``small_input``), ``input_size`` [C, H, W], ``ratios``, ``params`` and
``macs`` counted on the rebuilt static model, ``target_macs``, ``config_hash``; with
``search.space=split+mlp`` also ``mlp_ratios`` (the chosen MLP expansion per block).
``partialnet.create_model(model, ratios=ratios, mlp_ratios=mlp_ratios, **model_kwargs)`` rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from partialnet.measure.count import count
from partialnet.models.ratios_file import non_default_kwargs, write_ratios_file
from partialnet.models.registry import create_model
from partialnet.search.constraint import argmax_choice, project_to_band
from partialnet.search.cost_model import CostTable
from partialnet.search.gumbel import masked_logits
from partialnet.search.supernet import LayerSpec

__all__ = ["FinalChoice", "final_choice", "replace_choice", "non_default_kwargs", "config_hash", "plot_ratios", "export_ratios"]

log = logging.getLogger("partialnet")

# Keys of the search config that do not change what is searched (where, how it is logged).
_HASH_IGNORED = ("paths", "run_name", "ckpt_path", "logger", "callbacks", "tags", "stop_after_epoch", "hydra")


@dataclass
class FinalChoice:
    choice: list[int]
    ratios: list[float]
    macs: int
    argmax_macs: int
    projection_used: bool
    in_band: bool
    changed_layers: list[int] = field(default_factory=list)
    mlp_ratios: list[float] | None = None  # per-block MLP expansion (split+mlp); None = the model's own


def final_choice(
    cost: CostTable,
    specs: Sequence[LayerSpec],
    logits: torch.Tensor,
    valid: torch.Tensor,
    target: float,
    tol: float,
    prefer: Sequence[int],
) -> FinalChoice:
    """Argmax per layer; the projection onto ``target * (1 +- tol)`` when the argmax misses."""
    logits = logits.detach().float().cpu()
    valid = valid.cpu()
    arg = argmax_choice(logits, valid, prefer)
    arg_macs = cost.macs_of(arg)
    choice, used, in_band = arg, False, abs(arg_macs / target - 1.0) <= tol
    if not in_band:
        log_probs = F.log_softmax(masked_logits(logits, valid), dim=-1).numpy().astype(np.float64)
        proj = project_to_band(cost, log_probs, target, tol)
        choice, used, in_band = proj.choice, True, proj.in_band
    return _result(cost, specs, choice, arg, arg_macs, used, in_band)


def _result(cost: CostTable, specs: Sequence[LayerSpec], choice: Sequence[int], arg: Sequence[int], arg_macs: int,
            projection_used: bool, in_band: bool) -> FinalChoice:
    ratios = [float(specs[l].candidates[c]) for l, c in enumerate(choice) if specs[l].kind != "mlp"]
    mlp = [float(specs[l].candidates[c]) for l, c in enumerate(choice) if specs[l].kind == "mlp"]
    return FinalChoice(
        choice=list(choice), ratios=ratios, macs=cost.macs_of(choice), argmax_macs=arg_macs,
        projection_used=projection_used, in_band=in_band,
        changed_layers=[l for l, (a, b) in enumerate(zip(arg, choice)) if a != b], mlp_ratios=mlp or None,
    )


def replace_choice(final: FinalChoice, cost: CostTable, specs: Sequence[LayerSpec], choice: Sequence[int]) -> FinalChoice:
    """``final`` with another architecture of the band (the supernet's pick): in band, no projection;
    ``changed_layers`` are the rows where it differs from ``final``."""
    return _result(cost, specs, choice, final.choice, final.argmax_macs, False, True)


def config_hash(resolved: dict) -> str:
    """sha256 (first 16 hex digits) of the resolved search config, without where/how-it-is-logged keys."""
    kept = {k: v for k, v in resolved.items() if k not in _HASH_IGNORED}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plot_ratios(
    path: Path,
    specs: Sequence[LayerSpec],
    ratios: Sequence[float],
    probs: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Per-layer bar chart of the chosen split ratio (like the paper's Figure 7), plus the learned
    probabilities as a heat map when given. Written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(ratios)
    stages = [int(s.name.split(".")[1]) if s.name.startswith("stages.") else 0 for s in specs]
    colors = plt.get_cmap("tab10")
    rows = 2 if probs is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(6.0, 0.45 * n + 2), 3.2 * rows), squeeze=False)
    ax = axes[0, 0]
    x = np.arange(n)
    ax.bar(x, ratios, color=[colors(s % 10) for s in stages], edgecolor="black", linewidth=0.5)
    for xi, r in zip(x, ratios):
        ax.text(xi, r, f"{r:g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{l}\n{s.kind}" for l, s in enumerate(specs)], fontsize=7)
    ax.set_ylabel("conv split ratio r_p")
    ax.set_xlabel("layer (network order)")
    ax.set_ylim(0, max(ratios) * 1.45)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colors(s % 10), edgecolor="black", label=f"stage {s + 1}") for s in sorted(set(stages))]
    ax.legend(handles=handles, fontsize=7, loc="upper center", ncol=len(handles), frameon=False)
    ax.set_title(title, fontsize=9)
    if probs is not None:
        ax2 = axes[1, 0]
        cands = [c for c in specs[0].candidates if c is not None]  # padding (None) comes last
        probs = np.asarray(probs)[:, : len(cands)]
        im = ax2.imshow(np.asarray(probs).T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax2.set_yticks(range(len(cands)))
        ax2.set_yticklabels([f"{c:g}" for c in cands], fontsize=7)
        ax2.set_xticks(x)
        ax2.set_xticklabels([str(l) for l in range(n)], fontsize=7)
        ax2.set_ylabel("candidate r")
        ax2.set_xlabel("layer")
        ax2.set_title("learned probabilities", fontsize=9)
        fig.colorbar(im, ax=ax2, fraction=0.03)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def export_ratios(
    out_dir: Path,
    *,
    model_name: str,
    model_kwargs: dict,
    specs: Sequence[LayerSpec],
    cost: CostTable,
    final: FinalChoice,
    target: float,
    cfg_hash: str | None,
    probs: np.ndarray | None = None,
    budget_note: str | None = None,
) -> dict:
    """Rebuild the static model, count it, write ``ratios.yaml`` and ``ratios.png``; returns a summary.
    ``budget_note`` replaces the plot title's "% of the MAC target" (a params or latency budget)."""
    out_dir = Path(out_dir)
    static = create_model(model_name, ratios=final.ratios, mlp_ratios=final.mlp_ratios, **model_kwargs)
    counted = count(static, cost.input_size)
    if counted["macs"] != final.macs:  # the cost table is exact by construction (tested)
        log.warning("counted MACs %d differ from the cost table's %d", counted["macs"], final.macs)
    yaml_path = write_ratios_file(
        out_dir / "ratios.yaml",
        model=model_name,
        ratios=final.ratios,
        mlp_ratios=final.mlp_ratios,
        model_kwargs=model_kwargs,
        input_size=list(cost.input_size),
        params=counted["params"],
        macs=counted["macs"],
        target_macs=float(target),
        config_hash=cfg_hash,
    )
    rel = counted["macs"] / target - 1.0
    n_split = len(final.ratios)  # the plot shows the split rows (the MLP widths are in the file)
    split_probs = None if probs is None else np.asarray(probs)[:n_split]
    budget = budget_note or f"{rel * 100:+.1f} % of target {target / 1e9:.4g}"
    title = (f"{model_name} @ {cost.input_size[1]}x{cost.input_size[2]}: {counted['macs'] / 1e9:.4g} GMACs "
             f"({budget})" + (", projected" if final.projection_used else ""))
    png_path = plot_ratios(out_dir / "ratios.png", list(specs)[:n_split], final.ratios, split_probs, title)
    return {
        "ratios_yaml": yaml_path,
        "ratios_png": png_path,
        "params": counted["params"],
        "macs": counted["macs"],
        "relative_error": rel,
    }
