"""Shared helpers for benchmarks: interleaved timing of ours vs a comparator, and the report header."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def machine() -> str:
    import jax

    dev = jax.devices()[0]
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {dev.platform} ({dev.device_kind})"


def header(title: str, command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"# {title}\n\n- command: `{command}`\n- commit: `{commit()}`\n- machine: {machine()}\n"
            f"- date: {now}\n- python: {sys.version.split()[0]}\n\n")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, list[float]]:
    """Time each callable `repeats` times, interleaved (a, b, a, b, ...) so drift hits all alike.

    Each callable must block until its work is done (call `.block_until_ready()` / torch ops are eager).
    Returns seconds per call for each name.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and range of per-repeat ratios num[i]/den[i] (paired by repeat, interleaved timing)."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def fmt_ratio(num: list[float], den: list[float]) -> str:
    med, lo, hi = ratio_stats(num, den)
    return f"{med:.2f}× (range {lo:.2f}–{hi:.2f})"


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    print(f"wrote {path}")
    return path
