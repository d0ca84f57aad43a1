"""Deploy form: structure-aware fusion (partialnet.deploy.fuse) and ONNX export.

Every comparison runs on models whose BatchNorm running statistics and affine parameters,
LayerNorm affines, relative-position tables and Linear biases are set to non-trivial random
values first: with default (identity) BNs a folding bug would hide.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn as nn

import partialnet
from partialnet.deploy import export_onnx, fuse, is_fused, onnx_max_abs_diff, set_forward_type
from partialnet.deploy.fusion import FusedBlock, FusedMlp, FusedPATChannel, FusedPATSelf
from partialnet.errors import UserError
from partialnet.models.layers import EuclideanRPE, PartialConv, PATChannel, PATSelf, PATSpatial, PointwiseConv2d

TOL = 1e-4
FAMILIES = ("partialnet", "patnet", "fasternet")
FAST_SIZES = ("t0", "t1", "t2", "s")
SLOW_SIZES = ("m", "l")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN stats/affines, LN affines, RPE tables and Linear biases (in place)."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(rand(n, 0.3, 2.5))
                m.weight.copy_(rand(n, 0.4, 1.6) * torch.sign(torch.randn(n, generator=g)))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, EuclideanRPE):
                m.bias_table.copy_(torch.randn(m.bias_table.shape, generator=g))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(partialnet.create_model(name, **kwargs), seed).eval()


def max_diffs(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> dict:
    """Max abs differences of logits and of the pre-head features, for both fused forms."""
    out = {}
    with torch.no_grad():
        ref, ref_feat = model(x), model.forward_features(x)
        for form in ("slicing", "split_cat"):
            set_forward_type(fused, form)
            out[f"{form}/logits"] = (fused(x) - ref).abs().max().item()
            out[f"{form}/features"] = (fused.forward_features(x) - ref_feat).abs().max().item()
        set_forward_type(fused, "slicing")
    return out


def assert_equivalent(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    diffs = max_diffs(model, fused, x)
    assert max(diffs.values()) <= TOL, diffs


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("name", [f"{f}_{s}" for f in FAMILIES for s in FAST_SIZES])
def test_fuse_matches_eval_fast_variants(name):
    model = build(name)
    fused = fuse(model)
    assert_equivalent(model, fused, torch.randn(2, 3, 64, 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{f}_{s}" for f in FAMILIES for s in SLOW_SIZES])
def test_fuse_matches_eval_large_variants(name):
    model = build(name)
    fused = fuse(model)
    assert_equivalent(model, fused, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("partialnet_t0", dict(pat_sp=False), 64),
        ("patnet_t0", dict(pat_sp=False), 64),
        ("partialnet_t0", dict(split_ratio=0.5), 64),
        ("partialnet_t0", dict(split_ratio=0.125), 64),
        ("fasternet_t0", dict(split_ratio=0.5), 64),
        ("fasternet_t0", dict(split_ratio=0.125), 64),
        ("partialnet_t0", dict(ratios=[0.5, 0.25, 0.125] * 4 + [0.0625]), 64),
        ("fasternet_t0", dict(ratios=[0.125, 0.5, 0.25] * 4 + [0.5]), 64),
        ("partialnet_t0", dict(small_input=True), 32),
        ("patnet_t0", dict(small_input=True, pat_sp=False), 32),
        ("fasternet_t0", dict(small_input=True), 32),
        ("partialnet_t0", dict(num_classes=10, in_chans=1), 64),
    ],
)
def test_fuse_matches_eval_configs(name, kwargs, size):
    model = build(name, seed=3, **kwargs)
    fused = fuse(model)
    assert_equivalent(model, fused, torch.randn(2, kwargs.get("in_chans", 3), size, size))


def test_fused_batch1_eval_at_224_and_other_sizes():
    model = build("partialnet_t0", seed=1)
    fused = fuse(model)
    assert_equivalent(model, fused, torch.randn(1, 3, 224, 224))
    # any size the original runs on: non-square, odd stage sizes, another size after the first
    for hw in ((96, 160), (72, 72), (64, 64)):
        assert_equivalent(model, fused, torch.randn(1, 3, *hw))


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("fasternet_t0", {}, 96),
        ("patnet_t0", dict(pat_sp=False), 64),
        ("partialnet_t0", dict(split_ratio=0.125), 64),
        ("partialnet_t0", {}, 32),  # the last stage on a 1x1 map
        ("partialnet_t0", dict(small_input=True), 32),
        ("partialnet_t0", dict(act_layer="relu"), 64),
        ("partialnet_t0", dict(act_layer=nn.SiLU), 64),  # an activation without an in-place form here
    ],
)
def test_fused_batch1_eval_configs(name, kwargs, size):
    model = build(name, seed=12, **kwargs)
    assert_equivalent(model, fuse(model), torch.randn(1, 3, size, size))


def test_batch1_inference_runs_on_the_token_matrix(monkeypatch):
    """For one image every fused block works on the (H*W, C) token matrix (each one's output stays
    channels_last, so the next one can too): in the in-place form without autograd a block hands
    its mixer's two halves straight to fc1 (PAT_ch: its gate scaling fc1's rows) and runs the rest of the MLP on
    the hidden matrix (a PAT_sf block, x + mixer(x) first, runs its MLP's own token form); PAT_sf's
    attention works on tokens in any eager form. Two images, autograd
    or a graph capture run the other forms."""
    model = build("partialnet_t0", seed=13)
    with torch.no_grad():  # one PAT_sp BN scale at 0: the MLP that keeps the scale apart, in this path too
        model.stages[1].blocks[0].mlp.pat_sp.attn_norm.weight[2] = 0.0
    fused = fuse(model)
    calls = {}

    def spy(cls, name):
        real = getattr(cls, name)

        def wrapped(self, *args):
            calls[f"{cls.__name__}.{name}"] = calls.get(f"{cls.__name__}.{name}", 0) + 1
            return real(self, *args)

        monkeypatch.setattr(cls, name, wrapped)

    spy(FusedBlock, "_forward_tokens")
    spy(FusedPATChannel, "gated_rows")
    spy(FusedMlp, "after_fc1_tokens")
    spy(FusedPATSelf, "attention_tokens")
    counts = {c.__name__: sum(isinstance(m, c) for m in fused.modules())
              for c in (FusedBlock, FusedPATChannel, FusedMlp, FusedPATSelf)}
    assert all(counts.values())
    # PAT_sf blocks have their own residual (x + mixer(x) first): their MLP reads the sum, not the halves
    v2 = sum(isinstance(m, FusedBlock) and m.mixer_residual for m in fused.modules())
    assert v2 == counts["FusedPATSelf"]
    one = torch.randn(1, 3, 96, 96)
    assert_equivalent(model, fused, one)  # logits and features, in the slicing and the split_cat form
    # the block's token form: the slicing form only (two forwards); PAT_sf's attention: both forms
    assert calls == {"FusedBlock._forward_tokens": 2 * (counts["FusedBlock"] - v2),
                     "FusedPATChannel.gated_rows": 2 * counts["FusedPATChannel"],
                     "FusedMlp.after_fc1_tokens": 2 * counts["FusedMlp"],
                     "FusedPATSelf.attention_tokens": 4 * counts["FusedPATSelf"]}
    calls.clear()
    with torch.no_grad():
        fused(torch.randn(2, 3, 96, 96))
    assert calls == {}
    out = fused(one)  # autograd on: no in-place writes, so only PAT_sf takes its token form
    assert out.requires_grad and set(calls) <= {"FusedPATSelf.attention_tokens"}
    calls.clear()
    with torch.no_grad():
        torch.jit.trace(fused, (one,), check_trace=False)
    assert calls == {}
    # FasterNet's PConv blocks: the untouched half goes to fc1 as a view of the input tokens
    faster = build("fasternet_t0", seed=13)
    fused_faster = fuse(faster)
    assert_equivalent(faster, fused_faster, one)
    assert calls == {"FusedBlock._forward_tokens": 2 * sum(isinstance(m, FusedBlock) for m in fused_faster.modules()),
                     "FusedMlp.after_fc1_tokens": 2 * sum(isinstance(m, FusedMlp) for m in fused_faster.modules())}


def test_batch1_token_form_follows_new_weights():
    """PAT_ch's token form keeps constants derived from its SRM weight; weights loaded into the
    fused model, or changed in place, are used at once, and another input size works too."""
    a, b = build("partialnet_t0", seed=14), build("partialnet_t0", seed=15)
    fused_a, fused_b = fuse(a), fuse(b)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fused_a(x)  # fills the constants for a's weights
        fused_a.load_state_dict(fused_b.state_dict())
        assert (fused_a(x) - fused_b(x)).abs().max().item() == 0
        for m in (fused_a, fused_b):
            next(mod for mod in m.modules() if isinstance(mod, FusedPATChannel)).srm.weight.mul_(1.5)
        assert (fused_a(x) - fused_b(x)).abs().max().item() == 0
        assert not torch.equal(fused_a(x), fuse(b)(x))  # the in-place change took effect
        y = torch.randn(1, 3, 96, 80)
        assert (fused_a(y) - fused_b(y)).abs().max().item() == 0
        # the block's split of fc1 (cached per weight version) follows an in-place change too
        fused_b.stages[0].blocks[0].mlp.fc1.weight.mul_(1.5)
        got = fused_b(x)
        set_forward_type(fused_b, "split_cat")  # no token form, no cache
        assert (got - fused_b(x)).abs().max().item() <= TOL
    assert_equivalent(b, fuse(b), x)


@pytest.mark.parametrize("name", ["partialnet_t0", "patnet_t0"])
def test_fuse_inside_inference_mode(name):
    """A model built and fused inside torch.inference_mode() has inference-tensor weights, which
    carry no version counter: the fused forward still runs (its derived constants are then not
    cached) and gives the same outputs as the model fused outside, at one image and at two, and
    follows an in-place change of those weights."""
    model = build(name, seed=3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = fuse(model)(x)
    with torch.inference_mode():
        fused = fuse(model)
        assert fused.stem.conv.weight.is_inference()
        assert torch.allclose(fused(x), expected, atol=TOL, rtol=0)
        assert torch.allclose(fused(x[:1]), expected[:1], atol=TOL, rtol=0)
        first = fused(x[:1])
        for m in fused.modules():
            if isinstance(m, FusedPATChannel):
                m.srm.weight.mul_(1.5)
            elif isinstance(m, FusedPATSelf):
                m.rpe_table.mul_(1.5)
        assert not torch.equal(fused(x[:1]), first)


def test_fused_train_mode_input_and_grad_mode():
    """BNs fold with running stats (eval semantics) even when the input model is in train mode;
    with autograd on, the fused model runs out of place and still agrees."""
    model = build("patnet_t0", seed=2).train()
    fused = fuse(model)
    assert model.training and not fused.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    out = fused(x)  # grad enabled
    assert (out - ref).abs().max().item() <= TOL


def test_pat_sp_gate_fallback_when_bn_scale_is_zero():
    """A PAT_sp attention-BN channel with weight 0 cannot be divided out of the gate weight:
    the fused MLP keeps the scale separately and stays exact."""
    model = build("partialnet_t0", seed=4)
    with torch.no_grad():
        model.stages[0].blocks[0].mlp.pat_sp.attn_norm.weight[3] = 0.0
    fused = fuse(model)
    mlps = [m for m in fused.modules() if isinstance(m, FusedMlp)]
    assert mlps[0].attn_scale is not None and all(m.attn_scale is None for m in mlps[1:])
    assert_equivalent(model, fused, torch.randn(2, 3, 64, 64))


def test_comparison_has_teeth():
    """A small error in one folded constant is caught by the 1e-4 check."""
    model = build("partialnet_t0", seed=5)
    fused = fuse(model)
    with torch.no_grad():
        fused.stages[2].blocks[3].mlp.attn_shift[0, 5] += 1e-2
    assert max(max_diffs(model, fused, torch.randn(2, 3, 64, 64)).values()) > TOL


# ----------------------------------------------------------------------------- structure
def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fuse_leaves_input_untouched_and_shares_nothing():
    model = build("partialnet_t0", seed=6).train()
    before, modules_before = _state(model), [type(m) for m in model.modules()]
    fused = fuse(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == modules_before
    assert model.training
    ptrs = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    assert not any(t.data_ptr() in ptrs for t in list(fused.parameters()) + list(fused.buffers()))
    assert all(isinstance(b.mixer, PATChannel) for b in model.stages[0].blocks)


@pytest.mark.parametrize("name", ["partialnet_t0", "patnet_t0", "fasternet_t0"])
def test_fused_structure_no_batchnorm_left(name):
    model = build(name)
    depths = [len(s.blocks) for s in model.stages]
    n_blocks = sum(depths)
    pat = not name.startswith("fasternet")
    # unfused: stem + 3 merging + one per MLP, + PAT_ch's two and PAT_sp's two per PAT block
    n_pat_ch = sum(depths[:3]) if pat else 0
    expected_bn = 1 + 3 + n_blocks + 2 * n_pat_ch + (2 * n_blocks if pat else 0)
    assert bn_count(model) == expected_bn
    fused = fuse(model)
    assert is_fused(fused) and not is_fused(model)
    assert bn_count(fused) == 0
    assert not any(isinstance(m, (nn.LayerNorm, PATSpatial, PATChannel, PATSelf)) for m in fused.modules())
    fused_mlps = [m for m in fused.modules() if isinstance(m, FusedMlp)]
    assert len(fused_mlps) == n_blocks
    assert all(m.fc1.bias is not None for m in fused_mlps)
    assert all(m.fc2.out_channels == m.fc1.in_channels for m in fused_mlps)  # PAT_sp merged, no extra conv
    assert all(m.pat_sp == pat for m in fused_mlps)
    # every MLP conv takes the batch-1 GEMM path, FasterNet's fc2 (no PAT_sp merged into it) included
    assert all(isinstance(m.fc1, PointwiseConv2d) and isinstance(m.fc2, PointwiseConv2d) for m in fused_mlps)
    assert sum(isinstance(m, FusedPATChannel) for m in fused.modules()) == n_pat_ch
    assert sum(isinstance(m, FusedPATSelf) for m in fused.modules()) == (depths[3] if pat else 0)
    pconvs = [m for m in fused.modules() if isinstance(m, PartialConv)]
    assert len(pconvs) == (0 if pat else n_blocks)
    assert all(m.forward_type == "slicing" for m in pconvs)
    n_fused, n_orig = sum(p.numel() for p in fused.parameters()), sum(p.numel() for p in model.parameters())
    assert n_fused < n_orig


def test_fuse_twice_and_forward_type_switch():
    model = build("fasternet_t0", seed=7)
    fused = fuse(model)
    again = fuse(fused, forward_type="split_cat")
    assert again is not fused
    assert all(m.forward_type == "split_cat" for m in again.modules() if isinstance(m, PartialConv))
    assert all(m.forward_type == "slicing" for m in fused.modules() if isinstance(m, PartialConv))
    assert_equivalent(model, again, torch.randn(2, 3, 64, 64))


def test_fuse_rejects_other_models():
    with pytest.raises(UserError, match="PartialChannelNet"):
        fuse(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    with pytest.raises(UserError, match="forward_type"):
        fuse(build("fasternet_t0"), forward_type="inplace")


# ----------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name", ["partialnet_t0", "patnet_t0", "fasternet_t0"])
def test_onnx_round_trip_dynamic_batch(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = build(name, seed=8)
    before = _state(model)
    path = tmp_path / f"{name}.onnx"
    t0 = time.perf_counter()
    out = export_onnx(model, path, input_size=64, dynamic_batch=True)
    elapsed = time.perf_counter() - t0
    assert out == path and path.is_file()
    assert os.listdir(tmp_path) == [path.name]  # atomic: no temporary file left behind
    assert elapsed < 20, f"export took {elapsed:.1f} s"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    graph = proto.graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"ScatterND", "ScatterElements", "BatchNormalization"}, ops
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        diff = onnx_max_abs_diff(path, model, torch.randn(batch, 3, 64, 64))
        assert diff <= TOL, (batch, diff)


def test_onnx_unfused_static_batch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = build("fasternet_t0", seed=9)
    for m in model.modules():
        if isinstance(m, PartialConv):
            m.forward_type = "slicing"  # the export must still trace split-cat, on a copy
    path = export_onnx(model, tmp_path / "fn.onnx", input_size=(48, 64), dynamic_batch=False, fuse=False, batch_size=2)
    assert onnx_max_abs_diff(path, model, torch.randn(2, 3, 48, 64)) <= TOL
    assert all(m.forward_type == "slicing" for m in model.modules() if isinstance(m, PartialConv))


def test_onnx_bad_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(build("fasternet_t0"), tmp_path / "missing" / "m.onnx", input_size=32)
    with pytest.raises(UserError, match=".onnx"):
        export_onnx(build("fasternet_t0"), tmp_path / "m.pt", input_size=32)


def test_spatial_conv_weights_follow_the_run_layout():
    """A channels_last fused model stores its 3x3 / patch-conv weights channels_last (so CPU conv
    kernels do not copy them on every call); channels_last=False, or re-fusing with it, gives NCHW."""
    model = build("partialnet_t0", seed=11)
    x = torch.randn(1, 3, 64, 64)
    for fused, fmt in ((fuse(model), torch.channels_last), (fuse(model, channels_last=False), torch.contiguous_format),
                       (fuse(fuse(model), channels_last=False), torch.contiguous_format)):
        spatial = [m.weight for m in fused.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
        assert len(spatial) == 1 + 3 + sum(len(s.blocks) for s in fused.stages)  # stem, merging, partial convs
        assert all(w.is_contiguous(memory_format=fmt) for w in spatial)
        assert_equivalent(model, fused, x)
