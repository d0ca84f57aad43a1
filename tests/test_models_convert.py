"""Weight converters: timm's fasternet, the official FasterNet layout and the PartialNet authors' layout.

The upstream layouts are rebuilt here as small reference networks that carry exactly the
upstream module names and shapes (patch_embed, stages with merging layers at odd indices,
spatial_mixing.partial_conv3, attn.cfc1/bn, attn.qkv/proj/rpe_k.lookup_table_bias, mlp.0-4,
avgpool_pre_head, head) and compute their forward pass from the published formulas, with
iRPE's bucket function written out here. Converted weights must give the same outputs.
"""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

import partialnet
from partialnet.errors import UserError
from partialnet.models.convert import convert_state_dict, detect_source, load_pretrained


# ---------------------------------------------------------------- upstream-layout reference networks
def _irpe_columns(h: int, w: int, ratio: int = 20) -> torch.Tensor:
    """iRPE (euc, bias): column of the [heads, 4*ratio + 1] table for every (query, key) pair."""
    def bucket(d):
        if d <= ratio:
            return d
        return min(round(ratio + math.log(d / ratio) / math.log(8) * ratio), 2 * ratio)

    table = torch.tensor([[bucket(round(math.sqrt(dy * dy + dx * dx))) + 2 * ratio for dx in range(w)]
                          for dy in range(h)])
    ys, xs = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    cols = table[(ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs()]
    return cols


class UpBlock(nn.Module):
    def __init__(self, dim, kind, pat_sp, act, heads):
        super().__init__()
        c_p = dim // 4
        c_u = dim - c_p
        self.kind, self.heads, self.c_p = kind, heads, c_p
        self.spatial_mixing = nn.Module()
        sm = self.spatial_mixing
        sm.partial_conv3 = nn.Conv2d(c_p, c_p, 3, 1, 1, bias=False)
        if kind == "se":
            sm.attn = nn.Module()
            sm.attn.cfc1 = nn.Conv2d(c_u, c_u, (1, 2), bias=False)
            sm.attn.bn = nn.BatchNorm2d(c_u)
            sm.norm = nn.BatchNorm2d(c_u)
        elif kind == "self":
            sm.norm = LayerNorm2d(c_u)
            sm.attn = nn.Module()
            sm.attn.qkv = nn.Linear(c_u, 3 * c_u, bias=False)
            sm.attn.proj = nn.Linear(c_u, c_u)
            sm.attn.rpe_k = nn.Module()
            sm.attn.rpe_k.lookup_table_bias = nn.Parameter(torch.zeros(heads, 81))
        layers = [nn.Conv2d(dim, 2 * dim, 1, bias=False), nn.BatchNorm2d(2 * dim), act(),
                  nn.Conv2d(2 * dim, dim, 1, bias=False)]
        if pat_sp:
            sp = nn.Module()
            half = int(0.5 * dim)
            sp.conv = nn.Conv2d(half, half, 1, bias=False)
            sp.conv_attn = nn.Conv2d(dim - half, 1, 1, bias=False)
            sp.norm = nn.BatchNorm2d(dim - half)
            sp.norm2 = nn.BatchNorm2d(half)
            layers.append(sp)
        self.mlp = nn.Sequential(*layers)

    def mix(self, x):
        sm = self.spatial_mixing
        x1, x2 = x[:, : self.c_p], x[:, self.c_p:]
        x1 = sm.partial_conv3(x1)
        if self.kind == "se":
            b, c = x2.shape[:2]
            flat = x2.reshape(b, c, -1)
            u = torch.cat([flat.mean(-1).view(b, c, 1, 1), flat.std(-1).view(b, c, 1, 1)], dim=-1)
            g = F.hardsigmoid(sm.attn.bn(sm.attn.cfc1(u)))
            x2 = sm.norm(x2 * g)
        elif self.kind == "self":
            b, c, h, w = x2.shape
            t = sm.norm(x2).view(b, c, h * w).transpose(1, 2)
            qkv = sm.attn.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
            attn = q @ k.transpose(-2, -1) + sm.attn.rpe_k.lookup_table_bias[:, _irpe_columns(h, w)]
            out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
            x2 = sm.attn.proj(out).transpose(1, 2).reshape(b, c, h, w)
        return torch.cat((x1, x2), 1)

    def mlp_forward(self, x):
        for layer in self.mlp:
            if hasattr(layer, "conv_attn"):
                half = layer.conv.in_channels
                a, c = x[:, : x.shape[1] - half], x[:, x.shape[1] - half:]
                a = layer.norm(a * F.hardsigmoid(layer.conv_attn(a)))
                x = torch.cat((a, layer.conv(layer.norm2(c))), 1)
            else:
                x = layer(x)
        return x

    def forward(self, x):
        if self.kind == "self":
            x = x + self.mix(x)
            return x + self.mlp_forward(x)
        return x + self.mlp_forward(self.mix(x))


class UpNet(nn.Module):
    """Upstream layout: FasterNet's (kinds None) or the PartialNet authors' (se, se, se, self)."""

    def __init__(self, embed_dim, depths, kinds, pat_sp, act=nn.GELU, heads=4, num_classes=1000):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, 4, 4, bias=False)
        self.patch_embed.norm = nn.BatchNorm2d(embed_dim)
        stages = []
        for i, (depth, kind) in enumerate(zip(depths, kinds)):
            dim = embed_dim * 2**i
            stage = nn.Module()
            stage.blocks = nn.Sequential(*[UpBlock(dim, kind, pat_sp, act, heads) for _ in range(depth)])
            stage.forward = stage.blocks.forward
            stages.append(stage)
            if i < len(depths) - 1:
                merge = nn.Module()
                merge.reduction = nn.Conv2d(dim, 2 * dim, 2, 2, bias=False)
                merge.norm = nn.BatchNorm2d(2 * dim)
                merge.forward = lambda x, m=merge: m.norm(m.reduction(x))
                stages.append(merge)
        self.stages = nn.Sequential(*stages)
        self.avgpool_pre_head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(embed_dim * 2 ** (len(depths) - 1), 1280, 1, bias=False), act())
        self.head = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.stages(self.patch_embed.norm(self.patch_embed.proj(x)))
        return self.head(torch.flatten(self.avgpool_pre_head(x), 1))


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere: BN statistics, affine parameters, RPE tables."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "lookup_table" in name or "norm" in name else 0.05))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.add_(1.0)
            if isinstance(m, LayerNorm2d):
                m.weight.add_(1.0)
    return model.eval()


