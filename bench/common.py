"""Paths, units and size helpers shared by the benchmark's parts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
INPUTS = WORK / "inputs"
OUT = WORK / "out"
LOGS = WORK / "logs"
REF_VENV = WORK / "ref-venv"
OURS_VENV = WORK / "ours-venv"
REF_VERSION = "0.4"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PROJECT = "bench"
TIME_BIN = shutil.which("time", path="/usr/bin:/bin") if os.path.exists("/usr/bin/time") else None


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    units = {"K": KiB, "M": MiB, "G": GiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def fmt_size(n: int) -> str:
    for unit, size in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"
