"""DPConv split-ratio search: supernet, expected-FLOPs cost model, constraint loss, ratio export.

    specs = layer_specs(model)                        # candidates per layer (width-aware)
    cost = build_cost_table(model, specs, 224)        # exact F[l][r] with the project's counter
    specs = to_supernet(model)                        # masked splits, in place
    with arch_choice(masked_modules(model, specs), weights, indices):
        logits = model(x)

The training job is :func:`partialnet.search.search_task.search` (``search_dpconv.py``).
"FLOPs" are multiply-adds (MACs), as in the papers.
"""
from partialnet.search.constraint import check_reachable, flops_loss, project_to_band, resolve_target
from partialnet.search.cost_model import CostTable, build_cost_table
from partialnet.search.gumbel import gumbel_softmax, temperature_at
from partialnet.search.supernet import (
    DEFAULT_CANDIDATES,
    LayerSpec,
    arch_choice,
    extract_static,
    layer_specs,
    masked_modules,
    onehot_weights,
    to_supernet,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "LayerSpec",
    "CostTable",
    "arch_choice",
    "build_cost_table",
    "check_reachable",
    "extract_static",
    "flops_loss",
    "gumbel_softmax",
    "layer_specs",
    "masked_modules",
    "onehot_weights",
    "project_to_band",
    "resolve_target",
    "temperature_at",
    "to_supernet",
]