def _same_outputs(reference: nn.Module, ours: nn.Module, size: int) -> None:
    """Equal within 1e-5 (absolute and relative), fp32, eval mode, with the models as built."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ours.eval()
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert expected.abs().max() > 1e-3, "reference output is degenerate; the check would prove nothing"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- tests
def test_timm_fasternet_converts_with_equal_outputs():
    theirs = _randomise(timm.create_model("fasternet_t0"))
    assert detect_source(theirs.state_dict()) == "timm"
    ours = partialnet.create_model("fasternet_t0")
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), "timm"))
    _same_outputs(theirs, ours, 224)


def test_official_fasternet_layout_converts_with_equal_outputs():
    theirs = _randomise(UpNet(40, (1, 2, 8, 2), (None,) * 4, pat_sp=False), seed=2)
    sd = theirs.state_dict()
    assert "stages.1.reduction.weight" in sd and "avgpool_pre_head.1.weight" in sd
    assert detect_source(sd) == "fasternet"
    ours = partialnet.create_model("fasternet_t0")
    ours.load_state_dict(convert_state_dict(sd, "fasternet"))
    _same_outputs(theirs, ours, 224)


def test_reference_networks_carry_the_upstream_names():
    """The module names read from the authors' models/partialnet.py and FasterNet's models/fasternet.py."""
    sd = UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=True).state_dict()
    modules = lambda prefix: {k[len(prefix):].rsplit(".", 1)[0] for k in sd if k.startswith(prefix)}  # noqa: E731
    assert modules("stages.0.blocks.0.") == {
        "spatial_mixing.partial_conv3", "spatial_mixing.attn.cfc1", "spatial_mixing.attn.bn", "spatial_mixing.norm",
        "mlp.0", "mlp.1", "mlp.3", "mlp.4.conv", "mlp.4.conv_attn", "mlp.4.norm", "mlp.4.norm2"}
    assert modules("stages.6.blocks.1.") == {
        "spatial_mixing.partial_conv3", "spatial_mixing.norm", "spatial_mixing.attn.qkv", "spatial_mixing.attn.proj",
        "spatial_mixing.attn.rpe_k", "mlp.0", "mlp.1", "mlp.3", "mlp.4.conv", "mlp.4.conv_attn", "mlp.4.norm",
        "mlp.4.norm2"}
    assert modules("stages.5.") == {"reduction", "norm"}
    assert {k.rsplit(".", 1)[0] for k in sd if not k.startswith("stages.")} == {
        "patch_embed.proj", "patch_embed.norm", "avgpool_pre_head.1", "head"}


@pytest.mark.parametrize("pat_sp,heads", [(True, 4), (False, 6)])
def test_authors_layout_converts_with_equal_outputs(pat_sp, heads):
    theirs = _randomise(UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=pat_sp, heads=heads), seed=3)
    sd = theirs.state_dict()
    assert sd["stages.6.blocks.0.spatial_mixing.attn.rpe_k.lookup_table_bias"].shape == (heads, 81)
    assert detect_source(sd) == "authors"
    ours = partialnet.create_model("partialnet_t0", pat_sp=pat_sp, num_heads=heads)
    ours.load_state_dict(convert_state_dict(sd, "authors"))
    _same_outputs(theirs, ours, 224)


def test_authors_layout_equal_at_800px():
    """A 25x25 stage-4 map: distances up to 34, beyond the exact range of the buckets."""
    theirs = _randomise(UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=True), seed=4)
    ours = partialnet.create_model("partialnet_t0")
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), "authors"))
    _same_outputs(theirs, ours, 800)


def test_wrapped_checkpoint_and_timm_pretrained_route(tmp_path):
    theirs = _randomise(UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=False), seed=5)
    path = tmp_path / "authors_t0.ckpt"
    # a trainer checkpoint: tensors under 'state_dict' with a 'model.' prefix, plus detection norms
    sd = {f"model.{k}": v for k, v in theirs.state_dict().items()}
    sd["model.norm0.weight"] = torch.ones(32)
    torch.save({"state_dict": sd, "epoch": 3}, path)
    ours = timm.create_model("partialnet_t0", pretrained=True, pat_sp=False,
                             pretrained_cfg_overlay=dict(file=str(path)))
    _same_outputs(theirs, ours, 96)
    fresh = load_pretrained(partialnet.create_model("partialnet_t0", pat_sp=False), path, "authors")
    _same_outputs(theirs, fresh, 96)
    # another number of classes: the classifier is dropped, the rest loads
    ten = timm.create_model("partialnet_t0", pretrained=True, pat_sp=False, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(ten.stem.conv.weight, fresh.stem.conv.weight)
    assert ten.head.out_features == 10


def test_other_variant_is_a_one_line_error(tmp_path):
    path = tmp_path / "t0.pth"
    torch.save(timm.create_model("fasternet_t0").state_dict(), path)
    with pytest.raises(UserError, match=r"holds fasternet_t0 weights, not fasternet_t1") as err:
        load_pretrained(partialnet.create_model("fasternet_t1"), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"holds fasternet_t0 weights, not partialnet_t0"):
        timm.create_model("partialnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(UserError, match=r"built with pat_sp=False; create partialnet_t0 with pat_sp=False"):
        sd = UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=False).state_dict()
        torch.save(sd, path)
        load_pretrained(partialnet.create_model("partialnet_t0"), path)
    with pytest.raises(UserError, match=r"'timm' layout, not 'authors'"):
        convert_state_dict(timm.create_model("fasternet_t0").state_dict(), "authors")
    with pytest.raises(UserError, match="no weights are downloaded"):
        partialnet.create_model("partialnet_t0", pretrained=True)


def test_cli_writes_a_loadable_file(tmp_path):
    theirs = _randomise(UpNet(32, (1, 2, 8, 2), ("se", "se", "se", "self"), pat_sp=False, heads=6), seed=6)
    src, out = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save(theirs.state_dict(), src)
    from partialnet.models.convert import main

    assert main(["--from", "authors", "--model", "partialnet_t0", str(src), str(out)]) == 0
    payload = torch.load(out, weights_only=False)
    assert payload["model"] == "partialnet_t0" and payload["model_kwargs"] == {"pat_sp": False, "num_heads": 6}
    model = partialnet.create_model("partialnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                                    **payload["model_kwargs"])
    _same_outputs(theirs, model, 96)


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    from partialnet.models.convert import main

    src = tmp_path / "in.pth"
    torch.save(timm.create_model("fasternet_t0").state_dict(), src)
    assert main(["--from", "timm", "--model", "fasternet_s", str(src), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fasternet_t0" in err and "fasternet_s" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.pth").exists()
    assert main(["--from", "timm", "--model", "fasternet_t0", str(tmp_path / "nope.pth"), str(src)]) == 2
    assert "does not exist" in capsys.readouterr().err
