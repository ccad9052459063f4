"""How many torch CPU threads a measurement should use on a machine others may share.

torch's OpenMP threads wait for each other at every parallel region; when another process
holds one of the cores, a two-thread forward stalls (0.65 s with one thread, 7.9 s with
two, measured for the same one-token forward on the project's 2-core machines under load),
while one thread merely shares its core. So: every CPU this process may use, or one when
the others already keep them busy. Busy is measured now, from /proc/stat over a short
window: the load average lags by minutes, and right after a finished job it still reads
"busy" on an idle machine.
"""

from __future__ import annotations

import os
import time


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(window_s: float = 0.5) -> float:
    """CPUs' worth of work other processes are doing right now (this process is idle here)."""
    first = _cpu_times()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(window_s)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def auto_threads() -> tuple[int, float]:
    """(threads, busy CPUs seen): one thread when fewer than one CPU is free, else all of them."""
    cpus = available_cpus()
    busy = busy_cpus()
    return (1 if cpus > 1 and busy > cpus - 1 else cpus), busy
