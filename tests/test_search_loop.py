"""The real search loop (``search(cfg)``: Lightning Trainer + ``SearchModule``) on a small problem.

These tests fail when the architecture logits do not learn (e.g. when their optimiser step is
removed): the expected cost must travel from its warm-up value to a target >= 10 % away and the
exported argmax must land in the band by itself, without the projection.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import partialnet
from partialnet.search.constraint import argmax_choice
from partialnet.search.cost_model import build_cost_table
from partialnet.search.supernet import layer_specs
from partialnet.utils.rundir import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
register_resolvers()

# PartialNet-T0 (small-input stem, 13 searchable layers) on 32 px synthetic data, 4 search epochs
# of 8 batches. The two directions use candidate sets whose range holds a target 12 % away from
# the warm-up E[F] (uniform distribution over the candidates).
DIRECTIONS = {"dearer": (+0.12, [0.5, 0.25, 0.125, 0.0625]), "cheaper": (-0.12, [0.625, 0.5, 0.375, 0.25, 0.125, 0.0625])}
SMALL_SEARCH = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=256",  # 8 batches per epoch
    "data.val_size=32",
    "data.batch_size=32",
    "model=partialnet_t0",
    "model.small_input=true",
    "logger=csv",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=5",
    "search.warmup_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
    "callbacks.best_checkpoint=null",
    "+callbacks.probe._target_=test_search_loop.ArchProbe",
    "search.arch_lr=0.1",
]

PROBE: dict = {}


class ArchProbe(pl.Callback):
    """Records the logits at every training batch and the architecture every validation forward ran."""

    def on_fit_start(self, trainer, module):
        PROBE.clear()
        PROBE.update(train=[], val=[])

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        PROBE["train"].append((trainer.current_epoch, module.is_searching(), module.arch_logits.detach().clone()))

    def on_validation_start(self, trainer, module):
        def hook(mod, args, layer):
            w = mod.arch_weights
            PROBE["val"].append(dict(epoch=trainer.current_epoch, layer=layer, searching=module.is_searching(),
                                     weights=None if w is None else w.detach().clone(),
                                     logits=module.arch_logits.detach().clone(), valid=module.arch_valid.cpu(),
                                     reference=list(module.reference_choice)))

        self._hooks = [m.register_forward_pre_hook(lambda mod, args, l=l: hook(mod, args, l))
                       for l, m in enumerate(module._masked)]

    def on_validation_end(self, trainer, module):
        for h in self._hooks:
            h.remove()


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="search", overrides=overrides)


def _warmup_expected_macs(candidates) -> tuple[float, float, float]:
    """(E[F] of the uniform distribution, cheapest, dearest) MACs of the model at 32 px."""
    model = partialnet.create_model("partialnet_t0", num_classes=10, small_input=True)
    specs = layer_specs(model, candidates)
    cost = build_cost_table(model, specs, 32)
    probs = cost.valid().double()
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return float(cost.expected(probs)), cost.min_macs, cost.max_macs


def _column(run: Path, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get(key) not in (None, "")]


@pytest.mark.slow
@pytest.mark.parametrize("direction", [*sorted(DIRECTIONS), "dearer-bilevel", "dearer-argmax"])
def test_search_moves_the_expected_cost_and_exports_the_argmax_in_band(tmp_path, direction):
    """Also with search.arch_split (bilevel: the logits step on their own quarter of the data) and
    with search.argmax_ramp=false (the constraint on the argmax's cost from the first search step)."""
    from partialnet.search.search_task import search

    variant = {"-bilevel": ["search.arch_split=0.25", "data.train_size=384"], "-argmax": ["search.argmax_ramp=false"]}
    extra = next((v for k, v in variant.items() if direction.endswith(k)), [])
    step, candidates = DIRECTIONS[direction.split("-")[0]]
    warm, lo, hi = _warmup_expected_macs(candidates)
    target = warm * (1 + step)
    assert lo < target < hi and abs(target / warm - 1) >= 0.1
    out = tmp_path / "run"
    cfg = _compose([*SMALL_SEARCH, f"search.candidates=[{','.join(map(str, candidates))}]",
                    f"search.flops_target={target / 1e9:.9f}", f"paths.output_dir={out}",
                    f"paths.log_dir={tmp_path}", *extra])
    metrics = search(cfg)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)

    # warm-up: the logits are untouched (zeros), whatever the weights do
    warmup = [(e, logits) for e, searching, logits in PROBE["train"] if not searching]
    searched = [logits for e, searching, logits in PROBE["train"] if searching]
    assert warmup and searched
    assert all(torch.count_nonzero(logits) == 0 for _, logits in warmup)

    # the expected cost starts at the warm-up value and travels to the target
    # (late in the search the loss is on the argmax, so E[F] need not stay there)
    expected = _column(out, "search/expected_gmacs_step")
    active = _column(out, "search/active")
    first_search = expected[active.index(1.0)] * 1e9
    assert first_search == pytest.approx(warm, rel=1e-3)
    if direction.endswith("-argmax"):  # no E[F] term: the argmax's cost is what travels (from the r=1/4 model)
        # the first search step's constraint is on the argmax (the r=1/4 model), not on E[F]
        model = partialnet.create_model("partialnet_t0", num_classes=10, small_input=True)
        ref = build_cost_table(model, layer_specs(model, candidates), 32).reference_macs
        first = _column(out, "search/constraint_loss_step")[active.index(1.0)]
        assert first == pytest.approx(20.0 * (ref / target - 1) ** 2, rel=1e-4)
        assert first != pytest.approx(20.0 * (warm / target - 1) ** 2, rel=1e-2)
        expected = _column(out, "search/argmax_gmacs")
        active = [1.0] * len(expected)
        assert abs(expected[0] * 1e9 / target - 1) >= 0.1
    closest = min(abs(e * 1e9 / target - 1) for e, a in zip(expected, active) if a == 1.0)
    assert closest <= 0.03, (closest, [round(e * 1e9 / target, 3) for e in expected])

    # the exported argmax is in the band by itself: no projection
    info = yaml.safe_load((out / "ratios.yaml").read_text())
    assert metrics["search/projection_used"] == 0.0
    assert abs(info["macs"] / target - 1) <= 0.03

    # validation runs exactly the argmax one-hot architecture (the reference one during warm-up)
    assert {v["epoch"] for v in PROBE["val"]} == set(range(5))
    for v in PROBE["val"]:
        choice = argmax_choice(v["logits"], v["valid"], v["reference"]) if v["searching"] else v["reference"]
        w = v["weights"]
        assert w is not None and torch.equal(w, torch.nn.functional.one_hot(torch.tensor(choice[v["layer"]]), w.numel()).to(w))
    last = [v for v in PROBE["val"] if v["epoch"] == 4]
    ratios = [candidates[int(v["weights"].argmax())] for v in sorted(last, key=lambda v: v["layer"])]
    assert ratios == info["ratios"]


