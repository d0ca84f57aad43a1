"""This tree's training step against an earlier commit's, steps alternating between two processes.

``bench/train_step.py`` compares variants of the current code; its "before" re-creates the old
step from today's layers. This script measures the old step itself: it extracts ``--commit`` with
``git archive`` into a temporary folder (the working tree is not touched), starts one worker
process that imports *that* ``partialnet`` and one that imports this tree's, and times training
steps (forward + backward + AdamW, random batch, fixed seed) in the two processes in turn (then,
now; now, then; ...), one process stepping while the other waits, so that drifts of the machine's
speed hit both alike.

Recipes: ``plain`` is the step as the first version of the project ran it (NCHW tensors,
``torch.optim.AdamW``'s per-parameter loop); ``project`` is the step ``train.py`` runs now on the
CPU (model and batch in channels_last, the project's optimizer: fused AdamW). By default the
earlier commit runs ``plain`` and this tree ``project``.

The default commit, ee633bb, is the last one before the training-step work began (the end of
the first version of the project): the "1.3x our step time" target of the README is measured
against it. Without git or without that commit in the history (an unpacked archive, a shallow
clone) the script says so and exits 0; a ``--commit`` that git does not know is an error (exit 2).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMMIT = "ee633bb"
RECIPES = ("plain", "project")


# ----------------------------------------------------------------------------------------- worker
def worker(recipe: str, name: str, bs: int, size: int) -> None:
    """Run in a process whose PYTHONPATH starts with the tree to measure: build the step, print one
    JSON line (which package it imported, parameter count), then one step per line read from stdin,
    printing its wall and process CPU seconds. It uses only ``partialnet.create_model`` (and, for
    ``project``, ``build_optimizer``), not ``bench/train_step.py``'s Step, whose imports of today's
    layers an older tree does not have."""
    import torch
    import torch.nn.functional as F

    import partialnet

    torch.manual_seed(0)
    model = partialnet.create_model(name, num_classes=1000).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(bs, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (bs,), generator=g)
    if recipe == "project":
        from partialnet.training.optim import build_optimizer

        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        opt = build_optimizer(model, {"name": "adamw", "weight_decay": 0.05}, 1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=False, fused=False)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"package": str(Path(partialnet.__file__).parent), "params": params}), flush=True)
    for _ in sys.stdin:
        w0, c0 = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(f"{time.perf_counter() - w0} {time.process_time() - c0}", flush=True)


class Worker:
    """A worker process over pipes: ``step()`` runs one training step there and returns (wall, CPU) s."""

    def __init__(self, tree: Path, recipe: str, args):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", recipe, "--model", args.model,
               "--batch", str(args.batch), "--size", str(args.size)]
        self.tree = tree
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, so that warnings cannot fill a pipe
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env, cwd=tree)
        self.info = json.loads(self._line("start"))

    def _line(self, doing: str) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            err = self.stderr.read().strip().splitlines()
            raise RuntimeError(f"the worker for {self.tree} failed to {doing}: {err[-1] if err else 'no output'}")
        return line

    def step(self) -> tuple[float, float]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        wall, cpu = self._line("step").split()
        return float(wall), float(cpu)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.stderr.close()


# ------------------------------------------------------------------------------------ coordinator
def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True)


def extract(commit: str, dest: Path) -> str:
    """Unpack ``commit``'s tree into ``dest`` (git archive); return its short hash."""
    short = git("rev-parse", "--short", f"{commit}^{{commit}}").stdout.decode().strip()
    tar = git("archive", "--format=tar", short)
    if tar.returncode:
        raise RuntimeError(tar.stderr.decode().strip())
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
        t.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # (3.11.4+)
    return short


def commit_known(commit: str) -> bool:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").returncode == 0
    except OSError:  # no git executable
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--commit", default=None, help=f"the earlier commit (default {DEFAULT_COMMIT}, see the docstring)")
    ap.add_argument("--then-recipe", choices=RECIPES, default="plain", help="how the earlier commit's step runs")
    ap.add_argument("--now-recipe", choices=RECIPES, default="project", help="how this tree's step runs")
    ap.add_argument("--model", default="partialnet_t0", help="the model to step (both trees must have it)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--_worker", dest="worker", choices=RECIPES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model, args.batch, args.size)
        return 0
    repo = str(Path(__file__).resolve().parent.parent)  # this tree's partialnet, for bench/models.py
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from models import alternating, exit_on_bad_args, round_ratios  # bench/models.py

    exit_on_bad_args(args, {"batch": 1, "size": 32, "warmup": 0, "runs": 1}, [args.model])
    commit = args.commit or DEFAULT_COMMIT
    if not commit_known(commit):
        where = f"no commit {commit!r} in the git history of {ROOT}"
        if args.commit:
            print(f"error: {where}; give a commit of this repository (git log --oneline)", file=sys.stderr)
            return 2
        print(f"({where} (no git, an unpacked archive or a shallow clone): skipped)")
        return 0

    with tempfile.TemporaryDirectory(prefix="partialnet-commit-") as tmp:
        try:
            short = extract(commit, Path(tmp))
        except (RuntimeError, tarfile.TarError) as e:
            print(f"error: could not extract commit {commit!r} with git archive: {e}", file=sys.stderr)
            return 1
        then, now = f"{short} ({args.then_recipe})", f"this tree ({args.now_recipe})"
        sides: dict[str, Worker] = {}
        try:
            sides[then] = Worker(Path(tmp), args.then_recipe, args)
            sides[now] = Worker(ROOT, args.now_recipe, args)
            times = {k: [] for k in sides}
            for i in range(args.warmup + args.runs):
                for k in alternating(list(sides), i):
                    t = sides[k].step()
                    if i >= args.warmup:
                        times[k].append(t)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            for w in sides.values():
                w.close()

    print(f"### Training step of {args.model} against commit {short}, batch {args.batch}, {args.size}x{args.size}, "
          f"fp32, CPU\n")
    print(f"{args.runs} timed steps per side after {args.warmup} warm-up, alternating between two worker processes "
          "(every other round in reverse order). plain = NCHW, torch.optim.AdamW's per-parameter loop; "
          "project = model and batch in channels_last, the project's optimizer (fused AdamW).\n")
    print("| side | package imported | parameters | step wall s (median, min-max) | step CPU s (median) | images/s (wall) |")
    print("|---|---|---|---|---|---|")
    for k, w in sides.items():
        wall = [t[0] for t in times[k]]
        cpu = statistics.median(t[1] for t in times[k])
        pkg = w.info["package"]
        pkg = ("temporary checkout" if pkg.startswith(tmp)
               else "this repository" if Path(pkg).resolve() == (ROOT / "partialnet").resolve() else pkg)
        med = statistics.median(wall)
        print(f"| {k} | {pkg} | {w.info['params']:,} | {med:.3f} ({min(wall):.3f}-{max(wall):.3f}) | {cpu:.3f} | "
              f"{args.batch / med:.1f} |")
    ratio, lo, hi = round_ratios([t[0] for t in times[then]], [t[0] for t in times[now]])
    cpu_ratio = round_ratios([t[1] for t in times[then]], [t[1] for t in times[now]])[0]
    print(f"\nSpeed-up of this tree over {short}, per round (wall): median {ratio:.2f}x "
          f"(10th-90th percentile {lo:.2f}-{hi:.2f}x); CPU time: {cpu_ratio:.2f}x.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
