"""Object detection with a partial-channel backbone: torchvision Faster R-CNN on a PartialNet + FPN.

The backbone is any registered variant built by timm's feature extractor
(``features_only=True``), its four stage outputs (strides 4, 8, 16, 32) feeding torchvision's
FeaturePyramidNetwork (+ a max-pooled fifth level, as torchvision's ResNet-FPN). Batch norms
are frozen by default (timm's ``freeze_batch_norm_2d``), as usual for detection batches of a
few images. ImageNet weights load from a local file of any layout
:mod:`partialnet.models.convert` reads::

    from partialnet.models.detection import fasterrcnn_partialnet
    model = fasterrcnn_partialnet(num_classes=91, weights_file="partialnet_t0.pth", pat_sp=False)
    losses = model(images, targets)       # train mode: dict of losses
    detections = model(images)            # eval mode: boxes, labels, scores per image
"""
from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn as nn
from timm.layers import freeze_batch_norm_2d
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from partialnet.models.registry import create_model

__all__ = ["PartialNetFPN", "fasterrcnn_partialnet"]


class PartialNetFPN(nn.Module):
    """Backbone + FPN with torchvision's detection interface (``out_channels``; returns an
    ``OrderedDict`` of maps named ``'0'``..``'3'`` and ``'pool'``).

    Args:
        name: registered variant, e.g. ``'partialnet_t0'``.
        out_channels: FPN width.
        weights_file: local ImageNet checkpoint (any supported layout) or None.
        freeze_bn: replace the backbone's batch norms by frozen ones.
        model_kwargs: further constructor arguments (``pat_sp``, ``ratios``, ``num_heads``, ...).
    """

    def __init__(self, name: str = "partialnet_t0", out_channels: int = 256,
                 weights_file: str | os.PathLike | None = None, freeze_bn: bool = True, **model_kwargs):
        super().__init__()
        if weights_file is not None:
            model_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights_file)))
        body = create_model(name, features_only=True, out_indices=(0, 1, 2, 3), **model_kwargs)
        self.body = freeze_batch_norm_2d(body) if freeze_bn else body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def fasterrcnn_partialnet(num_classes: int = 91, backbone: str = "partialnet_t0",
                          weights_file: str | os.PathLike | None = None, out_channels: int = 256,
                          freeze_bn: bool = True, detector_kwargs: dict | None = None,
                          **model_kwargs) -> FasterRCNN:
    """torchvision ``FasterRCNN`` on :class:`PartialNetFPN` (default anchors: one size per level, 32..512).

    ``detector_kwargs`` go to ``FasterRCNN`` (e.g. ``min_size``, ``max_size``); ``model_kwargs``
    to the backbone's constructor.
    """
    fpn = PartialNetFPN(backbone, out_channels, weights_file, freeze_bn, **model_kwargs)
    return FasterRCNN(fpn, num_classes=num_classes, **(detector_kwargs or {}))
