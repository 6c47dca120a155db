"""Helpers shared by the benchmarks: timing, peak RSS of child processes, result tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
MIB = 1024 * 1024


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def run_timed(cmd: list[str] | str, *, env: dict | None = None, shell: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {cmd}\n{stderr[-2000:]}")
    return elapsed, usage.ru_maxrss


def best_of(n: int, fn) -> float:
    return min(fn() for _ in range(n))


def median_of(n: int, fn) -> float:
    return statistics.median(fn() for _ in range(n))


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str


def print_table(title: str, rows: list[Row]) -> str:
    lines = [f"## {title}", "", f"machine: {machine()}", "",
             "| figure | value | baseline (same run) | ratio |", "|---|---|---|---|"]
    lines += [f"| {r.figure} | {r.value} | {r.baseline} | {r.ratio} |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
