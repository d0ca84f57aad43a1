"""Latency lookup table for ``search.constraint=latency``: ms per layer and candidate.

What is timed is the deployed form: every row is the **fused** form
(:func:`partialnet.deploy.fusion.fuse`'s per-layer pieces) of ``static_split(spec, r)`` at the
layer's input shape, on one device, batch size and thread count (all recorded). The fixed part
is the fused whole model (the model as built, at its own ratios) minus the sum of its layers'
rows, so for the model as built the prediction equals the measured whole-model latency; for
other choices only the per-layer differences are predicted. Every time is the fastest of
``runs`` calls after a warm-up: the least disturbed by other load on the machine (a shared
machine moves medians by more than the candidates differ).

The table is measured where the search runs, or loaded from a file measured on the deployment
device::

    python -m partialnet.search.latency_table --model partialnet_t0 --input-size 224 \\
        --batch-size 1 --threads 4 --device cpu --out table.json

The file records the model, its constructor arguments, input size, candidates, device name
and type, batch size, threads, channels_last and the torch version; a file for another model,
arguments, input size or candidates, or measured on another device than the one claimed, is
refused (:meth:`LatencyTable.check_fits`).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from partialnet.errors import UserError
from partialnet.measure.count import _input_shape
from partialnet.measure.speed import device_name, time_forward, time_runner
from partialnet.search.cost_model import CostTable, split_input_shapes, split_key
from partialnet.search.supernet import LayerSpec, static_split

__all__ = [
    "LatencyTable", "fuse_split", "measure_latency_table", "measure_model_ms", "resolve_device", "main",
]

FORMAT = "partialnet-latency-table"
VERSION = 1
# Constructor arguments that do not change the inference graph (not compared between a table and a run).
_IGNORED_KWARGS = ("drop_path_rate",)


def resolve_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or None/``auto`` (CUDA when there is one)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise UserError(f"latency device {device!r} is unknown; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"latency device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"latency device {device!r}: no CUDA device here; use cpu or load a table measured there")
    return dev


def fuse_split(module: nn.Module) -> nn.Module:
    """The fused inference form of one static split, as :func:`~partialnet.deploy.fusion.fuse`
    builds it inside a block (a module it does not know is returned as is, in eval mode)."""
    from partialnet.deploy import fusion
    from partialnet.models.backbone import Mlp
    from partialnet.models.layers import PartialConv, PATChannel, PATSelf

    module = module.eval()
    with torch.no_grad():
        if isinstance(module, PATChannel):
            return fusion.FusedPATChannel.from_layer(module).eval()
        if isinstance(module, PATSelf):
            return fusion.FusedPATSelf.from_layer(module).eval()
        if isinstance(module, PartialConv):
            out = copy.deepcopy(module)
            out.forward_type = "slicing"
            return out.eval()
        if isinstance(module, Mlp):
            return fusion._fuse_mlp(module, None, None, "slicing").eval()
    return module


def _time_ms(module: nn.Module, shape: Sequence[int], batch_size: int, device: torch.device, channels_last: bool,
             warmup: int, runs: int) -> float:
    """ms of ``module`` on a (batch, *shape) input (inference mode): the fastest of ``runs``."""
    module = module.to(device).eval()
    x = torch.randn(batch_size, *shape, device=device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)

    def run(_unused: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    # time_runner's own input is not used: the closure feeds the layer's input
    return 1000.0 * time_runner(run, 1, 1, device, warmup=warmup, runs=runs).seconds_min


def measure_model_ms(model: nn.Module, input_size: int, batch_size: int = 1, device: str | torch.device = "cpu",
                     threads: int | None = None, warmup: int = 5, runs: int = 20, rounds: int = 3) -> float:
    """ms of the fused ``model`` (a static PartialChannelNet) at ``input_size``: the fastest of
    ``rounds`` x ``runs`` calls, as the table's rows are timed."""
    from partialnet.deploy.fusion import fuse

    fused = fuse(model)
    with _threads(threads):
        return 1000.0 * min(time_forward(fused, batch_size, input_size, device, warmup=warmup, runs=runs).seconds_min
                            for _ in range(max(1, int(rounds))))


