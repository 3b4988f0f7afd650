"""Timing: interleaved rounds, their summary, and the machine's SGEMM rate.

Implementations are never timed one after the other: each round calls every one of them once
(the order rotated each round), so slow drifts in machine speed hit all of them alike, and the
medians of one run are compared with each other, never with another run's."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .load import OtherLoad


def add_timing_args(p, *, per: str, quick_budget: float, quick_max_reps: int) -> None:
    """The timing options every grid script takes (--threads, --budget, --warmup, --min-reps,
    --max-reps), on argparse parser `p`; their defaults depend on --quick and are filled in by
    fill_timing_defaults after parsing. `per` names what one budget covers ("row", ...)."""
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: leave torch's setting)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds of timed rounds per {per} (default 2, quick {quick_budget:g})")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of warm-up per implementation (default 0.2, quick 0.02)")
    p.add_argument("--min-reps", type=int, default=None, help="default 5 (quick 3)")
    p.add_argument("--max-reps", type=int, default=None,
                   help=f"default 500 (quick {quick_max_reps})")
    p.set_defaults(timing_quick=(quick_budget, quick_max_reps))


def fill_timing_defaults(a) -> None:
    """The defaults of add_timing_args's options left unset, by a.quick."""
    q = a.quick
    quick_budget, quick_max_reps = a.timing_quick
    a.budget = a.budget if a.budget is not None else (quick_budget if q else 2.0)
    a.warmup = a.warmup if a.warmup is not None else (0.02 if q else 0.2)
    a.min_reps = a.min_reps if a.min_reps is not None else (3 if q else 5)
    a.max_reps = a.max_reps if a.max_reps is not None else (quick_max_reps if q else 500)


def wall_timer(fn: Callable, *args) -> Callable[[], float]:
    """A call of fn(*args) that returns its wall time in seconds (time.perf_counter)."""
    def call() -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0
    return call


def rounds(calls: Dict[str, Callable[[], float]], reps: int, *, rotate: bool = True,
           min_reps: int = 0, deadline: Optional[float] = None) -> Dict[str, List[float]]:
    """Up to `reps` rounds in which every call runs once; each call returns its own measurement
    (e.g. wall_timer's seconds). With `rotate`, round r starts at the r-th call (A B C, B C A,
    ...) so no call always runs first. With `deadline` (a time.perf_counter() value), stops
    after the first round past it, but not before `min_reps` rounds."""
    names = list(calls)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        for j in range(len(names)):
            n = names[(r + j) % len(names)] if rotate else names[j]
            samples[n].append(calls[n]())
        if deadline is not None and r + 1 >= min_reps and time.perf_counter() > deadline:
            break
    return samples


def block_timer(fn: Callable, n: int, *args) -> Callable[[], float]:
    """n back-to-back calls of fn(*args); returns their mean wall time in seconds."""
    def call() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(*args)
        return (time.perf_counter() - t0) / n
    return call


def time_interleaved(runners: Dict[str, object], mode: str, inputs, *, budget: float,
                     warmup: float, min_reps: int, max_reps: int, block: float = 0.0
                     ) -> Tuple[Dict[str, List[float]], Optional[float]]:
    """Warm up each runner (harness.runners.Runner: `infer` in inference mode, `train`
    otherwise), then run rounds (see `rounds`). Reps are chosen from the warm-up timings so
    the rounds take about `budget` seconds in total, within [min_reps, max_reps]; the garbage
    collector is off during the rounds.

    block = 0: a sample is one call, so each call follows another implementation's (its
    threads, caches and allocator state as that one left them). block > 0 (seconds): a sample
    is the mean of k back-to-back calls of one implementation, k chosen per implementation so
    that its block takes about `block` seconds (at least one call): the steady state of a loop
    that calls the same model again and again (a training loop).
    Returns ({name: [seconds per call]}, fraction of the CPUs other processes used meanwhile)."""
    fns = {n: (r.infer if mode == "inference" else r.train) for n, r in runners.items()}
    calls = {n: wall_timer(fn, inputs) for n, fn in fns.items()}
    est = {}
    for n, call in calls.items():
        t_start = time.perf_counter()
        ts = [call()]
        while len(ts) < 2 or (time.perf_counter() - t_start < warmup and len(ts) < 50):
            ts.append(call())
        est[n] = statistics.median(ts[1:])
    per_call = {n: 1 for n in est}
    if block > 0:
        per_call = {n: max(1, int(block / max(t, 1e-9))) for n, t in est.items()}
        calls = {n: block_timer(fn, per_call[n], inputs) for n, fn in fns.items()}
    per_round = sum(est[n] * per_call[n] for n in est)
    reps = int(budget / per_round) if per_round > 0 else max_reps
    reps = max(min_reps, min(max_reps, reps))
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with OtherLoad() as load:
            # If the machine slows down after warm-up (load from elsewhere), stop at 2x budget
            # rather than running the planned reps at the slow speed.
            samples = rounds(calls, reps, min_reps=min_reps,
                             deadline=time.perf_counter() + 2.0 * budget)
    finally:
        if gc_was:
            gc.enable()
    return samples, load.fraction


def summarize(ts: List[float]) -> dict:
    """Median, min, quartiles (ms), the interquartile range as % of the median, and the count
    of a list of per-call seconds."""
    s = sorted(ts)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    med = statistics.median(s)
    return {"median_ms": med * 1e3, "min_ms": s[0] * 1e3, "p25_ms": q[0] * 1e3,
            "p75_ms": q[2] * 1e3, "iqr_pct": 100.0 * (q[2] - q[0]) / med if med else 0.0,
            "reps": len(s)}


def sgemm_rate(n: int = 1024, seconds: float = 1.0, windows: int = 3,
               dtype: torch.dtype = torch.float32) -> dict:
    """GFLOP/s of torch.mm on n x n matrices of `dtype` (float32: SGEMM, float64: DGEMM): the
    median of each of `windows` windows of seconds/windows; the best window median is the rate
    used (contention from other processes can only lower a window, so the best one is the
    closest to the machine's real rate)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    flop = 2.0 * n ** 3
    medians, rates = [], []
    for _ in range(windows):
        ts = []
        t_end = time.perf_counter() + seconds / windows
        while len(ts) < 5 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.mm(a, b, out=c)
            ts.append(time.perf_counter() - t0)
        r = [flop / t / 1e9 for t in ts]
        medians.append(statistics.median(r))
        rates += r
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "gflops": max(medians),
            "window_medians": medians,
            "median_gflops": statistics.median(rates), "max_gflops": max(rates),
            "min_gflops": min(rates), "reps": len(rates)}
