"""Write an image dataset into a ``.beton`` (``image`` RGBImageField + ``label`` IntField).

The writer pre-scans every image (PIL verify + a reduced-size decode), skips and counts unreadable
ones, writes to a temporary file in the output folder and renames it into place, and records its
settings, class names, counts and skipped files in ``FILE.beton.json``. A dead writer worker is an
error, never a hang (:class:`~partialnet.data.ffcv.internals.WriterWatch`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from partialnet.data.ffcv.beton import SIDECAR_FORMAT, check_beton, sidecar_path
from partialnet.data.ffcv.internals import WriterWatch, WriterWorkerDied, release_writer_memory
from partialnet.data.ffcv.requirement import require_ffcv
from partialnet.data.ffcv.sources import Source, resolve_source
from partialnet.errors import UserError
from partialnet.utils.atomic import atomic_write_text

__all__ = ["write_beton"]


def _open_image(item):
    from PIL import Image

    return Image.open(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def _probe(item) -> tuple[bool, int, int, str]:
    """(ok, width, height, reason): PIL verify, then a decode (JPEGs at 1/8 scale, which still
    reads every byte of the entropy-coded data, so truncated files fail here)."""
    try:
        with _open_image(item) as im:
            im.verify()
        with _open_image(item) as im:
            w, h = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
            if w < 1 or h < 1:
                raise ValueError("empty image")
        return True, int(w), int(h), ""
    except Exception as e:  # PIL raises many types for bad files
        msg = " ".join(str(e).split()) or type(e).__name__
        return False, 0, 0, f"{type(e).__name__}: {msg}"[:300]


class _ImageDataset:
    """Indexable (image HxWx3 uint8, label) over the pre-scanned samples, for DatasetWriter."""

    def __init__(self, src: Source, keep: np.ndarray, max_res: int, seed: int, fail_log: str):
        self.src = src
        self.keep = keep
        self.max_res = max_res
        self.seed = seed
        self.fail_log = fail_log

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        j = int(self.keep[i])
        # RGBImageField(write_mode="proportion") draws np.random per sample: seed it per index so
        # which samples are JPEG-compressed does not depend on the worker that wrote them.
        np.random.seed((self.seed * 1_000_003 + j) % (2**32))
        label = int(self.src.labels[j])
        try:
            if self.src.arrays is not None:
                a = self.src.arrays[j]
                img = np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a)
            else:
                with _open_image(self.src.item(j)) as im:
                    w, h = im.size
                    if self.max_res and im.format == "JPEG" and max(w, h) > 2 * self.max_res:
                        s = self.max_res / max(w, h)  # DCT-domain downscale; stays >= max_res
                        im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
                    img = np.ascontiguousarray(np.asarray(im.convert("RGB")))
            return img, label
        except Exception as e:  # must not raise: the worker would die (an error, but a costly one)
            with open(self.fail_log, "a", encoding="utf-8") as f:
                f.write(f"{self.src.names[j]}\t{type(e).__name__}: {' '.join(str(e).split())}\n")
            return np.zeros((1, 1, 3), np.uint8), label


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files a killed writer (SIGKILL, power loss) left beside ``out``: their pid is gone."""
    for f in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = f.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "failed") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()
        except PermissionError:  # someone else's live process
            pass


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ffcv", "numba", "numpy", "opencv-python-headless", "pillow", "partialnet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _check_args(out: Path, force: bool, max_res: int, jpeg_quality: int, compress_prob: float,
                limit: int | None) -> None:
    if out.suffix != ".beton":
        raise UserError(f"--out {out}: use a .beton file name")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} does not exist")
    if not (0 <= max_res <= 65535):
        raise UserError(f"--max-res {max_res}: use 1..65535 (longest side in px), or 0 to keep sizes")
    if not (1 <= jpeg_quality <= 100):
        raise UserError(f"--jpeg-quality {jpeg_quality}: use 1..100")
    if not (0.0 <= compress_prob <= 1.0):
        raise UserError(f"--compress-prob {compress_prob}: use a probability in [0, 1]")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: use a positive number of images")


def _prescan(source: Source, candidates: np.ndarray, max_res: int, workers: int, progress: bool):
    """``(keep, sizes [len(keep), 2] as (w, h), skipped [{path, reason}])``."""
    from tqdm import tqdm

    if source.arrays is not None:
        h, w = source.arrays.shape[1:3]
        return candidates, np.tile([w, h], (len(candidates), 1)), []
    items = [source.item(j) for j in candidates]
    if workers > 1 and len(items) > 64:
        with mp.get_context("fork").Pool(workers) as pool:
            probes = list(tqdm(pool.imap(_probe, items, chunksize=64), total=len(items), desc="scan",
                               disable=not progress, file=sys.stderr))
    else:
        probes = [_probe(it) for it in tqdm(items, desc="scan", disable=not progress, file=sys.stderr)]
    skipped: list[dict] = []
    ok = np.zeros(len(probes), bool)
    for k, (j, (good, w_, h_, reason)) in enumerate(zip(candidates, probes, strict=True)):
        if good and max_res == 0 and max(w_, h_) > 65535:
            skipped.append({"path": source.names[j], "reason": "larger than 65535 px (the .beton limit); use --max-res"})
        elif not good:
            skipped.append({"path": source.names[j], "reason": reason})
        else:
            ok[k] = True
    sizes = np.array([[p[1], p[2]] for p, k in zip(probes, ok, strict=True) if k], dtype=np.int64).reshape(-1, 2)
    return candidates[ok], sizes, skipped


