"""Run every benchmark script in bench/ and collect their output in bench/RESULTS.md.

Each script prints Markdown (tables of what it measured). Nothing here is typed in: the file
records the machine, the threads, the date and each script's own output. ``--only a.py b.py``
re-runs some scripts and keeps the other sections of the existing file, each marked with the
date of the run that measured it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from partialnet.utils.atomic import atomic_write_text  # noqa: E402


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"- date: {dt.datetime.now().isoformat(timespec='seconds')}\n- CPU: {cpu}, {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}\n- GPU: {gpu}\n- torch {torch.__version__}, Python {platform.python_version()}")


def split_sections(text: str) -> dict[str, str]:
    """``{script name: its section}`` of an existing RESULTS.md (sections start with ``## <script>``)."""
    sections, name, buf = {}, None, []
    for line in text.splitlines():
        if line.startswith("## ") and line[3:].strip().endswith(".py"):
            if name:
                sections[name] = "\n".join(buf).strip()
            name, buf = line[3:].strip(), []
        elif name:
            buf.append(line)
    if name:
        sections[name] = "\n".join(buf).strip()
    return sections


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", metavar="SCRIPT",
                    help="re-run only these scripts (e.g. train_step.py); the other sections of the existing "
                         "RESULTS.md are kept, marked with the date of the run that measured them")
    args = ap.parse_args(argv)
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"run_all.py"} and not p.name.startswith("_"))
    out = HERE / "RESULTS.md"
    kept: dict[str, str] = {}
    if args.only:
        unknown = sorted(set(args.only) - {p.name for p in scripts})
        if unknown:
            print(f"error: no benchmark script {', '.join(unknown)} in bench/; pick from "
                  f"{', '.join(p.name for p in scripts)}", file=sys.stderr)
            return 2
        old = out.read_text() if out.is_file() else ""
        old_date = next((ln.split(":", 1)[1].strip() for ln in old.splitlines() if ln.startswith("- date:")), "unknown")
        kept = {k: v if v.startswith(("(kept from", "(not run")) else f"(kept from the run of {old_date}; not re-run)\n\n{v}"
                for k, v in split_sections(old).items() if k not in args.only}
    parts = ["# Benchmark results\n", "Written by `make bench` (bench/run_all.py). Every number below was measured in this run"
             + (f", except the sections marked as kept (this run: `--only {' '.join(args.only)}`)" if args.only else "")
             + ".\n", machine(), ""]
    failed = 0
    for script in scripts:
        if args.only and script.name not in args.only:
            parts += [f"## {script.name}\n", kept.get(script.name, "(not run: no result from an earlier run either)"), ""]
            continue
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
        parts.append(f"## {script.name}\n")
        parts.append(proc.stdout.strip() or "(no output)")
        if proc.returncode:
            failed += 1
            parts.append(f"\n**{script.name} failed (exit {proc.returncode})**:\n```\n{proc.stderr[-2000:]}\n```")
        parts.append("")
    atomic_write_text(out, "\n".join(parts) + "\n")
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
