"""Params/MACs counting ("FLOPs" = multiply-adds) and the zoo's counts against the published ones."""
from __future__ import annotations

import pytest
import torch.nn as nn

import partialnet
from partialnet.errors import UserError
from partialnet.measure import count, format_counts
from partialnet.models.layers import PATSelf


# (params M, GMACs) at 224x224. PartialNet: the authors' released configs counted with fvcore; PATNet: fvcore on the
# authors' code at FasterNet's sizes; FasterNet: the paper (Tab. 3).
TARGETS = {
    ("partialnet_t0", True): (3.56, 0.247), ("partialnet_t0", False): (3.49, 0.235),
    ("partialnet_t1", True): (6.14, 0.546), ("partialnet_t1", False): (5.99, 0.521),
    ("partialnet_t2", True): (12.65, 1.087), ("partialnet_t2", False): (12.27, 1.039),
    ("partialnet_s", True): (28.98, 2.843), ("partialnet_s", False): (28.01, 2.716),
    ("partialnet_m", True): (61.37, 7.022), ("partialnet_m", False): (59.18, 6.693),
    ("partialnet_l", True): (104.47, 12.502), ("partialnet_l", False): (100.64, 11.909),
    ("patnet_t0", True): (4.73, 0.382), ("patnet_t0", False): (4.62, 0.364),
    ("patnet_t1", True): (9.70, 0.962), ("patnet_t1", False): (9.42, 0.918),
    ("patnet_t2", True): (19.70, 2.147), ("patnet_t2", False): (19.07, 2.050),
    ("patnet_s", True): (41.36, 5.043), ("patnet_s", False): (39.93, 4.806),
    ("patnet_m", True): (72.31, 9.674), ("patnet_m", False): (69.69, 9.207),
    ("patnet_l", True): (126.83, 17.164), ("patnet_l", False): (122.18, 16.340),
    ("fasternet_t0", None): (3.9, 0.34), ("fasternet_t1", None): (7.6, 0.85),
    ("fasternet_t2", None): (15.0, 1.91), ("fasternet_s", None): (31.1, 4.56),
    ("fasternet_m", None): (53.5, 8.74), ("fasternet_l", None): (93.5, 15.52),
}
# Fast tier: T0-S of each family as registered (PAT_sp on); the rest is `-m slow`.
FAST = {
    ("partialnet_t0", True), ("partialnet_t1", True), ("partialnet_t2", True), ("partialnet_s", True),
    ("patnet_t0", True), ("patnet_t1", True), ("patnet_t2", True), ("patnet_s", True),
    ("fasternet_t0", None), ("fasternet_t1", None), ("fasternet_t2", None), ("fasternet_s", None),
}
CASES = [
    pytest.param(*key, marks=() if key in FAST else pytest.mark.slow, id=f"{key[0]}-pat_sp={key[1]}")
    for key in TARGETS
]


@pytest.mark.parametrize("name,pat_sp", CASES)
def test_zoo_counts_match_published(name, pat_sp):
    params_m, gmacs = TARGETS[(name, pat_sp)]
    tol = 0.02 if name.startswith("fasternet") else 0.01
    model = partialnet.create_model(name, **({} if pat_sp is None else {"pat_sp": pat_sp}))
    c = count(model, 224)
    assert c["params"] / 1e6 == pytest.approx(params_m, rel=tol)
    assert c["macs"] / 1e9 == pytest.approx(gmacs, rel=tol)


def test_attention_matmuls_are_counted():
    m = PATSelf(64)
    n, c_u, c_p = 7 * 7, 48, 16
    macs = count(m, (64, 7, 7))["macs"]
    conv = n * c_p * c_p * 9
    linears = n * c_u * 3 * c_u + n * c_u * c_u
    matmuls = 2 * n * n * c_u  # q @ k^T and attn @ v over all heads
    assert 0 <= macs - (conv + linears + matmuls) <= 5 * n * c_u  # the rest is LayerNorm
    assert count(m, (64, 7, 7))["params"] == sum(p.numel() for p in m.parameters())


def test_input_size_forms_and_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).train()
    a = count(model, 10)
    assert a == count(model, (10, 10)) == count(model, (3, 10, 10))
    assert a["macs"] == 8 * 8 * 8 * 27 + 2 * 8 * 8 * 8  # conv + BN (fvcore: 2 per element, eval, affine)
    assert a["params"] == 8 * 27 + 16
    assert model.training and model[1].num_batches_tracked.item() == 0
    conv1 = nn.Conv2d(1, 4, 1)
    assert count(conv1, (1, 5, 6))["macs"] == 4 * 30
    with pytest.raises(UserError):
        count(conv1, (1, 2, 3, 4))


def test_params_only_count_traces_nothing(monkeypatch):
    """``macs=False`` (what a params cost table asks for) gives the same parameter count without
    fvcore's trace, the costly part of a count."""
    model = partialnet.create_model("partialnet_t0", num_classes=10)
    full = count(model, 32)

    def no_trace(*args, **kwargs):
        raise AssertionError("traced")

    monkeypatch.setattr("fvcore.nn.FlopCountAnalysis", no_trace)
    assert count(model, 32, macs=False) == {"params": full["params"]}
    with pytest.raises(AssertionError, match="traced"):
        count(model, 32)


def test_count_no_warnings(recwarn, caplog):
    count(partialnet.create_model("partialnet_t0"), 64)
    assert not [w for w in recwarn if "fvcore" in str(w.filename) or "Unsupported" in str(w.message)]
    assert "unsupported" not in caplog.text.lower()


def test_format_counts():
    text = format_counts({"params": 3_558_000, "macs": 246_900_000})
    assert text == "3.56 M params, 0.247 G MACs (the papers' FLOPs)"


def test_counts_follow_per_layer_ratios():
    """Per-layer ratios (not a global one) reach the count: all-1/4 equals the global 1/4 model,
    and raising one layer's ratio adds MACs that depend on which layer it is."""
    base = count(partialnet.create_model("partialnet_t0", ratios=[0.25] * 13), 64)["macs"]
    assert base == count(partialnet.create_model("partialnet_t0", split_ratio=0.25), 64)["macs"]
    deltas = []
    for i in (0, 12):
        r = [0.25] * 13
        r[i] = 0.5
        deltas.append(count(partialnet.create_model("partialnet_t0", ratios=r), 64)["macs"] - base)
    assert all(d > 0 for d in deltas) and deltas[0] != deltas[1]
