"""ratios.yaml / ratios.png export and the round trip back into a static model."""
from __future__ import annotations

import torch

import partialnet
from partialnet.measure import count
from partialnet.models.ratios_file import RATIOS_FILE_KEYS, read_ratios_file
from partialnet.search.cost_model import build_cost_table
from partialnet.models.ratios_file import non_default_kwargs
from partialnet.search.export import config_hash, export_ratios, final_choice
from partialnet.search.supernet import layer_specs


NAME, KW, SIZE = "partialnet_t0", dict(num_classes=10, small_input=True), 32


def test_ratios_file_round_trip(tmp_path):
    model = partialnet.create_model(NAME, **KW)
    specs = layer_specs(model)
    cost = build_cost_table(model, specs, SIZE)
    logits = torch.randn(len(specs), 4, generator=torch.Generator().manual_seed(0))
    target = 1.1 * cost.reference_macs
    final = final_choice(cost, specs, logits, cost.valid(), target, 0.03, [s.reference_index() for s in specs])
    kwargs = non_default_kwargs(NAME, dict(KW, drop_path_rate=0.0))  # 0.0 is T0's default: not recorded
    assert kwargs == KW
    out = export_ratios(tmp_path, model_name=NAME, model_kwargs=kwargs, specs=specs, cost=cost, final=final,
                        target=target, cfg_hash="abc123", probs=torch.softmax(logits, -1).numpy())

    info = read_ratios_file(out["ratios_yaml"])
    assert set(RATIOS_FILE_KEYS) <= set(info)
    assert info["model"] == NAME and info["model_kwargs"] == KW and info["input_size"] == [3, SIZE, SIZE]
    assert info["ratios"] == final.ratios and len(info["ratios"]) == len(specs)
    assert info["target_macs"] == target and info["config_hash"] == "abc123"
    assert abs(info["macs"] / target - 1) <= 0.03

    # both ways of rebuilding give the searched architecture, with the recorded counts
    for rebuilt in (partialnet.create_model(info["model"], ratios=info["ratios"], **info["model_kwargs"]),
                    partialnet.create_model(NAME, ratios=str(out["ratios_yaml"]), **KW)):
        c = count(rebuilt, info["input_size"])
        assert (c["params"], c["macs"]) == (info["params"], info["macs"])
        assert [s.dim_conv for s in rebuilt.searchable_splits()] == [
            spec.ks[ch] for spec, ch in zip(specs, final.choice)
        ]
    assert out["ratios_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


def test_config_hash_ignores_where_and_how_it_is_logged():
    a = {"model": {"name": "partialnet_t0"}, "search": {"flops_ratio": 1.0}, "paths": {"log_dir": "/a"}, "run_name": "x"}
    b = dict(a, paths={"log_dir": "/b"}, run_name="y", logger={"csv": {}})
    c = dict(a, search={"flops_ratio": 1.1})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 16
