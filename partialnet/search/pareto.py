"""Collect the retrained models of a budget sweep into one table and an accuracy-vs-cost plot.

    python search_dpconv.py -m search.flops_ratio=0.6,0.8,1.0,1.2       # one ratios.yaml per job
    python train.py -m model.ratios=<each ratios.yaml>                 # retrain each
    python -m partialnet.search.pareto outputs/train/multiruns/<sweep> [--latency] [--out DIR]

Every ``<run>/checkpoints/last.ckpt`` under the given folders is one point: its model is rebuilt
from the checkpoint's model spec, counted (MACs = the papers' FLOPs, params) at the image size it
was trained at, and optionally timed (``--latency``: fused model, batch 1, CPU, median). Top-1 is
the last ``val/acc1`` in the run's ``metrics.csv``. Writes ``pareto.md``, ``pareto.csv`` and
``pareto.png`` (accuracy vs MACs, and vs latency when measured) into ``--out``; the points on the
accuracy/MACs Pareto front are marked.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from partialnet.errors import UserError

__all__ = ["collect", "pareto_front", "main"]


def _last_acc(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    value = None
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val/acc1") not in (None, ""):
                value = float(row["val/acc1"])
    return value


def collect(folders: list[str | Path], latency: bool = False, threads: int = 1) -> list[dict]:
    """One row per retrained run under ``folders`` (sorted by MACs)."""
    import torch

    from partialnet.measure import count
    from partialnet.models.registry import create_model
    from partialnet.training.checkpoint_file import load_checkpoint_file

    ckpts = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; pass the run or sweep folder(s) of train.py")
        ckpts += sorted(folder.rglob("checkpoints/last.ckpt"))
    if not ckpts:
        raise UserError(f"no checkpoints/last.ckpt under {', '.join(map(str, folders))}; pass the retrained runs' folder")
    rows = []
    for ckpt_path in ckpts:
        run_dir = ckpt_path.parent.parent
        meta = load_checkpoint_file(ckpt_path).get("partialnet") or {}
        if meta.get("search") is not None or "model_spec" not in meta:
            continue  # a search (supernet) checkpoint or not a train.py run
        spec, size = meta["model_spec"], int(meta.get("image_size", 224))
        model = create_model(spec["name"], **spec["kwargs"]).eval()
        c = count(model, size)
        row = {"run": str(run_dir), "model": spec["name"], "ratios": spec["kwargs"].get("ratios"),
               "image_size": size, "top1": _last_acc(run_dir), "macs": int(c["macs"]), "params": int(c["params"])}
        if latency:
            from partialnet.deploy import fuse
            from partialnet.measure.speed import time_forward

            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                r = time_forward(fuse(model, channels_last=False), batch_size=1, input_size=size, warmup=10, runs=30)
            finally:
                torch.set_num_threads(prev)
            row["latency_ms"] = r.latency_ms
        rows.append(row)
    if not rows:
        raise UserError("the checkpoints found are search checkpoints; retrain the searched ratios with train.py first")
    return sorted(rows, key=lambda r: r["macs"])


def pareto_front(rows: list[dict], cost: str = "macs") -> set[int]:
    """Indices of the rows no other row beats on both top-1 (higher) and ``cost`` (lower)."""
    front = set()
    for i, r in enumerate(rows):
        if r.get("top1") is None:
            continue
        dominated = any(
            o.get("top1") is not None and o[cost] <= r[cost] and o["top1"] >= r["top1"]
            and (o[cost] < r[cost] or o["top1"] > r["top1"])
            for j, o in enumerate(rows) if j != i
        )
        if not dominated:
            front.add(i)
    return front


def _table(rows: list[dict], front: set[int]) -> str:
    lat = any("latency_ms" in r for r in rows)
    head = "| run | top-1 (%) | MMACs | params (M) |" + (" latency (ms) |" if lat else "") + " front |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, r in enumerate(rows):
        top1 = "n/a" if r["top1"] is None else f"{r['top1']:.2f}"
        cells = [Path(r["run"]).name, top1, f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}"]
        if lat:
            cells.append(f"{r['latency_ms']:.2f}")
        cells.append("*" if i in front else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], front: set[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from partialnet.utils.atomic import atomic_write_bytes

    axes_keys = [("macs", "MMACs", 1e6)] + ([("latency_ms", "latency (ms)", 1.0)] if "latency_ms" in rows[0] else [])
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5 * len(axes_keys), 4), squeeze=False)
    pts = [r for r in rows if r["top1"] is not None]
    for ax, (key, label, scale) in zip(axes[0], axes_keys):
        ax.scatter([r[key] / scale for r in pts], [r["top1"] for r in pts], color="tab:blue")
        fr = sorted((rows[i] for i in front), key=lambda r: r[key])
        ax.plot([r[key] / scale for r in fr], [r["top1"] for r in fr], color="tab:red", label="front (top-1 vs MACs)")
        for r in pts:
            ax.annotate(Path(r["run"]).name, (r[key] / scale, r["top1"]), fontsize=6)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m partialnet.search.pareto", description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="run or sweep folders holding <run>/checkpoints/last.ckpt")
    ap.add_argument("--out", default=None, help="where pareto.md/.csv/.png go (default: the first folder)")
    ap.add_argument("--latency", action="store_true", help="also time each fused model on this CPU (batch 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --latency")
    a = ap.parse_args(argv)
    from partialnet.utils.atomic import atomic_write_text

    rows = collect(a.folders, latency=a.latency, threads=a.threads)
    front = pareto_front(rows)
    out = Path(a.out or a.folders[0])
    out.mkdir(parents=True, exist_ok=True)
    table = _table(rows, front)
    atomic_write_text(out / "pareto.md", table)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "pareto.csv", buf.getvalue())
    _plot(rows, front, out / "pareto.png")
    print(table, end="")
    print(f"wrote {out / 'pareto.md'}, {out / 'pareto.csv'}, {out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    from partialnet.utils.cli import run_cli

    run_cli(main)
