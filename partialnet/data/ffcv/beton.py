"""``.beton`` files on disk: the writer's JSON sidecar and an integrity check that names the problem."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from partialnet.data.ffcv.internals import ALLOC_ENTRY_BYTES, BETON_HEADER, read_index, read_labels
from partialnet.data.ffcv.requirement import require_ffcv
from partialnet.errors import UserError

SIDECAR_FORMAT = "partialnet-beton-sidecar/1"


def sidecar_path(beton: str | os.PathLike) -> Path:
    return Path(str(beton) + ".json")


def read_sidecar(beton: str | os.PathLike) -> dict | None:
    """The writer's JSON beside ``beton``, or ``None`` when there is none."""
    p = sidecar_path(beton)
    if not p.is_file():
        return None
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the sidecar {p}: {e}; rewrite the .beton or delete the sidecar") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{p} is not a partialnet .beton sidecar (format {SIDECAR_FORMAT!r} expected)")
    return data


def check_beton(path: str | os.PathLike, *, what: str = "beton", deep: bool = True) -> dict:
    """Check that ``path`` is a complete .beton (header, allocation table, sidecar agreement).

    Returns ``{"num_samples", "file_bytes", "sidecar"}``. Every problem is a one-line UserError.
    ``deep`` also opens it with FFCV's reader and checks every sample's data lies in the file.
    """
    p = Path(path)
    fix = f"write it with `python -m partialnet.data.ffcv write --src DIR --out {p}`"
    if not p.exists():
        raise UserError(f"{what} {p} not found: {fix}")
    if not p.is_file():
        raise UserError(f"{what} {p} is not a file: {fix}")
    size = p.stat().st_size
    if size < BETON_HEADER.itemsize:
        raise UserError(f"{what} {p} is truncated ({size} bytes, smaller than a .beton header): {fix} --force")
    header = np.fromfile(p, dtype=BETON_HEADER, count=1)[0]
    if int(header["version"]) == 0:  # zeros where the header belongs: a write cut short, a zero-filled file
        raise UserError(f"{what} {p} is truncated or corrupt: no .beton header (format version 0); {fix} --force")
    if int(header["version"]) != 2:
        raise UserError(f"{what} {p} is not an FFCV .beton file (format version {int(header['version'])}, 2 expected): {fix}")
    n = int(header["num_samples"])
    ptr = int(header["alloc_table_ptr"])
    bad = ""
    if ptr < BETON_HEADER.itemsize:
        bad = "its writer did not finish (no allocation table)"
    elif ptr > size or (size - ptr) % ALLOC_ENTRY_BYTES != 0:
        bad = f"allocation table at byte {ptr} does not fit a {size}-byte file"
    elif n > 0 and size == ptr:
        bad = "allocation table missing"
    side = read_sidecar(p)
    if not bad and side is not None:
        if int(side.get("file_bytes", size)) != size:
            bad = f"it is {size} bytes but its sidecar {sidecar_path(p).name} records {side['file_bytes']}"
        elif int(side.get("num_samples", n)) != n:
            bad = f"it holds {n} samples but its sidecar records {side['num_samples']}"
    if bad:
        raise UserError(f"{what} {p} is truncated or corrupt: {bad}; rewrite it (--force)")
    if deep:
        require_ffcv()
        try:
            entries, end, fields = read_index(p)
            if n > 0 and (entries == 0 or end > ptr):
                raise ValueError("sample data extends past the allocation table")
            if "image" not in fields or "label" not in fields:
                raise ValueError(f"fields {fields} (image and label expected)")
        except Exception as e:  # FFCV raises AssertionError/ValueError/IndexError on bad files
            raise UserError(f"{what} {p} cannot be read ({type(e).__name__}: {e}); rewrite it (--force)") from None
    return {"num_samples": n, "file_bytes": size, "sidecar": side}


def labels_from_beton(path: str | os.PathLike) -> np.ndarray:
    """The label field of every sample (for files written without a sidecar)."""
    require_ffcv()
    return read_labels(path)