class _threads:
    """Temporarily ``torch.set_num_threads(n)`` (None: unchanged)."""

    def __init__(self, n: int | None):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n is not None:
            self.old = torch.get_num_threads()
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


@dataclass
class LatencyTable:
    """A measured table (see the module docstring); ``ms[l][c]`` None where a candidate is dropped."""

    model: str
    model_kwargs: dict
    input_size: list[int]
    candidates: list[float]
    reference_ratio: float
    device: str
    device_type: str
    batch_size: int
    threads: int
    channels_last: bool
    torch: str
    layers: list[dict]  # name, kind, dim
    ms: list[list[float | None]]
    fixed_ms: float
    model_ms: float  # the fused model as built, measured
    reference_ms: float  # every layer at reference_ratio (predicted)
    runs: int = 20
    rounds: int = 1
    format: str = FORMAT
    version: int = VERSION
    extra: dict = field(default_factory=dict)

    def cost_table(self) -> CostTable:
        meta = dict(device=self.device, batch_size=self.batch_size, threads=self.threads, torch=self.torch,
                    channels_last=self.channels_last)
        return CostTable(self.ms, fixed=self.fixed_ms, input_size=tuple(self.input_size), reference=self.reference_ms,
                         reference_ratio=self.reference_ratio, metric="latency", meta=meta)

    def describe(self) -> str:
        return (f"{self.model} @ {self.input_size[1]}px on {self.device}, batch {self.batch_size}, "
                f"{self.threads} threads, torch {self.torch}")

    def save(self, path: str | Path) -> Path:
        from partialnet.utils.atomic import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"latency table {p} does not exist; measure one with "
                            f"python -m partialnet.search.latency_table --model MODEL --out {p}")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"latency table {p} is not valid JSON ({e}); measure it again") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"latency table {p} is not a partialnet latency table; measure one with "
                            f"python -m partialnet.search.latency_table")
        if data.get("version") != VERSION:
            raise UserError(f"latency table {p} has version {data.get('version')!r}, this code reads {VERSION}; "
                            f"measure it again")
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(data) - {"runs", "rounds", "extra"})
        if missing:
            raise UserError(f"latency table {p} lacks {missing}; measure it again")
        return cls(**{k: v for k, v in data.items() if k in names})

    def check_fits(self, where: str, *, model: str, model_kwargs: dict, input_size: Sequence[int],
                   candidates: Sequence[float], specs: Sequence[LayerSpec], device: str | None = None) -> None:
        """:class:`UserError` (one line naming both) unless this table was measured for this
        model, arguments, input size and candidates -- and on ``device`` when one is claimed
        (``cpu``/``cuda`` or part of the device name)."""
        def differs(what: str, have, want, fix: str) -> UserError:
            return UserError(f"latency table {where} was measured for {what} {have!r}, this search uses {want!r}; {fix}")

        fix = "measure a table for this search with python -m partialnet.search.latency_table"
        if self.model != model:
            raise differs("model", self.model, model, fix)
        mine = {k: v for k, v in self.model_kwargs.items() if k not in _IGNORED_KWARGS}
        theirs = {k: v for k, v in _plain(model_kwargs).items() if k not in _IGNORED_KWARGS}
        if mine != theirs:
            raise differs("model arguments", mine, theirs, fix)
        if list(self.input_size) != list(int(s) for s in input_size):
            raise differs("input size", list(self.input_size), list(input_size), fix)
        if [float(c) for c in self.candidates] != [float(c) for c in candidates]:
            raise differs("candidates", self.candidates, list(candidates), fix)
        if len(self.ms) != len(specs) or any(
            (lay.get("kind"), lay.get("dim")) != (s.kind, s.dim) for lay, s in zip(self.layers, specs)
        ):
            raise UserError(f"latency table {where} has other layers than {model} here; {fix}")
        if any((v is None) != (k is None) for row, s in zip(self.ms, specs) for v, k in zip(row, s.ks)):
            raise UserError(f"latency table {where} has other candidate widths than this search; {fix}")
        if device is not None:
            claim = str(device).lower()
            if claim != self.device_type and claim not in self.device.lower():
                raise UserError(
                    f"latency table {where} was measured on {self.device!r} ({self.device_type}), not on the "
                    f"claimed device {device!r}; measure it there (--device) or change search.latency_device"
                )


