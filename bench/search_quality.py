"""Does the DPConv search earn its place? Searched vs uniform r=1/4 vs random ratios on CIFAR-10.

    python bench/search_quality.py            # full default (about 90 min on 2 quiet cores)
    python bench/search_quality.py --quick    # smoke mode (a few minutes)

Protocol (every arm gets the same budget: epochs, batches per epoch, lr, seeds):

1. A class-stratified hold-out (``--holdout`` of the CIFAR-10 training split, split seed 0) is
   used only to score the retrained arms. The search never sees it: it runs on the rest, and
   its own validation is a second stratified split of that rest.
2. Search PartialNet-T0 (small-input stem, 32 px) at ``search.flops_ratio=--flops-ratio`` (1.0 by
   default, the r=1/4 model's MACs) with
   ``search_dpconv.py``, once per ``--search`` (default: joint, bilevel with 20 % of the search's
   training data for the logits, and bilevel with the constraint on the argmax from the start).
3. Retrain from scratch with ``train.py`` (training set = everything but the hold-out,
   validation = the hold-out): (a) the uniform r = 1/4 model, (b) each searched architecture (an arm whose ratios equal an
   earlier arm's reuses its runs),
   (c) ``--random`` architectures drawn uniformly per layer and kept when their MACs are
   within +-3 % of the budget (``--flops-ratio`` x the r = 1/4 model's); (d) at a budget other
   than 1.0, also the uniform model nearest the budget (one split ratio everywhere, and in
   ``split+mlp`` one MLP ratio everywhere): the obvious hand-made way to meet it.
4. Per arm: held-out top-1 of the last epoch (mean and spread over seeds), MACs, params and
   the fused model's CPU latency (batch 1, ``--threads`` threads, median of timed runs).

Prints every figure it measures and a Markdown table (also written to ``--out``/search_quality.md);
``make bench`` / ``bench/run_all.py --only search_quality.py`` puts it into ``bench/RESULTS.md``.
Finished searches and retrained arms in ``--out`` are reused, so a second run only re-measures
the latencies. The entry points run as
subprocesses, exactly as a user runs them.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partialnet.data.cifar10 import CIFAR10DataModule, stratified_split  # noqa: E402
from partialnet.data.transforms import InMemoryImageDataset  # noqa: E402

MODEL = "partialnet_t0"
# The searched arms: name = search_dpconv.py overrides (on top of the shared ones below).
DEFAULT_SEARCHES = (
    "joint=search.arch_split=0",
    "bilevel 0.2=search.arch_split=0.2",
    "bilevel 0.2 argmax-only=search.arch_split=0.2 search.argmax_ramp=false",
)
SECTION = "### Search quality: searched vs uniform r=1/4 vs random ratios (CIFAR-10)"


class SearchSplitCIFAR10(CIFAR10DataModule):
    """CIFAR-10 without the scoring hold-out: the parent's validation split (``val_fraction``,
    ``split_seed``) is dropped, and ``search_val_fraction`` of the rest becomes the validation."""

    def __init__(self, search_val_fraction: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.search_val_fraction = float(search_val_fraction)

    def build_datasets(self):
        train, _holdout = super().build_datasets()  # the hold-out is never returned
        keep, val = stratified_split(train.labels.numpy(), self.search_val_fraction, self.split_seed + 1)

        def subset(idx, is_train):
            idx_t = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            return InMemoryImageDataset(
                train.images.index_select(0, idx_t), train.labels.index_select(0, idx_t),
                image_size=self.image_size, mean=self.mean, std=self.std, train=is_train,
                padding=self.padding, hflip=self.hflip, seed=self.seed, classes=train.classes,
            )

        return subset(keep, True), subset(val, False)


# --------------------------------------------------------------------------- helpers
def _run(script: str, args: list[str], log: Path, threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(REPO / "bench"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("PARTIALNET_RUN_NAME", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{script} failed (exit {proc.returncode}, log {log}):\n{tail}")
    print(f"  {script}: {time.time() - t0:.0f} s (log {log})", flush=True)
    return proc


def _last_metric(run_dir: Path, key: str) -> float | None:
    value = None
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get(key) not in (None, ""):
                value = float(row[key])
    return value


@functools.lru_cache(maxsize=None)  # the same table for every arm and check of one invocation; read only
def _cost_table(input_size: int, space: str = "split"):
    from partialnet.models.registry import create_model
    from partialnet.search.space_cost import build_space_cost_table
    from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs

    model = create_model(MODEL, num_classes=10, small_input=True)
    specs = layer_specs(model, DEFAULT_CANDIDATES, space=space)
    return specs, build_space_cost_table(model, specs, input_size, space=space)


def uniform_architecture(space: str = "split") -> list[float]:
    """The reference arm as one value per searched row: every split at r=1/4 (and, for
    ``split+mlp``, every MLP at the model's own expansion ratio)."""
    specs, _ = _cost_table(32, space)
    return [float(s.extra["own"]) if s.kind == "mlp" else 0.25 for s in specs]


def model_lists(arch: list[float], space: str = "split") -> tuple[list[float], list[float] | None]:
    """One value per searched row -> (per-split ratios, per-block MLP ratios or None for ``split``)."""
    if space == "split":
        return list(arch), None
    half = len(arch) // 2  # PartialNet-T0: one split and one MLP per block
    return list(arch[:half]), list(arch[half:])


def uniform_at_budget(flops_ratio: float, space: str = "split") -> tuple[list[float], float]:
    """The uniform architecture (one candidate for every split row and, in ``split+mlp``, one for
    every MLP row) whose MACs are nearest ``flops_ratio`` x the r=1/4 model's, and its own ratio."""
    from partialnet.search.selection import uniform_choices

    specs, cost = _cost_table(32, space)

    def ratio(choice: list[int]) -> float:
        return cost.macs_of(choice) / cost.reference_macs

    _, choice = min(uniform_choices(specs), key=lambda item: abs(ratio(item[1]) - flops_ratio))
    return [float(s.candidates[c]) for s, c in zip(specs, choice)], ratio(choice)


def random_architectures(n: int, seed: int, tol: float = 0.03, input_size: int = 32,
                         space: str = "split", flops_ratio: float = 1.0) -> list[list[float]]:
    """``n`` architectures (one value per searched row of ``space``) drawn uniformly per row, kept
    when within +-tol of ``flops_ratio`` x the r=1/4 model's MACs."""
    specs, cost = _cost_table(input_size, space)
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 200_000:
            raise SystemExit(f"found only {len(out)} random architectures within +-{tol:.0%} of flops_ratio="
                             f"{flops_ratio:g} in {tries} draws; use a budget the search space reaches")
        choice = [rng.choice([c for c, k in enumerate(s.ks) if k is not None]) for s in specs]
        if abs(cost.macs_of(choice) / cost.reference_macs / flops_ratio - 1) <= tol:
            ratios = [float(s.candidates[c]) for s, c in zip(specs, choice)]
            if ratios not in out and len(set(ratios)) > 1:
                out.append(ratios)
    return out


def measure_archs(archs: list[list[float]], threads: int, runs: int, rounds: int = 5, space: str = "split") -> list[dict]:
    """MACs, params and fused batch-1 CPU latency of each architecture. The latencies are timed
    round-robin (``rounds`` rounds of ``runs // rounds`` calls per architecture, one architecture
    after the other), so load that comes and goes hits every arm alike; median over all calls."""
    from partialnet.deploy import fuse
    from partialnet.measure import count
    from partialnet.models.registry import create_model

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, 32, 32)
    try:
        models, out = [], []
        for arch in archs:
            ratios, mlp_ratios = model_lists(arch, space)
            model = create_model(MODEL, num_classes=10, small_input=True, ratios=ratios, mlp_ratios=mlp_ratios).eval()
            c = count(model, 32)
            out.append({"macs": int(c["macs"]), "params": int(c["params"])})
            models.append(fuse(model, channels_last=False))
        times: list[list[float]] = [[] for _ in archs]
        with torch.inference_mode():
            for m in models:
                for _ in range(10):
                    m(x)
            for _ in range(rounds):
                for i, m in enumerate(models):
                    for _ in range(max(1, runs // rounds)):
                        t0 = time.perf_counter()
                        m(x)
                        times[i].append(time.perf_counter() - t0)
        for o, t in zip(out, times):
            o.update(latency_ms=1000 * statistics.median(t), latency_min_ms=1000 * min(t))
        return out
    finally:
        torch.set_num_threads(prev)


def supernet_proxy(search_dirs: dict[str, Path], arms: dict[str, list[float]], holdout: float, threads: int,
                   calib_batches: int = 40, score_batches: int | None = None,
                   space: str = "split") -> dict[tuple[str, str], float]:
    """Diagnostic: how each search's supernet ranks the arms. Per (search, arm): the arm's static
    model with the supernet's weights, BatchNorm statistics re-estimated on ``calib_batches``
    training batches, top-1 on the scoring hold-out (after the fact: the search never saw it), as
    ``search.final_selection=supernet`` scores its candidates on the search's own validation split."""
    from partialnet.data.cifar10 import CIFAR10DataModule
    from partialnet.models.registry import create_model
    from partialnet.search.selection import score_choice
    from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs, to_supernet

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    train, hold = CIFAR10DataModule(batch_size=256, image_size=32, val_fraction=holdout, seed=0).build_datasets()
    hold_loader = torch.utils.data.DataLoader(hold, batch_size=500)
    out = {}
    try:
        for search, run_dir in search_dirs.items():
            model = create_model(MODEL, num_classes=10, small_input=True)
            specs = layer_specs(model, list(DEFAULT_CANDIDATES), space=space)
            to_supernet(model, list(DEFAULT_CANDIDATES), space=space)
            state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
            model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
            for arm, ratios in arms.items():
                calib = torch.utils.data.DataLoader(train, batch_size=256, shuffle=True,
                                                    generator=torch.Generator().manual_seed(0))
                choice = [list(s.candidates).index(r) for s, r in zip(specs, ratios)]
                out[(search, arm)] = score_choice(model, specs, choice, calib, hold_loader, calib_batches, score_batches)[0]
                print(f"  proxy: supernet of search ({search}), arm {arm}: {out[(search, arm)]:.2f} %", flush=True)
    finally:
        torch.set_num_threads(prev)
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny budget, one seed, one random arm")
    ap.add_argument("--epochs", type=int, default=5, help="retrain epochs per arm")
    ap.add_argument("--search-epochs", type=int, default=6, help="search epochs (warm-up included)")
    ap.add_argument("--warmup-epochs", type=int, default=2, help="search warm-up epochs (weights only)")
    ap.add_argument("--batches", type=int, default=156, help="training batches per epoch (all arms and the search)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2", help="retrain seeds, comma-separated")
    ap.add_argument("--random", type=int, default=2, help="random architectures (>= 2 for the proof)")
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction of the training split held out for scoring")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and latency")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--space", default="split", choices=("split", "split+mlp"),
                    help="search.space of the searches and of the random arms (split+mlp: each block's MLP width "
                         "too; the uniform arm keeps the model's own width)")
    ap.add_argument("--out", default=None, help="work folder (default outputs/bench_search_quality[_mlp])")
    ap.add_argument("--search", action="append", default=None, metavar="NAME=OVERRIDES",
                    help="a searched arm: its name, '=', then search_dpconv.py overrides separated by spaces; "
                         "repeat for several (default: " + "; ".join(DEFAULT_SEARCHES) + ")")
    ap.add_argument("--search-only", action="store_true", help="run the searches and stop (no retraining)")
    ap.add_argument("--no-proxy", dest="proxy", action="store_false",
                    help="skip the diagnostic that scores every arm with each search's supernet weights (BN "
                         "re-estimated) on the hold-out: does weight sharing rank the arms as retraining does? "
                         "(about 30 s per arm and search on 2 cores)")
    ap.add_argument("--warmup-sampling", default="uniform", choices=("fixed", "uniform"),
                    help="search.warmup_sampling: architecture trained during the warm-up")
    ap.add_argument("--search-override", action="append", default=[], help="extra search_dpconv.py override")
    ap.add_argument("--flops-ratio", type=float, default=1.0,
                    help="the searches' budget (search.flops_ratio: MACs over the r=1/4 model's) and the random "
                         "arms' target; other than 1.0 adds the uniform model nearest the budget as an arm")
    a = ap.parse_args(argv)
    if not a.flops_ratio > 0:
        ap.error(f"--flops-ratio {a.flops_ratio:g} must be > 0, e.g. 0.83")
    if a.flops_ratio != 1.0:  # before any run: a budget the space cannot reach fails in seconds, not after the searches
        from partialnet.errors import UserError
        from partialnet.search.constraint import check_reachable

        _, cost = _cost_table(32, a.space)
        try:
            check_reachable(cost, a.flops_ratio * cost.reference_macs, 0.03)
        except UserError as e:
            ap.error(f"--flops-ratio {a.flops_ratio:g} in space {a.space}: {e}")
    if a.quick:
        a.epochs, a.search_epochs, a.warmup_epochs, a.batches, a.seeds, a.random = 1, 2, 1, 4, "0", 1
        a.latency_runs = 10
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    out = Path(a.out or REPO / "outputs" / ("bench_search_quality" + ("_mlp" if a.space == "split+mlp" else "")))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    common = ["experiment=cifar10_partialnet_t0", f"data.batch_size={a.batch_size}", f"data.val_fraction={a.holdout}",
              f"trainer.limit_train_batches={a.batches}", "trainer.accelerator=cpu",
              "logger=csv", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
              "callbacks.progress_bar=null", f"paths.log_dir={out}"]
    print(f"search_quality: {MODEL} small-input 32px on CIFAR-10, hold-out {a.holdout:.0%} (split seed 0), "
          f"{a.batches} batches x {a.batch_size} per epoch, retrain {a.epochs} epochs, seeds {seeds}, "
          f"{a.threads} thread(s), search space {a.space}", flush=True)

    # 1. searches (never see the hold-out): one per --search
    import yaml

    # runs at a budget other than 1.0 get their own names, so they never reuse the 1.0 runs in --out
    budget_tag = "" if a.flops_ratio == 1.0 else f"_f{a.flops_ratio:g}"
    arms: dict[str, tuple[str, list[float] | None]] = {"uniform r=1/4": ("uniform_r1-4", None)}
    if a.flops_ratio != 1.0:
        at_budget, at_ratio = uniform_at_budget(a.flops_ratio, a.space)
        ratios, mlp_ratios = model_lists(at_budget, a.space)
        label = f"uniform r={ratios[0]:g}" + (f", MLP {mlp_ratios[0]:g}" if mlp_ratios else "")
        print(f"uniform model nearest flops_ratio={a.flops_ratio:g}: {label} ({at_ratio:.3f} of the r=1/4 model's MACs)",
              flush=True)
        if at_budget != uniform_architecture(a.space):
            tag = f"uniform_r{ratios[0]:g}" + (f"_MLP{mlp_ratios[0]:g}" if mlp_ratios else "")
            arms[f"{label} (nearest the budget, {at_ratio:.3f})"] = (tag, at_budget)
    space_overrides = [] if a.space == "split" else [f"search.space={a.space}"]
    projections, search_dirs = {}, {}
    reused = 0
    for spec in a.search or DEFAULT_SEARCHES:
        kind, _, overrides = spec.partition("=")
        if not kind.strip() or not overrides.strip():
            raise SystemExit(f"--search {spec!r}: expected NAME=OVERRIDES, e.g. 'bilevel=search.arch_split=0.2'")
        kind = kind.strip()
        run_name = "searched_" + "".join(ch for ch in kind if ch.isalnum() or ch in "._-") + budget_tag
        search_dir = out / "search" / "runs" / run_name
        reused += (search_dir / "ratios.yaml").is_file()
        if not (search_dir / "ratios.yaml").is_file():
            print(f"[search, {kind}] {a.search_epochs} epochs ({a.warmup_epochs} warm-up) at flops_ratio={a.flops_ratio:g}",
                  flush=True)
            _run("search_dpconv.py", [*common, "data._target_=search_quality.SearchSplitCIFAR10", f"run_name={run_name}",
                                      "task_name=search",
                                      f"trainer.max_epochs={a.search_epochs}", f"search.warmup_epochs={a.warmup_epochs}",
                                      f"search.flops_ratio={a.flops_ratio:g}", "ckpt_path=null", "trainer.limit_val_batches=10",
                                      f"search.warmup_sampling={a.warmup_sampling}", *space_overrides, *overrides.split(),
                                      *a.search_override],
                 out / "logs" / f"{run_name}.log", a.threads)
        searched = yaml.safe_load((search_dir / "ratios.yaml").read_text())
        projections[kind] = bool(_last_metric(search_dir, "search/projection_used"))
        arch = list(searched["ratios"]) + (list(searched["mlp_ratios"]) if a.space == "split+mlp" else [])
        print(f"  searched ({kind}) ratios {searched['ratios']}"
              + (f", MLP ratios {searched['mlp_ratios']}" if a.space == "split+mlp" else "")
              + f" ({searched['macs'] / 1e6:.2f} MMACs, target "
              f"{searched['target_macs'] / 1e6:.2f}; projection used: {projections[kind]})", flush=True)
        arms[f"searched ({kind})"] = (run_name, arch)
        search_dirs[kind] = search_dir
    if a.search_only:
        return 0

    # 2. arms
    for i, arch in enumerate(random_architectures(a.random, seed=1234, space=a.space, flops_ratio=a.flops_ratio)):
        arms[f"random {i + 1}"] = (f"random_{i + 1}{budget_tag}", arch)
    uniform = uniform_architecture(a.space)
    rows, trained = [], {}
    for name, (tag, arch) in arms.items():
        key = tuple(arch if arch is not None else uniform)
        same_as = trained.get(key)
        accs = []
        for seed in seeds:
            if same_as is not None:  # the same architecture, seed and budget: the same run (deterministic)
                accs = list(next(r for r in rows if r["arm"] == same_as)["accs"])
                print(f"  {name}: the same architecture as {same_as}; its runs are reused", flush=True)
                break
            run_name = f"{tag}_s{seed}"
            run_dir = out / "cifar10_partialnet_t0" / "runs" / run_name
            done = (run_dir / "metrics.csv").is_file() and _last_metric(run_dir, "val/acc1") is not None
            reused += done
            if not done:
                print(f"[{name}] seed {seed}: retrain {a.epochs} epochs", flush=True)
                extra = []
                if arch is not None:
                    ratios, mlp_ratios = model_lists(arch, a.space)
                    extra = [f"model.ratios=[{','.join(f'{r:g}' for r in ratios)}]"]
                    if mlp_ratios is not None:
                        extra.append(f"model.mlp_ratios=[{','.join(f'{r:g}' for r in mlp_ratios)}]")
                _run("train.py", [*common, *extra, f"seed={seed}", f"run_name={run_name}", f"trainer.max_epochs={a.epochs}",
                                  f"trainer.check_val_every_n_epoch={a.epochs}", "callbacks.best_checkpoint=null",
                                  "ckpt_path=null"], out / "logs" / f"{run_name}.log", a.threads)
            acc = _last_metric(run_dir, "val/acc1")
            accs.append(acc)
            print(f"  {name} seed {seed}: held-out top-1 {acc:.2f} %", flush=True)
        trained.setdefault(key, name)
        ratios, mlp_ratios = model_lists(list(key), a.space)
        rows.append(dict(arm=name, arch=list(key), ratios=ratios, mlp_ratios=mlp_ratios, same_as=same_as, acc_mean=statistics.mean(accs),
                         acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0, accs=accs))

    # 3. counts and CPU latency of every arm, timed round-robin (one arm after the other, repeatedly)
    for row, m in zip(rows, measure_archs([r["arch"] for r in rows], a.threads, a.latency_runs, space=a.space)):
        row.update(m)
        print(f"  {row['arm']}: top-1 {row['acc_mean']:.2f} +- {row['acc_std']:.2f} % over {len(row['accs'])} seed(s), "
              f"{m['macs'] / 1e6:.2f} MMACs, {m['params'] / 1e6:.3f} M params, CPU latency {m['latency_ms']:.2f} ms "
              f"(batch 1, {a.threads} thread(s), fused)", flush=True)

    proxy = supernet_proxy(search_dirs, {r["arm"]: r["arch"] for r in rows}, a.holdout, a.threads, space=a.space,
                           **(dict(calib_batches=2, score_batches=1) if a.quick else {})) if a.proxy else {}
    minutes = (time.time() - t_start) / 60
    table = render(rows, a, seeds, minutes, projections, proxy, reused)
    (out / "search_quality.md").write_text(table)
    (out / "search_quality.json").write_text(json.dumps(rows, indent=1))
    print(table, flush=True)
    return 0


