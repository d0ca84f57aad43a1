"""Loader throughput: partialnet's FFCV train loader vs torchvision ImageFolder + DataLoader.

    python bench/loaders.py [--images 3000] [--workers 2] [--batch-size 128] [--sizes 224,160] [--epochs 5]
    python bench/loaders.py --quick          # a small run that checks the benchmark works

Data: real photos, not noise: CIFAR-10 training JPEGs (../shared/data/cifar10-train.tar.gz)
upsampled (bicubic) to a random 256-400 px longest side and aspect 3:4..4:3, re-saved as JPEG
quality 90 into a temporary folder (without the archive: smooth random colour fields of the same
sizes); the same folder is written to a .beton with the writer's defaults (max side 512, half the
samples JPEG q90, half raw; --compress-prob 1.0 for all JPEG).

Both loaders produce the same thing: float32 [B, 3, S, S] normalised with ImageNet mean/std,
RandomResizedCrop(S, scale 0.08-1, ratio 3/4-4/3) + horizontal flip.
- ImageFolder: PIL decode, torchvision RandomResizedCrop (PIL bilinear), flip, ToTensor,
  Normalize; DataLoader(num_workers=W, persistent_workers=True, drop_last=True).
- FFCV: partialnet.data.ffcv.FFCVDataModule(num_workers=W).train_dataloader() on CPU (decode
  with libjpeg-turbo, crop+resize with OpenCV INTER_AREA, normalise with numba threads).

Per size: one warm-up epoch per loader (FFCV JIT-compiles there, DataLoader starts its workers),
then --epochs timed epochs per loader, INTERLEAVED (FFCV, ImageFolder, FFCV, ImageFolder, ...),
so a burst of load on a shared machine hits both loaders alike. Prints a Markdown table with the
median and min-max images/s per loader and the ratio of the medians (loader only, no model). Not
a test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-train.tar.gz"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_photos(dst: Path, n: int, seed: int = 0) -> int:
    """n upsampled CIFAR-10 photos in dst/<class>/*.jpg (classes balanced)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    if not ARCHIVE.is_file():
        print(f"note: {ARCHIVE} not found: using generated colour fields instead of photos", file=sys.stderr)
        for i in range(n):
            cls = f"c{i % 10}"
            longest = int(rng.integers(256, 401))
            grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            (dst / cls).mkdir(parents=True, exist_ok=True)
            grid.resize((longest, longest * 3 // 4), Image.BICUBIC).save(dst / cls / f"{i:05d}.jpg", quality=90)
        return n
    per_class = -(-n // 10)
    counts: dict[str, int] = {}
    made = 0
    with tarfile.open(ARCHIVE, "r|gz") as tar:
        for m in tar:
            if made >= n:
                break
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".jpg") or len(parts) < 2:
                continue
            cls = parts[-2]
            if counts.get(cls, 0) >= per_class:
                continue
            im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            longest = int(rng.integers(256, 401))
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            w, h = (longest, round(longest / aspect)) if aspect >= 1 else (round(longest * aspect), longest)
            (dst / cls).mkdir(parents=True, exist_ok=True)
            im.resize((w, h), Image.BICUBIC).save(dst / cls / f"{counts.get(cls, 0):05d}.jpg", quality=90)
            counts[cls] = counts.get(cls, 0) + 1
            made += 1
    return made


def imagefolder_loader(root: Path, size: int, batch: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, generator=g)


def time_epoch(loader) -> tuple[float, float, tuple]:
    """(images/s, seconds, (output shape, dtype)) of one pass over ``loader``."""
    t0 = time.perf_counter()
    n, shape = 0, None
    for x, y in loader:
        n += int(y.shape[0])
        shape = (tuple(x.shape), x.dtype)
    dt = time.perf_counter() - t0
    return n / dt, dt, shape


def interleaved(loaders: dict, epochs: int) -> dict:
    """One warm-up epoch each, then ``epochs`` rounds of one timed epoch per loader, in turn."""
    out = {name: {"rates": [], "secs": [], "warmup_s": 0.0, "shape": None} for name in loaders}
    for name, ld in loaders.items():
        _, out[name]["warmup_s"], out[name]["shape"] = time_epoch(ld)
    for _ in range(epochs):
        for name, ld in loaders.items():
            rate, secs, shape = time_epoch(ld)
            out[name]["rates"].append(rate)
            out[name]["secs"].append(secs)
            out[name]["shape"] = shape
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000, help="number of photos (default 3000)")
    ap.add_argument("--workers", type=int, default=2, help="loader workers / FFCV threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per loader after one warm-up (default 5)")
    ap.add_argument("--sizes", default="224,160", help="output sizes, comma separated (default 224,160)")
    ap.add_argument("--compress-prob", type=float, default=0.5,
                    help="fraction of .beton samples stored as JPEG, the rest raw (writer default 0.5; 1.0 = all JPEG)")
    ap.add_argument("--quick", action="store_true",
                    help="check the benchmark runs: 256 photos, batch 32, 3 epochs, size 160 (figures not meaningful)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.epochs, args.sizes = 256, 32, 3, "160"
    sizes = [int(s) for s in args.sizes.split(",") if s]

    from partialnet.data.ffcv import FFCVDataModule, write_beton
    from partialnet.errors import UserError

    ffcv_name, folder_name = "FFCV .beton (FFCVDataModule)", "ImageFolder + DataLoader (PIL)"
    with tempfile.TemporaryDirectory(prefix="partialnet-bench-loaders-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        n = make_photos(tmp / "photos", args.images)
        t_photos = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # FFCV's own progress bar
                write_beton(str(tmp / "photos"), tmp / "photos.beton", workers=args.workers,
                            compress_prob=args.compress_prob, progress=False)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        t_write = time.perf_counter() - t0
        beton_mb = (tmp / "photos.beton").stat().st_size / 2**20
        folder_mb = sum(f.stat().st_size for f in (tmp / "photos").rglob("*.jpg")) / 2**20

        results = {}  # size -> interleaved() result
        for s in sizes:
            try:
                dm = FFCVDataModule(str(tmp / "photos.beton"), None, batch_size=args.batch_size,
                                    num_workers=args.workers, image_size=s, seed=0)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            loaders = {ffcv_name: dm.train_dataloader(),
                       folder_name: imagefolder_loader(tmp / "photos", s, args.batch_size, args.workers)}
            results[s] = interleaved(loaders, args.epochs)
            for name, r in results[s].items():
                assert r["shape"][0][-1] == s, (name, r["shape"])
            del loaders

    print(f"\n### Loader throughput: {n} photos (256-400 px JPEG q90), {args.workers} workers, batch "
          f"{args.batch_size}, {len(os.sched_getaffinity(0))} usable CPU cores, no model\n")
    print(f"photo folder {folder_mb:.0f} MiB (made in {t_photos:.1f} s); .beton {beton_mb:.0f} MiB, "
          f"{args.compress_prob:.0%} of samples JPEG (written in {t_write:.1f} s, {args.workers} writer processes)\n")
    print(f"Timed epochs interleaved (FFCV, ImageFolder, FFCV, ...), {args.epochs} per loader after one warm-up each.\n")
    print("| loader | size | images/s median | images/s min-max | warm-up epoch s | timed epochs s | output |")
    print("|---|---:|---:|---:|---:|---|---|")
    for s, res in results.items():
        for name, r in res.items():
            rates = r["rates"]
            timed = ", ".join(f"{x:.2f}" for x in r["secs"])
            shape, dtype = r["shape"]
            print(f"| {name} | {s} | {statistics.median(rates):.0f} | {min(rates):.0f}-{max(rates):.0f} | "
                  f"{r['warmup_s']:.2f} | {timed} | {list(shape)} {str(dtype).replace('torch.', '')} |")
    print()
    for s, res in results.items():
        a, b = res[ffcv_name]["rates"], res[folder_name]["rates"]
        ratio = statistics.median(a) / statistics.median(b)
        lo, hi = min(a) / max(b), max(a) / min(b)
        verdict = ("target >= 1.5x: met" if ratio >= 1.5 else "target >= 1.5x: NOT met") if s == 224 else "no target"
        print(f"FFCV / ImageFolder at {s}: {ratio:.2f}x (ratio of medians; {lo:.2f}x-{hi:.2f}x between the "
              f"worst and best epochs) ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
