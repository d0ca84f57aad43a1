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


def test_onnxruntime_profile_counts_each_node_of_one_inference(tmp_path):
    """bench/runtimes.py's onnxruntime table: per inference, every node of the optimised graph once (the
    warm-up runs left out), and on one thread no node hands work to a thread pool."""
    pytest.importorskip("onnxruntime")
    kinds = runtimes.onnxruntime_kinds("partialnet_t0", 32, threads=1, iters=3,
                                       save_optimised=tmp_path / "optimised.onnx")
    import collections

    import onnx

    per_type = collections.Counter(node.op_type for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node)
    assert {k: round(v[1], 6) for k, v in kinds.items()} == per_type
    assert all(v[2] == 0 for v in kinds.values()) and all(v[0] > 0 for v in kinds.values())


def test_batch1_verdict_is_by_wall_time(monkeypatch, capsys):
    """The batch-1 table's verdict is the latency (wall time per round), not the CPU time: a model that
    waits (sleeps, little CPU) longer than the other computes is slower, whatever its CPU time."""
    import argparse
    import time

    def sleeps(_x):  # 3 ms of wall time, almost no CPU time
        time.sleep(0.003)

    def computes(_x):  # about 1 ms of wall time, all of it CPU time
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass

    monkeypatch.setattr(runtimes, "PAIRS", (("ours", "theirs"),))
    args = argparse.Namespace(warmup=1, latency_runs=5)
    runtimes.batch1_table("t", {("ours", "rt"): sleeps, ("theirs", "rt"): computes}, ["rt"], None, args)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| theirs |")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    wall_ratio, cpu_ratio, verdict = float(cells[4].split()[0]), float(cells[5].split()[0]), cells[6]
    assert wall_ratio > 1.5 and cpu_ratio < 0.5 and verdict == "ours > theirs"