def test_per_candidate_values_are_computed_only_on_the_steps_the_loggers_write(tmp_path, monkeypatch):
    """trainer.log_every_n_steps=2: the per-candidate arch/* values (about 2 per candidate, each a
    self.log call) are computed on the steps the loggers write and skipped on the others, and the
    written steps still carry them."""
    from partialnet.search.search_module import SearchModule
    from partialnet.search.search_task import search

    calls = []
    real = SearchModule._log_arch
    monkeypatch.setattr(SearchModule, "_log_arch",
                        lambda self, on_step, batch_size=None: (calls.append((on_step, self.global_step)),
                                                                real(self, on_step, batch_size))[1])
    args = [a for a in SMALL_SEARCH if "probe" not in a and "log_every_n_steps" not in a] + [
        "trainer.log_every_n_steps=2", "trainer.max_epochs=2", "data.train_size=64", "data.batch_size=16",
        "trainer.limit_val_batches=1", f"paths.output_dir={tmp_path / 'out'}", f"paths.log_dir={tmp_path}"]
    search(_compose(args))
    on_step = [step for flag, step in calls if flag]
    assert on_step == [2, 4, 6, 8]  # 8 batches (2 epochs of 4), every 2nd; the step counter after its update
    rows = [r for r in csv.DictReader(open(tmp_path / "out" / "metrics.csv")) if r.get("search/tau")]  # step rows
    assert [int(r["step"]) + 1 for r in rows] == on_step  # the written steps are the computed ones
    assert all(r["arch/l00_p0.25"] and r["arch/l12_ratio"] for r in rows)
