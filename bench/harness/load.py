"""Other processes on the machine: how busy the CPUs are, how much CPU other processes used
during a timed section, and waiting for an idle machine (Linux /proc/stat; None elsewhere)."""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional, Tuple

OTHER_LOAD_LIMIT = 0.05   # rows timed while other processes used more than this are marked
IDLE_THRESHOLD = 0.15     # wait_for_idle: the busy fraction below which the machine is idle

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _proc_stat_busy() -> Optional[Tuple[float, float]]:
    """(busy CPU seconds of all processes summed over CPUs, wall clock) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / _CLK_TCK, time.perf_counter()


class OtherLoad:
    """Measures how much CPU *other* processes used while this context was open, as a fraction
    of all CPUs: (busy CPU time from /proc/stat - this process's CPU time) / (wall * ncpu)."""

    def __enter__(self):
        self.p0 = _proc_stat_busy()
        t = os.times()
        self.s0 = t.user + t.system
        return self

    def __exit__(self, *exc):
        p1 = _proc_stat_busy()
        t = os.times()
        self.fraction = None
        if self.p0 is not None and p1 is not None and p1[1] > self.p0[1]:
            other = (p1[0] - self.p0[0]) - (t.user + t.system - self.s0)
            self.fraction = max(0.0, other / ((p1[1] - self.p0[1]) * (os.cpu_count() or 1)))
        return False


def cpu_busy_fraction(interval: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs busy (any process) over `interval` seconds, from /proc/stat."""
    def read():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle
    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else None


def wait_for_idle(max_wait: float, threshold: float = IDLE_THRESHOLD,
                  interval: float = 1.0) -> Optional[float]:
    """Wait (up to max_wait s) until other processes use < threshold of the CPUs."""
    t_end = time.perf_counter() + max_wait
    busy = cpu_busy_fraction(interval)
    waited = False
    while busy is not None and busy > threshold and time.perf_counter() < t_end:
        if not waited:
            print(f"  (waiting for an idle machine: {100 * busy:.0f}% of CPUs busy)",
                  file=sys.stderr, flush=True)
            waited = True
        time.sleep(2.0)
        busy = cpu_busy_fraction(interval)
    return busy
