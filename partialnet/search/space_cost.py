"""The cost table of a search space (``search.space``): split rows, plus MLP rows for ``split+mlp``.

:func:`~partialnet.search.cost_model.build_cost_table` measures every row a model's
``searchable_splits()`` lists with :func:`~partialnet.search.supernet.static_split`; for
``split+mlp`` it is handed a :class:`~partialnet.search.supernet.SearchSpaceView` that lists the
MLPs too, so the MLP rows are exact ``count`` values like the split rows. The reference model
stays "every split at the reference ratio, every MLP at the model's own width": its MACs are
taken from the split-only table of the same model.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from partialnet.search.cost_model import CostTable, build_cost_table
from partialnet.search.supernet import LayerSpec, SearchSpaceView, mlp_rows, split_rows

__all__ = ["build_space_cost_table"]


def build_space_cost_table(
    model: nn.Module, specs: Sequence[LayerSpec], input_size, reference_ratio: float = 0.25, space: str = "split",
    **kwargs,
) -> CostTable:
    """The cost table of ``specs`` (from ``layer_specs(model, ..., space=space)``) for the static
    ``model``; ``kwargs`` go to :func:`build_cost_table` (e.g. the metric)."""
    if not mlp_rows(specs):
        return build_cost_table(model, specs, input_size, reference_ratio, **kwargs)
    cost = build_cost_table(SearchSpaceView(model, space), specs, input_size, reference_ratio, **kwargs)
    cost.reference = build_cost_table(model, split_rows(specs), input_size, reference_ratio, **kwargs).reference
    return cost