def _plain(d: dict) -> dict:
    """JSON round trip: what a table file would hold for ``d``."""
    return json.loads(json.dumps(d, default=str))


def measure_latency_table(
    model: nn.Module,
    specs: Sequence[LayerSpec],
    *,
    model_name: str,
    model_kwargs: dict,
    input_size: int,
    batch_size: int = 1,
    threads: int | None = None,
    device: str | torch.device | None = "cpu",
    reference_ratio: float = 0.25,
    warmup: int = 5,
    runs: int = 20,
    rounds: int = 3,
    rows: nn.Module | None = None,
    log=None,
) -> LatencyTable:
    """Measure the table of ``specs`` for the **static** ``model`` they were taken from (before
    ``to_supernet``). ``model_kwargs`` are recorded (pass the arguments that differ from the
    variant's defaults, as in a ratios file). ``rows``: the module whose ``searchable_splits()``
    lists the table's rows (default ``model``; a search-space view for wider spaces). Identical
    (kind, width, ratio, shape) rows are measured once. The reference model has every split at
    ``reference_ratio`` and every other row at the model's own value."""
    from partialnet.deploy.fusion import fuse

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"latency batch size {batch_size!r} must be an integer >= 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"latency threads {threads!r} must be an integer >= 1 (or null: torch's current)")
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    shape = _input_shape(input_size)
    if shape[1] != shape[2]:
        raise UserError(f"latency tables are measured at a square input, got {shape}")
    rows = model if rows is None else rows
    splits = list(rows.searchable_splits())
    if len(splits) != len(specs):
        raise ValueError(f"the model has {len(splits)} searchable rows, {len(specs)} specs given")
    shapes = split_input_shapes(rows, shape)
    channels_last = True  # fuse()'s default: the fused stem moves the input to channels_last
    # every distinct (kind, width, ratio, shape) once; the model's own ratios and the reference too
    needed = [(spec, r, s) for spec, split, s in zip(specs, splits, shapes)
              for r in [c for c, k in zip(spec.candidates, spec.ks) if k is not None]
              + [split.ratio, split.ratio if spec.kind == "mlp" else reference_ratio]]
    modules: dict = {}
    for spec, r, s in needed:
        key = split_key(spec, r, s)
        if key not in modules:
            modules[key] = (fuse_split(static_split(spec, r)), s)

    with _threads(threads):
        used_threads = torch.get_num_threads()
        fused = fuse(copy.deepcopy(model).cpu().float().eval(), channels_last=channels_last)
        # rounds over the whole model and every row, the fastest of each counting, so that a burst of
        # other load on the machine hits one round, not one row; a process's first calls are slow too
        model_ms, best = float("inf"), {key: float("inf") for key in modules}
        for _ in range(max(1, int(rounds))):
            t = time_forward(fused, batch_size, shape[1], dev, warmup=warmup, runs=runs).seconds_min
            model_ms = min(model_ms, 1000.0 * t)
            for key, (module, s) in modules.items():
                best[key] = min(best[key], _time_ms(module, s, batch_size, dev, channels_last, warmup, runs))

    def row_ms(spec: LayerSpec, ratio: float, s: tuple) -> float:
        return best[split_key(spec, ratio, s)]

    table, own, reference = [], 0.0, 0.0
    for spec, split, s in zip(specs, splits, shapes):
        table.append([None if k is None else row_ms(spec, r, s) for r, k in zip(spec.candidates, spec.ks)])
        own += row_ms(spec, split.ratio, s)
        reference += row_ms(spec, split.ratio if spec.kind == "mlp" else reference_ratio, s)
        if log is not None:
            log(f"  {spec.describe()}: " + ", ".join(
                f"r={r:g} {v:.3f} ms" for r, v in zip(spec.candidates, table[-1]) if v is not None))
    fixed = model_ms - own
    return LatencyTable(
        model=model_name, model_kwargs=_plain(model_kwargs), input_size=list(shape),
        candidates=[float(c) for c in specs[0].candidates], reference_ratio=float(reference_ratio),
        device=device_name(dev), device_type=dev.type, batch_size=int(batch_size), threads=int(used_threads),
        channels_last=channels_last, torch=torch.__version__,
        layers=[dict(name=s.name, kind=s.kind, dim=s.dim) for s in specs], ms=table, fixed_ms=float(fixed),
        model_ms=float(model_ms), reference_ms=float(fixed + reference), runs=int(runs), rounds=int(rounds),
    )


# --------------------------------------------------------------------------- CLI
def _parse_kwargs(items: Sequence[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--kwarg {item!r} is not KEY=VALUE, e.g. --kwarg num_classes=10")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from partialnet.models.ratios_file import non_default_kwargs
    from partialnet.models.registry import create_model
    from partialnet.search.supernet import DEFAULT_CANDIDATES, layer_specs, parse_candidates

    ap = argparse.ArgumentParser(prog="python -m partialnet.search.latency_table",
                                 description="Measure the per-layer latency table for search.constraint=latency.")
    ap.add_argument("--model", required=True, help="registered model name, e.g. partialnet_t0")
    ap.add_argument("--kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="constructor argument of the searched model (repeat), e.g. num_classes=10 small_input=true")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--candidates", default=None, help="comma-separated split ratios (default: the search's)")
    ap.add_argument("--num-heads", type=int, default=None, help="as search.num_heads")
    ap.add_argument("--reference-ratio", type=float, default=0.25)
    ap.add_argument("--runs", type=int, default=20, help="timed calls per layer and candidate per round (fastest)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the model and every row (fastest)")
    ap.add_argument("--out", required=True, help="the table file to write (JSON)")
    args = ap.parse_args(argv)
    try:
        kwargs = _parse_kwargs(args.kwarg)
        cands = parse_candidates([float(c) for c in args.candidates.split(",")] if args.candidates
                                 else list(DEFAULT_CANDIDATES))
        try:
            model = create_model(args.model, **kwargs)
        except (KeyError, TypeError) as e:
            raise UserError(f"cannot build --model {args.model!r} with {kwargs}: {e}") from None
        if not hasattr(model, "searchable_splits"):
            raise UserError(f"model {args.model!r} has no searchable splits")
        specs = layer_specs(model, cands, num_heads=args.num_heads)
        table = measure_latency_table(
            model, specs, model_name=args.model, model_kwargs=non_default_kwargs(args.model, kwargs),
            input_size=args.input_size, batch_size=args.batch_size, threads=args.threads, device=args.device,
            reference_ratio=args.reference_ratio, runs=args.runs, rounds=args.rounds, log=print,
        )
        path = table.save(args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cost = table.cost_table()
    print(f"latency table: {table.describe()}; fused model {table.model_ms:.3f} ms, fixed part {table.fixed_ms:.3f} ms, "
          f"feasible {cost.min_value:.3f}-{cost.max_value:.3f} ms, r={table.reference_ratio:g} model "
          f"{table.reference_ms:.3f} ms")
    print(f"table file: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
