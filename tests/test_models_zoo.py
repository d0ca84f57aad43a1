"""Model zoo: registration (partialnet + timm), structure, per-layer ratios, ratios files."""
from __future__ import annotations

import pytest
import timm
import torch
import yaml

import partialnet
from partialnet.errors import UserError
from partialnet.models.backbone import PartialChannelNet
from partialnet.models.layers import PartialConv, PATChannel, PATSelf, PATSpatial
from partialnet.models.ratios_file import read_ratios_file, write_ratios_file


SIZES = ["t0", "t1", "t2", "s", "m", "l"]
FAMILIES = ["partialnet", "patnet", "fasternet"]
ALL = [f"{f}_{s}" for f in FAMILIES for s in SIZES]


def test_all_variants_registered():
    assert set(ALL) <= set(partialnet.list_models())
    assert partialnet.list_models("patnet_*") == sorted(f"patnet_{s}" for s in SIZES)


@pytest.mark.parametrize("name", ["partialnet_t0", "partialnet_t2", "patnet_t0"])
def test_timm_create_model(name):
    model = timm.create_model(name, num_classes=10)
    assert isinstance(model, PartialChannelNet)
    assert model.num_classes == 10 and model.head.out_features == 10
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    # timm's convention: the cfg describes the weights (ImageNet-1k), not the head built
    assert model.default_cfg is cfg and cfg["num_classes"] == 1000 and cfg["architecture"] == name
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 224, 224)


def test_unknown_name_lists_close_names():
    with pytest.raises(UserError, match="partialnet_t0") as err:
        partialnet.create_model("partialnet_tO")
    assert "unknown model" in str(err.value)


def test_pretrained_needs_a_local_file():
    with pytest.raises(UserError, match="no weights are downloaded.*pretrained_cfg_overlay=dict.file=PATH"):
        partialnet.models.partialnet.partialnet_t0(pretrained=True)
    with pytest.raises(UserError, match="no weights are downloaded"):
        timm.create_model("partialnet_t0", pretrained=True, pretrained_cfg_overlay=dict(url="https://x/w.pth"))


def test_timm_keeps_its_own_fasternet():
    assert type(timm.create_model("fasternet_t0")).__module__ == "timm.models.fasternet"
    ours = partialnet.create_model("fasternet_t0")
    assert isinstance(ours, PartialChannelNet) and ours.pretrained_cfg["first_conv"] == "stem.conv"


@pytest.mark.parametrize("name", ["partialnet_t0", "patnet_t0", "fasternet_t0"])
def test_structure(name):
    model = partialnet.create_model(name)
    depths = [len(stage.blocks) for stage in model.stages]
    splits = model.searchable_splits()
    assert len(splits) == sum(depths) == 13
    family = name.split("_")[0]
    kinds = [type(s) for s in splits]
    if family == "fasternet":
        assert kinds == [PartialConv] * 13
        assert not any(isinstance(m, PATSpatial) for m in model.modules())
    else:
        assert kinds == [PATChannel] * 11 + [PATSelf] * 2
        assert [b.mixer_residual for s in model.stages for b in s.blocks] == [False] * 11 + [True] * 2
        assert all(isinstance(b.mlp.pat_sp, PATSpatial) for s in model.stages for b in s.blocks)
        assert all(s.num_heads == 4 for s in splits[-2:])
    assert all(s.ratio == 0.25 for s in splits)
    width = model.stages[0].blocks[0].mixer.dim
    assert model.num_features == 8 * width and model.head_hidden_size == 1280
    assert model.stem.conv.kernel_size == (4, 4) and model.stem.conv.stride == (4, 4)
    assert model.stages[1].downsample.conv.kernel_size == (2, 2)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_pat_sp_switch_and_fasternet_refuses_it():
    model = partialnet.create_model("partialnet_t0", pat_sp=False)
    assert not any(isinstance(m, PATSpatial) for m in model.modules())
    assert partialnet.create_model("fasternet_t0", pat_sp=False) is not None
    with pytest.raises(UserError, match="PAT_sp"):
        partialnet.create_model("fasternet_t0", pat_sp=True)


def test_drop_path_schedule_linear_on_mlp_branch_only():
    model = partialnet.create_model("partialnet_t1")
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.02)
    assert rates == sorted(rates) and len(set(rates)) == 13
    no_dp = partialnet.create_model("partialnet_t1", drop_path_rate=0.0)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for s in no_dp.stages for b in s.blocks)


def test_init_trunc_normal():
    model = partialnet.create_model("partialnet_t0")
    w = model.conv_head.weight
    assert w.abs().max() <= 0.04 + 1e-6 and 0.015 < w.std() < 0.025
    assert torch.count_nonzero(model.head.bias) == 0


@pytest.mark.parametrize("name", ["partialnet_t0", "patnet_t0", "fasternet_t0"])
def test_forward_sizes_batch_one_eval(name):
    model = partialnet.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        for size in (32, 64, 192, 224, 256):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_small_input_and_train_step():
    model = partialnet.create_model("partialnet_t0", num_classes=10, small_input=True, in_chans=1)
    # 32 px input; the cfg keeps the weights' 3 channels so timm adapts a pretrained stem to in_chans=1
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.stem.conv.in_channels == 1
    x = torch.randn(2, 1, 32, 32)
    assert model.forward_features(x).shape == (2, 256, 2, 2)
    model.train()
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing  # every parameter takes part in the loss
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model(x[:1]).sum().backward()  # batch 1 in train mode (stage-4 maps are 2x2)


