"""Two module-surgery helpers shared by the models and the search: weight init and submodule replacement."""
from __future__ import annotations

import torch.nn as nn
from timm.layers import trunc_normal_

__all__ = ["init_weights_", "replace_submodule"]


def init_weights_(module: nn.Module) -> nn.Module:
    """Initialise every Conv2d / Linear inside ``module`` (itself included), in place.

    Weights: normal(0, 0.02) truncated at +-2 std (+-0.04); biases: zero. (Truncating at the
    common absolute default of +-2.0 instead lets the inverse-CDF sampler return the bound
    itself, i.e. a stray weight of +-2.) Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of the existing submodule ``name`` (dotted, e.g. ``'layer1.0.conv2'``).

    Raises ``AttributeError`` when ``root`` has no submodule ``name`` (nothing is added silently).
    """
    root.set_submodule(name, module, strict=True)
