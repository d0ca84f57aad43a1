"""``python -m partialnet.data.ffcv write|info``: write a .beton, or check one and print its sidecar."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from partialnet.data.ffcv.beton import check_beton
from partialnet.data.ffcv.writer import write_beton
from partialnet.errors import UserError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m partialnet.data.ffcv", description="FFCV .beton tools for partialnet")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    w = sub.add_parser("write", help="convert an image dataset into a .beton (+ FILE.beton.json)")
    w.add_argument("--src", required=True,
                   help="ImageFolder root DIR (DIR/<class>/*.jpg), fashion_mnist[:DIR] or cifar10[:PATH]")
    w.add_argument("--out", required=True, help="output FILE.beton")
    w.add_argument("--split", default="train", help="split for fashion_mnist/cifar10 sources (default train)")
    w.add_argument("--max-res", type=int, default=512, help="longest side stored, px (0: keep; default 512)")
    w.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of compressed samples (default 90)")
    w.add_argument("--compress-prob", type=float, default=0.5,
                   help="fraction of samples stored as JPEG, the rest raw (default 0.5)")
    w.add_argument("--workers", type=int, default=None, help="writer processes (default min(8, cores))")
    w.add_argument("--limit", type=int, default=None, help="write only N evenly spaced samples")
    w.add_argument("--seed", type=int, default=0, help="seed of the raw/JPEG choice (default 0)")
    w.add_argument("--chunksize", type=int, default=100, help="samples per worker task (default 100)")
    w.add_argument("--force", action="store_true", help="overwrite an existing FILE.beton")
    w.add_argument("--quiet", action="store_true", help="no progress output")
    i = sub.add_parser("info", help="check a .beton and print its sidecar summary")
    i.add_argument("beton")
    return p


def _info(path: str) -> None:
    info = check_beton(path)
    side = info["sidecar"] or {}
    print(f"{path}: ok, {info['num_samples']} samples, {info['file_bytes'] / 2**20:.1f} MiB")
    if side:
        print(f"  classes: {side['num_classes']}  skipped at write: {side['skipped']['count']}")
        print(f"  writer: {json.dumps(side['writer'])}")
        print(f"  source: {json.dumps(side['source'])}")
    else:
        print("  no sidecar JSON beside it")


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.cmd == "write":
            write_beton(
                args.src, args.out, split=args.split, max_res=args.max_res, jpeg_quality=args.jpeg_quality,
                compress_prob=args.compress_prob, workers=args.workers, force=args.force, limit=args.limit,
                seed=args.seed, chunksize=args.chunksize, progress=not args.quiet,
            )
        else:
            _info(args.beton)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
