"""The ratios-file / constructor contract (``partialnet.models.ratios_file``): keys, validation,
rebuild, comparison -- including per-block MLP widths (``mlp_ratios``)."""
from __future__ import annotations

import pytest
import torch
import yaml

import partialnet
from partialnet.deploy import export_onnx, fuse, onnx_max_abs_diff
from partialnet.errors import UserError
from partialnet.measure import count
from partialnet.models.ratios_file import (
    check_ratios_file_fits,
    non_default_kwargs,
    read_ratios_file,
    rebuild,
    write_ratios_file,
)
from partialnet.training import builders
from test_deploy import randomize

NAME, KW = "partialnet_t0", dict(num_classes=10, small_input=True)
RATIOS = [0.5, 0.25, 0.125, 0.0625, 0.25, 0.5, 0.125, 0.25, 0.0625, 0.5, 0.25, 0.125, 0.25]
MLP = [1.0, 1.5, 2.0, 2.5, 1.0, 1.5, 2.0, 2.5, 1.0, 1.5, 2.0, 2.5, 1.0]


def _hidden(model) -> list[int]:
    return [b.mlp.fc1.out_channels for s in model.stages for b in s.blocks]


def test_mlp_widths_round_trip_through_the_file(tmp_path):
    model = partialnet.create_model(NAME, ratios=RATIOS, mlp_ratios=MLP, **KW)
    dims = [b.mlp.fc1.in_channels for s in model.stages for b in s.blocks]
    assert _hidden(model) == [int(d * e) for d, e in zip(dims, MLP)]
    c = count(model, 32)
    path = write_ratios_file(tmp_path / "ratios.yaml", model=NAME, ratios=RATIOS, mlp_ratios=MLP, model_kwargs=KW,
                             input_size=[3, 32, 32], params=c["params"], macs=c["macs"])
    info = read_ratios_file(path)
    assert info["mlp_ratios"] == MLP and info["ratios"] == RATIOS
    for rebuilt in (rebuild(path), partialnet.create_model(NAME, ratios=str(path), **KW)):
        assert _hidden(rebuilt) == _hidden(model)
        assert [s.ratio for s in rebuilt.searchable_splits()] == RATIOS
        assert (count(rebuilt, 32)["macs"], count(rebuilt, 32)["params"]) == (c["macs"], c["params"])


def test_old_files_without_mlp_ratios_still_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"model": NAME, "model_kwargs": KW, "ratios": RATIOS, "params": 1, "macs": 1}))
    info = read_ratios_file(path)
    assert info["mlp_ratios"] is None
    model = rebuild(info)
    assert _hidden(model) == _hidden(partialnet.create_model(NAME, **KW))  # the variant's 2x width


@pytest.mark.parametrize("bad, needle", [
    (MLP[:12], "12 mlp_ratios"),
    (MLP[:12] + [0.0], "mlp_ratios[12]"),
    ("wide", "'mlp_ratios' must be"),
])
def test_bad_mlp_ratios_are_user_errors(bad, needle):
    with pytest.raises(UserError) as e:
        partialnet.create_model(NAME, mlp_ratios=bad, **KW)
    assert needle in str(e.value)


def test_file_with_mismatched_lists_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": NAME, "ratios": RATIOS, "mlp_ratios": MLP[:5]}))
    with pytest.raises(UserError, match="13 ratios but 5 mlp_ratios"):
        read_ratios_file(path)


def test_non_default_kwargs_compares_values():
    assert non_default_kwargs(NAME, dict(KW, drop_path_rate=0.0, pat_sp=True)) == KW  # T0 defaults: not recorded
    assert non_default_kwargs(NAME, dict(pat_sp=False)) == {"pat_sp": False}
    assert non_default_kwargs(NAME, dict(ratios=RATIOS, mlp_ratios=MLP)) == {}


def test_file_must_fit_the_retraining_constructor(tmp_path):
    path = write_ratios_file(tmp_path / "r.yaml", model=NAME, ratios=RATIOS, model_kwargs=KW)
    check_ratios_file_fits(NAME, dict(ratios=str(path), small_input=True))
    for check in (check_ratios_file_fits, builders.check_ratios_file_fits):  # builders only delegates
        with pytest.raises(UserError, match="small_input=True.*model.small_input=true"):
            check(NAME, dict(ratios=str(path)))


def test_fusion_and_onnx_on_searched_widths(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = randomize(partialnet.create_model(NAME, ratios=RATIOS, mlp_ratios=MLP, **KW)).eval()
    x = torch.randn(2, 3, 32, 32)
    fused = fuse(model, channels_last=False)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max().item() <= 1e-4
    path = export_onnx(model, tmp_path / "m.onnx", input_size=32)  # fuses on the way
    assert onnx_max_abs_diff(path, model, x) <= 1e-4
