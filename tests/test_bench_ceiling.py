"""bench/runtimes.py's kernel ceiling: every conv and linear layer of a fused model is timed on the
input it really gets, and the MACs it sums are the model's (so the printed ceiling is a rate of the
whole arithmetic, not of a part of it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import runtimes  # noqa: E402  (bench/runtimes.py)

import partialnet  # noqa: E402
from partialnet.deploy import fuse  # noqa: E402
from partialnet.measure import count  # noqa: E402


def _fused(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return fuse(partialnet.create_model(name, num_classes=10, small_input=True).eval())


@pytest.mark.parametrize("name", ["fasternet_t0", "partialnet_t0"])
def test_every_layer_is_timed_once_with_its_macs(name):
    fused = _fused(name)
    x = torch.randn(2, 3, 32, 32)
    c = runtimes.kernel_ceiling(fused, x, rounds=1, reference=runtimes.reference_kernels(64))
    layers = [m for m in fused.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert c["layers"] == len(layers)
    with torch.inference_mode():
        pooled = fused.forward_features(x).numel()  # fvcore counts one MAC per input of the global pool
    model_macs = count(fused, 32)["macs"] * 2 - pooled
    if name == "fasternet_t0":  # no attention: all of its arithmetic is in conv and linear layers
        assert c["macs"] == model_macs
    else:  # PAT_sf's attention products are not layers
        assert 0.9 * model_macs < c["macs"] < model_macs
    assert c["seconds"] > 0 and all(secs > 0 for _, secs in c["kinds"].values()) and c["peak"] > 0
    assert {"conv 1x1 (fc1/fc2, qkv/proj, head)", "conv 3x3 (partial conv)"} <= set(c["kinds"])


def test_layers_get_the_tensor_of_the_real_forward():
    """The partial 3x3 conv is timed on its channel slice of the channels_last map (not a fresh,
    contiguous tensor): the path and strides the model's own forward takes."""
    fused = _fused("partialnet_t0")
    seen = []
    conv = fused.stages[0].blocks[0].mixer.conv
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    runtimes.kernel_ceiling(fused, torch.randn(2, 3, 32, 32), rounds=1)
    first, timed = seen[0], seen[1:]
    assert len(timed) == 2 and all(t is first for t in timed)
    assert not first.is_contiguous(memory_format=torch.channels_last)  # a channel slice of the map