def test_timm_api():
    model = partialnet.create_model("partialnet_t0")
    feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.num_classes == 5
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1280)
    assert model.no_weight_decay() == {f"stages.3.blocks.{i}.mixer.rpe.bias_table" for i in (0, 1)}


def test_per_layer_ratios_applied():
    ratios = [0.5, 0.25, 0.125, 0.0625] * 3 + [0.5]
    model = partialnet.create_model("partialnet_t0", ratios=ratios)
    splits = model.searchable_splits()
    assert [s.ratio for s in splits] == ratios
    widths = [32] + [64] * 2 + [128] * 8 + [256] * 2
    assert [s.dim for s in splits] == widths
    assert [s.dim_conv for s in splits] == [int(w * r + 0.5) for w, r in zip(widths, ratios)]
    assert [s.dim_untouched for s in splits] == [w - int(w * r + 0.5) for w, r in zip(widths, ratios)]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize("embed_dim", [32, 48, 64, 96, 128, 160, 40, 144, 192])
def test_pat_sf_keeps_four_heads_at_search_candidates(embed_dim):
    """At every registered stage-4 width, the default DPConv candidates leave C_u divisible by 4."""
    for ratio in (0.5, 0.25, 0.125, 0.0625):
        assert PATSelf(8 * embed_dim, ratio).num_heads == 4


def test_global_split_ratio():
    model = partialnet.create_model("fasternet_t0", split_ratio=0.5)
    assert all(s.ratio == 0.5 for s in model.searchable_splits())


def test_bad_ratios_list():
    with pytest.raises(UserError, match=r"12 ratios.*13 searchable layers"):
        partialnet.create_model("partialnet_t0", ratios=[0.25] * 12)
    with pytest.raises(UserError, match=r"ratios\[2\]"):
        partialnet.create_model("partialnet_t0", ratios=[0.25, 0.25, 1.5] + [0.25] * 10)
    with pytest.raises(UserError, match=r"layer 12 \(stage 4, block 2\).*width 256"):
        partialnet.create_model("partialnet_t0", ratios=[0.25] * 12 + [0.001])
    with pytest.raises(UserError, match="width 40"):
        partialnet.create_model("fasternet_t0", split_ratio=0.01)


def _write(path, **data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_ratios_file_roundtrip_and_model(tmp_path):
    ratios = [0.125] * 13
    p = write_ratios_file(
        tmp_path / "sub" / "ratios.yaml", model="partialnet_t0", ratios=ratios, model_kwargs={"pat_sp": True},
        input_size=(3, 224, 224), params=123, macs=456, target_macs=0.2e9, config_hash="abc",
    )
    assert [q.name for q in p.parent.iterdir()] == ["ratios.yaml"], "no temporary file left behind"
    info = read_ratios_file(p)
    assert info["model"] == "partialnet_t0" and info["ratios"] == ratios
    assert info["input_size"] == [3, 224, 224] and info["params"] == 123 and info["config_hash"] == "abc"
    model = partialnet.create_model("partialnet_t0", ratios=p)
    assert [s.ratio for s in model.searchable_splits()] == ratios
    model = partialnet.create_model("partialnet_t0", ratios=str(p))
    assert model.searchable_splits()[0].dim_conv == 4


def test_ratios_file_errors(tmp_path):
    ok = dict(model="partialnet_t0", ratios=[0.25] * 13)
    cases = {
        "missing": (tmp_path / "nope.yaml", "does not exist"),
        "bad yaml": (tmp_path / "bad.yaml", "not valid YAML"),
        "not a mapping": (tmp_path / "list.yaml", "mapping"),
        "empty": (tmp_path / "empty.yaml", "mapping"),
        "no ratios": (_write(tmp_path / "nor.yaml", model="partialnet_t0"), "no 'ratios'"),
        "no model": (_write(tmp_path / "nom.yaml", ratios=[0.25] * 13), "'model'"),
        "out of range": (
            _write(tmp_path / "oor.yaml", model="partialnet_t0", ratios=[0.25] * 12 + [1.0]), r"ratios\[12\]"
        ),
        "not a float": (_write(tmp_path / "str.yaml", model="partialnet_t0", ratios=["a"] * 13), r"ratios\[0\]"),
        "not a list": (_write(tmp_path / "scalar.yaml", model="partialnet_t0", ratios=0.25), "list"),
    }
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 0.25\n- 0.5\n")
    (tmp_path / "empty.yaml").write_text("")
    for case, (path, msg) in cases.items():
        with pytest.raises(UserError, match=msg) as err:
            read_ratios_file(path)
        assert str(path) in str(err.value), case
        assert "\n" not in str(err.value)
    wrong_model = _write(tmp_path / "wm.yaml", **{**ok, "model": "fasternet_t0"})
    with pytest.raises(UserError, match="searched for 'fasternet_t0', not 'partialnet_t0'"):
        partialnet.create_model("partialnet_t0", ratios=wrong_model)
    wrong_len = _write(tmp_path / "wl.yaml", model="partialnet_t0", ratios=[0.25] * 14)
    with pytest.raises(UserError, match=r"14 ratios.*13 searchable layers"):
        partialnet.create_model("partialnet_t0", ratios=wrong_len)
    with pytest.raises(UserError):
        write_ratios_file(tmp_path / "w.yaml", model="partialnet_t0", ratios=[0.0])
    assert not (tmp_path / "w.yaml").exists()
