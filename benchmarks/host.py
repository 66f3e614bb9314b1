"""The machine a figure was measured on, without importing torch (for start-up benchmarks)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


#: The CPU flags that decide which fast paths a figure could use: native bf16 (AVX-512 BF16,
#: AMX) makes bf16-mixed fast; without them bf16 is emulated and slower than float32.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags(lines: list[str]) -> list[str]:
    """The :data:`SPEED_FLAGS` this CPU has (``/proc/cpuinfo``'s first ``flags`` line)."""
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return [flag for flag in SPEED_FLAGS if flag in flags]


def commit() -> str:
    """The checkout's commit, with ``+dirty`` when files differ from it ("unknown" outside git):
    a figure is reproducible only with the code it measured."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def host() -> dict[str, Any]:
    """Date, commit, cores, CPU model and speed flags, RAM and load."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "commit": commit(),
        "cpu": cpu or platform.processor(),
        "cpu_flags": cpu_flags(lines),
        "ram_gib": round(ram, 1),
        "python": platform.python_version(),
        "load_1_5_15": load_average(),
    }