def render(rows: list[dict], a, seeds: list[int], minutes: float, projections: dict[str, bool],
           proxy: dict[tuple[str, str], float] | None = None, reused: int = 0) -> str:
    best = max(rows, key=lambda r: r["acc_mean"])["arm"]
    mlp = any(r.get("mlp_ratios") for r in rows)
    lines = [
        (SECTION if a.space == "split" else SECTION.replace("Search quality", f"Search quality, space {a.space}"))
        + (f", flops_ratio={a.flops_ratio:g}" if a.flops_ratio != 1.0 else ""), "",
        f"PartialNet-T0 (small-input stem, 32 px), CIFAR-10 training split; scored on a class-stratified "
        f"{a.holdout:.0%} hold-out the search never saw. Every arm: {a.epochs} epochs x {a.batches} batches of "
        f"{a.batch_size}, seeds {seeds}; search: {a.search_epochs} epochs ({a.warmup_epochs} warm-up) at "
        f"flops_ratio={a.flops_ratio:g}, search space {a.space}, warm-up sampling {a.warmup_sampling}; "
        + "; ".join(f"{k}: {'projection used' if v else 'argmax in band without projection'}" for k, v in projections.items())
        + f"{' ' + ' '.join(a.search_override) if a.search_override else ''}. "
        f"CPU latency: fused model, batch 1, {a.threads} thread(s), median of calls timed round-robin over the arms. Wall time of this invocation {minutes:.0f} min"
        f"{f' (it reused {reused} finished run(s) in --out)' if reused else ''}"
        f"{' (--quick smoke run: numbers mean nothing)' if a.quick else ''}.", "",
        "| arm | held-out top-1 (%) | per seed | MMACs | params (M) | CPU latency (ms) | ratios |"
        + (" MLP ratios |" if mlp else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if mlp else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']}{' (best)' if r['arm'] == best else ''} | {r['acc_mean']:.2f} +- {r['acc_std']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in r['accs'])}{' (= ' + r['same_as'] + ')' if r.get('same_as') else ''} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e6:.3f} | "
            f"{r['latency_ms']:.2f} | {' '.join(f'{x:g}' for x in r['ratios'])} |"
            + (f" {' '.join(f'{x:g}' for x in r['mlp_ratios'])} |" if mlp else ""))
    if proxy:
        searches = list(dict.fromkeys(k for k, _ in proxy))
        lines += ["", "Diagnostic (skip with --no-proxy): each search's supernet scoring every arm on the hold-out (its weights, "
                      "BatchNorm re-estimated on training batches), top-1 %:", "",
                  "| arm | " + " | ".join(f"supernet of {k}" for k in searches) + " |",
                  "|---|" + "---|" * len(searches)]
        for r in rows:
            lines.append(f"| {r['arm']} | " + " | ".join(f"{proxy[(k, r['arm'])]:.2f}" for k in searches) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
