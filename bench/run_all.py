"""Run every benchmark script in bench/ and collect their output in bench/RESULTS.md.

Each script prints Markdown (tables of what it measured). Nothing here is typed in: the file
records the machine, the threads, the date and each script's own output.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"run_all.py"} and not p.name.startswith("_"))
    parts = ["# Benchmark results\n", "Written by `make bench` (bench/run_all.py). Every number below was measured in this run.\n",
             machine(), ""]
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
        parts.append(f"## {script.name}\n")
        parts.append(proc.stdout.strip() or "(no output)")
        if proc.returncode:
            failed += 1
            parts.append(f"\n**{script.name} failed (exit {proc.returncode})**:\n```\n{proc.stderr[-2000:]}\n```")
        parts.append("")
    out = HERE / "RESULTS.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(parts) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