def _page_size(sizes: np.ndarray, max_res: int) -> int:
    """Every sample must fit one page (FFCV raises inside a worker otherwise). FFCV's default
    8 MiB pages for real data sets; small ones get 2 MiB pages (each writer worker pads its last
    page, so the file has up to workers x page_size of padding)."""
    longest = sizes.max(axis=1).astype(np.float64)
    scale = np.minimum(1.0, max_res / longest) if max_res else np.ones_like(longest)
    stored = (sizes * scale[:, None]).astype(np.int64)
    biggest = int((stored[:, 0] * stored[:, 1] * 3).max()) + 4096
    raw_total = float((stored[:, 0] * stored[:, 1] * 3).sum())
    return max(1 << 23 if raw_total > 2**30 else 1 << 21, _next_pow2(2 * biggest))


def write_beton(
    src: str,
    out: str | os.PathLike,
    *,
    split: str = "train",
    max_res: int = 512,
    jpeg_quality: int = 90,
    compress_prob: float = 0.5,
    workers: int | None = None,
    force: bool = False,
    limit: int | None = None,
    seed: int = 0,
    chunksize: int = 100,
    progress: bool = True,
) -> dict:
    """Convert ``src`` (see :func:`~partialnet.data.ffcv.sources.resolve_source`) into ``out``.

    Returns the sidecar dict (also written to ``out + '.json'``).
    """
    t0 = time.time()
    out = Path(out)
    _check_args(out, force, max_res, jpeg_quality, compress_prob, limit)
    workers = max(1, int(workers or min(8, os.cpu_count() or 1)))
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    source = resolve_source(src, split)
    total = len(source.labels)
    candidates = np.arange(total)
    if limit is not None and limit < total:  # evenly spaced, so every class keeps its share
        candidates = np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))
    keep, sizes, skipped = _prescan(source, candidates, max_res, workers, progress)
    if len(keep) == 0:
        raise UserError(f"no readable images in {src} ({len(skipped)} unreadable, e.g. {skipped[0]['path'] if skipped else '-'})")
    page_size = _page_size(sizes, max_res)

    _remove_stale_temp_files(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    fail_log = out.with_name(f".{out.name}.failed-{os.getpid()}")
    counts = np.bincount(np.asarray(source.labels)[keep], minlength=len(source.classes))
    try:
        fail_log.write_text("")
        dataset = _ImageDataset(source, keep, max_res, seed, str(fail_log))
        field_img = RGBImageField(write_mode="proportion", max_resolution=max_res or None,
                                  jpeg_quality=jpeg_quality, compress_probability=compress_prob)
        writer = DatasetWriter(str(tmp), {"image": field_img, "label": IntField()}, page_size=page_size,
                               num_workers=workers)
        if progress:
            print(f"writing {len(keep)} images ({len(source.classes)} classes) to {out}", file=sys.stderr)
        quiet = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
        try:
            with WriterWatch(total=len(dataset)), quiet:  # (FFCV's own tqdm bar goes to stderr)
                writer.from_indexed_dataset(dataset, chunksize=max(1, int(chunksize)))
        except WriterWorkerDied as e:
            release_writer_memory(writer)
            raise UserError(f"writing {out} failed: {e}; nothing was written (disk full? out of memory?)") from None
        failures = [ln for ln in fail_log.read_text(encoding="utf-8").splitlines() if ln]
        if failures:
            raise UserError(f"{len(failures)} images passed the pre-scan but failed to decode while writing "
                            f"(first: {failures[0]}); nothing was written")
        info = check_beton(tmp, what="written file", deep=True)
        if info["num_samples"] != len(keep):
            raise UserError(f"the written file holds {info['num_samples']} samples, {len(keep)} expected")
        side = {
            "format": SIDECAR_FORMAT,
            "beton": out.name,
            "file_bytes": info["file_bytes"],
            "num_samples": int(len(keep)),
            "num_classes": len(source.classes),
            "class_names": list(source.classes),
            "class_counts": [int(c) for c in counts],
            "fields": {"image": "RGBImageField", "label": "IntField"},
            "writer": {
                "max_resolution": int(max_res) or None,
                "jpeg_quality": int(jpeg_quality),
                "compress_probability": float(compress_prob),
                "write_mode": "proportion",
                "resize": "longest side to max_resolution, OpenCV INTER_AREA, downscale only",
                "page_size": int(page_size),
                "seed": int(seed),
                "workers": workers,
                "chunksize": int(chunksize),
            },
            "source": {"spec": src, "kind": source.kind, "path": str(Path(source.path).resolve()), "split": split,
                       "found": int(total), "limit": limit},
            "skipped": {"count": len(skipped), "files": skipped},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - t0, 2),
            "versions": _versions(),
        }
        os.replace(tmp, out)
        atomic_write_text(sidecar_path(out), json.dumps(side, indent=1) + "\n")
    finally:
        for f in (tmp, fail_log):
            with contextlib.suppress(OSError):
                f.unlink()
    if progress:
        _report(side, skipped, out)
    return side


def _report(side: dict, skipped: list[dict], out: Path) -> None:
    mb = side["file_bytes"] / 2**20
    print(f"wrote {side['num_samples']} images, {side['num_classes']} classes, {len(skipped)} skipped, "
          f"{mb:.1f} MiB in {side['seconds']:.1f} s -> {out} (+ {sidecar_path(out).name})", file=sys.stderr)
    for s in skipped[:10]:
        print(f"  skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"  ... and {len(skipped) - 10} more (listed in the sidecar)", file=sys.stderr)
